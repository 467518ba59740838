"""UPerNet (PPM + FPN) and FCN decode heads: the same function and state-dict layout as MMSeg 1.0.0's.

MTP's fine-tuned checkpoints store the head as MMSeg built it (``decode_head.conv_seg.*``, ``psp_modules.i.1.conv.*``,
...). Rebuilding it in plain PyTorch, with submodules registered in MMSeg's order (``conv_seg`` first, as
``BaseDecodeHead`` does), lets those checkpoints load with ``strict=True`` and give MMSeg's logits without
mmcv/mmseg/mmengine. Norms are ``BatchNorm2d``; distributed training converts them with
``nn.SyncBatchNorm.convert_sync_batchnorm`` (keys unchanged), which is what the original ``SyncBN`` config amounts to.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ConvModule(nn.Module):
    """mmcv 2.0.0 ``ConvModule`` with a BN norm: conv (no bias) -> BN -> ReLU as children ``conv``/``bn``/``activate``.

    Initialised as mmcv does at construction: kaiming normal (fan_out, ReLU) for the conv, BN weight 1 and bias 0.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=1e-5, momentum=0.1)
        self.activate = nn.ReLU(inplace=False)
        nn.init.kaiming_normal_(self.conv.weight, a=0, mode="fan_out", nonlinearity="relu")
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.activate(self.bn(self.conv(x)))


class _DecodeHead(nn.Module):
    """What MMSeg's ``BaseDecodeHead`` contributes: ``conv_seg`` (registered first), ``dropout`` and ``cls_seg``."""

    def __init__(self, channels: int, num_classes: int, dropout_ratio: float, align_corners: bool) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.channels = channels
        self.num_classes = num_classes
        self.align_corners = align_corners
        self.conv_seg = self._new_classifier(num_classes)
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else None

    def _new_classifier(self, num_classes: int) -> nn.Conv2d:
        """1x1 classifier with MMSeg's ``init_cfg`` (Normal, std 0.01, bias 0, on ``conv_seg``)."""
        conv = nn.Conv2d(self.channels, num_classes, 1)
        nn.init.normal_(conv.weight, mean=0.0, std=0.01)
        nn.init.zeros_(conv.bias)
        return conv

    def reset_classifier(self, num_classes: int) -> None:
        """Replace ``conv_seg`` for another label set (fine-tuning), keeping its device, dtype and key position."""
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        old = self.conv_seg.weight
        self.conv_seg = self._new_classifier(num_classes).to(device=old.device, dtype=old.dtype)
        self.num_classes = num_classes

    def _resize(self, x: Tensor, size: Sequence[int]) -> Tensor:
        """MMSeg's ``resize`` as its heads call it."""
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=self.align_corners)

    def forward_features(self, inputs: Sequence[Tensor]) -> Tensor:
        """Features fed to the classifier; each head defines them."""
        raise NotImplementedError

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        """Logits at the resolution of the selected feature map (MMSeg ``forward`` = ``cls_seg(_forward_feature)``)."""
        feat = self.forward_features(inputs)
        if self.dropout is not None:
            feat = self.dropout(feat)
        return self.conv_seg(feat)


class UPerHead(_DecodeHead):
    """MMSeg 1.0.0 ``UPerHead``: a pyramid pooling module on the last map, then an FPN fused at the first map's size."""

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int,
        num_classes: int,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        in_index: Sequence[int] = (0, 1, 2, 3),
        dropout_ratio: float = 0.1,
        align_corners: bool = False,
    ) -> None:
        super().__init__(channels, num_classes, dropout_ratio, align_corners)
        if len(in_channels) != len(in_index) or len(in_channels) < 1:
            raise ValueError(f"in_channels {list(in_channels)} and in_index {list(in_index)} must have the same length")
        self.in_channels = list(in_channels)
        self.in_index = tuple(in_index)
        self.pool_scales = tuple(pool_scales)
        top = self.in_channels[-1]
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), ConvModule(top, channels, 1)) for scale in self.pool_scales
        )
        self.bottleneck = ConvModule(top + len(self.pool_scales) * channels, channels, 3, padding=1)
        self.lateral_convs = nn.ModuleList(ConvModule(c, channels, 1) for c in self.in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvModule(channels, channels, 3, padding=1) for _ in self.in_channels[:-1])
        self.fpn_bottleneck = ConvModule(len(self.in_channels) * channels, channels, 3, padding=1)

    def _psp_forward(self, x: Tensor) -> Tensor:
        """PPM branches upsampled back to ``x``'s size, concatenated with ``x``, then the bottleneck conv."""
        branches = [x] + [self._resize(ppm(x), x.shape[2:]) for ppm in self.psp_modules]
        return self.bottleneck(torch.cat(branches, dim=1))

    def forward_features(self, inputs: Sequence[Tensor]) -> Tensor:
        """The ``fpn_bottleneck`` output fed to the classifier (MMSeg ``_forward_feature``)."""
        feats = [inputs[i] for i in self.in_index]
        laterals = [conv(feats[i]) for i, conv in enumerate(self.lateral_convs)]
        laterals.append(self._psp_forward(feats[-1]))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + self._resize(laterals[i], laterals[i - 1].shape[2:])
        outs = [conv(laterals[i]) for i, conv in enumerate(self.fpn_convs)]
        outs.append(laterals[-1])
        size = outs[0].shape[2:]
        outs = [outs[0]] + [self._resize(out, size) for out in outs[1:]]
        return self.fpn_bottleneck(torch.cat(outs, dim=1))


class FCNHead(_DecodeHead):
    """MMSeg 1.0.0 ``FCNHead`` (the usual auxiliary head): ``num_convs`` ConvModules on one map (+ ``conv_cat``)."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        num_convs: int = 1,
        kernel_size: int = 3,
        concat_input: bool = False,
        in_index: int = 2,
        dropout_ratio: float = 0.1,
        align_corners: bool = False,
    ) -> None:
        super().__init__(channels, num_classes, dropout_ratio, align_corners)
        if num_convs < 0:
            raise ValueError(f"num_convs must be >= 0, got {num_convs}")
        if num_convs == 0 and in_channels != channels:
            raise ValueError(f"num_convs=0 needs in_channels == channels, got {in_channels} and {channels}")
        self.in_channels = in_channels
        self.in_index = in_index
        self.num_convs = num_convs
        self.kernel_size = kernel_size
        self.concat_input = concat_input
        padding = kernel_size // 2
        self.convs = nn.Sequential(
            *(ConvModule(in_channels if i == 0 else channels, channels, kernel_size, padding) for i in range(num_convs))
        )
        if concat_input:
            self.conv_cat = ConvModule(in_channels + channels, channels, kernel_size, padding)

    def forward_features(self, inputs: Sequence[Tensor]) -> Tensor:
        """Features fed to the classifier (MMSeg ``_forward_feature``)."""
        x = inputs[self.in_index]
        feats = self.convs(x)
        if self.concat_input:
            feats = self.conv_cat(torch.cat([x, feats], dim=1))
        return feats
