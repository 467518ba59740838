"""Batching on the device: MMSeg's ``SegDataPreProcessor`` for packed samples.

Samples travel as uint8 (4x smaller than float from the workers and over PCIe); conversion, normalization and
padding happen on the device in the order MMSeg uses, so padded pixels are exactly ``pad_val`` after normalization.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F


class SegDataPreProcessor:
    """``(imgs float (B, C, H, W), gts int64 (B, H, W) or None) = pre(samples, device)``.

    ``mean``/``std`` are on the 0-255 scale in the channel order the model receives: 3 values for an image, 6 for
    the two dates of a change-detection sample (Open-CD's ``DualInputSegDataPreProcessor``: the RGB values twice).
    Images here are already RGB, so ``bgr_to_rgb=True`` (MTP's setting: the model sees RGB) changes nothing, and
    ``False`` gives the model BGR as MMSeg would (each date's three channels reversed). With ``size=(h, w)`` every
    sample is padded at the bottom/right to it, with ``size_divisor`` to the batch's largest size rounded up to a
    multiple (image ``pad_val``, labels ``seg_pad_val``); MMSeg pads only in training, so build the validation
    preprocessor without either.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], size: Optional[Sequence[int]] = None,
                 pad_val: float = 0, seg_pad_val: int = 255, bgr_to_rgb: bool = True,
                 size_divisor: Optional[int] = None) -> None:
        mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean_t.numel() not in (3, 6) or std_t.numel() != mean_t.numel():
            raise ValueError(f"mean and std need 3 values (one per channel), or 6 for two dates, got {mean!r} / "
                             f"{std!r}")
        if (std_t <= 0).any():
            raise ValueError(f"std must be positive, got {std!r}")
        if size is not None and (len(size) != 2 or min(size) <= 0):
            raise ValueError(f"size must be (h, w) with positive sides or None, got {size!r}")
        if size_divisor is not None and size_divisor < 1:
            raise ValueError(f"size_divisor must be a positive integer or None, got {size_divisor!r}")
        self.mean = mean_t.view(-1, 1, 1)
        self.std = std_t.view(-1, 1, 1)
        self.size = (int(size[0]), int(size[1])) if size is not None else None
        self.size_divisor = int(size_divisor) if size_divisor else None
        self.pad_val = float(pad_val)
        self.seg_pad_val = int(seg_pad_val)
        self.bgr_to_rgb = bool(bgr_to_rgb)

    def _target(self, samples: Sequence[dict]) -> Optional[tuple[int, int]]:
        """The padded (h, w) of this batch: ``size``, or the largest sample rounded up to ``size_divisor``."""
        if self.size is not None or self.size_divisor is None:
            return self.size
        h = max(int(s["img"].shape[-2]) for s in samples)
        w = max(int(s["img"].shape[-1]) for s in samples)
        d = self.size_divisor
        return -(-h // d) * d, -(-w // d) * d

    def _padding(self, shape: torch.Size, path: str, target: Optional[tuple[int, int]]) -> tuple[int, int, int, int]:
        """``F.pad`` amounts (left, right, top, bottom) to reach ``target``."""
        h, w = shape[-2:]
        if target is None:
            return 0, 0, 0, 0
        if h > target[0] or w > target[1]:
            raise ValueError(f"sample {path} is {h}x{w}, larger than the padding size {target[0]}x{target[1]}; "
                             "crop it in the pipeline (RandomCrop) or raise size")
        return 0, target[1] - w, 0, target[0] - h

    def __call__(self, samples: Sequence[dict], device: Union[torch.device, str]) -> tuple[torch.Tensor,
                                                                                            Optional[torch.Tensor]]:
        if not samples:
            raise ValueError("empty batch")
        has_gt = [s["gt"] is not None for s in samples]
        if any(has_gt) and not all(has_gt):
            raise ValueError("a batch mixes samples with and without labels; use one pipeline for the whole dataset")
        target = self._target(samples)
        if target is None:
            for key in ("img", "gt") if all(has_gt) else ("img",):
                shapes = {tuple(s[key].shape[-2:]) for s in samples}
                if len(shapes) > 1:
                    raise ValueError(f"{key} tensors of different sizes {sorted(shapes)} cannot be stacked: set "
                                     "size=(h, w) to pad them, or use batch size 1")
        channels = self.mean.shape[0]
        mean = self.mean.to(device)
        std = self.std.to(device)
        imgs, gts = [], []
        for sample in samples:
            if sample["img"].shape[0] != channels:
                raise ValueError(f"{sample['meta']['path']} gives {sample['img'].shape[0]} channels, the "
                                 f"preprocessor's mean/std {channels}: use {channels // 3} image(s) per sample")
            pad = self._padding(sample["img"].shape, sample["meta"]["path"], target)
            img = sample["img"].to(device, non_blocking=True).float()
            if not self.bgr_to_rgb:
                img = torch.cat([group.flip(0) for group in img.split(3)])
            img = (img - mean) / std
            imgs.append(F.pad(img, pad, value=self.pad_val) if any(pad) else img)
            if sample["gt"] is not None:
                gt = sample["gt"].to(device, non_blocking=True).long()
                if tuple(gt.shape) != tuple(sample["img"].shape[-2:]) and any(pad):
                    raise ValueError(f"label {tuple(gt.shape)} and image {tuple(sample['img'].shape[-2:])} of "
                                     f"{sample['meta']['path']} differ in size; padding needs them aligned")
                gts.append(F.pad(gt, pad, value=self.seg_pad_val) if any(pad) else gt)
        return torch.stack(imgs), (torch.stack(gts) if gts else None)
