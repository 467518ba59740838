"""Batching for the multi-task framework: MTP's ``MTP_DataPreprocessor`` with its ``BatchFixedSizePad``.

Packed samples (:class:`~training.data.instance_transforms.PackInstanceInputs`) become one
:class:`~mtp_core.models.multitask.Batch` per dataset, on the device, as the original's preprocessor does it:

1. images normalised with mean/std (on 0-255, in the channel order the model sees: RGB, as the original's
   ``bgr_to_rgb=True`` gives it from cv2's BGR; our readers already give RGB);
2. each image's ``pad_shape`` is its size rounded up to ``pad_size_divisor`` (32), the batch is padded (value 0
   after normalisation) to the largest of them;
3. in training the instance masks are padded to the batch (0) and so is the semantic label (255);
4. in training ``BatchFixedSizePad(size)`` then pads a batch smaller than ``size`` to it: images (0), masks (0), and
   every image's ``pad_shape`` becomes ``size``. The original does **not** pad the semantic label there
   (``pad_seg=False``), so the loss squeezes the label of a smaller batch onto the whole padded input (spec §2.4,
   §7.5); ``faithful_seg_pad=True`` reproduces that, the default pads the label to ``size`` with 255.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from mtp_core.models.card import IMAGENET_MEAN_255, IMAGENET_STD_255
from mtp_core.models.multitask import Batch, ImageMeta, Sample

SEG_PAD_VALUE = 255


def _pad_to(tensor: torch.Tensor, shape: tuple[int, int], value: float) -> torch.Tensor:
    h, w = tensor.shape[-2:]
    if (h, w) == tuple(shape):
        return tensor
    return F.pad(tensor, (0, shape[1] - w, 0, shape[0] - h), value=value)


class MultiTaskDataPreprocessor:
    """``batch = pre(samples, device, training)``; see the module docstring for the steps."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN_255, std: Sequence[float] = IMAGENET_STD_255,
                 pad_size_divisor: int = 32, fixed_size: Optional[Sequence[int]] = None, bgr_to_rgb: bool = True,
                 faithful_seg_pad: bool = False) -> None:
        mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean_t.numel() != 3 or std_t.numel() != 3 or (std_t <= 0).any():
            raise ValueError(f"mean and std need 3 values each (std positive), got {mean!r} / {std!r}")
        if pad_size_divisor < 1:
            raise ValueError(f"pad_size_divisor must be >= 1, got {pad_size_divisor}")
        if fixed_size is not None and (len(fixed_size) != 2 or min(fixed_size) <= 0):
            raise ValueError(f"fixed_size must be (h, w) with positive sides or None, got {fixed_size!r}")
        self.mean, self.std = mean_t.view(3, 1, 1), std_t.view(3, 1, 1)
        self.pad_size_divisor = int(pad_size_divisor)
        self.fixed_size = (int(fixed_size[0]), int(fixed_size[1])) if fixed_size is not None else None
        self.bgr_to_rgb = bool(bgr_to_rgb)
        self.faithful_seg_pad = bool(faithful_seg_pad)

    def _round(self, size: int) -> int:
        return int(math.ceil(size / self.pad_size_divisor)) * self.pad_size_divisor

    def __call__(self, samples: Sequence[dict], device: Union[torch.device, str], training: bool = True) -> Batch:
        if not samples:
            raise ValueError("empty batch")
        pad_shapes = [(self._round(s["img"].shape[-2]), self._round(s["img"].shape[-1])) for s in samples]
        batch_shape = (max(p[0] for p in pad_shapes), max(p[1] for p in pad_shapes))
        mean, std = self.mean.to(device), self.std.to(device)
        imgs = []
        for sample in samples:
            img = sample["img"].to(device, non_blocking=True).float()
            if not self.bgr_to_rgb:
                img = img.flip(0)
            imgs.append(_pad_to((img - mean) / std, batch_shape, 0.0))
        inputs = torch.stack(imgs)
        seg_shape = batch_shape
        if training and self.fixed_size is not None and (batch_shape[0] < self.fixed_size[0]
                                                         or batch_shape[1] < self.fixed_size[1]):
            fixed = (max(batch_shape[0], self.fixed_size[0]), max(batch_shape[1], self.fixed_size[1]))
            inputs = _pad_to(inputs, fixed, 0.0)
            batch_shape = fixed
            pad_shapes = [self.fixed_size] * len(samples)
            seg_shape = seg_shape if self.faithful_seg_pad else fixed
        out = []
        for sample, pad_shape in zip(samples, pad_shapes):
            meta = sample["meta"]
            info = ImageMeta(img_shape=tuple(meta["img_shape"]), pad_shape=tuple(pad_shape),
                             ori_shape=tuple(meta["ori_shape"]), scale_factor=tuple(meta["scale_factor"]))
            masks, seg = sample.get("masks"), sample.get("sem_seg")
            if masks is not None:
                masks = masks.to(device)
                if training:
                    masks = _pad_to(masks, batch_shape, 0)
            if seg is not None:
                seg = seg.to(device).long()
                if training:
                    seg = _pad_to(seg, seg_shape, SEG_PAD_VALUE)
            bboxes, labels = sample.get("bboxes"), sample.get("labels")
            out.append(Sample(info, bboxes=None if bboxes is None else bboxes.to(device),
                              labels=None if labels is None else labels.to(device), masks=masks, sem_seg=seg))
        return Batch(inputs, out)
