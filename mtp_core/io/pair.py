"""Two rasters of one place on one grid: the checks a change detector needs and the second date warped onto the
first's model grid.

Why: a change detector compares the two dates pixel by pixel, so both must be read on exactly the same grid. The
first raster sets it (its own grid, or a warped VRT at the model's ground resolution: :func:`~.raster.plan_read`);
the second is read through an in-memory GDAL warped VRT onto that grid (any CRS, any pixel size), so only the
windows read are resampled and memory stays flat in raster size. Before that, two rasters that do not overlap, or
whose ground pixels differ so much that one would be mostly interpolation, are refused with a message that says so.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import shapely
from osgeo import gdal, osr

from mtp_core.errors import GeoError
from mtp_core.io.gdal_errors import raises_gdal_errors
from mtp_core.io.metres import GroundFrame, apply_geotransform
from mtp_core.io.raster import RasterInfo, ReadPlan, open_raster

#: pixel sizes further apart than this factor are refused: the coarser date would be mostly interpolation
MAX_PIXEL_RATIO = 4.0


@dataclass(frozen=True)
class PairCheck:
    """How the two rasters relate: the share of the first raster's footprint the second covers, and the ratio of
    their ground pixel sizes (second / first, geometric mean of both axes)."""

    overlap: float
    pixel_ratio: float


def footprint(info: RasterInfo, crs_wkt: str) -> shapely.Polygon:
    """The raster's outline (its four corners and edge points, so curved reprojections stay close) in ``crs_wkt``."""
    steps = 16
    edge = [(info.width * i / steps, 0.0) for i in range(steps)] + [(info.width, info.height * i / steps)
                                                                     for i in range(steps)]
    edge += [(info.width * (steps - i) / steps, info.height) for i in range(steps)]
    edge += [(0.0, info.height * (steps - i) / steps) for i in range(steps)]
    points = [apply_geotransform(info.geotransform, c, r) for c, r in edge]
    if crs_wkt and info.crs_wkt:
        src, dst = osr.SpatialReference(), osr.SpatialReference()
        src.ImportFromWkt(info.crs_wkt)
        dst.ImportFromWkt(crs_wkt)
        for srs in (src, dst):
            srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        if not src.IsSame(dst):
            transform = osr.CoordinateTransformation(src, dst)
            points = [transform.TransformPoint(x, y)[:2] for x, y in points]
    return shapely.make_valid(shapely.Polygon(points))


@raises_gdal_errors
def check_pair(first: RasterInfo, second: RasterInfo, max_pixel_ratio: float = MAX_PIXEL_RATIO) -> PairCheck:
    """Refuses two rasters that cannot be compared: one georeferenced and not the other, rasters without georeference
    of different sizes, no overlap on the ground, or ground pixels more than ``max_pixel_ratio`` apart."""
    if first.has_georeference != second.has_georeference:
        plain = first if not first.has_georeference else second
        raise GeoError(f"{plain.label} has no georeference but the other date has: give it its CRS and position "
                       "(QGIS: Georeferencer, or gdal_edit.py -a_srs -a_ullr), so the two can be put on one grid")
    ratio = math.sqrt(second.pixel_size_m[0] * second.pixel_size_m[1] / (first.pixel_size_m[0] * first.pixel_size_m[1]))
    if not first.has_georeference:
        if (first.width, first.height) != (second.width, second.height):
            raise GeoError(f"{first.label} ({first.width}x{first.height} px) and {second.label} ({second.width}x"
                           f"{second.height} px) have no georeference and differ in size: without one the pixels "
                           "can only be compared when both images have the same size")
        return PairCheck(1.0, 1.0)
    one, two = footprint(first, first.crs_wkt), footprint(second, first.crs_wkt)
    overlap = one.intersection(two).area / one.area if one.area > 0 else 0.0
    if overlap <= 1e-6:
        raise GeoError(f"{first.label} and {second.label} do not overlap on the ground (after reprojecting the second "
                       "into the first's CRS): give two images of the same place")
    if not 1.0 / max_pixel_ratio <= ratio <= max_pixel_ratio:
        sizes = " and ".join(f"{info.label} {_size(info)}" for info in (first, second))
        raise GeoError(f"the two dates' pixels differ too much in ground size ({sizes}, {ratio:.1f}x): the coarser "
                       f"one would be mostly interpolation; resample them to within {max_pixel_ratio:g}x of each "
                       "other first (gdalwarp -tr)")
    return PairCheck(overlap, ratio)


