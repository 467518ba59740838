"""Class raster -> clean, attributed polygons (step 4 of the main job in DESIGN.md).

Why it is built this way:

* **4-connected regions.** Pixels of one class form one polygon only when they share an edge. Buildings that touch
  diagonally are nearly always two buildings, and a 4-connected region's outline never pinches at a point, so every
  region is one simple polygon (holes may touch its shell at a corner, which is valid).
* **Bounded memory, seamless output.** GDAL polygonizes bands of ``block_rows`` rows, so memory is ``width x
  block_rows`` plus the polygons themselves. Pieces cut by a band border are re-joined: a piece above and a piece
  below a border belong together when a pixel column has the same selected class on both sides of the border (one
  probe per run of such columns, found with an STRtree), and each linked group is unioned once. All of this happens in
  a *pixel frame* (integer vertices on pixel corners), so the unions are exact; every polygon is then put in one
  canonical form (no collinear vertices, normalized ring order). The result is identical whatever ``block_rows`` is.
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
  unregularized outline when the result is invalid, its IoU with the raw outline is below 0.85, or it would overlap
  another polygon. Only polygons that share no edge with another polygon are regularized (buildings surrounded by
  background): snapping one side of a shared edge would open a gap.
* **Metres.** Areas and lengths are in metres: for a projected CRS from its linear unit; for a geographic CRS in a
  Lambert azimuthal equal-area projection centred on the raster (equal-area on the ellipsoid, so areas are exact and
  lengths accurate near the centre). Simplification and regularization tolerances use the pixel size in metres at
  the raster centre. A raster without a CRS is taken to be in metres.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol, Sequence

import numpy as np
import shapely
from osgeo import gdal, gdal_array, ogr, osr
from shapely import Polygon

from mtp_core.progress import Cancelled

ProgressFn = Optional[Callable[[int, int], None]]
CancelFn = Optional[Callable[[], bool]]

_MIN_IOU = 0.85          # a regularized outline further than this from the raw one is not trusted
_REG_TOLERANCE_PX = 1.0  # Douglas-Peucker tolerance that turns pixel staircases into straight sides
_MIN_SIDE_PX = 3.0       # walls shorter than this are pixel noise and merge into their neighbours
_SIMPLIFY_BATCH = 256    # polygons per coverage-simplification call


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
    block_rows: int
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


def vectorize_raster(class_raster_path: str, *, classes: Sequence[int] | None = None, block_rows: int = 1024,
                     prob_raster_path: str | None = None, min_area_m2: float = 4.0, simplify_m: float = 0.25,
                     regularize: bool = False, source: str = "", model: str = "", progress: ProgressFn = None,
                     cancel: CancelFn = None) -> VectorResult:
    """Polygons of the class raster's band 1 (all non-zero, non-nodata values unless ``classes`` is given).

    ``prob_raster_path``: uint8 probabilities (0-255) of the same size, as ``mtp predict`` writes them: band ``c`` is
    the probability of class ``c`` (background is not stored); a one-band raster scores every class. ``score`` is
    its mean over each polygon's pixels. ``progress(done_rows, total_rows)`` is called after each band of rows;
    ``cancel()`` is checked before each band and between the cleaning steps (:class:`VectorizeCancelled`).
    """
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
    opts = _options(classes, band.GetNoDataValue(), block_rows, min_area_m2, simplify_m, regularize, source, model,
                    progress, cancel)
    return _vectorize(_RasterRows(ds, prob_ds), ds.GetGeoTransform(), ds.GetProjection(), opts)


def vectorize_array(mask: np.ndarray, geotransform: Sequence[float], crs_wkt: str, *, prob: np.ndarray | None = None,
                    nodata: int | None = None, classes: Sequence[int] | None = None, block_rows: int = 1024,
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


def _options(classes: Sequence[int] | None, nodata: float | None, block_rows: int, min_area_m2: float,
             simplify_m: float, regularize: bool, source: str, model: str, progress: ProgressFn,
             cancel: CancelFn) -> _Options:
    if block_rows < 1:
        raise ValueError(f"block_rows must be at least 1, got {block_rows}")
    if min_area_m2 < 0 or simplify_m < 0:
        raise ValueError("min_area_m2 and simplify_m must not be negative")
    return _Options(None if classes is None else frozenset(int(c) for c in classes), nodata, block_rows,
                    float(min_area_m2), float(simplify_m), bool(regularize), source, model, progress, cancel)


class _RasterRows:
    def __init__(self, ds: gdal.Dataset, prob_ds: gdal.Dataset | None) -> None:
        self._band, self._prob = ds.GetRasterBand(1), prob_ds
        self.height, self.width = ds.RasterYSize, ds.RasterXSize
        self.has_prob = prob_ds is not None

    def classes(self, row0: int, rows: int) -> np.ndarray:
        return self._band.ReadAsArray(0, row0, self.width, rows)

    def prob(self, row0: int, rows: int, cls: int) -> np.ndarray:
        count = self._prob.RasterCount
        band = 1 if count == 1 else cls
        if not 1 <= band <= count:
            raise ValueError(f"class {cls} has no band in the {count}-band probability raster")
        return self._prob.GetRasterBand(band).ReadAsArray(0, row0, self.width, rows, buf_type=gdal.GDT_Byte)


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
# The shared path


def _vectorize(rows: _Rows, geotransform: Sequence[float], crs_wkt: str, opts: _Options) -> VectorResult:
    if geotransform[2] != 0 or geotransform[4] != 0:
        raise ValueError(f"rotated rasters are not supported (geotransform {tuple(geotransform)})")
    measure = _Measure(geotransform, crs_wkt, rows.width, rows.height)
    polys, cls, sums, counts, n_pieces, n_stitched = _polygonize(rows, opts)
    _check_cancel(opts.cancel)

    area = measure.area_m2(polys)
    big = area >= opts.min_area_m2
    polys, cls, sums, counts = polys[big], cls[big], sums[big], counts[big]
    polys, n_filled = _fill_small_holes(polys, measure, opts.min_area_m2)
    order = _reading_order(polys, cls)
    polys, cls, sums, counts = polys[order], cls[order], sums[order], counts[order]

    near = _near_pairs(polys)
    shares_edge = _shares_edge(polys, near)
    out = _simplify(polys, near, shares_edge, measure.px_m, opts.simplify_m) if opts.simplify_m > 0 else polys
    _check_cancel(opts.cancel)
    n_reg = n_rev = 0
    candidates = np.flatnonzero(~shares_edge)
    if opts.regularize and len(candidates):
        regular, ok = _regularize(polys[candidates], measure.px_m)
        chosen = candidates[ok]
        ok[ok] = ~_overlap_others(regular[ok], chosen, out)
        out = out.copy()
        out[candidates[ok]] = regular[ok]
        n_reg, n_rev = int(ok.sum()), int((~ok).sum())

    geoms = shapely.orient_polygons(_to_map(out, geotransform), exterior_cw=False)
    score = [None if n == 0 else float(s / (255.0 * n)) for s, n in zip(sums, counts)] if rows.has_prob else \
        [None] * len(geoms)
    attributes = {
        "id": list(range(1, len(geoms) + 1)),
        "class": [int(c) for c in cls],
        "score": score,
        "area_m2": [float(a) for a in measure.area_m2(out)],
        "perimeter_m": [float(p) for p in measure.perimeter_m(out)],
        "source": [opts.source] * len(geoms),
        "model": [opts.model] * len(geoms),
    }
    tally = {"pieces": n_pieces, "stitched": n_stitched, "small_dropped": int((~big).sum()), "holes_filled": n_filled,
             "regularized": n_reg, "reverted": n_rev, "polygons": len(geoms)}
    return VectorResult(list(geoms), attributes, crs_wkt, tally)


def _check_cancel(cancel: CancelFn) -> None:
    if cancel is not None and cancel():
        raise VectorizeCancelled("vectorization cancelled")


# ----------------------------------------------------------------------------------------------------------------
# Block-by-block polygonization and stitching (pixel frame: x = column, y = row, vertices on integers)


@dataclass
class _Block:
    polys: np.ndarray  # shapely Polygons, pixel frame
    cls: np.ndarray    # int64 class of each polygon
    sums: np.ndarray   # float64 sum of uint8 probabilities over the polygon's pixels (exact: integers < 2**53)
    counts: np.ndarray  # int64 pixels counted in ``sums``


def _polygonize(rows: _Rows, opts: _Options) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Canonical polygons of the whole raster with class, probability sums and pixel counts; pieces; stitched."""
    blocks: list[_Block] = []
    links: list[np.ndarray] = []
    offset = 0
    prev_last: tuple[np.ndarray, np.ndarray] | None = None  # (values, keep) of the previous block's last row
    prev_bottom = np.empty(0, np.int64)  # the previous block's pieces touching its bottom border (local indices)
    for row0 in range(0, rows.height, opts.block_rows):
        _check_cancel(opts.cancel)
        n_rows = min(opts.block_rows, rows.height - row0)
        values = rows.classes(row0, n_rows)
        keep = _selected(values, opts)
        block = _polygonize_block(values, keep, row0, rows)
        bounds = shapely.bounds(block.polys).reshape(-1, 4)
        if prev_last is not None:
            prev_offset = offset - len(blocks[-1].polys)
            links.append(_border_links(prev_last, (values[0], keep[0]), row0,
                                       (blocks[-1].polys, prev_bottom, prev_offset),
                                       (block.polys, np.flatnonzero(bounds[:, 1] == row0), offset)))
        blocks.append(block)
        prev_last = (values[-1].copy(), keep[-1].copy())
        prev_bottom = np.flatnonzero(bounds[:, 3] == row0 + n_rows)
        offset += len(block.polys)
        if opts.progress is not None:
            opts.progress(row0 + n_rows, rows.height)
    if not blocks:
        empty = np.empty(0, object)
        return empty, np.empty(0, np.int64), np.empty(0), np.empty(0, np.int64), 0, 0
    polys = np.concatenate([b.polys for b in blocks])
    cls = np.concatenate([b.cls for b in blocks])
    sums = np.concatenate([b.sums for b in blocks])
    counts = np.concatenate([b.counts for b in blocks])
    n_pieces = len(polys)
    links_arr = np.concatenate(links) if links else np.empty((0, 2), np.int64)
    polys, cls, sums, counts, stitched = _stitch(polys, cls, sums, counts, links_arr)
    polys, owner = _canonical(polys, stitched)
    return polys, cls[owner], sums[owner], counts[owner], n_pieces, int(stitched.sum())


