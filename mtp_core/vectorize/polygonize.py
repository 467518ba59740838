"""Block-by-block polygonization and stitching, in the pixel frame (x = column, y = row, vertices on integers).

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
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
import shapely
from osgeo import gdal, gdal_array, ogr, osr

from mtp_core.vectorize.clean import components
from mtp_core.vectorize.rings import cyclic, from_open_rings, open_rings


class Rows(Protocol):
    """Row bands of a class raster and, optionally, of its uint8 probabilities."""

    height: int
    width: int
    has_prob: bool

    def classes(self, row0: int, rows: int) -> np.ndarray: ...

    def prob(self, row0: int, rows: int, cls: int) -> np.ndarray: ...


@dataclass
class Polys:
    """Polygons in the pixel frame (x = column, y = row, vertices on integers) with one value each per column."""

    polys: np.ndarray   # shapely Polygons
    cls: np.ndarray     # int64 class
    sums: np.ndarray    # float64 sum of uint8 probabilities over the polygon's pixels (exact: integers < 2**53)
    counts: np.ndarray  # int64 pixels counted in ``sums``

    @staticmethod
    def empty() -> "Polys":
        return Polys(np.empty(0, object), np.empty(0, np.int64), np.empty(0), np.empty(0, np.int64))

    @staticmethod
    def concat(parts: Sequence["Polys"]) -> "Polys":
        return Polys(*(np.concatenate([getattr(p, name) for p in parts]) for name in ("polys", "cls", "sums",
                                                                                         "counts")))

    def take(self, index: np.ndarray) -> "Polys":
        return Polys(self.polys[index], self.cls[index], self.sums[index], self.counts[index])

    def __len__(self) -> int:
        return len(self.polys)


class Stitcher:
    """Pieces of the bands joined across band borders; a region is closed (handed on whole, in canonical form) once
    no piece of it touches the last band's bottom border."""

    def __init__(self) -> None:
        self.open = Polys.empty()
        self.group = np.empty(0, np.int64)  # the region (0..n-1) of each open piece
        self.last_row: tuple[np.ndarray, np.ndarray] | None = None  # (values, keep) above the next border
        self.pieces = self.stitched = 0

    def add(self, block: Polys, values: np.ndarray, keep: np.ndarray, row0: int) -> Polys:
        """The regions closed by this band (which starts at pixel row ``row0``)."""
        self.pieces += len(block)
        n_open = len(self.open)
        pieces = Polys.concat([self.open, block])
        _, first = np.unique(self.group, return_index=True)
        pairs = [np.stack([np.arange(n_open), first[self.group]], axis=1)]
        if self.last_row is not None and n_open and len(block):
            above = np.flatnonzero(shapely.bounds(self.open.polys).reshape(-1, 4)[:, 3] == row0)
            below = np.flatnonzero(shapely.bounds(block.polys).reshape(-1, 4)[:, 1] == row0)
            pairs.append(_border_links(self.last_row, (values[0], keep[0]), row0, (self.open.polys, above, 0),
                                       (block.polys, below, n_open)))
        label = components(len(pieces), np.concatenate(pairs))
        touching = shapely.bounds(pieces.polys).reshape(-1, 4)[:, 3] == row0 + len(values)
        is_open = np.isin(label, label[touching])
        self.open = pieces.take(is_open)
        self.group = np.unique(label[is_open], return_inverse=True)[1].reshape(-1)
        self.last_row = (values[-1].copy(), keep[-1].copy())
        return self._close(pieces.take(~is_open), label[~is_open])

    def close(self) -> Polys:
        """The regions still open at the raster's bottom."""
        closed = self._close(self.open, self.group)
        self.open, self.group = Polys.empty(), np.empty(0, np.int64)
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

    def _close(self, pieces: Polys, label: np.ndarray) -> Polys:
        if not len(pieces):
            return Polys.empty()
        merged, stitched = _stitch(pieces, label)
        self.stitched += int(stitched.sum())
        polys, owner = _canonical(merged.polys, stitched)
        return Polys(polys, merged.cls[owner], merged.sums[owner], merged.counts[owner])


def selected(values: np.ndarray, classes: frozenset[int] | None, nodata: float | None) -> np.ndarray:
    """Pixels to polygonize: the chosen classes, or everything but 0 and nodata."""
    if classes is not None:
        return np.isin(values, list(classes))
    keep = values != 0
    if nodata is not None:
        keep &= values != nodata
    return keep


def polygonize_block(values: np.ndarray, keep: np.ndarray, row0: int, rows: Rows) -> Polys:
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
        return Polys(polys, cls, np.zeros(len(polys)), np.zeros(len(polys), np.int64))
    sums, counts = _prob_sums(_label_pieces(layer, values.shape, row0, pixels), cls, row0, rows)
    return Polys(polys, cls, sums, counts)


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


def _prob_sums(labels: np.ndarray, cls: np.ndarray, row0: int, rows: Rows) -> tuple[np.ndarray, np.ndarray]:
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


def _stitch(pieces: Polys, label: np.ndarray) -> tuple[Polys, np.ndarray]:
    """Union of the pieces of each region (probability sums and counts add up), and which are such unions."""
    _, first, group_of = np.unique(label, return_index=True, return_inverse=True)
    group_of = group_of.reshape(-1)
    merged = pieces.polys[first].copy()
    sizes = np.bincount(group_of, minlength=len(first))
    members = np.split(np.argsort(group_of, kind="stable"), np.cumsum(sizes)[:-1])
    for g in np.flatnonzero(sizes > 1):
        merged[g] = shapely.union_all(pieces.polys[members[g]])
    return (Polys(merged, pieces.cls[first], np.bincount(group_of, weights=pieces.sums, minlength=len(first)),
                   np.bincount(group_of, weights=pieces.counts, minlength=len(first)).astype(np.int64)), sizes > 1)


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
    xy, ring_of, ring_poly = open_rings(polys)
    before, after = cyclic(ring_of)
    d_in, d_out = xy - xy[before], xy[after] - xy
    corner = d_in[:, 0] * d_out[:, 1] - d_in[:, 1] * d_out[:, 0] != 0
    return from_open_rings(xy[corner], ring_of[corner], ring_poly)
