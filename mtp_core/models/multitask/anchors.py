"""mmdet 3.1 ``AnchorGenerator`` for MTP's RPN: float anchors (not rounded, unlike torchvision's), centred on each
cell's top-left pixel, location-major with the ratios as the minor index (spec §2.2)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor


class AnchorGenerator:
    """Anchors of ``scales × ratios`` per level; the base size of a level is its stride."""

    def __init__(
        self,
        strides: Sequence[int] = (4, 8, 16, 32, 64),
        ratios: Sequence[float] = (0.5, 1.0, 2.0),
        scales: Sequence[float] = (8.0,),
    ) -> None:
        self.strides = tuple(int(s) for s in strides)
        ratios_t = torch.tensor(ratios, dtype=torch.float32)
        scales_t = torch.tensor(scales, dtype=torch.float32)
        self.base_anchors = [self._base_anchors(s, scales_t, ratios_t) for s in self.strides]

    @staticmethod
    def _base_anchors(base_size: int, scales: Tensor, ratios: Tensor) -> Tensor:
        """(ratios × scales, 4) corners around (0, 0); ``h/w = ratio`` (mmdet's ``scale_major`` order)."""
        h_ratios = torch.sqrt(ratios)
        w_ratios = 1 / h_ratios
        ws = (base_size * w_ratios[:, None] * scales[None, :]).view(-1)
        hs = (base_size * h_ratios[:, None] * scales[None, :]).view(-1)
        return torch.stack([0.0 - 0.5 * ws, 0.0 - 0.5 * hs, 0.0 + 0.5 * ws, 0.0 + 0.5 * hs], dim=-1)

    @property
    def num_levels(self) -> int:
        return len(self.strides)

    @property
    def num_base_priors(self) -> int:
        """Anchors per location (the same on every level)."""
        return self.base_anchors[0].shape[0]

    def grid_priors(
        self,
        featmap_sizes: Sequence[Sequence[int]],
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> list[Tensor]:
        """(h·w·A, 4) anchors per level for feature maps of these (h, w) sizes."""
        if len(featmap_sizes) != self.num_levels:
            raise ValueError(f"{len(featmap_sizes)} feature maps for {self.num_levels} anchor levels")
        out = []
        for base, stride, (feat_h, feat_w) in zip(self.base_anchors, self.strides, featmap_sizes):
            base = base.to(device=device, dtype=dtype)
            shift_x = torch.arange(0, feat_w, device=device).to(dtype) * stride
            shift_y = torch.arange(0, feat_h, device=device).to(dtype) * stride
            xx = shift_x.repeat(feat_h)
            yy = shift_y.view(-1, 1).repeat(1, feat_w).view(-1)
            shifts = torch.stack([xx, yy, xx, yy], dim=-1)
            out.append((base[None, :, :] + shifts[:, None, :]).view(-1, 4))
        return out

    def valid_flags(
        self, featmap_sizes: Sequence[Sequence[int]], pad_shape: Sequence[int], device: torch.device | str = "cpu"
    ) -> list[Tensor]:
        """Per level, whether each anchor's cell lies inside the padded image (``ceil(pad / stride)`` cells)."""
        flags = []
        for stride, (feat_h, feat_w) in zip(self.strides, featmap_sizes):
            valid_h = min(math.ceil(pad_shape[0] / stride), feat_h)
            valid_w = min(math.ceil(pad_shape[1] / stride), feat_w)
            valid_x = torch.zeros(feat_w, dtype=torch.bool, device=device)
            valid_y = torch.zeros(feat_h, dtype=torch.bool, device=device)
            valid_x[:valid_w] = True
            valid_y[:valid_h] = True
            valid = valid_x.repeat(feat_h) & valid_y.view(-1, 1).repeat(1, feat_w).view(-1)
            flags.append(valid[:, None].expand(valid.shape[0], self.num_base_priors).reshape(-1))
        return flags
