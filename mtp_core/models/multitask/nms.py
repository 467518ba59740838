"""mmcv 2.0's ``batched_nms`` and mmdet's ``multiclass_nms`` on ``torchvision.ops.nms``.

torchvision's ``nms`` is mmcv's algorithm (greedy, suppress when IoU > threshold, offset 0; spec §2.7). The batching
is mmcv's, not torchvision's ``batched_nms``: below ``split_thr`` boxes every group is shifted by the same
``idx · (max + 1)`` offset and one NMS runs, above it each group runs alone. torchvision switches strategy at another
size, and the offset changes float rounding, so only mmcv's rule keeps the same keep sets.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import nms


def batched_nms(
    boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, split_thr: int = 10000
) -> tuple[Tensor, Tensor]:
    """NMS within each group of ``idxs``: ``(dets (k, 5) = boxes + score, keep (k,))`` by decreasing score."""
    if boxes.numel() == 0:
        return boxes.new_zeros((0, 5)), idxs.new_zeros((0,), dtype=torch.long)
    offsets = idxs.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
    boxes_for_nms = boxes + offsets[:, None]
    if boxes_for_nms.shape[0] < split_thr:
        keep = nms(boxes_for_nms, scores, iou_threshold)
        kept_scores = scores[keep]
    else:
        total_mask = scores.new_zeros(scores.size(), dtype=torch.bool)
        for group in torch.unique(idxs):
            members = (idxs == group).nonzero(as_tuple=False).view(-1)
            total_mask[members[nms(boxes_for_nms[members], scores[members], iou_threshold)]] = True
        keep = total_mask.nonzero(as_tuple=False).view(-1)
        kept_scores, order = scores[keep].sort(descending=True)
        keep = keep[order]
    return torch.cat([boxes[keep], kept_scores[:, None]], -1), keep


def multiclass_nms(
    multi_bboxes: Tensor, multi_scores: Tensor, score_thr: float, iou_threshold: float, max_num: int
) -> tuple[Tensor, Tensor]:
    """Per-class NMS of class-specific boxes (n, 4·C) with softmax scores (n, C+1), background last and dropped:
    ``(dets (k, 5), labels (k,))``, at most ``max_num`` by decreasing score."""
    num_classes = multi_scores.shape[1] - 1
    if multi_bboxes.shape[1] > 4:
        bboxes = multi_bboxes.view(multi_scores.shape[0], -1, 4)
    else:
        bboxes = multi_bboxes[:, None].expand(multi_scores.shape[0], num_classes, 4)
    scores = multi_scores[:, :-1]
    labels = torch.arange(num_classes, dtype=torch.long, device=scores.device).view(1, -1).expand_as(scores)
    bboxes = bboxes.reshape(-1, 4)
    scores = scores.reshape(-1)
    labels = labels.reshape(-1)
    inds = (scores > score_thr).nonzero(as_tuple=False).squeeze(1)
    bboxes, scores, labels = bboxes[inds], scores[inds], labels[inds]
    if bboxes.numel() == 0:
        return torch.cat([bboxes, scores[:, None]], -1), labels
    dets, keep = batched_nms(bboxes, scores, labels, iou_threshold)
    if max_num > 0:
        dets, keep = dets[:max_num], keep[:max_num]
    return dets, labels[keep]
