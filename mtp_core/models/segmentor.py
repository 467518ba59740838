"""Encoder-decoder segmentor with MMSeg 1.0.0's ``whole`` and ``slide`` inference.

MTP's SpaceNet results were measured with MMSeg's sliding-window test mode. Its window grid (the last window shifted
back inside the image, a smaller crop when the image is smaller than the crop) and its averaging of *logits* are
reproduced exactly, so the same weights give the same masks. Submodules are registered as MMSeg's
``EncoderDecoder`` registers them, so checkpoint keys are ``backbone.*``, ``decode_head.*`` (``auxiliary_head.*``).
"""
from __future__ import annotations

from numbers import Integral
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Window = tuple[int, int, int, int]


def _pair(name: str, value: Sequence[int]) -> tuple[int, int]:
    """``value`` as two positive ints (height, width); a clear error otherwise."""
    values = tuple(value) if isinstance(value, Sequence) else (value,)
    if len(values) != 2 or not all(isinstance(v, Integral) and v > 0 for v in values):
        raise ValueError(f"{name} must be two positive integers (height, width), got {value!r}")
    return int(values[0]), int(values[1])


def slide_windows(h: int, w: int, crop_size: Sequence[int], stride: Sequence[int]) -> list[Window]:
    """``(y1, y2, x1, x2)`` of every crop of MMSeg's ``slide_inference``, in its order (rows outer, columns inner).

    ``grids = max(size - crop + stride - 1, 0) // stride + 1``; a window that would leave the image is shifted back so
    it ends at the border, and an image smaller than the crop gives one crop of the image's own size (no padding).
    """
    h_crop, w_crop = _pair("crop_size", crop_size)
    h_stride, w_stride = _pair("stride", stride)
    if h_stride > h_crop or w_stride > w_crop:
        raise ValueError(
            f"stride {(h_stride, w_stride)} is larger than crop_size {(h_crop, w_crop)}: "
            "pixels between windows would never be predicted (gaps)"
        )
    h_grids = max(h - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w - w_crop + w_stride - 1, 0) // w_stride + 1
    windows = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2 = min(h_idx * h_stride + h_crop, h)
            x2 = min(w_idx * w_stride + w_crop, w)
            windows.append((max(y2 - h_crop, 0), y2, max(x2 - w_crop, 0), x2))
    return windows


class EncoderDecoder(nn.Module):
    """``backbone`` (image -> sequence of feature maps) + ``decode_head`` (+ optional ``auxiliary_head`` for training).

    Heads take the whole feature sequence and pick their maps with their own ``in_index``; they expose
    ``num_classes`` and ``align_corners``.
    """

    def __init__(self, backbone: nn.Module, decode_head: nn.Module, auxiliary_head: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        self.auxiliary_head = auxiliary_head

    @property
    def num_classes(self) -> int:
        return self.decode_head.num_classes

    @staticmethod
    def _resize(logits: Tensor, head: nn.Module, size: Sequence[int]) -> Tensor:
        """Head logits to ``size``, bilinear with the head's ``align_corners`` (MMSeg ``predict_by_feat`` / losses)."""
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=head.align_corners)

    def encode_decode(self, x: Tensor) -> Tensor:
        """Decode-head logits resized to ``x``'s height and width."""
        return self._resize(self.decode_head(self.backbone(x)), self.decode_head, x.shape[2:])

    def forward(self, x: Tensor, return_aux: bool = False) -> Tensor | tuple[Tensor, Tensor | None]:
        """Logits at the input size; with ``return_aux`` also the auxiliary head's (``None`` if absent), for losses."""
        feats = self.backbone(x)
        logits = self._resize(self.decode_head(feats), self.decode_head, x.shape[2:])
        if not return_aux:
            return logits
        if self.auxiliary_head is None:
            return logits, None
        return logits, self._resize(self.auxiliary_head(feats), self.auxiliary_head, x.shape[2:])

    def predict(
        self,
        x: Tensor,
        mode: Literal["whole", "slide"] = "whole",
        crop_size: Sequence[int] = (384, 384),
        stride: Sequence[int] = (256, 256),
        batch_size: int = 1,
    ) -> Tensor:
        """Logits ``(B, num_classes, H, W)`` of MMSeg's ``whole`` or ``slide`` inference (argmax is left to the caller).

        ``slide`` runs up to ``batch_size`` windows per forward pass (all windows have the same size); the sums are
        accumulated in MMSeg's window order either way. Call it under ``torch.inference_mode()`` for inference.
        """
        if mode == "whole":
            return self.encode_decode(x)
        if mode != "slide":
            raise ValueError(f"unknown inference mode {mode!r}: expected 'whole' or 'slide'")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        b, _, h, w = x.shape
        windows = slide_windows(h, w, crop_size, stride)
        preds = x.new_zeros((b, self.num_classes, h, w))
        count = x.new_zeros((1, 1, h, w))
        for start in range(0, len(windows), batch_size):
            group = windows[start : start + batch_size]
            crops = [x[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in group]
            # One window goes in as MMSeg passes it, a strided view: a copy can change float rounding (e.g. in means).
            logits = self.encode_decode(crops[0] if len(crops) == 1 else torch.cat(crops))
            for (y1, y2, x1, x2), crop_logits in zip(group, logits.split(b)):
                # Bit-identical to MMSeg's ``preds += F.pad(crop_logits, ...)``: adding the zero padding is exact.
                preds[:, :, y1:y2, x1:x2] += crop_logits
                count[:, :, y1:y2, x1:x2] += 1
        return preds / count