def _size(info: RasterInfo) -> str:
    return f"{info.pixel_size_m[0]:.2f} x {info.pixel_size_m[1]:.2f} m"


def same_grid(info: RasterInfo, grid: ReadPlan) -> bool:
    """Whether ``info``'s own pixels are exactly ``grid``'s (then no warping is needed)."""
    if (info.width, info.height) != (grid.width, grid.height) or info.has_georeference != bool(grid.crs_wkt):
        return False
    if any(not math.isclose(a, b, rel_tol=0, abs_tol=1e-9 * max(1.0, abs(b)))
           for a, b in zip(info.geotransform, grid.geotransform)):
        return False
    if not info.has_georeference:
        return True
    a, b = osr.SpatialReference(), osr.SpatialReference()
    a.ImportFromWkt(info.crs_wkt)
    b.ImportFromWkt(grid.crs_wkt)
    return bool(a.IsSame(b))


@raises_gdal_errors
def warp_onto(info: RasterInfo, grid: ReadPlan) -> ReadPlan:
    """A plan that reads ``info``'s raster on ``grid`` (size, geotransform, CRS): directly when it is already that
    grid, else through an in-memory warped VRT (bilinear; outside its footprint is nodata, or an added alpha band
    when the raster declares no nodata, as :func:`~.raster.plan_read` does)."""
    if same_grid(info, grid):
        return ReadPlan(open_raster(info.path), info.width, info.height, info.geotransform, info.crs_wkt, False, info)
    gt = grid.geotransform
    if gt[2] != 0.0 or gt[4] != 0.0:
        raise GeoError(f"{grid.info.label} has a rotated geotransform; the other date cannot be warped onto it: make a "
                       "north-up copy first (gdalwarp in.tif out.tif)")
    if not grid.crs_wkt:
        raise GeoError(f"{info.label} and {grid.info.label} have no georeference and are not on one grid")
    x0, y0 = gt[0], gt[3]
    x1, y1 = x0 + gt[1] * grid.width, y0 + gt[5] * grid.height
    if all(v is not None for v in info.nodata):
        values = " ".join(repr(float(v)) for v in info.nodata)
        nodata = {"srcNodata": values, "dstNodata": values}
    else:
        nodata = {"dstAlpha": True}
    # As plan_read: GDAL widens the bilinear kernel when it shrinks an image; for at most 1.25x there is nothing to
    # smooth away, so the plain 2x2 kernel is kept (and it is 2.7x faster).
    grid_m = GroundFrame.for_raster(grid.crs_wkt, gt, grid.width, grid.height).pixel_size_m(gt, grid.width, grid.height)
    plain_kernel = [f"{axis}SCALE=1" for axis, size, target in zip("XY", info.pixel_size_m, grid_m)
                    if size / target >= 0.8]
    vrt = gdal.Warp("", open_raster(info.path), format="VRT", dstSRS=grid.crs_wkt,
                    outputBounds=(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), width=grid.width,
                    height=grid.height, resampleAlg="bilinear", warpOptions=plain_kernel, **nodata)
    return ReadPlan(vrt, vrt.RasterXSize, vrt.RasterYSize, tuple(vrt.GetGeoTransform()), grid.crs_wkt, True, info,
                    vrt.GetMetadata("xml:VRT")[0])
