"""mmdet 3.1 ``MaxIoUAssigner`` and ``RandomSampler`` with their results, as the RPN and the RoI head use them.

The sampler draws with ``torch.randperm`` on the default CPU generator, positives then negatives, image by image,
exactly where mmdet draws, so a seeded run samples the same anchors and RoIs as the original (spec §3.2, §6.3).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def bbox_overlaps(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-6) -> Tensor:
    """(n, m) IoU of every pair, mmdet's arithmetic (union floored at ``eps``, so empty boxes give 0, not NaN)."""
    if boxes1.shape[0] * boxes2.shape[0] == 0:
        return boxes1.new_zeros((boxes1.shape[0], boxes2.shape[0]))
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    lt = torch.max(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    rb = torch.min(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    union = area1[..., None] + area2[..., None, :] - overlap
    return overlap / torch.max(union, union.new_tensor([eps]))


@dataclass
class AssignResult:
    """Per prior: ``gt_inds`` (0 negative, -1 ignored, i+1 assigned to GT i), its best IoU and the GT's label."""

    num_gts: int
    gt_inds: Tensor
    max_overlaps: Tensor
    labels: Tensor

    def add_gt_(self, gt_labels: Tensor) -> None:
        """Prepend the GT boxes themselves as priors assigned to themselves (IoU 1)."""
        self_inds = torch.arange(1, len(gt_labels) + 1, dtype=torch.long, device=gt_labels.device)
        self.gt_inds = torch.cat([self_inds, self.gt_inds])
        self.max_overlaps = torch.cat([self.max_overlaps.new_ones(len(gt_labels)), self.max_overlaps])
        self.labels = torch.cat([gt_labels, self.labels])


class MaxIoUAssigner:
    """Negatives below ``neg_iou_thr``, positives from ``pos_iou_thr``, then every GT also takes the priors of its
    highest IoU when that reaches ``min_pos_iou`` (all of them on ties; the last GT wins)."""

    def __init__(self, pos_iou_thr: float, neg_iou_thr: float, min_pos_iou: float, match_low_quality: bool = True):
        self.pos_iou_thr = pos_iou_thr
        self.neg_iou_thr = neg_iou_thr
        self.min_pos_iou = min_pos_iou
        self.match_low_quality = match_low_quality

    def assign(self, priors: Tensor, gt_bboxes: Tensor, gt_labels: Tensor) -> AssignResult:
        overlaps = bbox_overlaps(gt_bboxes, priors)
        num_gts, num_priors = overlaps.shape
        gt_inds = overlaps.new_full((num_priors,), -1, dtype=torch.long)
        if num_gts == 0 or num_priors == 0:
            if num_gts == 0:
                gt_inds[:] = 0
            labels = overlaps.new_full((num_priors,), -1, dtype=torch.long)
            return AssignResult(num_gts, gt_inds, overlaps.new_zeros((num_priors,)), labels)
        max_overlaps, argmax_overlaps = overlaps.max(dim=0)
        gt_max_overlaps, _ = overlaps.max(dim=1)
        gt_inds[(max_overlaps >= 0) & (max_overlaps < self.neg_iou_thr)] = 0
        pos = max_overlaps >= self.pos_iou_thr
        gt_inds[pos] = argmax_overlaps[pos] + 1
        if self.match_low_quality:
            for i in range(num_gts):
                if gt_max_overlaps[i] >= self.min_pos_iou:
                    gt_inds[overlaps[i, :] == gt_max_overlaps[i]] = i + 1
        labels = gt_inds.new_full((num_priors,), -1)
        pos_inds = torch.nonzero(gt_inds > 0, as_tuple=False).squeeze(1)
        if pos_inds.numel() > 0:
            labels[pos_inds] = gt_labels[gt_inds[pos_inds] - 1]
        return AssignResult(num_gts, gt_inds, max_overlaps, labels)


@dataclass
class SamplingResult:
    """Sampled priors of one image: positives first, then negatives, each sorted by index (mmdet ``unique``)."""

    pos_inds: Tensor
    neg_inds: Tensor
    pos_priors: Tensor
    neg_priors: Tensor
    pos_assigned_gt_inds: Tensor
    pos_gt_labels: Tensor
    pos_gt_bboxes: Tensor

    @property
    def priors(self) -> Tensor:
        return torch.cat([self.pos_priors, self.neg_priors])

    @property
    def avg_factor(self) -> int:
        """``max(n_pos, 1) + max(n_neg, 1)``: mmdet's loss normaliser for a sampler that counts negatives."""
        return max(self.pos_inds.numel(), 1) + max(self.neg_inds.numel(), 1)


class RandomSampler:
    """``num`` samples with at most ``pos_fraction`` positives, drawn uniformly; negatives fill the rest."""

    def __init__(self, num: int, pos_fraction: float, add_gt_as_proposals: bool) -> None:
        self.num = num
        self.pos_fraction = pos_fraction
        self.add_gt_as_proposals = add_gt_as_proposals

    @staticmethod
    def _choose(candidates: Tensor, num: int) -> Tensor:
        if candidates.numel() <= num:
            return candidates
        perm = torch.randperm(candidates.numel())[:num].to(device=candidates.device)
        return candidates[perm]

    def sample(self, assign: AssignResult, priors: Tensor, gt_bboxes: Tensor, gt_labels: Tensor) -> SamplingResult:
        """Sample; with ``add_gt_as_proposals`` the GT boxes are prepended to ``priors`` (and to ``assign``) first."""
        if self.add_gt_as_proposals and len(gt_bboxes) > 0:
            priors = torch.cat([gt_bboxes, priors], dim=0)
            assign.add_gt_(gt_labels)
        positives = torch.nonzero(assign.gt_inds > 0, as_tuple=False).squeeze(1)
        pos_inds = self._choose(positives, int(self.num * self.pos_fraction)).unique()
        negatives = torch.nonzero(assign.gt_inds == 0, as_tuple=False).squeeze(1)
        neg_inds = self._choose(negatives, self.num - pos_inds.numel()).unique()
        assigned = assign.gt_inds[pos_inds] - 1
        pos_gt_bboxes = gt_bboxes.view(-1, 4)[assigned] if gt_bboxes.numel() else gt_bboxes.view(-1, 4)
        return SamplingResult(
            pos_inds=pos_inds,
            neg_inds=neg_inds,
            pos_priors=priors[pos_inds],
            neg_priors=priors[neg_inds],
            pos_assigned_gt_inds=assigned,
            pos_gt_labels=assign.labels[pos_inds],
            pos_gt_bboxes=pos_gt_bboxes,
        )