def _selected(values: np.ndarray, opts: _Options) -> np.ndarray:
    """Pixels to polygonize: the chosen classes, or everything but 0 and nodata."""
    if opts.classes is not None:
        return np.isin(values, list(opts.classes))
    keep = values != 0
    if opts.nodata is not None:
        keep &= values != opts.nodata
    return keep


def _polygonize_block(values: np.ndarray, keep: np.ndarray, row0: int, rows: _Rows) -> _Block:
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
        return _Block(polys, cls, np.zeros(len(polys)), np.zeros(len(polys), np.int64))
    sums, counts = _prob_sums(_label_pieces(layer, values.shape, row0, pixels), cls, row0, rows)
    return _Block(polys, cls, sums, counts)


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
    piece_cls = np.concatenate([[np.iinfo(np.int64).min], cls])[flat]
    for c in np.unique(cls):
        inside = piece_cls == c
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


def _stitch(polys: np.ndarray, cls: np.ndarray, sums: np.ndarray, counts: np.ndarray,
            links: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Union of each linked group of pieces (probability sums and counts add up), and which are such unions."""
    _, first, group_of = np.unique(_components(len(polys), links), return_index=True, return_inverse=True)
    merged = polys[first].copy()
    sizes = np.bincount(group_of, minlength=len(first))
    by_group = np.argsort(group_of, kind="stable")
    members = np.split(by_group, np.cumsum(sizes)[:-1])
    for g in np.flatnonzero(sizes > 1):
        merged[g] = shapely.union_all(polys[members[g]])
    return (merged, cls[first], np.bincount(group_of, weights=sums, minlength=len(first)),
            np.bincount(group_of, weights=counts, minlength=len(first)).astype(np.int64), sizes > 1)


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


def _reading_order(polys: np.ndarray, cls: np.ndarray) -> np.ndarray:
    """Top to bottom, then left to right (centroids), then class, area and WKB: the same order for the same set."""
    if not len(polys):
        return np.empty(0, np.int64)
    c = shapely.get_coordinates(shapely.centroid(polys))
    area = shapely.area(polys)
    wkb = shapely.to_wkb(polys)
    return np.array(sorted(range(len(polys)), key=lambda i: (c[i, 1], c[i, 0], cls[i], area[i], wkb[i])), np.int64)


def _near_pairs(polys: np.ndarray) -> np.ndarray:
    """Pairs (i < j) of polygons whose bounding boxes meet: the only ones that can touch or interact when simplified
    (removing vertices keeps an outline inside its bounding box)."""
    i, j = shapely.STRtree(polys).query(polys)
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
