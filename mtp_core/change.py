"""The main job for two dates: a before and an after raster in, ``NAME_change_mask.tif`` and ``NAME_changes.gpkg`` out.

The first raster sets the grid: its own pixels, or a warped VRT at the model's ground resolution (as ``mtp predict``
reads rasters). The second is checked against it (they must overlap on the ground, and their pixel sizes must not be
far apart: :func:`mtp_core.io.pair.check_pair`) and read through a warped VRT onto exactly that grid, so the change
detector compares the same ground in both tiles; everything streams tile by tile (:class:`TwoDateSource`), memory
stays flat in raster size, and the outputs come back on the first raster's own grid and CRS.

Polygons carry ``score`` (mean probability of change) and ground ``area_m2``/``perimeter_m``. With a segmentation
model as well, each date's building probability is predicted on the same grid and every change gets its ``kind``
from the mean probabilities over its pixels: ``other`` when neither date reaches 0.5 (a change that is not a
building's), ``modified`` when both do and differ by less than :data:`MODIFIED_MARGIN` (rebuilt, re-roofed), else
``new`` or ``demolished`` after the date where a building is more probable. Comparing the dates, rather than
thresholding each on its own, keeps a building model's false alarm on one date (a bare plot that looks like a flat
roof) from turning a new building into a modified one.
"""
from __future__ import annotations

import contextlib
import math
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import shapely
from osgeo import ogr

from mtp_core.errors import UserError
from mtp_core.inference import CLASS_NODATA, GeoTiffSink, Predictor, RasterSource, RunStats, TwoDateSource
from mtp_core.io import BandScaler, GeoTiffWriter, RasterInfo, ReadPlan, describe_raster, plan_read, warp_to_grid
from mtp_core.io.gdal_errors import raises_gdal_errors
from mtp_core.io.metres import apply_geotransform, map_to_pixel
from mtp_core.io.pair import check_pair, warp_onto
from mtp_core.io.raster import open_raster
from mtp_core.pipeline import check_bands, make_out_dir, with_nodata
from mtp_core.progress import CancelCallback, Progress, ProgressCallback
from mtp_core.tiling import TileGrid
from mtp_core.vectorize import VectorResult, vectorize_raster_to_file

KINDS = ("new", "demolished", "modified", "other")
#: suffix pairs that name the two dates of one place (``x_before.tif`` / ``x_after.tif`` -> ``x``)
DATE_SUFFIXES = (("_before", "_after"), ("_pre", "_post"), ("_t1", "_t2"), ("_old", "_new"), ("_a", "_b"),
                 ("_A", "_B"), ("-before", "-after"))
_GSD_TOLERANCE = 1.25
#: both dates show a building (mean probability >= 0.5) and their probabilities differ by less: "modified"
MODIFIED_MARGIN = 0.1


def pair_name(before: str | Path, after: str | Path) -> str:
    """The output name of a pair: the shared file name (``A/x.tif``, ``B/x.tif``), the name without its date suffixes
    (``x_before.tif``, ``x_after.tif``), else ``BEFORE_vs_AFTER``."""
    b, a = Path(before).stem, Path(after).stem
    if b == a:
        return b
    for sb, sa in DATE_SUFFIXES:
        if b.endswith(sb) and a.endswith(sa) and b[: -len(sb)] == a[: -len(sa)] and b[: -len(sb)]:
            return b[: -len(sb)]
    return f"{b}_vs_{a}"


def output_paths(name: str, out_dir: str | Path, vector_ext: str = ".gpkg") -> tuple[Path, Path, Path]:
    """``NAME_change_mask.tif``, ``NAME_changes.gpkg`` (or another vector extension), ``NAME_change_prob.tif``."""
    if not name or re.search(r"[\\/\0]", name):
        raise UserError(f"output name {name!r} is not a file name: give a name without slashes")
    out = Path(out_dir)
    return out / f"{name}_change_mask.tif", out / f"{name}_changes{vector_ext}", out / f"{name}_change_prob.tif"


