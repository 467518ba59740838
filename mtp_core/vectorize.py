"""Class raster -> clean, attributed polygons (step 4 of the main job in DESIGN.md).

Why it is built this way:

* **4-connected regions.** Pixels of one class form one polygon only when they share an edge. Buildings that touch
  diagonally are nearly always two buildings, and a 4-connected region's outline never pinches at a point, so every
  region is one simple polygon (holes may touch its shell at a corner, which is valid).
* **Bounded memory, seamless output.** GDAL polygonizes bands of ``block_rows`` rows. Pieces cut by a band border
  are re-joined: a piece above and a piece below a border belong together when a pixel column has the same selected
  class on both sides of the border (one probe per run of such columns, found with an STRtree), and each region is
  unioned once, when no piece of it touches the last border. All of this happens in a *pixel frame* (integer
  vertices on pixel corners), so the unions are exact; every polygon is then put in one canonical form (no collinear
  vertices, normalized ring order). Polygons are finished and handed out (written, with
  :func:`vectorize_raster_to_file`) band by band as soon as nothing below can change them (:class:`_Run`), in
  reading order, so memory is ``width x block_rows`` plus the polygons near the current band, whatever the raster's
  height; by default a band has about 2 million pixels (64 to 1024 rows). The result is identical whatever
  ``block_rows`` is.
* **No gaps between classes.** Simplification is *coverage* simplification (Visvalingam-Whyatt on the shared-edge
  graph of all polygons, ``shapely.coverage_simplify``): an edge shared by two polygons is simplified once, for both,
  so adjacent classes keep sharing their boundary exactly and never overlap. It only removes vertices, so simplified
  outlines still have their vertices on pixel corners. ``simplify_m`` is the VW tolerance: triangles smaller than
  ``simplify_m**2`` m² are removed.
* **Small things.** Polygons and holes smaller than ``min_area_m2`` are dropped / filled (a 1-pixel hole in a roof is
  noise, not a courtyard; an island dropped in one class leaves its surrounding polygon's hole filled, so no gap).
* **Regularization** (optional) gives building outlines right angles. Direction: the mode of a length-weighted
  density of the convex hull's side angles modulo 90 degrees (the hull ignores ragged concave noise), refined by a
  weighted circular mean. Snapping: the raw outline, straightened by a 1-pixel Douglas-Peucker, is turned to that
  direction; consecutive sides closer to horizontal (vertical) form one wall placed at their extent-weighted mean
  height (abscissa); walls whose net extent is under 3 pixels are zig-zag noise and merge into their neighbours;
  corners are the crossings of consecutive walls. So a noisy rectangle becomes 4 corners and an L 6, all right
  angles. Courtyards are snapped the same way (a collapsing one stays raw). A polygon is reverted to its
  unregularized outline when the result is invalid, its IoU with the raw outline is below 0.85, it leaves the raw
  outline's bounding box by more than 2 pixels (a local change, so polygons can be finished band by band), or it
  would overlap another polygon. Only polygons that share no edge with another polygon are regularized (buildings
  surrounded by background): snapping one side of a shared edge would open a gap.
* **Metres.** Areas and lengths are in metres: for a projected CRS from its linear unit; for a geographic CRS in a
  Lambert azimuthal equal-area projection centred on the raster (equal-area on the ellipsoid, so areas are exact and
  lengths accurate near the centre). Simplification and regularization tolerances use the pixel size in metres at
  the raster centre. A raster without a CRS is taken to be in metres.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Protocol, Sequence

import numpy as np
import shapely
from osgeo import gdal, gdal_array, ogr, osr
from shapely import Polygon

from mtp_core.geo.vector import VectorWriter
from mtp_core.progress import Cancelled

ProgressFn = Optional[Callable[[int, int], None]]
CancelFn = Optional[Callable[[], bool]]

_MIN_IOU = 0.85          # a regularized outline further than this from the raw one is not trusted
_REG_TOLERANCE_PX = 1.0  # Douglas-Peucker tolerance that turns pixel staircases into straight sides
_MIN_SIDE_PX = 3.0       # walls shorter than this are pixel noise and merge into their neighbours
_REG_REACH_PX = 2.0      # a regularized outline stays within this many pixels of its raw outline's bounding box
_SIMPLIFY_BATCH = 256    # polygons per coverage-simplification call
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
    classes: frozenset[int] | None
    nodata: float | None
    block_rows: int | None
    min_area_m2: float
    simplify_m: float
    regularize: bool
    source: str
    model: str
    progress: ProgressFn
    cancel: CancelFn


class _Rows(Protocol):
    """Row bands of a class raster and, optionally, of its uint8 probabilities."""

    height: int
    width: int
    has_prob: bool

    def classes(self, row0: int, rows: int) -> np.ndarray: ...

    def prob(self, row0: int, rows: int, cls: int) -> np.ndarray: ...


# ----------------------------------------------------------------------------------------------------------------
# Public entry points


def vectorize_raster(class_raster_path: str, *, classes: Sequence[int] | None = None, block_rows: int | None = None,
                     prob_raster_path: str | None = None, min_area_m2: float = 4.0, simplify_m: float = 0.25,
                     regularize: bool = False, source: str = "", model: str = "", progress: ProgressFn = None,
                     cancel: CancelFn = None) -> VectorResult:
    """Polygons of the class raster's band 1 (all non-zero, non-nodata values unless ``classes`` is given), in memory.

    ``prob_raster_path``: uint8 probabilities (0-255) of the same size, as ``mtp predict`` writes them: band ``c`` is
    the probability of class ``c`` (background is not stored); a one-band raster scores every class. ``score`` is
    its mean over each polygon's pixels. ``progress(done_rows, total_rows)`` is called after each band of rows;
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
                             regularize: bool = False, source: str = "", model: str = "", progress: ProgressFn = None,
                             cancel: CancelFn = None) -> dict[str, int]:
    """:func:`vectorize_raster` streamed into a vector file (.gpkg, .geojson, .shp) in the raster's CRS: polygons are
    written as soon as they are final, the file appears only when complete. Returns the counts (see
    :class:`VectorResult`)."""
    rows, gt, crs_wkt = _open_class_raster(class_raster_path, prob_raster_path)
    opts = _options(classes, rows.nodata, block_rows, min_area_m2, simplify_m, regularize, source, model, progress,
                    cancel)
    run = _Run(rows, gt, crs_wkt, opts)
    with VectorWriter(output_path, FIELDS, crs_wkt, ogr.wkbPolygon, layer_name,
                      text_widths={"source": max(len(source.encode()), 1), "model": max(len(model.encode()), 1)}) \
            as writer:
        for chunk in run.chunks():
            writer.write(chunk.geometries, chunk.attributes)
    return dict(run.counts)


