"""Class raster -> clean, attributed building polygons: polygonize and stitch, clean, simplify, regularize, measure in
ground metres, stream to a vector file (:mod:`.stream` has the whole story)."""
from mtp_core.vectorize.stream import (
    FIELDS,
    VectorizeCancelled,
    VectorResult,
    vectorize_array,
    vectorize_raster,
    vectorize_raster_to_file,
)

__all__ = ["FIELDS", "VectorResult", "VectorizeCancelled", "vectorize_array", "vectorize_raster",
           "vectorize_raster_to_file"]
