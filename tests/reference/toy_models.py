"""The two toy models of the MMSeg slide goldens (``shared/reference/mmseg/README.md``), rebuilt in plain torch.

``upernet``: a pyramid of average-pooled 1x1 convs feeding the real UPerHead; ``toyconv``: a head whose logits depend on
the position inside the crop and on the crop's mean, so every window offset and overlap shows in the average.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtp_core.models.segmentor import EncoderDecoder
from mtp_core.models.upernet import UPerHead


class ToyPyramidBackbone(nn.Module):
    """Level i: ``avg_pool2d`` with kernel = stride = 2**(i+2) (floor), then a 1x1 conv."""

    def __init__(self, out_channels: int = 32) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(3, out_channels, 1) for _ in range(4))

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(conv(F.avg_pool2d(x, 2 ** (i + 2))) for i, conv in enumerate(self.convs))


class ToyIdentityBackbone(nn.Module):
    def forward(self, x: Tensor) -> tuple[Tensor]:
        return (x,)


class ToyConvHead(nn.Module):
    """``conv_seg(relu(conv1(crop)))`` plus ramps in the in-crop row/column and a term in the crop's global mean."""

    num_classes = 2
    align_corners = False

    def __init__(self) -> None:
        super().__init__()
        self.ramp = nn.Parameter(torch.zeros(2, 2))
        self.gmean = nn.Parameter(torch.zeros(2))
        self.conv_seg = nn.Conv2d(8, 2, 1)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        x = inputs[0]
        y = self.conv_seg(F.relu(self.conv1(x)))
        h, w = x.shape[-2:]
        iy = (torch.arange(h, dtype=x.dtype, device=x.device) / 64.0).view(1, 1, h, 1)
        ix = (torch.arange(w, dtype=x.dtype, device=x.device) / 64.0).view(1, 1, 1, w)
        y = y + self.ramp[:, 0].view(1, 2, 1, 1) * iy
        y = y + self.ramp[:, 1].view(1, 2, 1, 1) * ix
        return y + self.gmean.view(1, 2, 1, 1) * x.mean(dim=(1, 2, 3), keepdim=True)


def build_toy(name: str, meta: dict) -> EncoderDecoder:
    """The toy segmentor ``name`` ('upernet' or 'toyconv') of a slide golden's ``meta``, with fresh weights."""
    if name == "upernet":
        constructor = meta["toy_models"]["upernet"]["uper_constructor"]
        args = {k: v for k, v in constructor.items() if k not in ("type", "norm_cfg")}
        return EncoderDecoder(ToyPyramidBackbone(32), UPerHead(**args))
    if name == "toyconv":
        return EncoderDecoder(ToyIdentityBackbone(), ToyConvHead())
    raise ValueError(f"unknown toy model {name!r}")
