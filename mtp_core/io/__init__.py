"""Georeferenced I/O without torch: GDAL rasters (describe, read plans at the model's ground resolution, windows),
GeoTIFF output (streamed, Cloud-Optimized, warped back to the source grid), band scaling, OGR vector files, ground
metres for any CRS and atomic files. GDAL raises Python exceptions only inside these calls (:mod:`.gdal_errors`)."""
from __future__ import annotations

from mtp_core.errors import GeoError
from mtp_core.io.atomic import atomic_path
from mtp_core.io.gdal_errors import gdal_exceptions
from mtp_core.io.geotiff import GeoTiffWriter, warp_to_grid, write_rgb_png
from mtp_core.io.metres import GroundFrame, PixelMeasure, to_metric
from mtp_core.io.raster import (
    PIXEL_GEOTRANSFORM,
    RasterInfo,
    ReadPlan,
    describe_raster,
    open_raster,
    plan_read,
    read_window,
    utm_epsg,
)
from mtp_core.io.scaling import BandScaler
from mtp_core.io.vector import VectorReader, VectorWriter, read_vector, write_vector

__all__ = [
    "PIXEL_GEOTRANSFORM", "BandScaler", "GeoError", "GeoTiffWriter", "GroundFrame", "PixelMeasure", "RasterInfo",
    "ReadPlan", "VectorReader", "VectorWriter", "atomic_path", "describe_raster", "gdal_exceptions", "open_raster",
    "plan_read", "read_vector", "read_window", "to_metric", "utm_epsg", "warp_to_grid", "write_rgb_png",
    "write_vector",
]
