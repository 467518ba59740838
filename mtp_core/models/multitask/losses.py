"""The mmdet 3.1 loss functions the instance decoder uses, with mmdet's reductions.

With an ``avg_factor`` mmdet divides the weighted sum by ``avg_factor + float32 eps`` (not by the element count),
which is what these do; labels index the classes with the background last.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = torch.finfo(torch.float32).eps


def _weighted_mean(loss: Tensor, weight: Tensor | None, avg_factor: float) -> Tensor:
    if weight is not None:
        loss = loss * weight
    return loss.sum() / (avg_factor + EPS)


def sigmoid_cross_entropy(logits: Tensor, labels: Tensor, label_weights: Tensor, avg_factor: float) -> Tensor:
    """Per-class sigmoid BCE of ``logits`` (n, C) against labels in [0, C] (C = background: all-zero target)."""
    num_channels = logits.shape[-1]
    targets = labels.new_zeros((labels.shape[0], num_channels))
    fg = torch.nonzero((labels >= 0) & (labels < num_channels), as_tuple=False)
    if fg.numel() > 0:
        targets[fg, labels[fg]] = 1
    weights = label_weights.view(-1, 1).repeat(1, num_channels) * (labels >= 0).float().view(-1, 1)
    loss = F.binary_cross_entropy_with_logits(logits, targets.float(), reduction="none")
    return _weighted_mean(loss, weights.float(), avg_factor)


def softmax_cross_entropy(logits: Tensor, labels: Tensor, label_weights: Tensor, avg_factor: float) -> Tensor:
    """Softmax cross entropy of ``logits`` (n, C+1), weighted per sample."""
    loss = F.cross_entropy(logits, labels, reduction="none", ignore_index=-100)
    return _weighted_mean(loss, label_weights.float(), avg_factor)


def l1_loss(pred: Tensor, target: Tensor, weight: Tensor | None, avg_factor: float) -> Tensor:
    """Weighted absolute error summed and divided by ``avg_factor``."""
    if target.numel() == 0:
        return pred.sum() * 0
    return _weighted_mean(torch.abs(pred - target), weight, avg_factor)


def mask_cross_entropy(mask_logits: Tensor, targets: Tensor, labels: Tensor) -> Tensor:
    """BCE of each RoI's mask logits (n, C, h, w) for its class against the binary target (n, h, w); mean over all
    pixels, shape (1,) as mmdet returns it."""
    inds = torch.arange(0, mask_logits.shape[0], dtype=torch.long, device=mask_logits.device)
    return F.binary_cross_entropy_with_logits(mask_logits[inds, labels], targets, reduction="mean")[None]


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Top-1 accuracy in percent, shape (1,) (logged, not a loss)."""
    if logits.shape[0] == 0:
        return logits.new_tensor([0.0])
    predicted = logits.topk(1, dim=1)[1].t()
    correct = predicted.eq(labels.view(1, -1).expand_as(predicted)).reshape(-1).float().sum(0, keepdim=True)
    return correct.mul_(100.0 / logits.shape[0])
