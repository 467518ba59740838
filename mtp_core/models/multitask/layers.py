"""mmcv's ``ConvModule`` as the detection decoders build it: no norm, conv with bias, keys ``*.conv.weight``."""
from __future__ import annotations

from torch import Tensor, nn


class ConvModule(nn.Module):
    """``conv`` (with bias) and an optional ReLU, initialised as mmcv 2.0 does at construction: kaiming normal
    (fan_out, ReLU gain) weights and zero bias. MTP never calls ``init_weights`` on the framework, so this
    constructor init is the one the released decoders started from (spec §1)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0, relu: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding)
        self.activate = nn.ReLU(inplace=False) if relu else None
        nn.init.kaiming_normal_(self.conv.weight, a=0, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        return x if self.activate is None else self.activate(x)
