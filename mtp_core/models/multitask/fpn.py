"""mmdet 3.1 ``FPN`` as both pretraining decoders use it: no norm, no activation, max-pooled extra levels.

``torchvision.ops.FeaturePyramidNetwork`` with ``LastLevelMaxPool`` computes the same function (spec §2.1, checked in
the tests); this module exists for the key names, ``lateral_convs.i.conv`` / ``fpn_convs.i.conv``, which the
released checkpoints use.
"""
from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from mtp_core.models.multitask.layers import ConvModule


class FPN(nn.Module):
    """Top-down pyramid over the encoder's maps; ``num_outs`` beyond the inputs are ``max_pool2d(1, stride 2)`` of the
    last output (P6 for MTP's strides 4..32 -> 4..64)."""

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256, num_outs: int = 5) -> None:
        super().__init__()
        if num_outs < len(in_channels):
            raise ValueError(f"num_outs {num_outs} is below the {len(in_channels)} input levels")
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.num_outs = num_outs
        self.lateral_convs = nn.ModuleList(ConvModule(c, out_channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(ConvModule(out_channels, out_channels, 3, padding=1) for _ in in_channels)

    def forward(self, inputs: Sequence[Tensor]) -> tuple[Tensor, ...]:
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"FPN expects {len(self.in_channels)} feature maps, got {len(inputs)}")
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]
        for i in range(len(laterals) - 1, 0, -1):
            upsampled = F.interpolate(laterals[i], size=laterals[i - 1].shape[2:], mode="nearest")
            laterals[i - 1] = laterals[i - 1] + upsampled
        outs = [conv(lateral) for conv, lateral in zip(self.fpn_convs, laterals)]
        for _ in range(self.num_outs - len(outs)):
            outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return tuple(outs)