def _open_class_raster(class_raster_path: str, prob_raster_path: str | None) -> tuple["_RasterRows", tuple, str]:
    gdal.UseExceptions()
    ds = gdal.Open(str(class_raster_path))
    band = ds.GetRasterBand(1)
    if gdal.GetDataTypeName(band.DataType).startswith(("Float", "CFloat")):
        raise ValueError(f"{class_raster_path}: the class raster must have an integer data type")
    prob_ds = None
    if prob_raster_path is not None:
        prob_ds = gdal.Open(str(prob_raster_path))
        if (prob_ds.RasterXSize, prob_ds.RasterYSize) != (ds.RasterXSize, ds.RasterYSize):
            raise ValueError(f"{prob_raster_path} is {prob_ds.RasterXSize}x{prob_ds.RasterYSize}, the class raster "
                             f"{ds.RasterXSize}x{ds.RasterYSize}")
    return _RasterRows(ds, prob_ds), ds.GetGeoTransform(), ds.GetProjection()


def vectorize_array(mask: np.ndarray, geotransform: Sequence[float], crs_wkt: str, *, prob: np.ndarray | None = None,
                    nodata: int | None = None, classes: Sequence[int] | None = None, block_rows: int | None = None,
                    min_area_m2: float = 4.0, simplify_m: float = 0.25, regularize: bool = False, source: str = "",
                    model: str = "", progress: ProgressFn = None, cancel: CancelFn = None) -> VectorResult:
    """:func:`vectorize_raster` for an in-memory class mask (H, W), e.g. a window around a click.

    ``prob``: (H, W) probabilities of every class, or (K, H, W) with plane ``c`` for class ``c`` (background
    included, as ``Predictor.predict_array`` returns them); uint8 0-255 or float 0-1, quantized to 8 bits as in a
    file, so both paths score alike.
    """
    gdal.UseExceptions()
    if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer) and mask.dtype != bool:
        raise ValueError(f"mask must be a 2-D integer array, got {mask.dtype} {mask.shape}")
    opts = _options(classes, nodata, block_rows, min_area_m2, simplify_m, regularize, source, model, progress, cancel)
    return _vectorize(_ArrayRows(mask, prob), tuple(geotransform), crs_wkt, opts)


def _options(classes: Sequence[int] | None, nodata: float | None, block_rows: int | None, min_area_m2: float,
             simplify_m: float, regularize: bool, source: str, model: str, progress: ProgressFn,
             cancel: CancelFn) -> _Options:
    if block_rows is not None and block_rows < 1:
        raise ValueError(f"block_rows must be at least 1, got {block_rows}")
    if min_area_m2 < 0 or simplify_m < 0:
        raise ValueError("min_area_m2 and simplify_m must not be negative")
    return _Options(None if classes is None else frozenset(int(c) for c in classes), nodata, block_rows,
                    float(min_area_m2), float(simplify_m), bool(regularize), source, model, progress, cancel)


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


def _vectorize(rows: _Rows, geotransform: Sequence[float], crs_wkt: str, opts: _Options) -> VectorResult:
    """Every chunk of a run joined into one result (for callers that want the polygons in memory)."""
    run = _Run(rows, geotransform, crs_wkt, opts)
    chunks = list(run.chunks())
    attributes = {name: [v for chunk in chunks for v in chunk.attributes[name]] for name in FIELDS}
    return VectorResult([g for chunk in chunks for g in chunk.geometries], attributes, crs_wkt, dict(run.counts))


def _check_cancel(cancel: CancelFn) -> None:
    if cancel is not None and cancel():
        raise VectorizeCancelled("vectorization cancelled")


@dataclass
class _Polys:
    """Polygons in the pixel frame (x = column, y = row, vertices on integers) with one value each per column."""

    polys: np.ndarray   # shapely Polygons
    cls: np.ndarray     # int64 class
    sums: np.ndarray    # float64 sum of uint8 probabilities over the polygon's pixels (exact: integers < 2**53)
    counts: np.ndarray  # int64 pixels counted in ``sums``

    @staticmethod
    def empty() -> "_Polys":
        return _Polys(np.empty(0, object), np.empty(0, np.int64), np.empty(0), np.empty(0, np.int64))

    @staticmethod
    def concat(parts: Sequence["_Polys"]) -> "_Polys":
        return _Polys(*(np.concatenate([getattr(p, name) for p in parts]) for name in ("polys", "cls", "sums",
                                                                                         "counts")))

    def take(self, index: np.ndarray) -> "_Polys":
        return _Polys(self.polys[index], self.cls[index], self.sums[index], self.counts[index])

    def __len__(self) -> int:
        return len(self.polys)


