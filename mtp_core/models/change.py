"""Change detection between two dates as MTP fine-tunes it with Open-CD 1.1.0: a Siamese encoder-decoder.

``SiamEncoderDecoder`` splits a 6-channel input (date A ‖ date B) into two images, runs the **same** backbone on both,
fuses each level by ``|f_A − f_B|`` (Open-CD's ``FeatureFusionNeck(policy='abs_diff')``, no parameters) and decodes
with MTP's ``UNetHead`` (``mtp_multitask_spec.md`` §5.1). The backbone is the change-detection copy of ``RVSA_MTP``:
no fpn applied, so the four maps are all at stride 16. Submodules are registered as Open-CD registers them, so
checkpoint keys are ``backbone.*``, ``decode_head.conv_seg.*`` and ``decode_head.blocks.*``.

The head's quirk is kept: after its four ×2 blocks it upsamples once more, so a 256 px input gives 512 px logits
(16 → 32 → 64 → 128 → 256 → 512); MMSeg's loss and ``predict_by_feat`` resize them back to the input, and so does
:meth:`SiamEncoderDecoder.encode_decode`.
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtp_core.models.segmentor import EncoderDecoder
from mtp_core.models.upernet import _DecodeHead

FusionPolicy = Literal["concat", "sum", "diff", "abs_diff"]


class FeatureFusionNeck(nn.Module):
    """Open-CD's ``FeatureFusionNeck``: the features of both dates fused level by level (no parameters)."""

    def __init__(self, policy: FusionPolicy = "abs_diff", out_indices: Sequence[int] = (0, 1, 2, 3)) -> None:
        super().__init__()
        if policy not in ("concat", "sum", "diff", "abs_diff"):
            raise ValueError(f"fusion policy must be concat, sum, diff or abs_diff, got {policy!r}")
        self.policy = policy
        self.out_indices = tuple(out_indices)

    def fuse(self, x1: Tensor, x2: Tensor) -> Tensor:
        if self.policy == "concat":
            return torch.cat([x1, x2], dim=1)
        if self.policy == "sum":
            return x1 + x2
        if self.policy == "diff":
            return x2 - x1
        return torch.abs(x1 - x2)

    def forward(self, x1: Sequence[Tensor], x2: Sequence[Tensor]) -> tuple[Tensor, ...]:
        if len(x1) != len(x2):
            raise ValueError(f"the two dates gave {len(x1)} and {len(x2)} feature maps")
        fused = [self.fuse(a, b) for a, b in zip(x1, x2)]
        return tuple(fused[i] for i in self.out_indices)


class Conv2dReLU(nn.Sequential):
    """MTP's ``Conv2dReLU`` with batch norm: children ``0`` conv 3×3 (no bias), ``1`` BN, ``2`` ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels, eps=1e-5, momentum=0.1),
            nn.ReLU(inplace=True),
        )


class DecoderBlock(nn.Module):
    """Nearest ×2, the skip map bilinearly resized to it and concatenated, then two Conv2dReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = Conv2dReLU(in_channels + skip_channels, out_channels)
        self.conv2 = Conv2dReLU(out_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        if skip is not None:
            skip = F.interpolate(skip, size=x.shape[2:], mode="bilinear", align_corners=False)
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class UNetHead(_DecodeHead):
    """MTP's ``UNetHead`` (no centre block, no attention): the deepest map is the head, the others are skips.

    ``encoder_channels`` are the channels of the four maps in backbone order; blocks take
    ``in = [C_deepest] + decoder_channels[:-1]``, ``skip = reversed(encoder_channels)[1:] + [0]``,
    ``out = decoder_channels``. ``channels`` (the classifier's input) must equal ``decoder_channels[-1]``.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int] = (768, 768, 768, 768),
        decoder_channels: Sequence[int] = (512, 256, 128, 64),
        channels: int = 64,
        num_classes: int = 2,
        dropout_ratio: float = 0.1,
        align_corners: bool = False,
        in_index: Sequence[int] = (0, 1, 2, 3),
    ) -> None:
        super().__init__(channels, num_classes, dropout_ratio, align_corners)
        if len(in_index) != len(encoder_channels):
            raise ValueError(f"in_index {list(in_index)} must pick one map per encoder channel entry "
                             f"{list(encoder_channels)}")
        if decoder_channels[-1] != channels:
            raise ValueError(f"channels ({channels}) must equal the last decoder channels ({decoder_channels[-1]}): "
                             "the classifier runs on the last block's output")
        self.in_index = tuple(in_index)
        reversed_enc = list(encoder_channels)[::-1]
        in_channels = [reversed_enc[0]] + list(decoder_channels[:-1])
        skip_channels = reversed_enc[1:] + [0] * (len(decoder_channels) - len(reversed_enc) + 1)
        self.blocks = nn.ModuleList(
            DecoderBlock(i, s, o) for i, s, o in zip(in_channels, skip_channels, decoder_channels)
        )

    def forward_features(self, inputs: Sequence[Tensor]) -> Tensor:
        features = [inputs[i] for i in self.in_index][::-1]
        x, skips = features[0], features[1:]
        for i, block in enumerate(self.blocks):
            x = block(x, skips[i] if i < len(skips) else None)
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class SiamEncoderDecoder(EncoderDecoder):
    """Open-CD's ``SiamEncoderDecoder``: ``(B, 2C, H, W)`` (date A then date B) → change logits ``(B, K, H, W)``.

    Inherits ``predict`` (whole and slide inference) and the training ``forward(x, return_aux=True)`` of
    :class:`~mtp_core.models.segmentor.EncoderDecoder`; only feature extraction differs.
    """

    num_inputs = 2

    def __init__(self, backbone: nn.Module, neck: FeatureFusionNeck, decode_head: nn.Module,
                 auxiliary_head: nn.Module | None = None, backbone_inchannels: int = 3) -> None:
        super().__init__(backbone, decode_head, auxiliary_head)
        self.neck = neck
        self.backbone_inchannels = backbone_inchannels

    def extract_feat(self, x: Tensor) -> tuple[Tensor, ...]:
        per_date = self.backbone_inchannels
        if x.shape[1] != 2 * per_date:
            raise ValueError(f"a change detector takes both dates stacked on the channels ({2 * per_date} = 2 x "
                             f"{per_date}), got {x.shape[1]} channels")
        img_from, img_to = torch.split(x, self.backbone_inchannels, dim=1)
        return self.neck(self.backbone(img_from), self.backbone(img_to))

    def encode_decode(self, x: Tensor) -> Tensor:
        return self._resize(self.decode_head(self.extract_feat(x)), self.decode_head, x.shape[2:])

    def forward(self, x: Tensor, return_aux: bool = False) -> Tensor | tuple[Tensor, Tensor | None]:
        feats = self.extract_feat(x)
        logits = self._resize(self.decode_head(feats), self.decode_head, x.shape[2:])
        if not return_aux:
            return logits
        if self.auxiliary_head is None:
            return logits, None
        return logits, self._resize(self.auxiliary_head(feats), self.auxiliary_head, x.shape[2:])
