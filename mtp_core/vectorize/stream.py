"""Class raster -> clean, attributed polygons (step 4 of the main job in DESIGN.md), streamed.

The stages: :mod:`.polygonize` (GDAL polygons band by band, stitched across band borders), :mod:`.clean` (small
regions and holes), :mod:`.simplify` (coverage simplification), :mod:`.regularize` (right angles); areas and lengths
in ground metres for any CRS (:mod:`mtp_core.io.metres`); rotated geotransforms are mapped as they are. Polygons are
finished and handed out (written, with :func:`vectorize_raster_to_file`) band by band as soon as nothing below can
change them (:class:`_Run`), in reading order, so memory follows the raster's width, not its height, and the output is
identical whatever the band height.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import shapely
from osgeo import gdal, ogr
from shapely import Polygon

from mtp_core.errors import GeoError
from mtp_core.io.gdal_errors import raises_gdal_errors
from mtp_core.io.metres import PixelMeasure, apply_geotransform
from mtp_core.io.raster import dataset_name, open_raster
from mtp_core.io.vector import VectorWriter
from mtp_core.progress import CancelCallback, Cancelled, Progress, ProgressCallback
from mtp_core.vectorize.clean import components, fill_small_holes, meeting_pairs, shares_edge
from mtp_core.vectorize.polygonize import Polys, Rows, Stitcher, polygonize_block, selected
from mtp_core.vectorize.regularize import REG_REACH_PX, overlap_others, regularize
from mtp_core.vectorize.simplify import simplify

_BLOCK_PIXELS = 2**21    # pixels per band when block_rows is not given (about 60 MB of working arrays) ...
_MIN_BLOCK_ROWS, _MAX_BLOCK_ROWS = 64, 1024  # ... within these rows



#: The attributes of every polygon, with their OGR field types (what ``mtp predict`` writes).
FIELDS = {"id": ogr.OFTInteger, "class": ogr.OFTInteger, "score": ogr.OFTReal, "area_m2": ogr.OFTReal,
          "perimeter_m": ogr.OFTReal, "source": ogr.OFTString, "model": ogr.OFTString}


class VectorizeCancelled(Cancelled):
    """The caller's ``cancel()`` returned True; nothing was returned (a :class:`mtp_core.progress.Cancelled`)."""


@dataclass
class VectorResult:
    """Polygons in the raster CRS and their attributes (one list per field, in polygon order).

    ``counts``: ``pieces`` (polygons GDAL made, block by block), ``stitched`` (output polygons joined across block
    borders), ``small_dropped``, ``holes_filled``, ``regularized``, ``reverted`` and ``polygons`` (the output).
    """

    geometries: list[Polygon]
    attributes: dict[str, list]
    crs_wkt: str
    counts: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.geometries)


@dataclass(frozen=True)
class _Options:
    whole: tuple[tuple[float, ...], int, int] | None
    classes: frozenset[int] | None
    nodata: float | None
    block_rows: int | None
    min_area_m2: float
    simplify_m: float
    regularize: bool
    source: str
    model: str
    progress: ProgressCallback
    cancel: CancelCallback
    class_of: Callable[[np.ndarray], np.ndarray] | None = None


# ----------------------------------------------------------------------------------------------------------------
# Public entry points


def vectorize_raster(class_raster_path: str, *, classes: Sequence[int] | None = None, block_rows: int | None = None,
                     prob_raster_path: str | None = None, min_area_m2: float = 4.0, simplify_m: float = 0.25,
                     regularize: bool = False, source: str = "", model: str = "", progress: ProgressCallback = None,
                     cancel: CancelCallback = None) -> VectorResult:
    """Polygons of the class raster's band 1 (all non-zero, non-nodata values unless ``classes`` is given), in memory.

    ``prob_raster_path``: uint8 probabilities (0-255) of the same size, as ``mtp predict`` writes them: band ``c`` is
    the probability of class ``c`` (background is not stored); a one-band raster scores every class. ``score`` is
    its mean over each polygon's pixels. ``progress`` gets a :class:`~mtp_core.progress.Progress` in rows after each
    band;
    ``cancel()`` is checked before each band and between the cleaning steps (:class:`VectorizeCancelled`).
    For large rasters use :func:`vectorize_raster_to_file`, which holds only the polygons not yet written.
    """
    rows, gt, crs_wkt = _open_class_raster(class_raster_path, prob_raster_path)
    opts = _options(classes, rows.nodata, block_rows, min_area_m2, simplify_m, regularize, source, model, progress,
                    cancel)
    return _vectorize(rows, gt, crs_wkt, opts)


