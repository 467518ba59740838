"""Metrics shared by training, the CLI and QGIS: MMSeg-equal pixel metrics (:mod:`.pixel`), the SpaceNet polygon F1
(:mod:`.polygon`) and the file readers behind ``mtp evaluate`` (:mod:`.readers`)."""
from mtp_core.metrics.pixel import AREA_ROWS, PER_CLASS_KEYS, SUMMARY_KEYS, PixelMetrics, intersect_and_union
from mtp_core.metrics.polygon import Match, MatchResult, Rules, polygon_f1
from mtp_core.metrics.readers import (
    PolygonSet,
    SpaceNetEvaluation,
    aoi_from_image_id,
    evaluate_files,
    evaluate_spacenet_csv,
    read_spacenet_csv,
    read_vector_file,
    sum_by_aoi,
)

__all__ = [
    "AREA_ROWS", "PER_CLASS_KEYS", "SUMMARY_KEYS", "Match", "MatchResult", "PixelMetrics", "PolygonSet", "Rules",
    "SpaceNetEvaluation", "aoi_from_image_id", "evaluate_files", "evaluate_spacenet_csv", "intersect_and_union",
    "polygon_f1", "read_spacenet_csv", "read_vector_file", "sum_by_aoi",
]