@dataclass(frozen=True)
class ChangeResult:
    """What a pair gave: its outputs, the number of change polygons (-1 when skipped), their kinds (with a
    segmentation model), the share of the first raster the second covers, and the change model's run."""

    before: Path
    after: Path
    mask_path: Path
    vector_path: Path
    prob_path: Path | None
    changes: int
    kinds: dict[str, int] | None
    overlap: float
    stats: RunStats | None
    km2: float = 0.0


class _Stages:
    """One progress bar over several tiled runs on the same grid (the change model, then each date's buildings)."""

    def __init__(self, progress: ProgressCallback, totals: Sequence[int]) -> None:
        self.progress, self.totals, self.start = progress, list(totals), time.perf_counter()

    def stage(self, index: int) -> ProgressCallback:
        if self.progress is None:
            return None
        offset, total = sum(self.totals[:index]), sum(self.totals)

        def report(p: Progress) -> None:
            self.progress(Progress(offset + p.done, total, time.perf_counter() - self.start, p.km2_done))

        return report


def _scaler(predictor: Predictor, plan: ReadPlan, bands: Sequence[int], info: RasterInfo) -> BandScaler:
    """The model card's band ranges, else one stretch per date (each date's radiometry is its own)."""
    if predictor.card.band_ranges:
        return BandScaler.fixed(predictor.card.band_ranges)
    return BandScaler.fit(plan.dataset, bands, info.nodata)


def _run(predictor: Predictor, source, path: Path, grid: ReadPlan, probs: Path | None, progress: ProgressCallback,
         cancel: CancelCallback, km2_per_pixel: float = 0.0, cog: tuple[bool, bool] = (False, False)) -> RunStats:
    """One tiled run written as a class GeoTIFF (and probabilities) on ``grid``; ``cog`` (mask, probabilities) for
    final outputs."""
    spec = dict(width=grid.width, height=grid.height, geotransform=grid.geotransform, crs_wkt=grid.crs_wkt)
    with contextlib.ExitStack() as outputs:
        mask = outputs.enter_context(GeoTiffWriter(path, band_count=1, dtype="uint8", nodata=CLASS_NODATA,
                                                   cog=cog[0], **spec))
        prob = None if probs is None else outputs.enter_context(
            GeoTiffWriter(probs, band_count=predictor.card.num_classes - 1, dtype="uint8", cog=cog[1],
                          overview_resampling="AVERAGE", **spec))
        return predictor.run(source, GeoTiffSink(mask, prob), want_probs=prob is not None, progress=progress,
                             cancel=cancel, km2_per_pixel=km2_per_pixel)


