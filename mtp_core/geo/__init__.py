"""Georeferenced I/O: GDAL rasters (describe, read plans at the model's ground resolution, windows, streamed GeoTIFF
output, warping back to the source grid), band scaling, and OGR vector files."""
from __future__ import annotations

from mtp_core.geo.raster import (
    PIXEL_GEOTRANSFORM,
    GeoError,
    GeoTiffWriter,
    RasterInfo,
    ReadPlan,
    describe_raster,
    open_raster,
    plan_read,
    read_window,
    utm_epsg,
    warp_to_grid,
    write_rgb_png,
)
from mtp_core.geo.scaling import BandScaler
from mtp_core.geo.vector import read_vector, to_metric, write_vector

__all__ = [
    "PIXEL_GEOTRANSFORM", "BandScaler", "GeoError", "GeoTiffWriter", "RasterInfo", "ReadPlan", "describe_raster",
    "open_raster", "plan_read", "read_vector", "read_window", "to_metric", "utm_epsg", "warp_to_grid",
    "write_rgb_png", "write_vector",
]
