"""The part of a raster layer to segment: the whole layer, the map's visible extent, or the union of polygons.

Two halves, because QGIS objects belong to the GUI thread and the work does not:

* :func:`visible_extent` and :func:`polygons_wkt` read the canvas and the polygon layer on the GUI thread and give
  plain values in the raster layer's CRS (a bounding box, WKT).
* :func:`clip_raster` runs in the task: it writes a VRT of that part on the raster's own pixel grid (a window of
  whole pixels; for polygons also a cutline that makes the pixels outside them transparent, which the engine treats
  as nodata). The engine then reads the VRT as it reads any raster, so outputs keep the raster's grid and CRS.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from osgeo import gdal, ogr
from qgis.core import (
    QgsCoordinateTransform,
    QgsCsException,
    QgsGeometry,
    QgsMapLayer,
    QgsProject,
    QgsRectangle,
    QgsVectorLayer,
)
from qgis.gui import QgsMapCanvas

Bounds = tuple[float, float, float, float]  # xmin, ymin, xmax, ymax in the raster's CRS

#: A bound within this fraction of a pixel from a pixel edge is on that edge (floating-point noise of transforms).
_EDGE_TOLERANCE = 1e-6


class AreaError(ValueError):
    """The chosen area cannot be segmented; the message says what to choose instead."""


# ------------------------------------------------------------------------------------------ GUI thread
def visible_extent(layer: QgsMapLayer, canvas: QgsMapCanvas) -> Bounds:
    """The canvas's visible extent in the layer's CRS, cut to the layer."""
    transform = QgsCoordinateTransform(canvas.mapSettings().destinationCrs(), layer.crs(), QgsProject.instance())
    try:
        extent = transform.transformBoundingBox(canvas.extent())
    except QgsCsException as exc:
        raise AreaError(f"the visible map extent cannot be expressed in {layer.name()}'s CRS ({exc}); zoom in on "
                        "the layer or choose 'Whole layer'") from None
    return _bounds_on(layer, extent, "the visible map extent")


def polygons_wkt(layer: QgsMapLayer, polygons: QgsVectorLayer | None, selected_only: bool) -> str:
    """The union of the polygon layer's features (or its selection) in the raster layer's CRS, as WKT."""
    if polygons is None:
        raise AreaError("choose a polygon layer for the area, or choose 'Whole layer'")
    if selected_only and polygons.selectedFeatureCount() == 0:
        raise AreaError(f"no feature of {polygons.name()} is selected: select the polygons to segment, or untick "
                        "'Selected features only'")
    transform = QgsCoordinateTransform(polygons.crs(), layer.crs(), QgsProject.instance())
    parts = []
    for feature in polygons.getSelectedFeatures() if selected_only else polygons.getFeatures():
        geometry = QgsGeometry(feature.geometry())
        if geometry.isEmpty():
            continue
        geometry.get().dropZValue()  # plain 2D WKT for OGR
        geometry.get().dropMValue()
        try:
            geometry.transform(transform)
        except QgsCsException as exc:
            raise AreaError(f"a polygon of {polygons.name()} cannot be expressed in {layer.name()}'s CRS "
                            f"({exc})") from None
        parts.append(geometry)
    union = QgsGeometry.unaryUnion(parts)
    if union.isEmpty():
        raise AreaError(f"{polygons.name()} has no polygons to segment; choose another layer or 'Whole layer'")
    box = union.boundingBox()
    _bounds_on(layer, box, f"the polygons of {polygons.name()}")
    return union.asWkt()


def _bounds_on(layer: QgsMapLayer, extent: QgsRectangle, what: str) -> Bounds:
    part = extent.intersect(layer.extent())
    if part.isEmpty():
        raise AreaError(f"{what} does not overlap {layer.name()}: pan the map to the layer, or choose 'Whole layer'")
    return part.xMinimum(), part.yMinimum(), part.xMaximum(), part.yMaximum()


# ------------------------------------------------------------------------------------------ any thread
def pixel_window(geotransform: Sequence[float], width: int, height: int, bounds: Bounds) -> tuple[int, int, int, int]:
    """The whole pixels (x, y, columns, rows) of a north-up raster that the bounds touch."""
    x0, dx, rx, y0, ry, dy = geotransform
    if rx or ry:
        raise AreaError("the raster is rotated (its geotransform has rotation terms): choose 'Whole layer', or make a "
                        "north-up copy first (gdalwarp in.tif out.tif)")
    cols = sorted(((bounds[0] - x0) / dx, (bounds[2] - x0) / dx))
    rows = sorted(((bounds[1] - y0) / dy, (bounds[3] - y0) / dy))
    col0 = max(0, math.floor(cols[0] + _EDGE_TOLERANCE))
    col1 = min(width, math.ceil(cols[1] - _EDGE_TOLERANCE))
    row0 = max(0, math.floor(rows[0] + _EDGE_TOLERANCE))
    row1 = min(height, math.ceil(rows[1] - _EDGE_TOLERANCE))
    if col1 <= col0 or row1 <= row0:
        raise AreaError("the chosen area does not overlap the raster: choose another area or 'Whole layer'")
    return col0, row0, col1 - col0, row1 - row0


def clip_raster(raster: str, out_path: Path, bounds: Bounds | None = None, polygons: str | None = None) -> Path:
    """A VRT at ``out_path`` of the raster's pixels inside ``bounds`` or inside the ``polygons`` WKT (raster CRS)."""
    from mtp_core.io import open_raster

    source = open_raster(raster)
    if polygons is not None:
        bounds = ogr.CreateGeometryFromWkt(polygons).GetEnvelope()  # (xmin, xmax, ymin, ymax)
        bounds = (bounds[0], bounds[2], bounds[1], bounds[3])
    gt = source.GetGeoTransform()
    x, y, columns, rows = pixel_window(gt, source.RasterXSize, source.RasterYSize, bounds)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if polygons is None:
            gdal.Translate(str(out_path), source, format="VRT", srcWin=[x, y, columns, rows])
        else:
            corners = (gt[0] + x * gt[1], gt[3] + y * gt[5], gt[0] + (x + columns) * gt[1], gt[3] + (y + rows) * gt[5])
            cutline = _write_cutline(out_path.with_suffix(".cutline.gpkg"), polygons, source.GetSpatialRef())
            gdal.Warp(str(out_path), source, format="VRT", cutlineDSName=str(cutline), dstAlpha=True,
                             outputBounds=(min(corners[0], corners[2]), min(corners[1], corners[3]),
                                           max(corners[0], corners[2]), max(corners[1], corners[3])),
                             width=columns, height=rows, resampleAlg="near")
    except RuntimeError as exc:
        raise AreaError(f"GDAL could not cut the area out of {raster} ({exc}); choose 'Whole layer'") from exc
    return out_path  # the VRT datasets above were dropped at once, which wrote and closed them


def _write_cutline(path: Path, wkt: str, srs) -> Path:
    dataset = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = dataset.CreateLayer("area", srs=srs, geom_type=ogr.wkbUnknown)
    feature = ogr.Feature(layer.GetLayerDefn())
    feature.SetGeometry(ogr.CreateGeometryFromWkt(wkt))
    layer.CreateFeature(feature)
    dataset = None  # closes and flushes the file before GDAL reads it
    return path
