"""The main job with a segmentor with instances: the same raster in, the same files out, one polygon per building.

:func:`mtp_core.pipeline.extract_buildings` hands an :class:`~mtp_core.inference.InstancePredictor` here. The class
mask (and the probabilities) are written exactly as the semantic job writes them. Beside them, on the model grid and
in temporary files, go the instance values (one number per building, :mod:`mtp_core.vectorize.instances`) and the
instance scores; both are brought back onto the raster's grid (nearest, so numbers stay whole) when the raster was
read through a warped VRT, and the streamed vectorizer turns them into polygons: one per building, touching
neighbours included, each with its class, its instance score (the mean semantic probability for a building no
instance explains) and the same cleaning, simplification, regularization and measures as every other polygon.
Memory stays flat in raster size: the instance rows stream like the class rows.
"""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Sequence

from mtp_core.inference import CLASS_NODATA, InstanceGeoTiffSink, InstancePredictor, RasterSource
from mtp_core.io import BandScaler, GeoTiffWriter, describe_raster, plan_read, warp_to_grid
from mtp_core.io.gdal_errors import raises_gdal_errors
from mtp_core.pipeline import JobResult, RasterPrediction, check_bands, make_out_dir, output_paths, with_nodata
from mtp_core.progress import CancelCallback, ProgressCallback
from mtp_core.vectorize import vectorize_raster_to_file
from mtp_core.vectorize.instances import NODATA_VALUE, class_of


@raises_gdal_errors
def extract_building_instances(
    predictor: InstancePredictor,
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
    """:func:`~mtp_core.pipeline.extract_buildings` (same arguments, same files) with one polygon per building."""
    raster = Path(raster)
    mask_path, vector_path, prob_path = output_paths(raster, out_dir, vector_ext)
    if skip_existing and mask_path.exists() and vector_path.exists():
        return JobResult(raster, mask_path, vector_path, prob_path if prob_path.exists() else None, -1, None)
    make_out_dir(out_dir)
    label = describe_raster(raster, allow_pixel_crs=pixel_crs).label
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".mtp-") as tmp:
        tmp_dir = Path(tmp)
        read = with_nodata(raster, nodata, tmp_dir / "nodata.vrt") if nodata is not None else raster
        values, scores = tmp_dir / "instances.tif", tmp_dir / "scores.tif"
        prediction = _predict(predictor, read, label, mask_path, prob_path if probabilities else None, values, scores,
                              tmp_dir, bands=bands, pixel_crs=pixel_crs, scaler=scaler, progress=progress,
                              cancel=cancel)
        try:
            counts = vectorize_raster_to_file(
                str(values), vector_path, prob_raster_path=str(scores), min_area_m2=min_area_m2,
                simplify_m=simplify_m, regularize=regularize, source=raster.name if source is None else source,
                model=predictor.card.description or predictor.card.architecture, cancel=cancel, class_of=class_of)
        except BaseException:
            mask_path.unlink(missing_ok=True)  # the job's outputs exist together or not at all
            if probabilities:
                prob_path.unlink(missing_ok=True)
            raise
    return JobResult(raster, mask_path, vector_path, prob_path if probabilities else None, counts["polygons"],
                     prediction)


def _predict(predictor: InstancePredictor, raster: str | Path, label: str, mask_path: Path, prob_path: Path | None,
             values_path: Path, scores_path: Path, tmp: Path, *, bands: Sequence[int] | None, pixel_crs: bool,
             scaler: BandScaler | None, progress: ProgressCallback, cancel: CancelCallback) -> RasterPrediction:
    """The class raster (and probabilities) on the raster's grid, as the semantic job writes them, and the instance
    values and scores on the same grid (``values_path``, ``scores_path``)."""
    card = predictor.card
    info = describe_raster(raster, allow_pixel_crs=pixel_crs, label=label)
    chosen = check_bands(info, bands or card.bands, len(card.mean))
    plan = plan_read(info, None if not info.has_georeference else card.gsd_m)
    if scaler is None:
        scaler = (BandScaler.fixed(card.band_ranges) if card.band_ranges
                  else BandScaler.fit(plan.dataset, chosen, info.nodata))
    if not info.has_georeference:
        km2_per_pixel = 0.0
    else:
        km2_per_pixel = (card.gsd_m**2 if plan.warped else info.pixel_size_m[0] * info.pixel_size_m[1]) / 1e6
    on_grid = {path: (tmp / f"grid_{path.name}" if plan.warped else path)
               for path in (mask_path, values_path, scores_path) + ((prob_path,) if prob_path else ())}
    grid = dict(width=plan.width, height=plan.height, geotransform=plan.geotransform, crs_wkt=plan.crs_wkt)
    with contextlib.ExitStack() as outputs:  # on any error every writer removes its temporary file
        def writer(path: Path, **options: object) -> GeoTiffWriter:
            return outputs.enter_context(GeoTiffWriter(on_grid[path], **grid, **options))  # type: ignore[arg-type]

        sink = InstanceGeoTiffSink(
            writer(mask_path, band_count=1, dtype="uint8", nodata=CLASS_NODATA, cog=not plan.warped),
            writer(prob_path, band_count=card.num_classes - 1, dtype="uint8", cog=not plan.warped,
                   overview_resampling="AVERAGE") if prob_path else None,
            writer(values_path, band_count=1, dtype="int32", nodata=NODATA_VALUE),
            writer(scores_path, band_count=1, dtype="uint8"))
        stats = predictor.run(RasterSource(plan, chosen, scaler), sink, want_probs=prob_path is not None,
                              progress=progress, cancel=cancel, km2_per_pixel=km2_per_pixel)
    if plan.warped:
        warp_to_grid(on_grid[mask_path], mask_path, like=info, resampling="nearest")
        if prob_path:
            warp_to_grid(on_grid[prob_path], prob_path, like=info, resampling="bilinear")
        for path in (values_path, scores_path):  # nearest: a building's number and score stay its own
            warp_to_grid(on_grid[path], path, like=info, resampling="nearest", cog=False)
    return RasterPrediction(mask_path, prob_path, info, plan.warped, stats, km2_per_pixel * plan.width * plan.height)