def vectorize_raster_to_file(class_raster_path: str, output_path: str | Path, *, layer_name: str = "buildings",
                             classes: Sequence[int] | None = None, block_rows: int | None = None,
                             prob_raster_path: str | None = None, min_area_m2: float = 4.0, simplify_m: float = 0.25,
                             regularize: bool = False, source: str = "", model: str = "",
                             progress: ProgressCallback = None, cancel: CancelCallback = None,
                             class_of: Callable[[np.ndarray], np.ndarray] | None = None,
                             extra_fields: Mapping[str, int] | None = None,
                             annotate: Callable[[VectorResult], Mapping[str, list]] | None = None) -> dict[str, int]:
    """:func:`vectorize_raster` streamed into a vector file (.gpkg, .geojson, .shp) in the raster's CRS: polygons are
    written as soon as they are final, the file appears only when complete. Returns the counts (see
    :class:`VectorResult`). ``class_of``: each polygon's ``class`` from its raster value (default: the value), e.g.
    for instance values (:mod:`mtp_core.vectorize.instances`), where every building has its own value.
    ``extra_fields`` (name -> OGR type) are filled for each chunk of final polygons by ``annotate(chunk)``, one value
    per polygon (e.g. the kind of a change, from other rasters)."""
    rows, gt, crs_wkt = _open_class_raster(class_raster_path, prob_raster_path)
    opts = _options(classes, rows.nodata, block_rows, min_area_m2, simplify_m, regularize, source, model, progress,
                    cancel, class_of=class_of)
    run = _Run(rows, gt, crs_wkt, opts)
    extra = dict(extra_fields or {})
    if extra and annotate is None:
        raise ValueError("extra_fields need an annotate callback that fills them")
    widths = {"source": max(len(source.encode()), 1), "model": max(len(model.encode()), 1)}
    widths.update({name: 32 for name, kind in extra.items() if kind == ogr.OFTString})
    with VectorWriter(output_path, {**FIELDS, **extra}, crs_wkt, ogr.wkbPolygon, layer_name, text_widths=widths) \
            as writer:
        for chunk in run.chunks():
            attributes = dict(chunk.attributes)
            if annotate is not None:
                attributes.update(annotate(chunk))
            writer.write(chunk.geometries, attributes)
    return dict(run.counts)


@raises_gdal_errors
def _open_class_raster(class_raster_path: str, prob_raster_path: str | None) -> tuple["_RasterRows", tuple, str]:
    ds = open_raster(dataset_name(class_raster_path))
    band = ds.GetRasterBand(1)
    if gdal.GetDataTypeName(band.DataType).startswith(("Float", "CFloat")):
        raise GeoError(f"{class_raster_path}: the class raster must have an integer data type (class ids); a "
                       "probability raster is vectorized after thresholding it")
    prob_ds = None
    if prob_raster_path is not None:
        prob_ds = open_raster(dataset_name(prob_raster_path))
        if (prob_ds.RasterXSize, prob_ds.RasterYSize) != (ds.RasterXSize, ds.RasterYSize):
            raise GeoError(f"{prob_raster_path} is {prob_ds.RasterXSize}x{prob_ds.RasterYSize}, the class raster "
                           f"{ds.RasterXSize}x{ds.RasterYSize}: give the probabilities written with this mask")
    return _RasterRows(ds, prob_ds), ds.GetGeoTransform(), ds.GetProjection()


def vectorize_array(mask: np.ndarray, geotransform: Sequence[float], crs_wkt: str, *, prob: np.ndarray | None = None,
                    nodata: int | None = None, classes: Sequence[int] | None = None, block_rows: int | None = None,
                    min_area_m2: float = 4.0, simplify_m: float = 0.25, regularize: bool = False, source: str = "",
                    model: str = "", progress: ProgressCallback = None, cancel: CancelCallback = None,
                    whole: tuple[Sequence[float], int, int] | None = None,
                    class_of: Callable[[np.ndarray], np.ndarray] | None = None) -> VectorResult:
    """:func:`vectorize_raster` for an in-memory class mask (H, W), e.g. a window around a click.

    ``prob``: (H, W) probabilities of every class, or (K, H, W) with plane ``c`` for class ``c`` (background
    included, as ``Predictor.predict_array`` returns them); uint8 0-255 or float 0-1, quantized to 8 bits as in a
    file, so both paths score alike. ``whole``: the grid (geotransform, width, height) of the raster ``mask`` is a
    window of, so metres are measured exactly as for that raster (:class:`~mtp_core.io.metres.PixelMeasure`).
    ``class_of``: as in :func:`vectorize_raster_to_file`.
    """
    if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer) and mask.dtype != bool:
        raise ValueError(f"mask must be a 2-D integer array, got {mask.dtype} {mask.shape}")
    opts = _options(classes, nodata, block_rows, min_area_m2, simplify_m, regularize, source, model, progress, cancel,
                    whole, class_of)
    return _vectorize(_ArrayRows(mask, prob), tuple(geotransform), crs_wkt, opts)


