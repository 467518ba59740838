"""MTP's RPN (``MTP_IS_RPNHead`` = mmdet 3.1 ``RPNHead``): head, targets, losses and proposals (spec §2.2).

Every anchor of the padded image takes part (``allowed_border=-1``); 256 anchors per image are sampled (half
positive at most); the box loss is L1 on the positives' deltas. Proposals: the top ``nms_pre`` anchors per level
by score, decoded and clipped, boxes of zero width or height dropped, NMS at 0.7 within each level, the best
``max_per_img`` kept, detached.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtp_core.models.multitask.anchors import AnchorGenerator
from mtp_core.models.multitask.assigner_sampler import MaxIoUAssigner, RandomSampler, SamplingResult
from mtp_core.models.multitask.box_coder import DeltaXYWHBBoxCoder
from mtp_core.models.multitask.losses import l1_loss, sigmoid_cross_entropy
from mtp_core.models.multitask.nms import batched_nms
from mtp_core.models.multitask.structures import ImageMeta, Sample


@dataclass
class Proposals:
    """RPN proposals of one image, by decreasing score."""

    bboxes: Tensor
    scores: Tensor


class RPNHead(nn.Module):
    """3×3 conv + ReLU shared by the levels, then 1×1 convs for one sigmoid score and 4 deltas per anchor."""

    def __init__(
        self,
        in_channels: int = 256,
        feat_channels: int = 256,
        anchor_generator: AnchorGenerator | None = None,
        num_samples: int = 256,
        iou_threshold: float = 0.7,
    ) -> None:
        super().__init__()
        self.prior_generator = anchor_generator or AnchorGenerator()
        self.bbox_coder = DeltaXYWHBBoxCoder()
        self.assigner = MaxIoUAssigner(pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3, match_low_quality=True)
        self.sampler = RandomSampler(num_samples, pos_fraction=0.5, add_gt_as_proposals=False)
        self.iou_threshold = iou_threshold
        num_anchors = self.prior_generator.num_base_priors
        self.rpn_conv = nn.Conv2d(in_channels, feat_channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(feat_channels, num_anchors, 1)
        self.rpn_reg = nn.Conv2d(feat_channels, num_anchors * 4, 1)

    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level: scores (B, A, h, w) and deltas (B, 4A, h, w), channel = anchor·4 + coordinate."""
        cls_scores, bbox_preds = [], []
        for x in feats:
            x = F.relu(self.rpn_conv(x))
            cls_scores.append(self.rpn_cls(x))
            bbox_preds.append(self.rpn_reg(x))
        return cls_scores, bbox_preds

    def loss(
        self, cls_scores: Sequence[Tensor], bbox_preds: Sequence[Tensor], samples: Sequence[Sample]
    ) -> tuple[dict[str, list[Tensor]], list[SamplingResult]]:
        """``loss_rpn_cls`` and ``loss_rpn_bbox`` per level (lists), and each image's sampling (class-agnostic:
        every GT box is an object)."""
        featmap_sizes = [tuple(s.shape[-2:]) for s in cls_scores]
        device = cls_scores[0].device
        anchors_per_level = self.prior_generator.grid_priors(featmap_sizes, device=device)
        num_level_anchors = [a.shape[0] for a in anchors_per_level]
        anchors = torch.cat(anchors_per_level)
        labels, label_weights, bbox_targets, bbox_weights, sampling = [], [], [], [], []
        for sample in samples:
            valid = torch.cat(self.prior_generator.valid_flags(featmap_sizes, sample.meta.pad_shape, device))
            targets = self._targets_single(anchors, valid, sample)
            for out, value in zip((labels, label_weights, bbox_targets, bbox_weights, sampling), targets):
                out.append(value)
        avg_factor = sum(s.avg_factor for s in sampling)
        per_level = [
            torch.stack(t).split(num_level_anchors, dim=1) for t in (labels, label_weights, bbox_targets, bbox_weights)
        ]
        losses_cls, losses_bbox = [], []
        for level, (score, pred) in enumerate(zip(cls_scores, bbox_preds)):
            lvl_labels, lvl_label_weights, lvl_targets, lvl_weights = (t[level] for t in per_level)
            score = score.permute(0, 2, 3, 1).reshape(-1, 1)
            losses_cls.append(
                sigmoid_cross_entropy(score, lvl_labels.reshape(-1), lvl_label_weights.reshape(-1), avg_factor)
            )
            pred = pred.permute(0, 2, 3, 1).reshape(-1, 4)
            losses_bbox.append(l1_loss(pred, lvl_targets.reshape(-1, 4), lvl_weights.reshape(-1, 4), avg_factor))
        return {"loss_rpn_cls": losses_cls, "loss_rpn_bbox": losses_bbox}, sampling

    def _targets_single(
        self, anchors: Tensor, valid: Tensor, sample: Sample
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, SamplingResult]:
        """Labels (0 object, 1 background), label weights, deltas and their weights for all anchors of one image."""
        if not valid.any():
            raise ValueError("no anchor lies inside the padded image: check the image and feature map sizes")
        gt_bboxes = sample.bboxes
        gt_labels = torch.zeros_like(sample.labels)
        inside = anchors[valid]
        assign = self.assigner.assign(inside, gt_bboxes, gt_labels)
        result = self.sampler.sample(assign, inside, gt_bboxes, gt_labels)
        n = anchors.shape[0]
        labels = anchors.new_full((n,), 1, dtype=torch.long)
        label_weights = anchors.new_zeros(n)
        bbox_targets = anchors.new_zeros((n, 4))
        bbox_weights = anchors.new_zeros((n, 4))
        index = torch.nonzero(valid, as_tuple=False).squeeze(1)
        if len(result.pos_inds) > 0:
            pos = index[result.pos_inds]
            bbox_targets[pos] = self.bbox_coder.encode(result.pos_priors, result.pos_gt_bboxes)
            bbox_weights[pos] = 1.0
            labels[pos] = result.pos_gt_labels
            label_weights[pos] = 1.0
        if len(result.neg_inds) > 0:
            label_weights[index[result.neg_inds]] = 1.0
        return labels, label_weights, bbox_targets, bbox_weights, result

    @torch.no_grad()
    def predict(
        self,
        cls_scores: Sequence[Tensor],
        bbox_preds: Sequence[Tensor],
        metas: Sequence[ImageMeta],
        nms_pre: int,
        max_per_img: int = 1000,
    ) -> list[Proposals]:
        """Proposals of every image (``nms_pre`` 2000 in training, 1000 at test in MTP)."""
        featmap_sizes = [tuple(s.shape[-2:]) for s in cls_scores]
        priors = self.prior_generator.grid_priors(featmap_sizes, dtype=cls_scores[0].dtype, device=cls_scores[0].device)
        out = []
        for i, meta in enumerate(metas):
            scores, preds = [s[i].detach() for s in cls_scores], [p[i].detach() for p in bbox_preds]
            out.append(self._proposals_single(scores, preds, priors, meta, nms_pre, max_per_img))
        return out

    def _proposals_single(
        self,
        cls_scores: Sequence[Tensor],
        bbox_preds: Sequence[Tensor],
        priors: Sequence[Tensor],
        meta: ImageMeta,
        nms_pre: int,
        max_per_img: int,
    ) -> Proposals:
        level_preds, level_priors, level_scores, level_ids = [], [], [], []
        for level, (score, pred, anchors) in enumerate(zip(cls_scores, bbox_preds, priors)):
            pred = pred.permute(1, 2, 0).reshape(-1, 4)
            scores = score.permute(1, 2, 0).reshape(-1).sigmoid()
            if 0 < nms_pre < scores.shape[0]:
                scores, order = scores.sort(descending=True)
                scores, order = scores[:nms_pre], order[:nms_pre]
                pred, anchors = pred[order, :], anchors[order]
            level_preds.append(pred)
            level_priors.append(anchors)
            level_scores.append(scores)
            level_ids.append(scores.new_full((scores.shape[0],), level, dtype=torch.long))
        bboxes = self.bbox_coder.decode(torch.cat(level_priors), torch.cat(level_preds), max_shape=meta.img_shape)
        scores = torch.cat(level_scores)
        ids = torch.cat(level_ids)
        keep = ((bboxes[:, 2] - bboxes[:, 0]) > 0) & ((bboxes[:, 3] - bboxes[:, 1]) > 0)
        if not keep.all():
            bboxes, scores, ids = bboxes[keep], scores[keep], ids[keep]
        if bboxes.numel() == 0:
            return Proposals(bboxes.new_zeros((0, 4)), scores.new_zeros((0,)))
        dets, keep = batched_nms(bboxes, scores, ids, self.iou_threshold)
        return Proposals(bboxes[keep][:max_per_img], dets[:max_per_img, -1])
