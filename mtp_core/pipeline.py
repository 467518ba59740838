"""The main job: a georeferenced raster in, a class GeoTIFF and clean building polygons out.

Every front end (``mtp predict``, the QGIS dock, Processing, batch shards) calls :func:`extract_buildings`, so they all
produce the same files. Rasters in degrees or far from the model's ground resolution are read through a warped VRT in a
metric CRS at the model's resolution, and the outputs are brought back onto the raster's own grid and CRS.
"""
from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from osgeo import gdal

from mtp_core.errors import GeoError
from mtp_core.inference import CLASS_NODATA, GeoTiffSink, Predictor, RasterSource, RunStats
from mtp_core.io import BandScaler, GeoTiffWriter, RasterInfo, describe_raster, plan_read, warp_to_grid
from mtp_core.io.gdal_errors import raises_gdal_errors
from mtp_core.models.card import ModelCard
from mtp_core.progress import CancelCallback, Progress, ProgressCallback
from mtp_core.vectorize import vectorize_raster_to_file


@dataclass(frozen=True)
class RasterPrediction:
    mask_path: Path
    prob_path: Path | None
    info: RasterInfo
    warped: bool
    stats: RunStats
    km2: float


def parse_bands(text: str | None, option: str = "--bands") -> tuple[int, ...] | None:
    """Band numbers typed as "3,2,1" (None when empty: the model card's own); ``option`` names the field in errors."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        return tuple(int(b) for b in text.split(","))
    except ValueError:
        raise ValueError(f"{option} {text!r}: give band numbers separated by commas, e.g. 3,2,1") from None


def check_bands(info: RasterInfo, bands: Sequence[int], expected: int) -> tuple[int, ...]:
    bands = tuple(int(b) for b in bands)
    if len(bands) != expected:
        raise GeoError(f"the model takes {expected} bands but {len(bands)} were chosen ({list(bands)}): "
                       f"pass --bands with {expected} band numbers, e.g. --bands 1,2,3")
    bad = [b for b in bands if not 1 <= b <= info.band_count]
    if bad:
        raise GeoError(f"{info.label} has {info.band_count} band(s); band(s) {bad} do not exist: choose bands "
                       f"1..{info.band_count} with --bands (the model needs {expected}, in its RGB order)")
    return bands


@raises_gdal_errors
def predict_raster(
    predictor: Predictor,
    raster: str | Path,
    mask_path: str | Path,
    prob_path: str | Path | None = None,
    *,
    bands: Sequence[int] | None = None,
    pixel_crs: bool = False,
    nodata: float | None = None,
    scaler: BandScaler | None = None,
    progress: ProgressCallback = None,
    cancel: CancelCallback = None,
) -> RasterPrediction:
    """Class raster (uint8, nodata 255) and optional probabilities on the raster's own grid, written atomically.

    ``nodata``: a band value to treat as nodata, for rasters that do not declare one (e.g. the black fill around
    imagery): those pixels are not segmented and stay nodata in the outputs. ``scaler``: the band scaling of the
    whole job (a batch's rasters scaled alike); default: the model card's band ranges, else fitted on this raster."""
    mask_path, prob_path = Path(mask_path), Path(prob_path) if prob_path else None
    label = describe_raster(raster, allow_pixel_crs=pixel_crs).label  # a missing or unreadable raster: said first
    with tempfile.TemporaryDirectory(dir=mask_path.parent, prefix=".mtp-") as tmp:
        if nodata is not None:
            raster = with_nodata(raster, nodata, Path(tmp) / "nodata.vrt")
        return _predict_raster(predictor, raster, label, mask_path, prob_path, Path(tmp), bands=bands,
                               pixel_crs=pixel_crs, scaler=scaler, progress=progress, cancel=cancel)


def with_nodata(raster: str | Path, nodata: float, vrt: Path) -> Path:
    """A VRT of ``raster`` whose every band has ``nodata`` as its nodata value."""
    try:
        gdal.Translate(str(vrt), str(raster), format="VRT", noData=float(nodata))
    except RuntimeError as exc:
        raise GeoError(f"cannot read {raster}: {exc}; check the file") from exc
    return vrt


def _predict_raster(predictor: Predictor, raster: str | Path, label: str, mask_path: Path, prob_path: Path | None,
                    tmp: Path, *, bands: Sequence[int] | None, pixel_crs: bool, scaler: BandScaler | None,
                    progress: ProgressCallback, cancel: CancelCallback) -> RasterPrediction:
    card = predictor.card
    info = describe_raster(raster, allow_pixel_crs=pixel_crs, label=label)
    chosen = check_bands(info, bands or card.bands, len(card.mean))
    plan = plan_read(info, None if not info.has_georeference else card.gsd_m)
    if scaler is None:
        scaler = (BandScaler.fixed(card.band_ranges) if card.band_ranges
                  else BandScaler.fit(plan.dataset, chosen, info.nodata))
    source = RasterSource(plan, chosen, scaler)
    if not info.has_georeference:
        km2_per_pixel = 0.0
    else:  # ground area: the model grid's pixel when warped, else the source's (measured in metres, any CRS)
        km2_per_pixel = (card.gsd_m**2 if plan.warped else info.pixel_size_m[0] * info.pixel_size_m[1]) / 1e6
    grid_mask = tmp / "mask.tif" if plan.warped else mask_path
    grid_prob = (tmp / "prob.tif" if plan.warped else prob_path) if prob_path else None
    grid = dict(width=plan.width, height=plan.height, geotransform=plan.geotransform, crs_wkt=plan.crs_wkt)
    with contextlib.ExitStack() as outputs:  # on any error every writer removes its temporary file
        mask_out = outputs.enter_context(
            GeoTiffWriter(grid_mask, band_count=1, dtype="uint8", nodata=CLASS_NODATA, cog=not plan.warped, **grid))
        prob_out = outputs.enter_context(
            GeoTiffWriter(grid_prob, band_count=card.num_classes - 1, dtype="uint8", cog=not plan.warped,
                          overview_resampling="AVERAGE", **grid)) if grid_prob else None
        stats = predictor.run(source, GeoTiffSink(mask_out, prob_out), want_probs=prob_out is not None,
                              progress=progress, cancel=cancel, km2_per_pixel=km2_per_pixel)
    if plan.warped:
        warp_to_grid(grid_mask, mask_path, like=info, resampling="nearest")
        if prob_path and grid_prob:
            warp_to_grid(grid_prob, prob_path, like=info, resampling="bilinear")
    return RasterPrediction(mask_path, prob_path, info, plan.warped, stats, km2_per_pixel * plan.width * plan.height)


def job_scaler(card: ModelCard, rasters: Sequence[str | Path], bands: Sequence[int] | None,
               nodata: float | None) -> BandScaler | None:
    """The band scaling of a job: the model card's ranges (those of its training data), else one stretch fitted over
    all the job's rasters, so neighbouring rasters and the shards of a batch are scaled alike; None when no raster
    can be sampled (each is then fitted on its own, and its own problem reported when it is predicted)."""
    if card.band_ranges:
        return BandScaler.fixed(card.band_ranges)
    try:
        return BandScaler.fit_files(rasters, bands or card.bands, nodata)
    except GeoError:
        return None


@dataclass(frozen=True)
class JobResult:
    raster: Path
    mask_path: Path
    vector_path: Path
    prob_path: Path | None
    buildings: int
    prediction: RasterPrediction | None  # None when the outputs already existed (skipped)


def make_out_dir(out_dir: str | Path) -> None:
    """Creates the output folder, or says in one line why it cannot."""
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GeoError(f"cannot create the output folder {out_dir}: {exc.strerror}; choose another output folder "
                       "(--out)") from exc


def output_paths(raster: str | Path, out_dir: str | Path, vector_ext: str = ".gpkg") -> tuple[Path, Path, Path]:
    stem = Path(raster).stem
    out = Path(out_dir)
    return out / f"{stem}_mask.tif", out / f"{stem}_buildings{vector_ext}", out / f"{stem}_prob.tif"


@raises_gdal_errors
def extract_buildings(
    predictor: Predictor,
    raster: str | Path,
    out_dir: str | Path,
    *,
    bands: Sequence[int] | None = None,
    probabilities: bool = False,
    min_area_m2: float = 4.0,
    simplify_m: float = 0.25,
    regularize: bool = False,
    pixel_crs: bool = False,
    skip_existing: bool = False,
    vector_ext: str = ".gpkg",
    source: str | None = None,
    nodata: float | None = None,
    scaler: BandScaler | None = None,
    progress: ProgressCallback = None,
    cancel: CancelCallback = None,
) -> JobResult:
    """Predict, vectorize, write ``NAME_mask.tif`` and ``NAME_buildings.gpkg`` (and ``NAME_prob.tif``).

    ``source``: the polygons' ``source`` attribute (the raster's file name unless given, e.g. when ``raster`` is a
    temporary cut-out of the raster the user chose). A predictor with instances gives one polygon per building, also
    where buildings touch (:mod:`mtp_core.instance_job`)."""
    if getattr(predictor, "instances", False):
        from mtp_core.instance_job import extract_building_instances

        return extract_building_instances(
            predictor, raster, out_dir, bands=bands, probabilities=probabilities, min_area_m2=min_area_m2,
            simplify_m=simplify_m, regularize=regularize, pixel_crs=pixel_crs, skip_existing=skip_existing,
            vector_ext=vector_ext, source=source, nodata=nodata, scaler=scaler, progress=progress, cancel=cancel)
    raster = Path(raster)
    mask_path, vector_path, prob_path = output_paths(raster, out_dir, vector_ext)
    if skip_existing and mask_path.exists() and vector_path.exists():
        return JobResult(raster, mask_path, vector_path, prob_path if prob_path.exists() else None, -1, None)
    make_out_dir(out_dir)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".mtp-") as tmp:
        # probabilities give each polygon its score; kept only when asked for
        probs = prob_path if probabilities else Path(tmp) / "prob.tif"
        prediction = predict_raster(predictor, raster, mask_path, probs, bands=bands, pixel_crs=pixel_crs,
                                    nodata=nodata, scaler=scaler, progress=progress, cancel=cancel)
        try:
            counts = vectorize_raster_to_file(
                mask_path, vector_path, prob_raster_path=str(probs), min_area_m2=min_area_m2, simplify_m=simplify_m,
                regularize=regularize, source=raster.name if source is None else source,
                model=predictor.card.description or predictor.card.architecture, cancel=cancel,
            )
        except BaseException:
            mask_path.unlink(missing_ok=True)  # the job's outputs exist together or not at all
            if probabilities:
                prob_path.unlink(missing_ok=True)
            raise
    return JobResult(raster, mask_path, vector_path, prob_path if probabilities else None, counts["polygons"],
                     prediction)


def progress_line(p: Progress) -> str:
    eta = "--:--" if p.eta_s is None else time_text(p.eta_s)
    km2 = f" {p.km2_per_s:.3f} km²/s" if p.km2_done else ""
    return f"{p.fraction:6.1%} {p.done}/{p.total} {p.unit} {p.rate:.1f} {p.unit}/s{km2} ETA {eta}"


def time_text(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
