"""SyncBN for every backend: MMSeg's ``SyncBN`` norm, also in CPU (gloo) runs.

``torch.nn.SyncBatchNorm`` refuses CPU tensors (and DDP refuses it on CPU modules); CPU multi-process runs (tests,
CPU clusters) must still compute batch statistics over the global batch, or they would train another model than the
single-process run with the same global batch. On GPU the stock ``nn.SyncBatchNorm`` is used.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks with autograd: the gradient of every rank's input is the sum of all ranks' output gradients.

    (``torch.distributed.nn.functional.all_reduce`` does the same but warns on every rank that it is deprecated.)
    """

    @staticmethod
    def forward(ctx: object, tensor: Tensor) -> Tensor:  # noqa: ARG004
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> Tensor:  # noqa: ARG004
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are per-channel sums all-reduced (with autograd) across the group."""

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002  (torch's signature)
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        channels = input.shape[1]
        dims = [d for d in range(input.dim()) if d != 1]
        local = torch.cat([input.sum(dims), (input * input).sum(dims), input.new_tensor([input.numel() / channels])])
        total = _AllReduceSum.apply(local)
        count = total[-1]
        mean = total[:channels] / count
        var = total[channels : 2 * channels] / count - mean * mean
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(var.detach() * count / (count - 1), alpha=momentum)
        shape = [1, channels] + [1] * (input.dim() - 2)
        out = (input - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def convert_sync_bn(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d synchronised across processes (state-dict keys unchanged)."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = CpuSyncBatchNorm  # no new state: only forward differs
    return model