@raises_gdal_errors
def detect_changes(
    predictor: Predictor,
    before: str | Path,
    after: str | Path,
    out_dir: str | Path,
    *,
    name: str | None = None,
    buildings: Predictor | None = None,
    bands: Sequence[int] | None = None,
    probabilities: bool = False,
    min_area_m2: float = 4.0,
    simplify_m: float = 0.25,
    regularize: bool = False,
    pixel_crs: bool = False,
    nodata: float | None = None,
    skip_existing: bool = False,
    vector_ext: str = ".gpkg",
    source: str | None = None,
    progress: ProgressCallback = None,
    cancel: CancelCallback = None,
) -> ChangeResult:
    """Change mask and change polygons of one pair, written atomically into ``out_dir`` (see the module docstring).

    ``buildings``: a segmentation predictor of the same ground resolution, for the ``kind`` of each change.
    ``bands``: the bands of both rasters fed as R, G, B (default the card's). ``nodata``: a value to treat as nodata
    in both rasters where they declare none. ``probabilities`` keeps ``NAME_change_prob.tif`` (P(change) x 255).
    ``source``: the polygons' ``source`` attribute (default ``BEFORE -> AFTER`` with the files' names).
    """
    if predictor.num_inputs != 2:
        raise UserError(f"{predictor.card.description or predictor.card.architecture} is a segmentation model, not a "
                        "change detector: give a change-detection checkpoint (trained with a SiamEncoderDecoder "
                        "config) or the demo change model")
    if buildings is not None and buildings.num_inputs != 1:
        raise UserError("the building model must be a segmentation model (one image in), not a change detector")
    before, after = Path(before), Path(after)
    mask_path, vector_path, prob_path = output_paths(name or pair_name(before, after), out_dir, vector_ext)
    if skip_existing and mask_path.exists() and vector_path.exists():
        return ChangeResult(before, after, mask_path, vector_path, prob_path if prob_path.exists() else None, -1,
                            None, math.nan, None)
    labels = [describe_raster(p, allow_pixel_crs=pixel_crs).label for p in (before, after)]  # missing files first
    make_out_dir(out_dir)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".mtp-") as tmp_dir:
        tmp = Path(tmp_dir)
        sources = [with_nodata(p, nodata, tmp / f"nodata{i}.vrt") if nodata is not None else p
                   for i, p in enumerate((before, after))]
        infos = [describe_raster(p, allow_pixel_crs=pixel_crs, label=label) for p, label in zip(sources, labels)]
        try:
            return _detect(predictor, buildings, infos, before, after, mask_path, vector_path,
                           prob_path if probabilities else None, tmp, bands, min_area_m2, simplify_m, regularize,
                           source or f"{before.name} -> {after.name}", progress, cancel)
        except BaseException:
            for path in (mask_path, prob_path if probabilities else None):
                if path is not None:
                    path.unlink(missing_ok=True)  # the pair's outputs exist together or not at all
            raise


def _detect(predictor: Predictor, buildings: Predictor | None, infos: list[RasterInfo], before: Path, after: Path,
            mask_path: Path, vector_path: Path, prob_path: Path | None, tmp: Path, bands: Sequence[int] | None,
            min_area_m2: float, simplify_m: float, regularize: bool, source: str, progress: ProgressCallback,
            cancel: CancelCallback) -> ChangeResult:
    card = predictor.card
    info_b, info_a = infos
    pair = check_pair(info_b, info_a)
    chosen = check_bands(info_b, bands or card.bands, len(card.mean))
    check_bands(info_a, chosen, len(card.mean))
    grid = plan_read(info_b, card.gsd_m if info_b.has_georeference else None)
    plan_a = warp_onto(info_a, grid)
    scalers = [_scaler(predictor, plan, chosen, info) for plan, info in ((grid, info_b), (plan_a, info_a))]
    tiles = TwoDateSource(RasterSource(grid, chosen, scalers[0]), RasterSource(plan_a, chosen, scalers[1]))
    if buildings is not None:
        ratio = buildings.card.gsd_m / card.gsd_m
        if not 1 / _GSD_TOLERANCE <= ratio <= _GSD_TOLERANCE:
            raise UserError(f"the building model works at {buildings.card.gsd_m} m per pixel, the change model at "
                            f"{card.gsd_m} m: give models of one ground resolution")
        check_bands(info_b, chosen, len(buildings.card.mean))
    km2_per_pixel = 0.0
    if info_b.has_georeference:
        km2_per_pixel = (card.gsd_m**2 if grid.warped else info_b.pixel_size_m[0] * info_b.pixel_size_m[1]) / 1e6
    totals = [len(TileGrid(grid.height, grid.width, card.tile, predictor.overlap))]
    if buildings is not None:
        totals += [len(TileGrid(grid.height, grid.width, buildings.card.tile, buildings.overlap))] * 2
    stages = _Stages(progress, totals)

    on_grid = {"mask": tmp / "change_mask.tif" if grid.warped else mask_path,
               "prob": tmp / "change_prob.tif" if grid.warped or prob_path is None else prob_path}
    stats = _run(predictor, tiles, on_grid["mask"], grid, on_grid["prob"], stages.stage(0), cancel, km2_per_pixel,
                 cog=(not grid.warped, not grid.warped and prob_path is not None))
    building_probs: list[Path] = []
    if buildings is not None:
        for i, plan in enumerate((grid, plan_a)):
            scaler = _scaler(buildings, plan, chosen, infos[i]) if buildings.card.band_ranges else scalers[i]
            path = tmp / f"buildings_{i}_prob.tif"
            _run(buildings, RasterSource(plan, chosen, scaler), tmp / f"buildings_{i}.tif", grid, path,
                 stages.stage(1 + i), cancel)
            building_probs.append(path)
    probs = on_grid["prob"]
    if grid.warped:
        warp_to_grid(on_grid["mask"], mask_path, like=info_b, resampling="nearest")
        probs = prob_path or tmp / "change_prob_grid.tif"
        warp_to_grid(on_grid["prob"], probs, like=info_b, resampling="bilinear", cog=prob_path is not None)
        building_probs = [warp_to_grid(p, tmp / f"{p.stem}_own.tif", like=info_b, resampling="bilinear", cog=False)
                          for p in building_probs]
    kinds = None
    if buildings is not None:
        classes = buildings.card.classes
        kinds = _KindCounter(building_probs, classes.index("building") if "building" in classes else 1)
    counts = vectorize_raster_to_file(
        str(mask_path), vector_path, layer_name="changes", classes=[1], prob_raster_path=str(probs),
        min_area_m2=min_area_m2, simplify_m=simplify_m, regularize=regularize, source=source,
        model=card.description or card.architecture, cancel=cancel,
        extra_fields={"kind": ogr.OFTString} if kinds else None, annotate=kinds)
    return ChangeResult(before, after, mask_path, vector_path, prob_path, counts["polygons"],
                        kinds.counts if kinds else None, pair.overlap, stats, km2_per_pixel * grid.width * grid.height)


