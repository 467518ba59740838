"""MTP's FCN mask head (``MTP_IS_FCNMaskHead``) without its predictor, mmdet's mask targets and test-time paste.

The 1×1 ``conv_logits`` (C channels, one per class) is the framework's ``inssegroimaskhead_conv{k}``, passed in.
Targets are binary: each GT bitmap cropped to its positive proposal with aligned RoIAlign (28×28) and ``>= 0.5``
(torchvision's Mask R-CNN uses soft, unaligned targets instead; spec §3.2).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from mtp_core.models.multitask.layers import ConvModule

GPU_MEM_LIMIT = 1024**3  # bytes of pasted float masks per chunk on a GPU (mmdet's limit)


class FCNMaskHead(nn.Module):
    """``num_convs`` 3×3 ConvModules + ReLU, then a 2× ``upsample`` ConvTranspose2d + ReLU: 14×14 RoIs -> 28×28."""

    def __init__(self, num_convs: int = 4, in_channels: int = 256, conv_out_channels: int = 256) -> None:
        super().__init__()
        self.conv_out_channels = conv_out_channels
        self.convs = nn.ModuleList(
            ConvModule(in_channels if i == 0 else conv_out_channels, conv_out_channels, 3, padding=1, relu=True)
            for i in range(num_convs)
        )
        upsample_in = conv_out_channels if num_convs else in_channels
        self.upsample = nn.ConvTranspose2d(upsample_in, conv_out_channels, 2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = conv(x)
        return F.relu(self.upsample(x))


def mask_target(
    pos_proposals: Sequence[Tensor],
    pos_assigned_gt_inds: Sequence[Tensor],
    gt_masks: Sequence[Tensor],
    mask_size: int = 28,
) -> Tensor:
    """(n_pos, s, s) binary float targets of all images' positive proposals (mmdet ``mask_target``)."""
    targets = []
    for proposals, assigned, masks in zip(pos_proposals, pos_assigned_gt_inds, gt_masks):
        if proposals.shape[0] == 0:
            targets.append(proposals.new_zeros((0, mask_size, mask_size)))
            continue
        height, width = masks.shape[-2:]
        boxes = proposals.detach().clone()
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clamp(0, width)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clamp(0, height)
        # each RoI reads its own GT bitmap as its "image": the same crops as mmdet's, without a copy per RoI
        rois = torch.cat([assigned.to(boxes.dtype)[:, None], boxes], dim=1)
        bitmaps = masks.to(dtype=rois.dtype)
        crops = roi_align(bitmaps[:, None], rois, mask_size, 1.0, sampling_ratio=0, aligned=True).squeeze(1)
        targets.append((crops >= 0.5).float())
    return torch.cat(targets)


def paste_masks(mask_probs: Tensor, bboxes: Tensor, img_h: int, img_w: int, threshold: float = 0.5) -> Tensor:
    """(n, img_h, img_w) bool masks: each (s, s) probability map resampled into its box (mmdet ``_do_paste_mask``,
    ``grid_sample`` with ``align_corners=False``), then ``>= threshold``.

    On the CPU masks are pasted one at a time inside their box's pixel window, on a GPU in chunks over the whole
    image, as mmdet does; outside a box's window the resampled value is below 0.5 either way.
    """
    n = mask_probs.shape[0]
    out = torch.zeros(n, img_h, img_w, device=mask_probs.device, dtype=torch.bool)
    if n == 0:
        return out
    cpu = mask_probs.device.type == "cpu"
    num_chunks = n if cpu else min(n, math.ceil(n * img_h * img_w * 4 / GPU_MEM_LIMIT))
    for inds in torch.chunk(torch.arange(n, device=mask_probs.device), num_chunks):
        pasted, window = _paste_chunk(mask_probs[inds], bboxes[inds], img_h, img_w, skip_empty=cpu)
        out[(inds,) + window] = pasted >= threshold
    return out


def _paste_chunk(
    masks: Tensor, boxes: Tensor, img_h: int, img_w: int, skip_empty: bool
) -> tuple[Tensor, tuple[slice, ...]]:
    device = masks.device
    if skip_empty:
        x0_int, y0_int = torch.clamp(boxes.min(dim=0).values.floor()[:2] - 1, min=0).to(dtype=torch.int32)
        x1_int = torch.clamp(boxes[:, 2].max().ceil() + 1, max=img_w).to(dtype=torch.int32)
        y1_int = torch.clamp(boxes[:, 3].max().ceil() + 1, max=img_h).to(dtype=torch.int32)
    else:
        x0_int, y0_int, x1_int, y1_int = 0, 0, img_w, img_h
    x0, y0, x1, y1 = torch.split(boxes, 1, dim=1)
    img_y = torch.arange(y0_int, y1_int, device=device).to(torch.float32) + 0.5
    img_x = torch.arange(x0_int, x1_int, device=device).to(torch.float32) + 0.5
    img_y = (img_y - y0) / (y1 - y0) * 2 - 1
    img_x = (img_x - x0) / (x1 - x0) * 2 - 1
    img_x = torch.where(torch.isinf(img_x), torch.zeros_like(img_x), img_x)
    img_y = torch.where(torch.isinf(img_y), torch.zeros_like(img_y), img_y)
    n = masks.shape[0]
    gx = img_x[:, None, :].expand(n, img_y.shape[1], img_x.shape[1])
    gy = img_y[:, :, None].expand(n, img_y.shape[1], img_x.shape[1])
    pasted = F.grid_sample(masks.to(dtype=torch.float32), torch.stack([gx, gy], dim=3), align_corners=False)
    if skip_empty:
        return pasted[:, 0], (slice(int(y0_int), int(y1_int)), slice(int(x0_int), int(x1_int)))
    return pasted[:, 0], ()
