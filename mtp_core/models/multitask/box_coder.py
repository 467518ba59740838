"""mmdet 3.1 ``DeltaXYWHBBoxCoder``: box deltas (dx, dy, dw, dh) normalised by ``stds``.

Decoding clamps ``dw, dh`` to ``±log(1000/16)`` on both sides (torchvision clamps only above) and clips to the image.
The arithmetic follows mmdet's op for op so float32 results match it bit for bit.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor


class DeltaXYWHBBoxCoder:
    """Encode boxes against reference boxes (anchors, proposals) and decode deltas back."""

    def __init__(
        self,
        stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
        wh_ratio_clip: float = 16 / 1000,
    ) -> None:
        self.means = tuple(means)
        self.stds = tuple(stds)
        self.max_ratio = abs(math.log(wh_ratio_clip))

    def encode(self, boxes: Tensor, gt: Tensor) -> Tensor:
        """(n, 4) deltas that move ``boxes`` onto ``gt``."""
        if boxes.shape != gt.shape:
            raise ValueError(f"boxes {tuple(boxes.shape)} and targets {tuple(gt.shape)} must have the same shape")
        boxes = boxes.float()
        gt = gt.float()
        px = (boxes[..., 0] + boxes[..., 2]) * 0.5
        py = (boxes[..., 1] + boxes[..., 3]) * 0.5
        pw = boxes[..., 2] - boxes[..., 0]
        ph = boxes[..., 3] - boxes[..., 1]
        gx = (gt[..., 0] + gt[..., 2]) * 0.5
        gy = (gt[..., 1] + gt[..., 3]) * 0.5
        gw = gt[..., 2] - gt[..., 0]
        gh = gt[..., 3] - gt[..., 1]
        deltas = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], dim=-1)
        return deltas.sub_(deltas.new_tensor(self.means)[None]).div_(deltas.new_tensor(self.stds)[None])

    def decode(self, boxes: Tensor, deltas: Tensor, max_shape: Sequence[int] | None = None) -> Tensor:
        """Boxes from (n, 4·k) deltas (k boxes per reference box, class-specific), clipped to ``max_shape`` (h, w)."""
        num_boxes, per_box = deltas.shape[0], deltas.shape[1] // 4
        if num_boxes == 0:
            return deltas
        deltas = deltas.reshape(-1, 4)
        denorm = deltas * deltas.new_tensor(self.stds).view(1, -1) + deltas.new_tensor(self.means).view(1, -1)
        dxy = denorm[:, :2]
        dwh = denorm[:, 2:]
        refs = boxes.repeat(1, per_box).reshape(-1, 4)
        pxy = (refs[:, :2] + refs[:, 2:]) * 0.5
        pwh = refs[:, 2:] - refs[:, :2]
        dwh = dwh.clamp(min=-self.max_ratio, max=self.max_ratio)
        gxy = pxy + pwh * dxy
        gwh = pwh * dwh.exp()
        out = torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=-1)
        if max_shape is not None:
            out[..., 0::2].clamp_(min=0, max=max_shape[1])
            out[..., 1::2].clamp_(min=0, max=max_shape[0])
        return out.reshape(num_boxes, -1)
