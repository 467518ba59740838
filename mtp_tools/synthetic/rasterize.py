"""Polygons in pixel coordinates -> pixels, with GDAL's rasterizer (the rule every GIS uses: a pixel belongs to a
polygon when its centre lies inside; later polygons are burnt over earlier ones)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import shapely
from osgeo import gdal, ogr, osr
from shapely.geometry import Polygon

from mtp_core.io import gdal_exceptions


def rasterize_polygons(polygons: Sequence[Polygon], height: int, width: int) -> np.ndarray:
    """Label image (int32): pixel = 1 + index of the polygon containing its centre, 0 where none does.

    Polygons are in pixel coordinates (x right, y down, pixel edges on integers); where polygons overlap the later
    one wins. ``rasterize_polygons(scene.buildings, h, w) > 0`` is exactly ``scene.mask``.
    """
    labels = np.zeros((height, width), np.int32)
    if len(polygons) == 0:
        return labels
    pixels = osr.SpatialReference()
    pixels.SetLocalCS("pixels")  # one (local) CRS on raster and layer, so GDAL burns without a CRS warning
    with gdal_exceptions():
        raster = gdal.GetDriverByName("MEM").Create("", width, height, 1, gdal.GDT_Int32)
        raster.SetGeoTransform((0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
        raster.SetSpatialRef(pixels)
        source = ogr.GetDriverByName("Memory").CreateDataSource("")  # must outlive the layer
        layer = source.CreateLayer("polygons", pixels, ogr.wkbPolygon)
        layer.CreateField(ogr.FieldDefn("label", ogr.OFTInteger))
        definition = layer.GetLayerDefn()
        layer.StartTransaction()
        for i, wkb in enumerate(shapely.to_wkb(np.asarray(polygons, dtype=object))):
            feature = ogr.Feature(definition)
            feature.SetField(0, i + 1)
            feature.SetGeometry(ogr.CreateGeometryFromWkb(wkb))
            layer.CreateFeature(feature)
        layer.CommitTransaction()
        gdal.RasterizeLayer(raster, [1], layer, options=["ATTRIBUTE=label"])
        return raster.GetRasterBand(1).ReadAsArray()


def pixels_of(polygons: Sequence[Polygon], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices (row * width + col) of the pixels some polygon covers, and the (last) polygon covering each."""
    labels = rasterize_polygons(polygons, height, width).ravel()
    flat = np.flatnonzero(labels)
    return flat, labels[flat].astype(np.int64) - 1


def coverage(polygons: Sequence[Polygon], height: int, width: int) -> np.ndarray:
    """Boolean (H*W,) union of possibly overlapping polygons."""
    return rasterize_polygons(polygons, height, width).ravel() > 0