def _options(classes: Sequence[int] | None, nodata: float | None, block_rows: int | None, min_area_m2: float,
             simplify_m: float, regularize: bool, source: str, model: str, progress: ProgressCallback,
             cancel: CancelCallback, whole: tuple[Sequence[float], int, int] | None = None,
             class_of: Callable[[np.ndarray], np.ndarray] | None = None) -> _Options:
    if block_rows is not None and block_rows < 1:
        raise ValueError(f"block_rows must be at least 1, got {block_rows}")
    if min_area_m2 < 0 or simplify_m < 0:
        raise ValueError("min_area_m2 and simplify_m must not be negative")
    grid = None if whole is None else (tuple(float(v) for v in whole[0]), int(whole[1]), int(whole[2]))
    return _Options(grid, None if classes is None else frozenset(int(c) for c in classes), nodata, block_rows,
                    float(min_area_m2), float(simplify_m), bool(regularize), source, model, progress, cancel, class_of)


class _RasterRows:
    def __init__(self, ds: gdal.Dataset, prob_ds: gdal.Dataset | None) -> None:
        self._dataset = ds  # the band needs its dataset alive
        self._band, self._prob = ds.GetRasterBand(1), prob_ds
        self.nodata = self._band.GetNoDataValue()
        self.height, self.width = ds.RasterYSize, ds.RasterXSize
        self.has_prob = prob_ds is not None

    def classes(self, row0: int, rows: int) -> np.ndarray:
        values = self._band.ReadAsArray(0, row0, self.width, rows)
        self._band.FlushCache()  # each row is read once: GDAL's block cache would only hold a copy of the raster
        return values

    def prob(self, row0: int, rows: int, cls: int) -> np.ndarray:
        count = self._prob.RasterCount
        band = 1 if count == 1 else cls
        if not 1 <= band <= count:
            raise ValueError(f"class {cls} has no band in the {count}-band probability raster")
        prob_band = self._prob.GetRasterBand(band)
        values = prob_band.ReadAsArray(0, row0, self.width, rows, buf_type=gdal.GDT_Byte)
        prob_band.FlushCache()
        return values


class _ArrayRows:
    def __init__(self, mask: np.ndarray, prob: np.ndarray | None) -> None:
        self._mask = mask
        self.height, self.width = mask.shape
        if prob is not None:
            prob = prob[None] if prob.ndim == 2 else prob
            if prob.shape[1:] != mask.shape:
                raise ValueError(f"prob {prob.shape} does not match the mask {mask.shape}")
            if prob.dtype != np.uint8:
                prob = np.rint(np.clip(prob, 0.0, 1.0) * 255).astype(np.uint8)
        self._prob = prob
        self.has_prob = prob is not None

    def classes(self, row0: int, rows: int) -> np.ndarray:
        return self._mask[row0 : row0 + rows]

    def prob(self, row0: int, rows: int, cls: int) -> np.ndarray:
        plane = 0 if len(self._prob) == 1 else cls
        if not 0 <= plane < len(self._prob):
            raise ValueError(f"class {cls} has no plane in the {len(self._prob)}-plane probabilities")
        return self._prob[plane, row0 : row0 + rows]


# ----------------------------------------------------------------------------------------------------------------
# The shared path: one streamed run


@raises_gdal_errors
def _vectorize(rows: Rows, geotransform: Sequence[float], crs_wkt: str, opts: _Options) -> VectorResult:
    """Every chunk of a run joined into one result (for callers that want the polygons in memory)."""
    run = _Run(rows, geotransform, crs_wkt, opts)
    chunks = list(run.chunks())
    attributes = {name: [v for chunk in chunks for v in chunk.attributes[name]] for name in FIELDS}
    return VectorResult([g for chunk in chunks for g in chunk.geometries], attributes, crs_wkt, dict(run.counts))


