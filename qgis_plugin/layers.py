"""What the dock checks about a raster layer on the GUI thread, before any task starts: that MTP can read it and that
its file is georeferenced. Errors name the layer and the dock field, never a file the user did not pick."""
from __future__ import annotations

from osgeo import gdal
from qgis.core import QgsMapLayer

FIELD = "'Raster layer'"


def raster_source(layer: QgsMapLayer, field: str = FIELD) -> str:
    """The GDAL dataset name the engine reads for a raster layer (``field``: the dock field that chose it)."""
    if layer.providerType() != "gdal":
        raise ValueError(f"{layer.name()} is a '{layer.providerType()}' layer, but MTP reads raster files through "
                         f"GDAL; save it as a GeoTIFF (right-click the layer > Export > Save As…) and choose that "
                         f"layer under {field}")
    return layer.source()


def georeference_problem(layer: QgsMapLayer, field: str = FIELD) -> str | None:
    """Why the layer's file cannot be placed on the ground, or None. QGIS may show such a layer with a CRS of its
    own choosing (the "layers without CRS" setting), but the engine reads the file."""
    try:
        dataset = gdal.OpenEx(raster_source(layer, field), gdal.OF_RASTER | gdal.OF_READONLY)
    except RuntimeError:  # unreadable: the engine's own message explains it when the run starts
        return None
    if dataset is None:
        return None
    has_transform = dataset.GetGeoTransform(can_return_null=True) is not None
    if has_transform and dataset.GetSpatialRef() is not None:
        return None
    if not has_transform and (dataset.GetGCPCount() or dataset.GetMetadata("RPC")):
        return (f"{layer.name()} is georeferenced only by ground control points or RPCs: make a north-up copy "
                f"(Raster > Projections > Warp (Reproject)) and choose that layer under {field}")
    if not has_transform:
        return (f"{layer.name()} has no georeference (its file places no pixel on the ground): georeference it "
                f"(Layer > Georeferencer) and choose the result under {field}")
    return (f"{layer.name()} has no CRS in its file (a CRS set in QGIS's layer properties does not reach the file): "
            f"assign it with Raster > Projections > Assign Projection, then choose the layer under {field}")


def require_georeferenced(layer: QgsMapLayer, field: str = FIELD) -> str:
    """The layer's GDAL dataset name; ValueError with what to do when MTP cannot use it."""
    source = raster_source(layer, field)
    problem = georeference_problem(layer, field)
    if problem is not None:
        raise ValueError(problem)
    return source
