"""MTP's multi-task pretraining framework: a shared encoder, task decoders as plug-ins (semantic segmentation,
instance segmentation; rotated detection to come) and per-dataset predictors, in the released checkpoint layout."""
from mtp_core.models.multitask.framework import SAMRS_DATASETS, DatasetSpec, MultiTaskModel, sum_losses, task_of_key
from mtp_core.models.multitask.insseg import InstanceSegDecoder
from mtp_core.models.multitask.samrs import SAMRS_CLASSES
from mtp_core.models.multitask.semseg import SemanticSegDecoder
from mtp_core.models.multitask.structures import Batch, ImageMeta, InstanceResult, Sample
from mtp_core.models.multitask.task import TaskDecoder

__all__ = [
    "SAMRS_CLASSES",
    "SAMRS_DATASETS",
    "Batch",
    "DatasetSpec",
    "ImageMeta",
    "InstanceResult",
    "InstanceSegDecoder",
    "MultiTaskModel",
    "Sample",
    "SemanticSegDecoder",
    "TaskDecoder",
    "sum_losses",
    "task_of_key",
]
