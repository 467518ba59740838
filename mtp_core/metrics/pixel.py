"""Pixel metrics equal to MMSegmentation 1.0.0's ``IoUMetric`` (what MTP reports as mIoU on SpaceNet v1): per-class
areas accumulated over the whole split, then float32 ratios, ``np.nanmean`` and the x100, 2-decimal rounding of
MMSeg's ``compute_metrics``."""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

AREA_ROWS = ("intersect", "union", "pred", "label")
SUMMARY_KEYS = ("aAcc", "mIoU", "mAcc", "mDice", "mFscore", "mPrecision", "mRecall")
PER_CLASS_KEYS = ("IoU", "Acc", "Dice", "Fscore", "Precision", "Recall")


def _as_class_map(x: Tensor | np.ndarray, what: str) -> Tensor:
    tensor = torch.as_tensor(x)
    if tensor.is_floating_point() or tensor.is_complex():
        raise TypeError(f"{what} must hold integer class indices, got dtype {tensor.dtype}")
    return tensor.long()


def intersect_and_union(
    pred: Tensor | np.ndarray, label: Tensor | np.ndarray, num_classes: int, ignore_index: int = 255,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-class pixel counts of one prediction/label pair (or a batch), as MMSeg's ``IoUMetric.intersect_and_union``.

    Pixels whose label is ``ignore_index`` are dropped first. MMSeg bins with ``torch.histc(bins=K, min=0,
    max=K-1)``, which for integer maps counts exactly the values ``0..K-1``; ``bincount`` over those values gives
    the same counts as int64, exact beyond float32's 2**24 pixels. Returns ``(area_intersect, area_union,
    area_pred, area_label)``, each an int64 tensor of shape ``(num_classes,)`` on the inputs' device.
    """
    pred_t, label_t = _as_class_map(pred, "pred"), _as_class_map(label, "label")
    if pred_t.shape != label_t.shape:
        raise ValueError(f"pred and label shapes differ: pred {tuple(pred_t.shape)}, label {tuple(label_t.shape)}")
    keep = label_t != ignore_index
    pred_t, label_t = pred_t[keep], label_t[keep]
    area_intersect = _class_counts(pred_t[pred_t == label_t], num_classes)
    area_pred = _class_counts(pred_t, num_classes)
    area_label = _class_counts(label_t, num_classes)
    return area_intersect, area_pred + area_label - area_intersect, area_pred, area_label


def _class_counts(values: Tensor, num_classes: int) -> Tensor:
    """Counts of ``0..num_classes-1``; other values are not counted (as ``histc`` ignores out-of-range values)."""
    in_range = values[(values >= 0) & (values < num_classes)]
    return torch.bincount(in_range, minlength=num_classes)


def _round_like_mmseg(value: np.floating) -> float:
    """MMSeg's ``np.round(v * 100, 2)`` in float32, returned as the plain float of that 2-decimal number.

    MMSeg returns a float32 (logged as e.g. ``84.2``); its nearest float64 prints the same and is JSON-safe.
    """
    rounded = np.round(np.float32(value) * np.float32(100), 2)
    return round(float(rounded), 2)


def _nanmean_f32(values: np.ndarray) -> np.float32:
    with warnings.catch_warnings():  # all-NaN (e.g. no labelled pixel at all) is NaN, as in MMSeg
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.float32(np.nanmean(values))


class PixelMetrics:
    """Accumulator equal to MMSeg 1.0.0 ``IoUMetric(iou_metrics=['mIoU', 'mDice', 'mFscore'], beta=1)``.

    ``update()`` adds each pair's counts to ``total_areas``, an int64 tensor of shape ``(4, num_classes)`` with
    rows ``AREA_ROWS`` (intersect, union, pred, label). Ranks of a distributed evaluation each accumulate their own
    samples, then ``reduce_()`` sums the counts (the only state), and ``compute()`` gives the dataset-level metrics.
    MTP's "mF1" is ``mFscore``; with beta = 1 it equals mDice except where a class has no prediction or no label
    (Fscore NaN and skipped, Dice 0).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, class_names: Sequence[str] | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class_names given for num_classes={num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = tuple(class_names) if class_names is not None else tuple(str(i) for i in range(num_classes))
        self.total_areas = torch.zeros(len(AREA_ROWS), num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.total_areas.zero_()

    def update(self, pred: Tensor | np.ndarray, label: Tensor | np.ndarray) -> None:
        """Add one prediction/label pair (class maps of the same shape; a batch is summed)."""
        areas = intersect_and_union(pred, label, self.num_classes, self.ignore_index)
        self.total_areas += torch.stack(areas).cpu()

    def reduce_(self, process_group: Any = None) -> "PixelMetrics":
        """Sum ``total_areas`` over the ranks of ``process_group`` (in place); a no-op without torch.distributed.

        NCCL reduces CUDA tensors only, so the counts travel through the current CUDA device there.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return self
        device = torch.device("cpu")
        if dist.get_backend(process_group) == dist.Backend.NCCL:
            device = torch.device("cuda", torch.cuda.current_device())
        areas = self.total_areas.to(device)
        dist.all_reduce(areas, op=dist.ReduceOp.SUM, group=process_group)
        self.total_areas.copy_(areas.cpu())
        return self

    def per_class(self, nan_to_num: float | None = None) -> dict[str, np.ndarray]:
        """Unrounded float32 fractions as MMSeg's ``total_area_to_metrics``: ``aAcc`` (0-d) and one value per class.

        Ratios are float32 divisions of the counts (0/0 is NaN); ``Fscore = (1+b²)·P·R / (b²·P + R)`` per class,
        so it is NaN where P or R is, and can differ from ``Dice`` in the last bit.
        """
        intersect, union, pred, label = self.total_areas.to(torch.float32)
        precision = intersect / pred
        recall = intersect / label
        beta2 = 1
        values = {
            "aAcc": intersect.sum() / label.sum(),
            "IoU": intersect / union,
            "Acc": recall,
            "Dice": 2 * intersect / (pred + label),
            "Fscore": (1 + beta2) * (precision * recall) / (beta2 * precision + recall),
            "Precision": precision,
            "Recall": recall,
        }
        arrays = {key: value.numpy() for key, value in values.items()}
        if nan_to_num is not None:
            arrays = {key: np.nan_to_num(value, nan=nan_to_num) for key, value in arrays.items()}
        return arrays

    def compute(self, nan_to_num: float | None = None) -> dict[str, Any]:
        """Dataset-level metrics: MMSeg's returned dict plus the per-class values.

        * ``aAcc, mIoU, mAcc, mDice, mFscore, mPrecision, mRecall``: ``round(nanmean(v) * 100, 2)`` as MMSeg returns
          them (classes whose value is NaN, i.e. absent from both prediction and label, are skipped by the mean;
          with ``nan_to_num`` they count as that value).
        * ``per_class``: the unrounded float32 fractions per class (``IoU, Acc, Dice, Fscore, Precision, Recall``).
        * ``per_class_table``: MMSeg's logged table, ``round(v * 100, 2)`` per class, plus ``Class`` (the names).
        """
        arrays = self.per_class(nan_to_num)
        result: dict[str, Any] = {"aAcc": _round_like_mmseg(_nanmean_f32(arrays["aAcc"]))}
        for key in PER_CLASS_KEYS:
            result["m" + key] = _round_like_mmseg(_nanmean_f32(arrays[key]))
        result["per_class"] = {key: arrays[key] for key in PER_CLASS_KEYS}
        table: dict[str, list] = {"Class": list(self.class_names)}
        for key in PER_CLASS_KEYS:
            table[key] = [_round_like_mmseg(v) for v in arrays[key]]
        result["per_class_table"] = table
        return result
