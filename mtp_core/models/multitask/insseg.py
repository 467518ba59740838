"""The instance-segmentation task: MTP's ``MTP_IS_MaskRCNN`` decoder (``inssegdecoder``) as a plug-in.

Mask R-CNN as MTP runs it (spec §2.2): FPN neck (5 levels), RPN, RoI head with a Shared2FC box head and an FCN mask
head, whose last layers are per dataset: ``inssegroiboxhead_fc_cls{k}`` (C+1, background last),
``inssegroiboxhead_fc_reg{k}`` (4·C) and ``inssegroimaskhead_conv{k}`` (C).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from mtp_core.models.multitask.fpn import FPN
from mtp_core.models.multitask.roi_head import RoIHead
from mtp_core.models.multitask.rpn_head import RPNHead
from mtp_core.models.multitask.structures import Batch, ImageMeta, InstanceResult
from mtp_core.models.multitask.task import Losses, TaskDecoder

TRAIN_NMS_PRE = 2000  # proposals kept per level before NMS in training (rpn_proposal.nms_pre)
TEST_NMS_PRE = 1000


class InstanceSegDecoder(TaskDecoder):
    """``neck``, ``rpn_head``, ``roi_head``: the keys of ``inssegdecoder.*`` (36 tensors).

    ``channels`` (FPN, RPN, RoI features and mask head; 256 in MTP) and ``fc_out_channels`` (1024) only shrink for
    small CPU models. ``fix_bbox_target=True`` trains the RoI box regressor on the encoded GT deltas instead of MTP's
    constant target (see :mod:`.bbox_head`); the default reproduces the original.
    """

    task = "is"
    attribute = "inssegdecoder"
    head_templates = {
        "fc_cls": "inssegroiboxhead_fc_cls{k}",
        "fc_reg": "inssegroiboxhead_fc_reg{k}",
        "conv_logits": "inssegroimaskhead_conv{k}",
    }

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int = 256,
        fc_out_channels: int = 1024,
        fix_bbox_target: bool = False,
    ) -> None:
        super().__init__()
        self.neck = FPN(in_channels, channels, num_outs=5)
        self.rpn_head = RPNHead(channels, channels)
        self.roi_head = RoIHead(channels, fc_out_channels, fix_bbox_target=fix_bbox_target)

    def new_head(self, kind: str, num_classes: int, background: bool) -> nn.Module:
        features = self.roi_head.bbox_head.fc_out_channels
        if kind == "fc_cls":
            return nn.Linear(features, num_classes + 1)
        if kind == "fc_reg":
            return nn.Linear(features, 4 * num_classes)
        if kind == "conv_logits":
            return nn.Conv2d(self.roi_head.mask_head.conv_out_channels, num_classes, 1)
        raise ValueError(f"unknown instance-segmentation head {kind!r}")

    def forward_train(
        self, feats: Sequence[Sequence[Tensor]], batches: Sequence[Batch], heads: Sequence[Mapping[str, nn.Module]]
    ) -> list[Losses]:
        """``loss_rpn_cls``/``loss_rpn_bbox`` (per level), ``loss_cls``, ``acc``, ``loss_bbox``, ``loss_mask``.

        Stage by stage over the datasets as the original: every RPN (its sampling, then its proposals), then every
        RoI sampling, then the box losses, then the mask losses.
        """
        necks = [self.neck(f) for f in feats]
        losses: list[Losses] = []
        proposals = []
        for neck, batch in zip(necks, batches):
            cls_scores, bbox_preds = self.rpn_head(neck)
            rpn_losses, _ = self.rpn_head.loss(cls_scores, bbox_preds, batch.samples)
            losses.append(dict(rpn_losses))
            proposals.append(self.rpn_head.predict(cls_scores, bbox_preds, _metas(batch), TRAIN_NMS_PRE))
        sampling = [self.roi_head.sample(p, batch.samples) for p, batch in zip(proposals, batches)]
        for out, neck, res, head in zip(losses, necks, sampling, heads):
            out.update(self.roi_head.bbox_loss(neck, res, head["fc_cls"], head["fc_reg"]))
        for out, neck, res, batch, head in zip(losses, necks, sampling, batches, heads):
            out.update(self.roi_head.mask_loss(neck, res, batch.samples, head["conv_logits"]))
        return losses

    @torch.no_grad()
    def predict(
        self, feats: Sequence[Sequence[Tensor]], batches: Sequence[Batch], heads: Sequence[Mapping[str, nn.Module]]
    ) -> list[list[InstanceResult]]:
        """Per dataset and image: at most 100 detections with binary masks at ``ori_shape``."""
        out = []
        for f, batch, head in zip(feats, batches, heads):
            neck = self.neck(f)
            proposals = self.rpn_head.predict(*self.rpn_head(neck), _metas(batch), TEST_NMS_PRE)
            predictors = head["fc_cls"], head["fc_reg"], head["conv_logits"]
            out.append(self.roi_head.predict(neck, proposals, _metas(batch), *predictors))
        return out


def _metas(batch: Batch) -> list[ImageMeta]:
    return [s.meta for s in batch.samples]
