"""Ground metres in any CRS: the one rule behind every area, length, pixel size, ``--min-area`` and ``--simplify``.

A CRS's units are not ground metres in general: Web Mercator's are 1/cos(latitude) too long (1.32 at 40.6° N, so
areas 1.74x too big), degrees are not lengths at all, and even UTM's differ by up to 0.1 %. So everything is measured
in one kind of frame: a Lambert azimuthal equal-area projection (LAEA) on the CRS's own ellipsoid, centred on the
data. It is equal-area everywhere (areas are exact, however large the raster) and its lengths are exact at the
centre and within (d / 2R)² of exact at a distance d (1.5e-5 at 50 km).

Polygons are measured with the local Jacobian of pixel → LAEA at each polygon (:meth:`GroundFrame.pixel_jacobians`):
over a building's extent the map is affine to a few parts in a billion, and four points per polygon cost far less
than projecting every vertex. Rasters without a CRS (``--pixel-crs``) are taken to be in metres.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import shapely
from osgeo import osr

from mtp_core.io.gdal_errors import raises_gdal_errors


def apply_geotransform(gt: Sequence[float], col: np.ndarray | float, row: np.ndarray | float):
    """Map coordinates of pixel-frame points (column, row); rotation terms included."""
    return gt[0] + col * gt[1] + row * gt[2], gt[3] + col * gt[4] + row * gt[5]


class GroundFrame:
    """Coordinates of one CRS taken to ground metres (LAEA on its ellipsoid, centred at ``centre``).

    ``crs_wkt`` '' (no CRS) or a CRS without an ellipsoid (a local engineering CRS): its units are taken as metres.
    """

    @raises_gdal_errors
    def __init__(self, crs_wkt: str, centre: tuple[float, float]) -> None:
        self._to_laea: osr.CoordinateTransformation | None = None
        self._unit = 1.0
        if not crs_wkt:
            return
        srs = osr.SpatialReference(wkt=crs_wkt)
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        if srs.IsLocal() or not (srs.IsGeographic() or srs.IsProjected()):
            self._unit = srs.GetLinearUnits() or 1.0
            return
        geog = srs.CloneGeogCS()
        geog.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        lon, lat = osr.CoordinateTransformation(srs, geog).TransformPoint(*centre)[:2]
        degrees = math.degrees(geog.GetAngularUnits())
        laea = osr.SpatialReference()
        laea.CopyGeogCSFrom(srs)
        laea.SetLAEA(max(-90.0, min(90.0, lat * degrees)), lon * degrees, 0.0, 0.0)
        laea.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        self._to_laea = osr.CoordinateTransformation(srs, laea)

    @classmethod
    def for_raster(cls, crs_wkt: str, gt: Sequence[float], width: int, height: int) -> "GroundFrame":
        return cls(crs_wkt, apply_geotransform(gt, width / 2.0, height / 2.0))

    @classmethod
    def for_geometries(cls, geometries: np.ndarray, crs_wkt: str) -> "GroundFrame":
        if not len(geometries):
            return cls(crs_wkt, (0.0, 0.0))
        x0, y0, x1, y1 = shapely.total_bounds(geometries)
        return cls(crs_wkt, ((x0 + x1) / 2.0, (y0 + y1) / 2.0))

    def points(self, xy: np.ndarray) -> np.ndarray:
        """(n, 2) CRS coordinates -> (n, 2) ground metres."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        if self._to_laea is None:
            return xy * self._unit
        if not len(xy):
            return xy
        with_gdal = raises_gdal_errors(self._to_laea.TransformPoints)
        return np.asarray(with_gdal(xy), dtype=np.float64)[:, :2]

    def project(self, geometries: np.ndarray) -> np.ndarray:
        """Geometries in CRS coordinates -> the same geometries in ground metres (every vertex projected)."""
        return shapely.transform(geometries, self.points) if len(geometries) else geometries

    def pixel_jacobians(self, gt: Sequence[float], cols: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """(n, 2, 2) ground metres per pixel step at pixel-frame points: column k is the ground vector of one step
        along columns (k=0) or rows (k=1)."""
        cols, rows = np.asarray(cols, np.float64), np.asarray(rows, np.float64)
        base = np.stack(apply_geotransform(gt, cols, rows), axis=-1)
        steps = np.array([[gt[1], gt[4]], [gt[2], gt[5]]])  # map vector of one column step, one row step
        # central differences: exact to second order in the step, so one pixel is a step small enough
        ground = self.points(np.concatenate([base + steps[0], base - steps[0], base + steps[1], base - steps[1]]))
        ground = ground.reshape(4, -1, 2)
        return np.stack([ground[0] - ground[1], ground[2] - ground[3]], axis=-1) / 2.0

    def pixel_size_m(self, gt: Sequence[float], width: int, height: int) -> tuple[float, float]:
        """Ground length of one pixel step along columns and along rows, at the raster centre."""
        jac = self.pixel_jacobians(gt, np.array([width / 2.0]), np.array([height / 2.0]))[0]
        return float(np.hypot(*jac[:, 0])), float(np.hypot(*jac[:, 1]))


class PixelMeasure:
    """Areas and lengths in ground metres of polygons in a raster's pixel frame (x = column, y = row).

    Each polygon is measured from the pixel corner at its bounding box's minimum, with the Jacobian at its centroid,
    so the numbers do not depend on where the pixel frame starts. ``whole``: the grid (geotransform, width, height)
    of the raster this one is a window of; measures are then taken exactly as for that raster (same frame, same
    reference pixel size, same points), so a window's polygons measure as the whole raster's do, to the last bit.
    """

    def __init__(self, gt: Sequence[float], crs_wkt: str, width: int, height: int,
                 whole: tuple[Sequence[float], int, int] | None = None) -> None:
        grid = whole or (gt, width, height)
        self.gt = tuple(grid[0])
        col, row = map_to_pixel(self.gt, gt[0], gt[3])
        self.offset = np.array([round(col), round(row)], np.float64)  # of this grid in the whole raster's
        self.frame = GroundFrame.for_raster(crs_wkt, *grid)
        #: pixel size in ground metres (along columns, along rows) at the raster centre: the scale of the
        #: simplification and regularization tolerances
        self.px_m = self.frame.pixel_size_m(*grid)

    def _local(self, polys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Polygons moved to their own corner, and each one's Jacobian (pixel -> ground metres) at its centroid."""
        corner = np.floor(shapely.bounds(polys).reshape(-1, 2, 2)[:, 0])
        owner = shapely.get_coordinates(polys, return_index=True)[1]
        local = shapely.transform(polys, lambda xy: xy - corner[owner])
        centre = shapely.get_coordinates(shapely.centroid(local)).reshape(-1, 2) + corner + self.offset
        return local, self.frame.pixel_jacobians(self.gt, centre[:, 0], centre[:, 1])

    def area_m2(self, polys: np.ndarray) -> np.ndarray:
        if not len(polys):
            return np.empty(0)
        local, jac = self._local(polys)
        return shapely.area(local) * np.abs(np.linalg.det(jac))

    def perimeter_m(self, polys: np.ndarray) -> np.ndarray:
        if not len(polys):
            return np.empty(0)
        local, jac = self._local(polys)
        owner = shapely.get_coordinates(local, return_index=True)[1]
        return shapely.length(shapely.transform(local, lambda xy: np.einsum("nij,nj->ni", jac[owner], xy)))


def map_to_pixel(gt: Sequence[float], x: float, y: float) -> tuple[float, float]:
    """Pixel-frame (column, row) of a map point: the inverse of :func:`apply_geotransform`."""
    det = gt[1] * gt[5] - gt[2] * gt[4]
    dx, dy = x - gt[0], y - gt[3]
    return (gt[5] * dx - gt[2] * dy) / det, (gt[1] * dy - gt[4] * dx) / det


def to_metric(geometries: np.ndarray, crs_wkt: str) -> np.ndarray:
    """Geometries of one layer in ground metres (a frame centred on the layer), for areas, lengths and overlaps."""
    geometries = np.asarray(geometries, dtype=object)
    return GroundFrame.for_geometries(geometries, crs_wkt).project(geometries)
