"""Tiled, streamed inference: sources (raster windows, in-memory images, two dates on one grid, read ahead in a
thread), the :class:`Predictor` (batches -> model -> blended rows on the device; a segmentor or a two-date change
detector), the :class:`InstancePredictor` (the same rows and one instance value per building) and sinks (GeoTIFF or
in-memory outputs)."""
from mtp_core.inference.instances import InstanceArraySink, InstanceGeoTiffSink, InstancePredictor
from mtp_core.inference.predictor import Precision, Predictor, RunStats
from mtp_core.inference.sinks import CLASS_NODATA, ArraySink, GeoTiffSink, RowSink
from mtp_core.inference.sources import ArraySource, RasterSource, TileSource, TwoDateSource

__all__ = ["CLASS_NODATA", "ArraySink", "ArraySource", "GeoTiffSink", "InstanceArraySink", "InstanceGeoTiffSink",
           "InstancePredictor", "Precision", "Predictor", "RasterSource", "RowSink", "RunStats", "TileSource",
           "TwoDateSource"]
