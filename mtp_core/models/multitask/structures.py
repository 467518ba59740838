"""Plain data of the multi-task framework: per-image metadata and targets, a dataset's batch, instance results.

Dataclasses of tensors stand in for mmengine's ``InstanceData``/``DetDataSample`` (``mtp_multitask_spec.md`` §2.8);
boxes are plain ``(n, 4)`` tensors ``x1, y1, x2, y2`` in pixels of the (resized, unpadded) input image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor


@dataclass(frozen=True)
class ImageMeta:
    """Where an image sits in its batch tensor, as mmdet's metainfo.

    ``img_shape`` is (h, w) after resizing and before padding (boxes are clipped to it), ``pad_shape`` the padded
    (h, w) the anchors' valid flags use, ``ori_shape`` the (h, w) as read (masks are pasted at it), and
    ``scale_factor`` the (w, h) factors from ``ori_shape`` to ``img_shape`` (mmdet's order).
    """

    img_shape: tuple[int, int]
    pad_shape: tuple[int, int]
    ori_shape: tuple[int, int]
    scale_factor: tuple[float, float] = (1.0, 1.0)

    @classmethod
    def of_size(cls, h: int, w: int) -> ImageMeta:
        """An image fed as read: no resizing, no padding."""
        return cls(img_shape=(h, w), pad_shape=(h, w), ori_shape=(h, w))


@dataclass
class Sample:
    """One image's metadata and targets; a task reads only the fields it needs.

    ``bboxes`` (n, 4) float and ``labels`` (n,) int64 (0-based classes) are the non-crowd instances, ``masks``
    (n, H, W) their bitmaps at the padded size, ``sem_seg`` (H, W) int64 the semantic label (255 = ignore).
    """

    meta: ImageMeta
    bboxes: Tensor | None = None
    labels: Tensor | None = None
    masks: Tensor | None = None
    sem_seg: Tensor | None = None


@dataclass
class Batch:
    """One dataset's share of a step: normalised, padded ``inputs`` (B, 3, H, W) and one ``Sample`` per image."""

    inputs: Tensor
    samples: list[Sample]

    def __post_init__(self) -> None:
        if self.inputs.ndim != 4 or len(self.samples) != self.inputs.shape[0]:
            raise ValueError(
                f"a batch needs inputs (B, C, H, W) and one sample per image, got inputs {tuple(self.inputs.shape)} "
                f"and {len(self.samples)} samples"
            )


@dataclass
class InstanceResult:
    """Detections of one image: ``bboxes`` (n, 4) at ``ori_shape``, ``scores`` (n,), 0-based ``labels`` (n,) and
    binary ``masks`` (n, H, W) at ``ori_shape``."""

    bboxes: Tensor
    scores: Tensor
    labels: Tensor
    masks: Tensor


def bbox2roi(boxes: Sequence[Tensor]) -> Tensor:
    """Per-image boxes as one (n, 5) tensor of ``(image index, x1, y1, x2, y2)`` rows (mmdet ``bbox2roi``)."""
    rois = [torch.cat([b.new_full((b.shape[0], 1), i), b], dim=-1) for i, b in enumerate(boxes)]
    return torch.cat(rois, 0)
