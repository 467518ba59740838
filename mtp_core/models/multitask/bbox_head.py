"""MTP's RoI box head (``MTP_IS_Shared2FCBBoxHead``): two shared FCs here, the predictors per dataset outside.

``fc_cls`` (C+1 logits, background last) and ``fc_reg`` (4·C class-specific deltas, stds 0.1/0.1/0.2/0.2) are the
framework's ``inssegroiboxhead_fc_{cls,reg}{k}``, passed in per call as the original passes them.

MTP's box loss has a bug that the released weights were trained with: ``MTP_IS_BBoxHead.loss`` passes the box
*weights* (all ones for positives) where mmdet passes the encoded targets, so ``loss_bbox`` is
``Σ|δ - 1| / n_sampled`` over the positives' GT-class deltas and the RoI regressor learns a constant.
``fix_bbox_target=False`` reproduces it (the goldens need it); ``True`` uses the encoded GT deltas as mmdet does.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtp_core.models.multitask.assigner_sampler import SamplingResult
from mtp_core.models.multitask.box_coder import DeltaXYWHBBoxCoder
from mtp_core.models.multitask.losses import accuracy, l1_loss, softmax_cross_entropy
from mtp_core.models.multitask.nms import multiclass_nms
from mtp_core.models.multitask.structures import ImageMeta

RCNN_STDS = (0.1, 0.1, 0.2, 0.2)


class Shared2FCBBoxHead(nn.Module):
    """Flatten (C, 7, 7) -> ``shared_fcs.0`` -> ReLU -> ``shared_fcs.1`` -> ReLU: the features both predictors read."""

    def __init__(self, in_channels: int = 256, roi_feat_size: int = 7, fc_out_channels: int = 1024) -> None:
        super().__init__()
        self.fc_out_channels = fc_out_channels
        self.bbox_coder = DeltaXYWHBBoxCoder(stds=RCNN_STDS)
        self.shared_fcs = nn.ModuleList([
            nn.Linear(in_channels * roi_feat_size * roi_feat_size, fc_out_channels),
            nn.Linear(fc_out_channels, fc_out_channels),
        ])

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        for fc in self.shared_fcs:
            x = F.relu(fc(x))
        return x

    def get_targets(
        self, sampling: Sequence[SamplingResult], num_classes: int
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Labels (GT class for positives, ``num_classes`` for negatives), label weights, deltas and their weights of
        the sampled RoIs, positives then negatives per image."""
        labels, label_weights, targets, weights = [], [], [], []
        for res in sampling:
            num_pos, num_neg = res.pos_priors.shape[0], res.neg_priors.shape[0]
            n = num_pos + num_neg
            lab = res.pos_priors.new_full((n,), num_classes, dtype=torch.long)
            lab_w = res.pos_priors.new_zeros(n)
            tgt = res.pos_priors.new_zeros((n, 4))
            tgt_w = res.pos_priors.new_zeros((n, 4))
            if num_pos > 0:
                lab[:num_pos] = res.pos_gt_labels
                lab_w[:num_pos] = 1.0
                tgt[:num_pos] = self.bbox_coder.encode(res.pos_priors, res.pos_gt_bboxes)
                tgt_w[:num_pos] = 1
            if num_neg > 0:
                lab_w[-num_neg:] = 1.0
            for out, value in zip((labels, label_weights, targets, weights), (lab, lab_w, tgt, tgt_w)):
                out.append(value)
        return torch.cat(labels), torch.cat(label_weights), torch.cat(targets), torch.cat(weights)

    def loss(
        self,
        cls_score: Tensor,
        bbox_pred: Tensor,
        sampling: Sequence[SamplingResult],
        num_classes: int,
        fix_bbox_target: bool = False,
    ) -> dict[str, Tensor]:
        """``loss_cls`` (softmax CE over the sampled RoIs), ``acc`` (logged only), ``loss_bbox`` (module doc)."""
        labels, label_weights, bbox_targets, bbox_weights = self.get_targets(sampling, num_classes)
        losses = {}
        if cls_score.numel() > 0:
            avg_factor = max(torch.sum(label_weights > 0).float().item(), 1.0)
            losses["loss_cls"] = softmax_cross_entropy(cls_score, labels, label_weights, avg_factor)
            losses["acc"] = accuracy(cls_score, labels)
        pos = (labels >= 0) & (labels < num_classes)
        if pos.any():
            pos_pred = bbox_pred.view(bbox_pred.shape[0], num_classes, -1)[pos, labels[pos]]
            if fix_bbox_target:
                losses["loss_bbox"] = l1_loss(pos_pred, bbox_targets[pos], bbox_weights[pos], bbox_targets.shape[0])
            else:
                losses["loss_bbox"] = l1_loss(pos_pred, bbox_weights[pos], None, bbox_targets.shape[0])
        else:
            losses["loss_bbox"] = bbox_pred[pos].sum()
        return losses

    @torch.no_grad()
    def predict(
        self,
        rois: Tensor,
        cls_score: Tensor,
        bbox_pred: Tensor,
        meta: ImageMeta,
        score_thr: float = 0.05,
        iou_threshold: float = 0.5,
        max_per_img: int = 100,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One image's detections ``(bboxes, scores, labels)`` at ``img_shape``: softmax, class-specific decoding
        (clipped), background dropped, score > 0.05, NMS at 0.5 within classes, the best 100."""
        boxes, scores = self.decode(rois, cls_score, bbox_pred, meta.img_shape)
        return self.select(boxes, scores, score_thr, iou_threshold, max_per_img)

    def decode(self, rois: Tensor, cls_score: Tensor, bbox_pred: Tensor, img_shape: tuple[int, int]
               ) -> tuple[Tensor, Tensor]:
        """Every RoI's class-specific boxes (n, 4·C), clipped to ``img_shape``, and class probabilities (n, C+1)."""
        num_classes = bbox_pred.shape[1] // 4
        boxes = self.bbox_coder.decode(
            rois[:, 1:].repeat_interleave(num_classes, dim=0), bbox_pred.view(-1, 4), max_shape=img_shape
        ).view(rois.shape[0], 4 * num_classes)
        return boxes, F.softmax(cls_score, dim=-1)

    @staticmethod
    def select(boxes: Tensor, scores: Tensor, score_thr: float = 0.05, iou_threshold: float = 0.5,
               max_per_img: int = 100) -> tuple[Tensor, Tensor, Tensor]:
        """One image's detections ``(bboxes, scores, labels)`` from :meth:`decode`'s boxes and probabilities."""
        if boxes.shape[0] == 0:
            return boxes.new_zeros((0, 4)), boxes.new_zeros((0,)), boxes.new_zeros((0,), dtype=torch.long)
        dets, labels = multiclass_nms(boxes, scores, score_thr, iou_threshold, max_per_img)
        return dets[:, :-1], dets[:, -1], labels