class _KindCounter:
    """``annotate`` for the vectorizer: the kind of each change polygon from the two dates' building probabilities
    (uint8 P x 255 rasters as the Predictor writes them, class ``band``; read window by window around each polygon),
    counted as it goes."""

    def __init__(self, probabilities: Sequence[Path], band: int = 1) -> None:
        self.datasets = [open_raster(str(p)) for p in probabilities]
        self.band = band
        self.gt = self.datasets[0].GetGeoTransform()
        self.counts = dict.fromkeys(KINDS, 0)

    def __call__(self, chunk: VectorResult) -> dict[str, list]:
        kinds = [self.kind(geom) for geom in chunk.geometries]
        for kind in kinds:
            self.counts[kind] += 1
        return {"kind": kinds}

    def kind(self, polygon: shapely.Geometry) -> str:
        xmin, ymin, xmax, ymax = polygon.bounds
        corners = [map_to_pixel(self.gt, x, y) for x in (xmin, xmax) for y in (ymin, ymax)]
        ds = self.datasets[0]
        c0 = max(int(math.floor(min(c for c, _ in corners))), 0)
        r0 = max(int(math.floor(min(r for _, r in corners))), 0)
        c1 = min(int(math.ceil(max(c for c, _ in corners))), ds.RasterXSize)
        r1 = min(int(math.ceil(max(r for _, r in corners))), ds.RasterYSize)
        if c1 <= c0 or r1 <= r0:
            return "other"
        cols, rows = np.meshgrid(np.arange(c0, c1) + 0.5, np.arange(r0, r1) + 0.5)
        xs, ys = apply_geotransform(self.gt, cols, rows)
        inside = shapely.contains_xy(polygon, xs, ys)
        if not inside.any():
            inside[:] = True
        first, second = (float(d.GetRasterBand(self.band).ReadAsArray(c0, r0, c1 - c0, r1 - r0)[inside].mean()) / 255
                          for d in self.datasets)
        if max(first, second) < 0.5:
            return "other"
        if min(first, second) >= 0.5 and abs(second - first) < MODIFIED_MARGIN:
            return "modified"
        return "new" if second > first else "demolished"


def describe_kinds(kinds: dict[str, int] | None) -> str:
    """``3 new, 2 demolished`` (empty counts left out)."""
    return ", ".join(f"{n} {k}" for k, n in (kinds or {}).items() if n)

