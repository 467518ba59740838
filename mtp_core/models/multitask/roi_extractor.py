"""mmdet 3.1 ``SingleRoIExtractor`` with mmcv's ``RoIAlign(sampling_ratio=0, aligned=True)``.

mmcv's CPU/CUDA RoIAlign is the Detectron2 kernel that ``torchvision.ops.roi_align(..., aligned=True)`` also runs
(spec §2.7). Not ``MultiScaleRoIAlign``: that one is unaligned, samples 2 points and maps levels another way.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align


class SingleRoIExtractor(nn.Module):
    """Each RoI pooled from one level: ``clamp(floor(log2(sqrt(w·h) / finest_scale + 1e-6)), 0, L-1)``."""

    def __init__(self, output_size: int, featmap_strides: Sequence[int] = (4, 8, 16, 32), finest_scale: int = 56):
        super().__init__()
        self.output_size = output_size
        self.featmap_strides = tuple(featmap_strides)
        self.finest_scale = finest_scale

    @property
    def num_inputs(self) -> int:
        return len(self.featmap_strides)

    def map_roi_levels(self, rois: Tensor) -> Tensor:
        scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
        levels = torch.floor(torch.log2(scale / self.finest_scale + 1e-6))
        return levels.clamp(min=0, max=self.num_inputs - 1).long()

    def forward(self, feats: Sequence[Tensor], rois: Tensor) -> Tensor:
        """(n, C, s, s) features of ``rois`` (n, 5) ``(image index, x1, y1, x2, y2)`` from the first levels."""
        feats = feats[: self.num_inputs]
        rois = rois.type_as(feats[0])
        out = feats[0].new_zeros(rois.shape[0], feats[0].shape[1], self.output_size, self.output_size)
        levels = self.map_roi_levels(rois)
        for i, (feat, stride) in enumerate(zip(feats, self.featmap_strides)):
            inds = (levels == i).nonzero(as_tuple=False).squeeze(1)
            if inds.numel() > 0:
                pooled = roi_align(feat, rois[inds], self.output_size, 1 / stride, sampling_ratio=0, aligned=True)
                out[inds] = pooled.to(out.dtype)  # roi_align runs in float32 under autocast
            else:
                # mmdet keeps every level in the autograd graph (DDP waits for all of them)
                out = out + feat.sum() * 0.0
        return out
