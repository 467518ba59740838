"""The semantic-segmentation task: MTP's ``MTP_SS_UperNet`` decoder (``semsegdecoder``) as a plug-in.

One 256-channel UPerHead shared by the datasets (its own ``conv_seg``, 1×256, exists but is never used) and a
classifier per dataset, ``semseghead_{k} = Sequential(Dropout2d(0.1), Conv2d(256, C+1, 1))`` with background at
index 0 (``--background True``). The loss is mmseg's: logits resized bilinearly to the label, cross entropy with 255
ignored and averaged over all pixels (ignored ones count in the denominator), plus ``acc_seg``.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtp_core.models.multitask.structures import Batch
from mtp_core.models.multitask.task import Losses, TaskDecoder
from mtp_core.models.upernet import UPerHead

IGNORE_INDEX = 255


class SemanticSegDecoder(TaskDecoder):
    """``decode_head``: the keys of ``semsegdecoder.decode_head.*``."""

    task = "ss"
    attribute = "semsegdecoder"
    head_templates = {"classifier": "semseghead_{k}"}

    def __init__(self, in_channels: Sequence[int], channels: int = 256) -> None:
        super().__init__()
        self.decode_head = UPerHead(in_channels, channels, num_classes=1)

    def new_head(self, kind: str, num_classes: int, background: bool) -> nn.Module:
        if kind != "classifier":
            raise ValueError(f"unknown semantic-segmentation head {kind!r}")
        return nn.Sequential(nn.Dropout2d(0.1), nn.Conv2d(self.decode_head.channels, num_classes + int(background), 1))

    def logits(self, feats: Sequence[Tensor], classifier: nn.Module) -> Tensor:
        """Stride-4 logits of one dataset's images (the original's ``semseghead_k(_forward_feature(e_k))``)."""
        return classifier(self.decode_head.forward_features(feats))

    def forward_train(
        self, feats: Sequence[Sequence[Tensor]], batches: Sequence[Batch], heads: Sequence[Mapping[str, nn.Module]]
    ) -> list[Losses]:
        """``loss_ce`` and ``acc_seg`` per dataset."""
        logits = [self.logits(f, head["classifier"]) for f, head in zip(feats, heads)]
        return [seg_losses(lg, torch.stack([s.sem_seg for s in b.samples]), self.decode_head.align_corners)
                for lg, b in zip(logits, batches)]

    @torch.no_grad()
    def predict(
        self, feats: Sequence[Sequence[Tensor]], batches: Sequence[Batch], heads: Sequence[Mapping[str, nn.Module]]
    ) -> list[list[Tensor]]:
        """Per dataset and image: (C+1, H, W) logits at ``ori_shape``: resized to the padded input, the padding
        cropped, then resized to the original size. (MTP's validation goes through mmseg's ``postprocess_result``
        without a ``padding_size``, so it does not crop the padding: different only for padded images.)"""
        out = []
        for f, batch, head in zip(feats, batches, heads):
            logits = F.interpolate(
                self.logits(f, head["classifier"]), size=batch.inputs.shape[2:], mode="bilinear",
                align_corners=self.decode_head.align_corners,
            )
            per_image = []
            for lg, sample in zip(logits, batch.samples):
                h, w = sample.meta.img_shape
                per_image.append(F.interpolate(lg[None, :, :h, :w], size=sample.meta.ori_shape, mode="bilinear",
                                               align_corners=self.decode_head.align_corners)[0])
            out.append(per_image)
        return out


def seg_losses(logits: Tensor, labels: Tensor, align_corners: bool = False) -> Losses:
    """mmseg 1.0 ``loss_by_feat``: ``loss_ce`` (mean over all pixels) and ``acc_seg`` (percent of labelled pixels)."""
    logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=align_corners)
    loss = F.cross_entropy(logits, labels, reduction="none", ignore_index=IGNORE_INDEX).mean()
    eps = torch.finfo(torch.float32).eps
    labelled = labels != IGNORE_INDEX
    correct = logits.topk(1, dim=1)[1][:, 0].eq(labels)[labelled].float().sum(0, keepdim=True) + eps
    return {"loss_ce": loss, "acc_seg": correct.mul_(100.0 / (labels[labelled].numel() + eps))}
