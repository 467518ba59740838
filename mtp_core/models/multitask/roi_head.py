"""MTP's RoI head (``MTP_IS_StandardRoIHead``): RoI sampling, the box branch and the mask branch, each with the
dataset's predictors passed in (spec §2.2).

Training: proposals are assigned at IoU 0.5 (low-quality matches on), the GT boxes are prepended to them and 512 RoIs
sampled (a quarter positive at most); the box branch pools 7×7 from the first four FPN levels, the mask branch
14×14 for the positives only. Test: box branch on all proposals, NMS, then the mask branch on the detections.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from mtp_core.models.multitask.assigner_sampler import MaxIoUAssigner, RandomSampler, SamplingResult
from mtp_core.models.multitask.bbox_head import Shared2FCBBoxHead
from mtp_core.models.multitask.losses import mask_cross_entropy
from mtp_core.models.multitask.mask_head import FCNMaskHead, mask_target, paste_masks
from mtp_core.models.multitask.roi_extractor import SingleRoIExtractor
from mtp_core.models.multitask.rpn_head import Proposals
from mtp_core.models.multitask.structures import ImageMeta, InstanceResult, Sample, bbox2roi


class RoIHead(nn.Module):
    """Box and mask branches; module order (and so state_dict order) as mmdet's ``StandardRoIHead``."""

    def __init__(
        self,
        in_channels: int = 256,
        fc_out_channels: int = 1024,
        num_samples: int = 512,
        mask_size: int = 28,
        fix_bbox_target: bool = False,
    ) -> None:
        super().__init__()
        self.bbox_roi_extractor = SingleRoIExtractor(7)
        self.bbox_head = Shared2FCBBoxHead(in_channels, 7, fc_out_channels)
        self.mask_roi_extractor = SingleRoIExtractor(14)
        self.mask_head = FCNMaskHead(4, in_channels, in_channels)
        self.assigner = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5, match_low_quality=True)
        self.sampler = RandomSampler(num_samples, pos_fraction=0.25, add_gt_as_proposals=True)
        self.mask_size = mask_size
        self.fix_bbox_target = fix_bbox_target

    def sample(self, proposals: Sequence[Proposals], samples: Sequence[Sample]) -> list[SamplingResult]:
        """Assign and sample each image's proposals (GT boxes prepended)."""
        out = []
        for props, sample in zip(proposals, samples):
            assign = self.assigner.assign(props.bboxes, sample.bboxes, sample.labels)
            out.append(self.sampler.sample(assign, props.bboxes, sample.bboxes, sample.labels))
        return out

    def bbox_loss(
        self, feats: Sequence[Tensor], sampling: Sequence[SamplingResult], fc_cls: nn.Module, fc_reg: nn.Module
    ) -> dict[str, Tensor]:
        """``loss_cls``, ``acc`` and ``loss_bbox`` of the sampled RoIs."""
        rois = bbox2roi([res.priors for res in sampling])
        x = self.bbox_head(self.bbox_roi_extractor(feats, rois))
        num_classes = fc_cls.out_features - 1
        return self.bbox_head.loss(fc_cls(x), fc_reg(x), sampling, num_classes, self.fix_bbox_target)

    def mask_loss(
        self,
        feats: Sequence[Tensor],
        sampling: Sequence[SamplingResult],
        samples: Sequence[Sample],
        conv_logits: nn.Module,
    ) -> dict[str, Tensor]:
        """``loss_mask`` of the positive RoIs."""
        pos_rois = bbox2roi([res.pos_priors for res in sampling])
        mask_preds = conv_logits(self.mask_head(self.mask_roi_extractor(feats, pos_rois)))
        targets = mask_target(
            [res.pos_priors for res in sampling],
            [res.pos_assigned_gt_inds for res in sampling],
            [s.masks for s in samples],
            self.mask_size,
        )
        if mask_preds.shape[0] == 0:
            return {"loss_mask": mask_preds.sum()}
        labels = torch.cat([res.pos_gt_labels for res in sampling])
        return {"loss_mask": mask_cross_entropy(mask_preds, targets, labels)}

    def predict_bbox(
        self,
        feats: Sequence[Tensor],
        proposals: Sequence[Proposals],
        metas: Sequence[ImageMeta],
        fc_cls: nn.Module,
        fc_reg: nn.Module,
    ) -> tuple[list[tuple[Tensor, Tensor, Tensor]], Tensor, Tensor]:
        """Per image ``(bboxes, scores, labels)`` at ``img_shape``, and the raw ``cls_score``/``bbox_pred`` of all
        proposals (rows in proposal order)."""
        rois = bbox2roi([p.bboxes for p in proposals])
        cls_score, bbox_pred = self.bbox_outputs(feats, rois, fc_cls, fc_reg)
        counts = [p.bboxes.shape[0] for p in proposals]
        dets = [
            self.bbox_head.predict(r, c, b, meta)
            for r, c, b, meta in zip(rois.split(counts), cls_score.split(counts), bbox_pred.split(counts), metas)
        ]
        return dets, cls_score, bbox_pred

    def bbox_outputs(self, feats: Sequence[Tensor], rois: Tensor, fc_cls: nn.Module, fc_reg: nn.Module
                     ) -> tuple[Tensor, Tensor]:
        """The raw ``cls_score`` (n, C+1) and ``bbox_pred`` (n, 4·C) of ``rois`` (``bbox2roi`` rows)."""
        x = self.bbox_head(self.bbox_roi_extractor(feats, rois))
        return fc_cls(x), fc_reg(x)

    def predict_mask_logits(self, feats: Sequence[Tensor], bboxes: Sequence[Tensor], conv_logits: nn.Module) -> Tensor:
        """(n, C, 28, 28) mask logits of all images' detections."""
        return conv_logits(self.mask_head(self.mask_roi_extractor(feats, bbox2roi(bboxes))))

    def predict(
        self,
        feats: Sequence[Tensor],
        proposals: Sequence[Proposals],
        metas: Sequence[ImageMeta],
        fc_cls: nn.Module,
        fc_reg: nn.Module,
        conv_logits: nn.Module,
        mask_threshold: float = 0.5,
    ) -> list[InstanceResult]:
        """Detections with masks; boxes and masks at each image's ``ori_shape`` (mmdet's rescaling)."""
        dets, _, _ = self.predict_bbox(feats, proposals, metas, fc_cls, fc_reg)
        boxes = [d[0] for d in dets]
        logits = self.predict_mask_logits(feats, boxes, conv_logits) if sum(b.shape[0] for b in boxes) else None
        results = []
        start = 0
        for (bboxes, scores, labels), meta in zip(dets, metas):
            n = bboxes.shape[0]
            scale = bboxes.new_tensor(meta.scale_factor).repeat(2)
            bboxes = bboxes / scale
            if n:
                probs = logits[start : start + n][range(n), labels][:, None].sigmoid()
            else:
                probs = bboxes.new_zeros((0, 1, 1, 1))
            masks = paste_masks(probs, bboxes, meta.ori_shape[0], meta.ori_shape[1], mask_threshold)
            results.append(InstanceResult(bboxes, scores, labels, masks))
            start += n
        return results