def _check_cancel(cancel: CancelCallback) -> None:
    if cancel is not None and cancel():
        raise VectorizeCancelled("vectorization cancelled")


class _Run:
    """A class raster's polygons, produced band by band and handed out in reading order as soon as they are final.

    A region is *closed* when no piece of it touches the last band's bottom border, and *final* (simplified,
    regularized, measured) once no polygon still to come can interact with it: polygons interact only when their
    bounding boxes meet (grown by twice the reach of a regularized outline when regularizing), so a closed polygon
    waits while its group of meeting boxes includes an open region or a box that could meet the next band. Final
    polygons wait until no polygon still to come can come before them in reading order. Memory therefore follows the
    raster's width and the size of regions, not its height, and the output is the same whatever ``block_rows`` is.
    """

    def __init__(self, rows: Rows, geotransform: Sequence[float], crs_wkt: str, opts: _Options) -> None:
        self.rows, self.gt, self.crs_wkt, self.opts = rows, tuple(geotransform), crs_wkt, opts
        self.measure = PixelMeasure(geotransform, crs_wkt, rows.width, rows.height, opts.whole)
        self.reach = 2 * REG_REACH_PX if opts.regularize else 0.0
        self.counts = dict.fromkeys(("pieces", "stitched", "small_dropped", "holes_filled", "regularized",
                                     "reverted", "polygons"), 0)

    def chunks(self) -> Iterator[VectorResult]:
        """Polygons with their attributes (``id`` counting on from chunk to chunk), in reading order."""
        rows, opts = self.rows, self.opts
        start = time.perf_counter()
        stitcher = Stitcher()
        waiting = Polys.empty()
        in_order = _InOrder()
        block_rows = opts.block_rows or max(_MIN_BLOCK_ROWS, min(_MAX_BLOCK_ROWS, _BLOCK_PIXELS // rows.width))
        for row0 in range(0, rows.height, block_rows):
            _check_cancel(opts.cancel)
            values = rows.classes(row0, min(block_rows, rows.height - row0))
            keep = selected(values, opts.classes, opts.nodata)
            closed = stitcher.add(polygonize_block(values, keep, row0, rows), values, keep, row0)
            bottom = row0 + len(values)
            waiting = Polys.concat([waiting, self._clean(closed)])
            open_boxes = stitcher.open_boxes()
            ready = self._ready(waiting, open_boxes, bottom)
            in_order.add(self._finish(waiting.take(ready)))
            waiting = waiting.take(~ready)
            limit = min([bottom, *open_boxes[:, 1], *shapely.bounds(waiting.polys).reshape(-1, 4)[:, 1]])
            yield from self._release(in_order, limit)
            if opts.progress is not None:
                opts.progress(Progress(bottom, rows.height, time.perf_counter() - start, unit="rows"))
        waiting = Polys.concat([waiting, self._clean(stitcher.close())])
        in_order.add(self._finish(waiting))
        yield from self._release(in_order, math.inf)
        self.counts["pieces"], self.counts["stitched"] = stitcher.pieces, stitcher.stitched

    def _clean(self, closed: Polys) -> Polys:
        """Closed regions without those under the minimum area, and without their small holes."""
        big = self.measure.area_m2(closed.polys) >= self.opts.min_area_m2
        closed = closed.take(big)
        closed.polys, filled = fill_small_holes(closed.polys, self.measure, self.opts.min_area_m2)
        self.counts["small_dropped"] += int((~big).sum())
        self.counts["holes_filled"] += filled
        return closed

    def _ready(self, waiting: Polys, open_boxes: np.ndarray, bottom: int) -> np.ndarray:
        """Which waiting polygons can be finished: their group of meeting boxes holds no open region and no box that
        could meet the next band."""
        boxes = np.concatenate([shapely.bounds(waiting.polys).reshape(-1, 4), open_boxes])
        blocked = np.r_[boxes[: len(waiting), 3] + self.reach >= bottom, np.ones(len(open_boxes), bool)]
        group = components(len(boxes), meeting_pairs(boxes, self.reach))
        return ~np.isin(group[: len(waiting)], group[blocked])

    def _finish(self, polys: Polys) -> "_Finished":
        """Simplified (and regularized) outlines of whole groups of meeting boxes, measured, on the map."""
        _check_cancel(self.opts.cancel)
        raw = polys.polys
        near = meeting_pairs(shapely.bounds(raw).reshape(-1, 4), self.reach)
        shared = shares_edge(raw, near)
        out = simplify(raw, near, shared, self.measure.px_m, self.opts.simplify_m) \
            if self.opts.simplify_m > 0 and len(raw) else raw
        candidates = np.flatnonzero(~shared)
        if self.opts.regularize and len(candidates):
            regular, ok = regularize(raw[candidates], self.measure.px_m)
            ok[ok] = ~overlap_others(regular[ok], candidates[ok], out)
            out = out.copy()
            out[candidates[ok]] = regular[ok]
            self.counts["regularized"] += int(ok.sum())
            self.counts["reverted"] += int((~ok).sum())
        centre = shapely.get_coordinates(shapely.centroid(raw)).reshape(-1, 2)
        score = polys.sums / (255.0 * np.maximum(polys.counts, 1))
        score[polys.counts == 0] = np.nan
        if not self.rows.has_prob:
            score[:] = np.nan
        return _Finished(
            key=(centre[:, 1], centre[:, 0], polys.cls, shapely.area(raw), shapely.to_wkb(raw)),
            geoms=shapely.orient_polygons(to_map(out, self.gt), exterior_cw=False) if len(out) else out,
            cls=polys.cls, score=score, area_m2=self.measure.area_m2(out), perimeter_m=self.measure.perimeter_m(out))

    def _release(self, in_order: "_InOrder", limit: float) -> Iterator[VectorResult]:
        done = in_order.pop_before(limit)
        if not len(done.geoms):
            return
        first = self.counts["polygons"] + 1
        self.counts["polygons"] += len(done.geoms)
        attributes = {
            "id": list(range(first, first + len(done.geoms))),
            "class": [int(c) for c in (done.cls if self.opts.class_of is None else self.opts.class_of(done.cls))],
            "score": [None if math.isnan(v) else float(v) for v in done.score],
            "area_m2": [float(a) for a in done.area_m2],
            "perimeter_m": [float(p) for p in done.perimeter_m],
            "source": [self.opts.source] * len(done.geoms),
            "model": [self.opts.model] * len(done.geoms),
        }
        yield VectorResult(list(done.geoms), attributes, self.crs_wkt)


@dataclass
class _Finished:
    """Final polygons on the map with their attributes and reading-order key (centroid row, column, class, area and
    WKB of the unsimplified outline: the same order for the same set of regions)."""

    key: tuple[np.ndarray, ...]
    geoms: np.ndarray
    cls: np.ndarray
    score: np.ndarray
    area_m2: np.ndarray
    perimeter_m: np.ndarray

    @staticmethod
    def concat(parts: Sequence["_Finished"]) -> "_Finished":
        key = tuple(np.concatenate([p.key[k] for p in parts]) for k in range(5))
        return _Finished(key, *(np.concatenate([getattr(p, name) for p in parts])
                                for name in ("geoms", "cls", "score", "area_m2", "perimeter_m")))

    def take(self, index: np.ndarray) -> "_Finished":
        return _Finished(tuple(k[index] for k in self.key), self.geoms[index], self.cls[index], self.score[index],
                         self.area_m2[index], self.perimeter_m[index])


class _InOrder:
    """Final polygons held back until no polygon still to come can precede them in reading order."""

    def __init__(self) -> None:
        self._held: list[_Finished] = []

    def add(self, finished: _Finished) -> None:
        if len(finished.geoms):
            self._held.append(finished)

    def pop_before(self, limit: float) -> _Finished:
        """Those whose centroid row is above ``limit`` (every polygon still to come has its centroid below it), in
        reading order."""
        if not self._held:
            return _Finished((np.empty(0),) * 5, np.empty(0, object), np.empty(0, np.int64), np.empty(0),
                             np.empty(0), np.empty(0))
        held = _Finished.concat(self._held)
        out = held.key[0] < limit
        rest = held.take(~out)
        self._held = [rest] if len(rest.geoms) else []
        done = held.take(out)
        cy, cx, cls, area, wkb = done.key
        order = sorted(range(len(cy)), key=lambda i: (cy[i], cx[i], cls[i], area[i], wkb[i]))
        return done.take(np.array(order, np.int64))


def to_map(polys: np.ndarray, gt: Sequence[float]) -> np.ndarray:
    """Pixel frame -> raster CRS (the full affine geotransform: rotated rasters too)."""
    return shapely.transform(polys, lambda xy: np.stack(apply_geotransform(gt, xy[:, 0], xy[:, 1]), axis=1))