class _Run:
    """A class raster's polygons, produced band by band and handed out in reading order as soon as they are final.

    A region is *closed* when no piece of it touches the last band's bottom border, and *final* (simplified,
    regularized, measured) once no polygon still to come can interact with it: polygons interact only when their
    bounding boxes meet (grown by twice the reach of a regularized outline when regularizing), so a closed polygon
    waits while its group of meeting boxes includes an open region or a box that could meet the next band. Final
    polygons wait until no polygon still to come can come before them in reading order. Memory therefore follows the
    raster's width and the size of regions, not its height, and the output is the same whatever ``block_rows`` is.
    """

    def __init__(self, rows: _Rows, geotransform: Sequence[float], crs_wkt: str, opts: _Options) -> None:
        if geotransform[2] != 0 or geotransform[4] != 0:
            raise ValueError(f"rotated rasters are not supported (geotransform {tuple(geotransform)})")
        self.rows, self.gt, self.crs_wkt, self.opts = rows, tuple(geotransform), crs_wkt, opts
        self.measure = _Measure(geotransform, crs_wkt, rows.width, rows.height)
        self.reach = 2 * _REG_REACH_PX if opts.regularize else 0.0
        self.counts = dict.fromkeys(("pieces", "stitched", "small_dropped", "holes_filled", "regularized",
                                     "reverted", "polygons"), 0)

    def chunks(self) -> Iterator[VectorResult]:
        """Polygons with their attributes (``id`` counting on from chunk to chunk), in reading order."""
        rows, opts = self.rows, self.opts
        stitcher = _Stitcher()
        waiting = _Polys.empty()
        in_order = _InOrder()
        block_rows = opts.block_rows or max(_MIN_BLOCK_ROWS, min(_MAX_BLOCK_ROWS, _BLOCK_PIXELS // rows.width))
        for row0 in range(0, rows.height, block_rows):
            _check_cancel(opts.cancel)
            values = rows.classes(row0, min(block_rows, rows.height - row0))
            keep = _selected(values, opts)
            closed = stitcher.add(_polygonize_block(values, keep, row0, rows), values, keep, row0)
            bottom = row0 + len(values)
            waiting = _Polys.concat([waiting, self._clean(closed)])
            open_boxes = stitcher.open_boxes()
            ready = self._ready(waiting, open_boxes, bottom)
            in_order.add(self._finish(waiting.take(ready)))
            waiting = waiting.take(~ready)
            limit = min([bottom, *open_boxes[:, 1], *shapely.bounds(waiting.polys).reshape(-1, 4)[:, 1]])
            yield from self._release(in_order, limit)
            if opts.progress is not None:
                opts.progress(bottom, rows.height)
        waiting = _Polys.concat([waiting, self._clean(stitcher.close())])
        in_order.add(self._finish(waiting))
        yield from self._release(in_order, math.inf)
        self.counts["pieces"], self.counts["stitched"] = stitcher.pieces, stitcher.stitched

    def _clean(self, closed: _Polys) -> _Polys:
        """Closed regions without those under the minimum area, and without their small holes."""
        big = self.measure.area_m2(closed.polys) >= self.opts.min_area_m2
        closed = closed.take(big)
        closed.polys, filled = _fill_small_holes(closed.polys, self.measure, self.opts.min_area_m2)
        self.counts["small_dropped"] += int((~big).sum())
        self.counts["holes_filled"] += filled
        return closed

    def _ready(self, waiting: _Polys, open_boxes: np.ndarray, bottom: int) -> np.ndarray:
        """Which waiting polygons can be finished: their group of meeting boxes holds no open region and no box that
        could meet the next band."""
        boxes = np.concatenate([shapely.bounds(waiting.polys).reshape(-1, 4), open_boxes])
        blocked = np.r_[boxes[: len(waiting), 3] + self.reach >= bottom, np.ones(len(open_boxes), bool)]
        group = _components(len(boxes), _meeting_pairs(boxes, self.reach))
        return ~np.isin(group[: len(waiting)], group[blocked])

    def _finish(self, polys: _Polys) -> "_Finished":
        """Simplified (and regularized) outlines of whole groups of meeting boxes, measured, on the map."""
        _check_cancel(self.opts.cancel)
        raw = polys.polys
        near = _meeting_pairs(shapely.bounds(raw).reshape(-1, 4), self.reach)
        shares_edge = _shares_edge(raw, near)
        out = _simplify(raw, near, shares_edge, self.measure.px_m, self.opts.simplify_m) \
            if self.opts.simplify_m > 0 and len(raw) else raw
        candidates = np.flatnonzero(~shares_edge)
        if self.opts.regularize and len(candidates):
            regular, ok = _regularize(raw[candidates], self.measure.px_m)
            ok[ok] = ~_overlap_others(regular[ok], candidates[ok], out)
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
            geoms=shapely.orient_polygons(_to_map(out, self.gt), exterior_cw=False) if len(out) else out,
            cls=polys.cls, score=score, area_m2=self.measure.area_m2(out), perimeter_m=self.measure.perimeter_m(out))

    def _release(self, in_order: "_InOrder", limit: float) -> Iterator[VectorResult]:
        done = in_order.pop_before(limit)
        if not len(done.geoms):
            return
        first = self.counts["polygons"] + 1
        self.counts["polygons"] += len(done.geoms)
        attributes = {
            "id": list(range(first, first + len(done.geoms))),
            "class": [int(c) for c in done.cls],
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


# ----------------------------------------------------------------------------------------------------------------
# Block-by-block polygonization and stitching (pixel frame: x = column, y = row, vertices on integers)


class _Stitcher:
    """Pieces of the bands joined across band borders; a region is closed (handed on whole, in canonical form) once
    no piece of it touches the last band's bottom border."""

    def __init__(self) -> None:
        self.open = _Polys.empty()
        self.group = np.empty(0, np.int64)  # the region (0..n-1) of each open piece
        self.last_row: tuple[np.ndarray, np.ndarray] | None = None  # (values, keep) above the next border
        self.pieces = self.stitched = 0

    def add(self, block: _Polys, values: np.ndarray, keep: np.ndarray, row0: int) -> _Polys:
        """The regions closed by this band (which starts at pixel row ``row0``)."""
        self.pieces += len(block)
        n_open = len(self.open)
        pieces = _Polys.concat([self.open, block])
        _, first = np.unique(self.group, return_index=True)
        pairs = [np.stack([np.arange(n_open), first[self.group]], axis=1)]
        if self.last_row is not None and n_open and len(block):
            above = np.flatnonzero(shapely.bounds(self.open.polys).reshape(-1, 4)[:, 3] == row0)
            below = np.flatnonzero(shapely.bounds(block.polys).reshape(-1, 4)[:, 1] == row0)
            pairs.append(_border_links(self.last_row, (values[0], keep[0]), row0, (self.open.polys, above, 0),
                                       (block.polys, below, n_open)))
        label = _components(len(pieces), np.concatenate(pairs))
        touching = shapely.bounds(pieces.polys).reshape(-1, 4)[:, 3] == row0 + len(values)
        is_open = np.isin(label, label[touching])
        self.open = pieces.take(is_open)
        self.group = np.unique(label[is_open], return_inverse=True)[1].reshape(-1)
        self.last_row = (values[-1].copy(), keep[-1].copy())
        return self._close(pieces.take(~is_open), label[~is_open])

    def close(self) -> _Polys:
        """The regions still open at the raster's bottom."""
        closed = self._close(self.open, self.group)
        self.open, self.group = _Polys.empty(), np.empty(0, np.int64)
        return closed

    def open_boxes(self) -> np.ndarray:
        """Bounding box (xmin, ymin, xmax, ymax) of each open region so far."""
        if not len(self.open):
            return np.empty((0, 4))
        bounds = shapely.bounds(self.open.polys).reshape(-1, 4)
        n = int(self.group.max()) + 1
        lo = np.full((n, 2), np.inf)
        hi = np.full((n, 2), -np.inf)
        np.minimum.at(lo, self.group, bounds[:, :2])
        np.maximum.at(hi, self.group, bounds[:, 2:])
        return np.concatenate([lo, hi], axis=1)

    def _close(self, pieces: _Polys, label: np.ndarray) -> _Polys:
        if not len(pieces):
            return _Polys.empty()
        merged, stitched = _stitch(pieces, label)
        self.stitched += int(stitched.sum())
        polys, owner = _canonical(merged.polys, stitched)
        return _Polys(polys, merged.cls[owner], merged.sums[owner], merged.counts[owner])


def _selected(values: np.ndarray, opts: _Options) -> np.ndarray:
    """Pixels to polygonize: the chosen classes, or everything but 0 and nodata."""
    if opts.classes is not None:
        return np.isin(values, list(opts.classes))
    keep = values != 0
    if opts.nodata is not None:
        keep &= values != opts.nodata
    return keep


def _polygonize_block(values: np.ndarray, keep: np.ndarray, row0: int, rows: _Rows) -> _Polys:
    """GDAL's 4-connected polygons of one band of rows, in the pixel frame, with probability sums when asked."""
    pixels = osr.SpatialReference()
    pixels.SetLocalCS("pixels")  # the same (local) CRS on rasters and layer, so GDAL rasterizes without warning
    source = _mem_raster(values if values.dtype == np.uint8 else values.astype(np.int32), row0, pixels)
    mask = _mem_raster(keep.view(np.uint8), row0, pixels)
    vec = ogr.GetDriverByName("Memory").CreateDataSource("")
    layer = vec.CreateLayer("pieces", pixels, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("class", ogr.OFTInteger))
    gdal.Polygonize(source.GetRasterBand(1), mask.GetRasterBand(1), layer, 0, [])  # no 8CONNECTED: 4-connected
    geometry = layer.GetGeometryColumn() or "wkb_geometry"
    batches = list(layer.GetArrowStreamAsNumPy(["INCLUDE_FID=NO"]))
    polys = shapely.from_wkb(np.concatenate([b[geometry] for b in batches])) if batches else np.empty(0, object)
    cls = np.concatenate([b["class"] for b in batches]).astype(np.int64) if batches else np.empty(0, np.int64)
    if not rows.has_prob or not len(polys):
        return _Polys(polys, cls, np.zeros(len(polys)), np.zeros(len(polys), np.int64))
    sums, counts = _prob_sums(_label_pieces(layer, values.shape, row0, pixels), cls, row0, rows)
    return _Polys(polys, cls, sums, counts)


def _mem_raster(array: np.ndarray, row0: int, srs: osr.SpatialReference) -> gdal.Dataset:
    """A one-band in-memory raster of ``array`` whose georeferencing is the pixel frame (rows from ``row0``)."""
    ds = gdal.GetDriverByName("MEM").Create("", array.shape[1], array.shape[0], 1,
                                            gdal_array.NumericTypeCodeToGDALTypeCode(array.dtype))
    ds.SetGeoTransform((0.0, 1.0, 0.0, float(row0), 0.0, 1.0))
    ds.SetSpatialRef(srs)
    ds.GetRasterBand(1).WriteArray(array)
    return ds


def _label_pieces(layer: ogr.Layer, shape: tuple[int, int], row0: int, srs: osr.SpatialReference) -> np.ndarray:
    """Each pixel's piece number (1-based, in layer order; 0 = none), by burning the pieces back into the block."""
    layer.CreateField(ogr.FieldDefn("piece", ogr.OFTInteger))
    layer.ResetReading()
    for i, feature in enumerate(layer, start=1):
        feature.SetField("piece", i)
        layer.SetFeature(feature)
    labels = _mem_raster(np.zeros(shape, np.int32), row0, srs)
    gdal.RasterizeLayer(labels, [1], layer, options=["ATTRIBUTE=piece"])
    return labels.GetRasterBand(1).ReadAsArray()


def _prob_sums(labels: np.ndarray, cls: np.ndarray, row0: int, rows: _Rows) -> tuple[np.ndarray, np.ndarray]:
    """Per piece: sum of its class's uint8 probability and its pixel count."""
    n_rows = labels.shape[0]
    flat = labels.ravel()
    counts = np.bincount(flat, minlength=len(cls) + 1)[1:]
    sums = np.zeros(len(cls))
    for c in np.unique(cls):
        inside = np.r_[False, cls == c][flat]
        prob = rows.prob(row0, n_rows, int(c)).ravel()
        sums += np.bincount(flat[inside], weights=prob[inside].astype(np.float64), minlength=len(cls) + 1)[1:]
    return sums, counts


def _border_links(above: tuple[np.ndarray, np.ndarray], below: tuple[np.ndarray, np.ndarray], row: int,
                  upper: tuple[np.ndarray, np.ndarray, int], lower: tuple[np.ndarray, np.ndarray, int]) -> np.ndarray:
    """Pairs of global piece indices (above, below) that are one region cut by the border at pixel row ``row``.

    ``above``/``below``: (values, keep) of the rows on each side; ``upper``/``lower``: (block polygons, local indices
    of those touching the border, global index of the block's first polygon). Columns where both sides hold the same
    selected class join the two pieces; consecutive such columns with one class are one run (4-connected along the
    row on both sides), so one probe point per run is enough.
    """
    (va, ka), (vb, kb) = above, below
    same = ka & kb & (va == vb)
    cols = np.flatnonzero(same & ~np.r_[False, same[:-1] & (va[1:] == va[:-1])])
    if not len(cols):
        return np.empty((0, 2), np.int64)
    x = cols + 0.5
    top = _owner(shapely.points(x, np.full(len(cols), row - 0.5)), *upper)
    bottom = _owner(shapely.points(x, np.full(len(cols), row + 0.5)), *lower)
    return np.unique(np.stack([top, bottom], axis=1), axis=0)


def _owner(points: np.ndarray, polys: np.ndarray, candidates: np.ndarray, offset: int) -> np.ndarray:
    """Global index of the piece containing each point (a pixel centre lies inside exactly one piece)."""
    point_i, poly_i = shapely.STRtree(polys[candidates]).query(points, predicate="within")
    owner = np.empty(len(points), np.int64)
    owner[point_i] = offset + candidates[poly_i]
    return owner


def _stitch(pieces: _Polys, label: np.ndarray) -> tuple[_Polys, np.ndarray]:
    """Union of the pieces of each region (probability sums and counts add up), and which are such unions."""
    _, first, group_of = np.unique(label, return_index=True, return_inverse=True)
    group_of = group_of.reshape(-1)
    merged = pieces.polys[first].copy()
    sizes = np.bincount(group_of, minlength=len(first))
    members = np.split(np.argsort(group_of, kind="stable"), np.cumsum(sizes)[:-1])
    for g in np.flatnonzero(sizes > 1):
        merged[g] = shapely.union_all(pieces.polys[members[g]])
    return (_Polys(merged, pieces.cls[first], np.bincount(group_of, weights=pieces.sums, minlength=len(first)),
                   np.bincount(group_of, weights=pieces.counts, minlength=len(first)).astype(np.int64)), sizes > 1)


def _components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected components of ``n`` nodes linked by ``pairs``: each node's label is the smallest node of its group."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs.tolist():
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([root(i) for i in range(n)], np.int64)


def _canonical(polys: np.ndarray, stitched: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Valid polygons (parts of multipolygons split), no collinear vertices, normalized; and each one's source index.

    Two descriptions of the same pixel region (whole, or unioned from block pieces) become the same vertex list.
    """
    invalid = ~shapely.is_valid(polys)
    if invalid.any():
        polys = polys.copy()
        polys[invalid] = shapely.make_valid(polys[invalid], method="structure", keep_collapsed=False)
    parts, owner = shapely.get_parts(polys, return_index=True)
    polygonal = shapely.get_type_id(parts) == shapely.GeometryType.POLYGON
    parts, owner = parts[polygonal], owner[polygonal]
    touched = (invalid | stitched)[owner]  # GDAL's own outlines have no collinear vertices
    parts[touched] = _drop_collinear(parts[touched])
    return shapely.normalize(parts), owner


def _drop_collinear(polys: np.ndarray) -> np.ndarray:
    """The same polygons without vertices in the middle of a straight edge (block seams leave those behind)."""
    if not len(polys):
        return polys
    xy, ring_of, ring_poly = _open_rings(polys)
    before, after = _cyclic(ring_of)
    d_in, d_out = xy - xy[before], xy[after] - xy
    corner = d_in[:, 0] * d_out[:, 1] - d_in[:, 1] * d_out[:, 0] != 0
    return _from_open_rings(xy[corner], ring_of[corner], ring_poly)


def _open_rings(polys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vertices of every ring without the closing one, the ring of each vertex, the polygon of each ring."""
    rings, ring_poly = shapely.get_rings(polys, return_index=True)
    xy, ring_of = shapely.get_coordinates(rings, return_index=True)
    closing = np.r_[ring_of[1:] != ring_of[:-1], True]
    return xy[~closing], ring_of[~closing], ring_poly


def _from_open_rings(xy: np.ndarray, ring_of: np.ndarray, ring_poly: np.ndarray) -> np.ndarray:
    """Polygons from open rings (``ring_of`` sorted, every ring of ``ring_poly`` present; shells first)."""
    starts = np.flatnonzero(np.r_[True, ring_of[1:] != ring_of[:-1]])
    closed = np.insert(xy, np.r_[starts[1:], len(xy)], xy[starts], axis=0)
    ring_offsets = np.r_[starts + np.arange(len(starts)), len(closed)]
    poly_offsets = np.r_[0, np.cumsum(np.bincount(ring_poly))]
    return shapely.from_ragged_array(shapely.GeometryType.POLYGON, closed, (ring_offsets, poly_offsets))


def _cyclic(ring_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the previous and the next vertex of each vertex in its (open) ring."""
    starts = np.flatnonzero(np.r_[True, ring_of[1:] != ring_of[:-1]])
    sizes = np.diff(np.r_[starts, len(ring_of)])
    first, size = np.repeat(starts, sizes), np.repeat(sizes, sizes)
    pos = np.arange(len(ring_of)) - first
    return first + (pos - 1) % size, first + (pos + 1) % size


# ----------------------------------------------------------------------------------------------------------------
# Cleaning


def _fill_small_holes(polys: np.ndarray, measure: "_Measure", min_area_m2: float) -> tuple[np.ndarray, int]:
    """Polygons without their holes smaller than ``min_area_m2`` (noise, not courtyards)."""
    if not len(polys) or min_area_m2 <= 0 or not shapely.get_num_interior_rings(polys).any():
        return polys, 0
    rings, owner = shapely.get_rings(polys, return_index=True)
    is_hole = np.r_[False, owner[1:] == owner[:-1]]
    small = np.zeros(len(rings), bool)
    small[is_hole] = measure.area_m2(shapely.polygons(rings[is_hole])) < min_area_m2
    return shapely.polygons(rings[~small], indices=owner[~small]), int(small.sum())


def _meeting_pairs(boxes: np.ndarray, reach: float) -> np.ndarray:
    """Pairs (i < j) of bounding boxes (n, 4) that meet once grown by ``reach``: the only polygons that can touch or
    interact when simplified (removing vertices keeps an outline inside its box) or regularized (an outline stays
    within half the reach of its box)."""
    if not len(boxes):
        return np.empty((0, 2), np.int64)
    grown = boxes + np.array([-reach, -reach, reach, reach])
    i, j = shapely.STRtree(shapely.box(*boxes.T)).query(shapely.box(*grown.T))
    keep = i < j
    return np.stack([i[keep], j[keep]], axis=1)


def _shares_edge(polys: np.ndarray, near: np.ndarray) -> np.ndarray:
    """Whether each polygon shares a boundary segment (not just a corner) with another polygon."""
    out = np.zeros(len(polys), bool)
    i, j = near[:, 0], near[:, 1]
    edge = shapely.relate_pattern(polys[i], polys[j], "F***1****")
    out[i[edge]] = out[j[edge]] = True
    return out


def _simplify(polys: np.ndarray, near: np.ndarray, shares_edge: np.ndarray, px_m: tuple[float, float],
              tolerance_m: float) -> np.ndarray:
    """Coverage simplification in metres; vertices stay on the pixel corners they came from.

    Polygons that share edges get a vertex at every pixel corner first, because the coverage simplifier needs the
    vertices of a shared edge to be the same on both sides (GDAL writes only the corners of each outline). Groups of
    polygons whose bounding boxes meet cannot affect other groups, so they are simplified in batches of whole groups:
    GEOS's time grows faster than linearly with the size of one coverage.
    """
    if not len(polys):
        return polys
    dense = polys.copy()
    dense[shares_edge] = shapely.segmentize(polys[shares_edge], 1.0)
    scale = np.asarray(px_m)
    metric = shapely.transform(dense, lambda xy: xy * scale)
    simple = np.empty(len(polys), object)
    for batch in _batches(_components(len(polys), near), _SIMPLIFY_BATCH):
        simple[batch] = shapely.coverage_simplify(metric[batch], tolerance_m)
    return shapely.normalize(shapely.transform(simple, lambda xy: np.rint(xy / scale)))


def _batches(group: np.ndarray, size: int) -> list[np.ndarray]:
    """Indices split into batches of about ``size``, never splitting a group (groups in order of their label)."""
    order = np.argsort(group, kind="stable")
    starts = np.flatnonzero(np.r_[True, group[order][1:] != group[order][:-1]])
    cuts, filled = [], 0
    for start in starts[1:].tolist():
        if start - filled >= size:
            cuts.append(start)
            filled = start
    return np.split(order, cuts)


# ----------------------------------------------------------------------------------------------------------------
# Regularization (in metres, so right angles are right angles on the ground)


def _regularize(polys: np.ndarray, px_m: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Right-angled outlines in the pixel frame and whether each is kept (valid, IoU with the raw one >= 0.85).

    Each outline is straightened (Douglas-Peucker, 1 pixel), turned so that its dominant direction is the x axis, and
    every ring is snapped to axis-parallel walls (:func:`_snap_rings`), then turned back. A hole whose walls collapse
    stays as it was; an outline whose shell collapses is not regularized.
    """
    scale = np.asarray(px_m)
    raw = shapely.transform(polys, lambda xy: xy * scale)
    pixel = math.sqrt(px_m[0] * px_m[1])
    straight = _straighten(raw, _REG_TOLERANCE_PX * pixel)
    theta = _dominant_directions(straight)
    origin = shapely.get_coordinates(shapely.centroid(straight))

    xy, ring_of, ring_poly = _open_rings(straight)
    owner = ring_poly[ring_of]
    local = _rotate(xy - origin[owner], -theta[owner])
    corners, corner_ring, snapped = _snap_rings(local, ring_of, len(ring_poly), _MIN_SIDE_PX * pixel)

    is_shell = np.r_[True, ring_poly[1:] != ring_poly[:-1]]
    made = np.zeros(len(polys), bool)
    made[ring_poly[is_shell & snapped]] = True
    ok = np.zeros(len(polys), bool)
    out = np.empty(len(polys), object)
    if not made.any():
        return out, ok
    keep_raw = ~snapped[ring_of] & made[owner]  # collapsed holes of regularized outlines stay as they were
    ring_ids = np.concatenate([corner_ring, ring_of[keep_raw]])
    coords = np.concatenate([corners, local[keep_raw]])
    take = made[ring_poly[ring_ids]]
    order = np.argsort(ring_ids[take], kind="stable")
    ring_ids, coords = ring_ids[take][order], coords[take][order]
    world = _rotate(coords, theta[ring_poly[ring_ids]]) + origin[ring_poly[ring_ids]]
    used, ring_index = np.unique(ring_ids, return_inverse=True)
    regular = _from_open_rings(world, ring_index, np.unique(ring_poly[used], return_inverse=True)[1])
    made_idx = np.flatnonzero(made)
    valid = shapely.is_valid(regular) & (shapely.area(regular) > 0)
    inter = np.zeros(len(regular))
    inter[valid] = shapely.area(shapely.intersection(regular[valid], raw[made_idx[valid]]))
    union = shapely.area(regular) + shapely.area(raw[made_idx]) - inter
    good = valid & (inter >= _MIN_IOU * union)
    ok[made_idx[good]] = True
    out[ok] = shapely.normalize(shapely.transform(regular[good], lambda p: p / scale))
    raw_box, box = shapely.bounds(polys[ok]).reshape(-1, 4), shapely.bounds(out[ok]).reshape(-1, 4)
    reach = np.array([-_REG_REACH_PX, -_REG_REACH_PX, _REG_REACH_PX, _REG_REACH_PX])
    inside = np.all(box[:, :2] >= (raw_box + reach)[:, :2], axis=1) & np.all(box[:, 2:] <= (raw_box + reach)[:, 2:],
                                                                              axis=1)
    far = np.flatnonzero(ok)[~inside]
    ok[far] = False
    out[far] = None
    return out, ok


def _overlap_others(regular: np.ndarray, index: np.ndarray, plain: np.ndarray) -> np.ndarray:
    """Which regularized outlines would overlap another polygon, regularized or not (those are reverted).

    Unregularized outlines never overlap, so checking against both versions of every neighbour leaves none.
    """
    both = np.concatenate([plain, regular])
    owner = np.concatenate([np.arange(len(plain)), index])
    i, j = shapely.STRtree(both).query(regular, predicate="intersects")
    other = owner[j] != index[i]
    i, j = i[other], j[other]
    hit = np.zeros(len(regular), bool)
    hit[i[shapely.relate_pattern(regular[i], both[j], "T********")]] = True
    return hit


def _straighten(polys: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker outlines: the fast variant, or the topology-preserving one where the fast one breaks one."""
    fast = shapely.simplify(polys, tolerance, preserve_topology=False)
    polygon = shapely.get_type_id(fast) == shapely.GeometryType.POLYGON
    broken = ~polygon | shapely.is_empty(fast) | ~shapely.is_valid(fast)
    fast[broken] = shapely.simplify(polys[broken], tolerance, preserve_topology=True)
    return fast


def _rotate(xy: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Points turned counter-clockwise by ``angle`` (one angle per point) about the origin."""
    cos, sin = np.cos(angle), np.sin(angle)
    return np.stack([xy[:, 0] * cos - xy[:, 1] * sin, xy[:, 0] * sin + xy[:, 1] * cos], axis=1)


def _dominant_directions(polys: np.ndarray) -> np.ndarray:
    """Building direction of each polygon (radians, modulo 90 degrees) from the sides of its convex hull.

    The hull ignores the ragged concave bits of a predicted outline and keeps the long outer walls. The direction is
    the mode of a length-weighted kernel density of the sides' angles (times 4, so that walls at right angles agree;
    1-degree grid), refined by the weighted circular mean of the sides within 10 degrees of it.
    """
    xy, poly = shapely.get_coordinates(shapely.get_exterior_ring(shapely.convex_hull(polys)), return_index=True)
    same = poly[1:] == poly[:-1]
    sides, poly = (xy[1:] - xy[:-1])[same], poly[1:][same]
    weight = np.hypot(sides[:, 0], sides[:, 1])
    quad = 4 * np.arctan2(sides[:, 1], sides[:, 0])
    grid = np.radians(np.arange(0.0, 360.0, 4.0))
    density = weight[:, None] * np.exp(8.0 * (np.cos(quad[:, None] - grid[None, :]) - 1.0))
    starts = np.flatnonzero(np.r_[True, poly[1:] != poly[:-1]])  # every polygon has a hull with sides
    mode = grid[np.argmax(np.add.reduceat(density, starts, axis=0), axis=1)]
    near = np.cos(quad - mode[poly]) > math.cos(math.radians(40.0))
    sin_sum = np.bincount(poly, weights=np.where(near, weight * np.sin(quad), 0.0), minlength=len(polys))
    cos_sum = np.bincount(poly, weights=np.where(near, weight * np.cos(quad), 0.0), minlength=len(polys))
    return 0.25 * np.arctan2(sin_sum, cos_sum)


def _snap_rings(xy: np.ndarray, ring: np.ndarray, n_rings: int,
                min_side: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Axis-parallel rings from rings whose walls are roughly axis-parallel: (corners, ring of each, ring snapped).

    Consecutive sides closer to horizontal (vertical) form one wall; a wall becomes a line at the mean height
    (abscissa) of its sides, weighted by their extent along the wall. The wall whose net extent along its axis is
    smallest is merged into its two neighbours (which then form one wall) while it is under ``min_side``: zig-zags
    of pixel noise go, real jogs stay. Corners are the crossings of consecutive lines. A ring left with fewer than
    four walls is not snapped.
    """
    before, after = _cyclic(ring)
    edges = xy[after] - xy
    horizontal = np.abs(edges[:, 0]) >= np.abs(edges[:, 1])
    turn = horizontal != horizontal[before]
    walls = np.bincount(ring, weights=turn, minlength=n_rings).astype(np.int64)  # even; 0 if all one way
    starts = np.flatnonzero(np.r_[True, ring[1:] != ring[:-1]])
    turned = np.cumsum(turn)
    turns_so_far = turned - np.repeat(turned[starts] - turn[starts], np.diff(np.r_[starts, len(ring)]))
    wall_offset = np.cumsum(walls) - walls
    has_walls = walls[ring] > 0
    # Sides before a ring's first turn belong to its last wall.
    wall = wall_offset[ring] + (turns_so_far - 1) % np.maximum(walls[ring], 1)
    wall, e, h = wall[has_walls], edges[has_walls], horizontal[has_walls]
    mid = (xy + edges / 2)[has_walls]
    n_walls = int(walls.sum())
    along = np.abs(np.where(h, e[:, 0], e[:, 1]))
    table = {
        "dx": np.bincount(wall, weights=e[:, 0], minlength=n_walls),
        "dy": np.bincount(wall, weights=e[:, 1], minlength=n_walls),
        "weight": np.bincount(wall, weights=along, minlength=n_walls),
        "moment": np.bincount(wall, weights=along * np.where(h, mid[:, 1], mid[:, 0]), minlength=n_walls),
    }
    is_h = np.zeros(n_walls, bool)
    is_h[wall] = h
    wall_ring = np.repeat(np.arange(n_rings), walls)
    extent = np.where(is_h, np.abs(table["dx"]), np.abs(table["dy"]))
    noisy = np.zeros(n_rings, bool)
    if n_walls:
        noisy[wall_ring[extent < min_side]] = True
    noisy &= walls > 4
    merged = [_merge_walls({k: v[wall_offset[r]:wall_offset[r] + walls[r]] for k, v in table.items()},
                           is_h[wall_offset[r]:wall_offset[r] + walls[r]], min_side) for r in np.flatnonzero(noisy)]
    plain = ~noisy[wall_ring]
    wall_ring = np.concatenate([wall_ring[plain]] + [np.full(len(m[1]), r) for r, m in zip(np.flatnonzero(noisy),
                                                                                             merged)])
    is_h = np.concatenate([is_h[plain]] + [m[1] for m in merged])
    plain_lines = table["moment"][plain] / np.maximum(table["weight"][plain], 1e-300)
    lines = np.concatenate([plain_lines] + [m[0] for m in merged])
    order = np.argsort(wall_ring, kind="stable")
    wall_ring, is_h, lines = wall_ring[order], is_h[order], lines[order]
    count = np.bincount(wall_ring, minlength=n_rings)
    snapped = count >= 4
    take = snapped[wall_ring]
    wall_ring, is_h, lines = wall_ring[take], is_h[take], lines[take]
    nxt = lines[_cyclic(wall_ring)[1]]
    corners = np.where(is_h[:, None], np.stack([nxt, lines], 1), np.stack([lines, nxt], 1))
    return corners, wall_ring, snapped


def _merge_walls(table: dict[str, np.ndarray], is_h: np.ndarray, min_side: float) -> tuple[np.ndarray, np.ndarray]:
    """Walls of one ring after merging the shortest ones (see :func:`_snap_rings`): (line positions, horizontal)."""
    dx, dy, weight, moment = (table[k].tolist() for k in ("dx", "dy", "weight", "moment"))
    horizontal = is_h.tolist()
    while len(horizontal) > 4:
        extent = [abs(x) if h else abs(y) for x, y, h in zip(dx, dy, horizontal)]
        k = min(range(len(extent)), key=extent.__getitem__)
        if extent[k] >= min_side:
            break
        before, after = (k - 1) % len(horizontal), (k + 1) % len(horizontal)
        dx[before] += dx[k] + dx[after]
        dy[before] += dy[k] + dy[after]
        weight[before] += weight[after]
        moment[before] += moment[after]
        for i in sorted((k, after), reverse=True):
            del dx[i], dy[i], weight[i], moment[i], horizontal[i]
    return np.array(moment) / np.maximum(np.array(weight), 1e-300), np.array(horizontal, bool)


# ----------------------------------------------------------------------------------------------------------------
# Coordinates and measures


def _to_map(polys: np.ndarray, gt: Sequence[float]) -> np.ndarray:
    """Pixel frame -> raster CRS (north-up geotransform)."""
    scale, origin = np.array([gt[1], gt[5]]), np.array([gt[0], gt[3]])
    return shapely.transform(polys, lambda xy: origin + xy * scale)


class _Measure:
    """Areas and lengths in metres of pixel-frame polygons, and the pixel size in metres (x, y) at the centre."""

    def __init__(self, gt: Sequence[float], crs_wkt: str, width: int, height: int) -> None:
        self._gt = tuple(gt)
        srs = osr.SpatialReference()
        if crs_wkt:
            srs.ImportFromWkt(crs_wkt)
        self._to_laea = None
        if crs_wkt and srs.IsGeographic():
            srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
            centre = _to_map(np.array([shapely.points(width / 2, height / 2)]), gt)[0]
            laea = osr.SpatialReference()
            laea.CopyGeogCSFrom(srs)
            laea.SetLAEA(centre.y, centre.x, 0.0, 0.0)
            laea.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
            self._to_laea = osr.CoordinateTransformation(srs, laea)
            probe = self.metric(np.array([shapely.linestrings([[width / 2, height / 2], [width / 2 + 1, height / 2]]),
                                          shapely.linestrings([[width / 2, height / 2], [width / 2, height / 2 + 1]])]))
            self.px_m = (float(shapely.length(probe[0])), float(shapely.length(probe[1])))
        else:
            unit = srs.GetLinearUnits() if crs_wkt and srs.IsProjected() else 1.0
            self.px_m = (abs(gt[1]) * unit, abs(gt[5]) * unit)

    def metric(self, geoms: np.ndarray) -> np.ndarray:
        """Pixel-frame geometries in a metric frame (local equal-area projection for geographic rasters)."""
        if self._to_laea is None:
            scale = np.asarray(self.px_m)
            return shapely.transform(geoms, lambda xy: xy * scale)
        ct = self._to_laea
        return shapely.transform(_to_map(geoms, self._gt), lambda xy: np.asarray(ct.TransformPoints(xy))[:, :2])

    def area_m2(self, polys: np.ndarray) -> np.ndarray:
        if self._to_laea is None:  # a projected frame is a scaling of the pixel frame
            return shapely.area(polys) * (self.px_m[0] * self.px_m[1])
        return shapely.area(self.metric(polys)) if len(polys) else np.empty(0)

    def perimeter_m(self, polys: np.ndarray) -> np.ndarray:
        if self._to_laea is None and self.px_m[0] == self.px_m[1]:
            return shapely.length(polys) * self.px_m[0]
        return shapely.length(self.metric(polys)) if len(polys) else np.empty(0)
