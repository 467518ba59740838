"""The Mask R-CNN fine-tuning model that MTP's instance decoder initialises: the RVSA encoder as ``backbone`` and
mmdet 3.1's ``MaskRCNN`` heads, under mmdet's names and module order (``backbone.``, ``neck.``, ``rpn_head.``,
``roi_head.bbox_head.{fc_cls,fc_reg,shared_fcs}``, ``roi_head.mask_head.{convs,upsample,conv_logits}``).

It is the pretraining instance decoder with its per-dataset predictors moved inside the heads, as
``mtp convert-ckpt --reuse-decoder insseg`` writes them: FPN (5 levels), RPN, RoIAlign 7/14, Shared2FC box head with
``fc_cls`` (C+1, background last) and ``fc_reg`` (4·C), FCN mask head with ``conv_logits`` (C), and mmdet's
``init_weights`` for what a checkpoint does not provide (Xavier FPN and shared FCs, N(0, 0.01) RPN convs and
``fc_cls``, N(0, 0.001) ``fc_reg``, Kaiming ``upsample``/``conv_logits``). Boxes train toward the encoded ground
truth, as mmdet's Mask R-CNN does (MTP's pretraining loss trained ``fc_reg`` toward a constant instead).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from mtp_core.models.dihedral import View
from mtp_core.models.multitask.anchors import AnchorGenerator
from mtp_core.models.multitask.bbox_head import Shared2FCBBoxHead
from mtp_core.models.multitask.fpn import FPN
from mtp_core.models.multitask.insseg import TEST_NMS_PRE, TRAIN_NMS_PRE
from mtp_core.models.multitask.mask_head import FCNMaskHead
from mtp_core.models.multitask.roi_head import RoIHead
from mtp_core.models.multitask.rpn_head import RPNHead
from mtp_core.models.multitask.structures import Batch, ImageMeta, InstanceResult, Sample, bbox2roi
from mtp_core.models.multitask.task import Losses
from mtp_core.models.rvsa import RVSAViT


class BBoxHeadWithPredictors(Shared2FCBBoxHead):
    """Shared2FC with its own ``fc_cls``/``fc_reg``; state_dict order as mmdet's (predictors first)."""

    def __init__(self, num_classes: int, in_channels: int = 256, roi_feat_size: int = 7,
                 fc_out_channels: int = 1024) -> None:
        super().__init__(in_channels, roi_feat_size, fc_out_channels)
        self.fc_cls = nn.Linear(fc_out_channels, num_classes + 1)
        self.fc_reg = nn.Linear(fc_out_channels, 4 * num_classes)
        # mmdet's BBoxHead builds fc_cls/fc_reg before ConvFCBBoxHead adds its FCs: the same state_dict order
        self._modules["shared_fcs"] = self._modules.pop("shared_fcs")

    def init_weights(self) -> None:
        for fc in self.shared_fcs:
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.fc_cls.weight, 0, 0.01)
        nn.init.normal_(self.fc_reg.weight, 0, 0.001)
        nn.init.zeros_(self.fc_cls.bias)
        nn.init.zeros_(self.fc_reg.bias)


class MaskHeadWithPredictor(FCNMaskHead):
    """The FCN mask head with its own ``conv_logits`` (one channel per class)."""

    def __init__(self, num_classes: int, num_convs: int = 4, in_channels: int = 256,
                 conv_out_channels: int = 256) -> None:
        super().__init__(num_convs, in_channels, conv_out_channels)
        self.conv_logits = nn.Conv2d(conv_out_channels, num_classes, 1)

    def init_weights(self) -> None:
        for module in (self.upsample, self.conv_logits):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)


class InstanceHeads:
    """The Mask R-CNN decoder on a backbone's four maps: ``neck`` (FPN, 5 levels), ``rpn_head`` and ``roi_head`` with
    their own predictors, under mmdet's names, for any model that registers them at its top level (the Mask R-CNN
    below, and the segmentor with instances of :mod:`mtp_core.models.seminst`)."""

    neck: FPN
    rpn_head: RPNHead
    roi_head: RoIHead

    def build_instance_heads(self, in_channels: list[int], num_classes: int, channels: int,
                             fc_out_channels: int, anchor_scale: float = 8.0) -> None:
        """Registers ``neck``, ``rpn_head``, ``roi_head`` (in mmdet's order) for ``num_classes`` object classes, with
        mmdet's init. ``anchor_scale``: anchor side in strides (mmdet's and MTP's 8: 32 px at the finest level; 4
        suits houses of 10-20 px, e.g. at 0.5 m; the weights do not depend on it)."""
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (object classes, background not counted), got {num_classes}")
        self.neck = FPN(in_channels, channels, num_outs=5)
        self.rpn_head = RPNHead(channels, channels, AnchorGenerator(scales=(anchor_scale,)))
        self.roi_head = RoIHead(channels, fc_out_channels, fix_bbox_target=True)
        self.roi_head.bbox_head = BBoxHeadWithPredictors(num_classes, channels, 7, fc_out_channels)
        self.roi_head.mask_head = MaskHeadWithPredictor(num_classes, 4, channels, channels)
        self.init_instance_heads()

    def init_instance_heads(self) -> None:
        """mmdet's init of the decoder (the backbone keeps its own)."""
        for module in self.neck.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        for module in self.rpn_head.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)
        self.roi_head.bbox_head.init_weights()
        self.roi_head.mask_head.init_weights()

    def instance_losses(self, maps: Sequence[Tensor], samples: Sequence[Sample]) -> Losses:
        """mmdet's losses from the backbone's maps: ``loss_rpn_cls``/``loss_rpn_bbox`` (per level), ``loss_cls``,
        ``acc``, ``loss_bbox``, ``loss_mask``."""
        feats = self.neck(maps)
        metas = [s.meta for s in samples]
        cls_scores, bbox_preds = self.rpn_head(feats)
        rpn_losses, _ = self.rpn_head.loss(cls_scores, bbox_preds, samples)
        losses: Losses = dict(rpn_losses)
        proposals = self.rpn_head.predict(cls_scores, bbox_preds, metas, TRAIN_NMS_PRE)
        sampling = self.roi_head.sample(proposals, samples)
        bbox_head, mask_head = self.roi_head.bbox_head, self.roi_head.mask_head
        losses.update(self.roi_head.bbox_loss(feats, sampling, bbox_head.fc_cls, bbox_head.fc_reg))
        losses.update(self.roi_head.mask_loss(feats, sampling, samples, mask_head.conv_logits))
        return losses

    def _detect(self, maps: Sequence[Tensor], metas: Sequence[ImageMeta]) -> tuple[list[Tensor], list]:
        """FPN maps and the per-image ``(bboxes, scores, labels)`` at ``img_shape``."""
        feats = self.neck(maps)
        proposals = self.rpn_head.predict(*self.rpn_head(feats), metas, TEST_NMS_PRE)
        bbox_head = self.roi_head.bbox_head
        dets, _, _ = self.roi_head.predict_bbox(feats, proposals, metas, bbox_head.fc_cls, bbox_head.fc_reg)
        return feats, dets

    def predict_instances(self, maps: Sequence[Tensor], metas: Sequence[ImageMeta]) -> list[InstanceResult]:
        """Per image: at most 100 detections with binary masks at ``ori_shape`` (mmdet's test path)."""
        feats = self.neck(maps)
        proposals = self.rpn_head.predict(*self.rpn_head(feats), metas, TEST_NMS_PRE)
        bbox_head, mask_head = self.roi_head.bbox_head, self.roi_head.mask_head
        return self.roi_head.predict(feats, proposals, metas, bbox_head.fc_cls, bbox_head.fc_reg,
                                     mask_head.conv_logits)

    def predict_soft_instances(self, maps: Sequence[Tensor], metas: Sequence[ImageMeta]) -> list[SoftInstances]:
        """Per image: the detections with their unpasted mask probabilities (28 x 28, of the predicted class), boxes
        at ``ori_shape``; what tiled inference pastes into its own windows."""
        feats, dets = self._detect(maps, metas)
        return self._soft_instances(dets, metas, self.mask_probs(feats, dets))

    def mask_probs(self, feats: Sequence[Tensor], dets: Sequence[tuple[Tensor, Tensor, Tensor]]) -> Tensor | None:
        """(n, 28, 28) mask probabilities of all images' detections ``(bboxes, scores, labels)`` (boxes in ``feats``'
        input pixels), each of its predicted class; None without detections."""
        if not sum(len(d[0]) for d in dets):
            return None
        logits = self.roi_head.predict_mask_logits(feats, [d[0] for d in dets], self.roi_head.mask_head.conv_logits)
        labels = torch.cat([d[2] for d in dets])
        return logits[torch.arange(len(labels)), labels].sigmoid()

    def detect_in_views(self, feats: Sequence[Sequence[Tensor]], views: Sequence[View], metas: Sequence[ImageMeta],
                        size: int) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Per image ``(bboxes, scores, labels)`` from the FPN maps of square tiles seen in ``views`` (the identity
        first), merged as MMDetection's Mask R-CNN ``aug_test`` merges augmentations: the identity view's RPN
        proposals are classified and regressed in every view, their class probabilities and boxes (turned back)
        averaged, then the usual score threshold and NMS."""
        proposals = self.rpn_head.predict(*self.rpn_head(feats[0]), metas, TEST_NMS_PRE)
        counts = [p.bboxes.shape[0] for p in proposals]
        bbox_head = self.roi_head.bbox_head
        boxes = scores = torch.zeros((), device=feats[0][0].device)
        for view, maps in zip(views, feats):
            rois = bbox2roi([view.boxes(p.bboxes, size) for p in proposals])
            cls_score, bbox_pred = self.roi_head.bbox_outputs(maps, rois, bbox_head.fc_cls, bbox_head.fc_reg)
            seen, probs = bbox_head.decode(rois, cls_score.float(), bbox_pred.float(), (size, size))
            boxes = boxes + view.inverse.boxes(seen.view(-1, 4), size).view(seen.shape)
            scores = scores + probs
        return [bbox_head.select(b, s) for b, s in zip((boxes / len(views)).split(counts),
                                                       (scores / len(views)).split(counts))]

    def mask_probs_in_views(self, feats: Sequence[Sequence[Tensor]], views: Sequence[View],
                            dets: Sequence[tuple[Tensor, Tensor, Tensor]], size: int) -> Tensor | None:
        """:meth:`mask_probs` of the detections in square tiles, the mean of what every view's maps give for the
        detection's box as that view sees it, turned back (MMDetection's ``merge_aug_masks``)."""
        if not sum(len(d[0]) for d in dets):
            return None
        total = torch.zeros((), device=feats[0][0].device)
        for view, maps in zip(views, feats):
            seen = self.mask_probs(maps, [(view.boxes(boxes, size), scores, labels) for boxes, scores, labels in dets])
            total = total + view.undo(seen.float())
        return total / len(views)

    def _soft_instances(self, dets: Sequence[tuple[Tensor, Tensor, Tensor]], metas: Sequence[ImageMeta],
                        probs: Tensor | None) -> list[SoftInstances]:
        """The detections split per image with their rows of ``probs``, boxes rescaled to ``ori_shape``."""
        out, start = [], 0
        for (bboxes, scores, labels), meta in zip(dets, metas):
            n = bboxes.shape[0]
            scale = bboxes.new_tensor(meta.scale_factor).repeat(2)
            mine = (probs[start:start + n] if n
                    else bboxes.new_zeros((0, self.roi_head.mask_size, self.roi_head.mask_size)))
            out.append(SoftInstances(bboxes / scale, scores, labels, mine))
            start += n
        return out


@dataclass
class SoftInstances:
    """Detections of one image: ``bboxes`` (n, 4) at ``ori_shape``, ``scores`` (n,), 0-based ``labels`` (n,) and
    ``mask_probs`` (n, 28, 28), each the predicted class's mask probability over its box."""

    bboxes: Tensor
    scores: Tensor
    labels: Tensor
    mask_probs: Tensor


class MaskRCNN(InstanceHeads, nn.Module):
    """``backbone`` (an RVSA ViT giving four maps), ``neck``, ``rpn_head`` and ``roi_head`` for ``num_classes``
    object classes. ``forward`` gives the losses in training mode and the detections in eval mode."""

    def __init__(self, backbone: RVSAViT, num_classes: int = 1, channels: int = 256, fc_out_channels: int = 1024):
        super().__init__()
        self.num_classes = num_classes
        self.backbone = backbone
        self.build_instance_heads(backbone.out_channels, num_classes, channels, fc_out_channels)

    def init_weights(self) -> None:
        """mmdet's init of the decoder (the backbone keeps its own)."""
        self.init_instance_heads()

    def extract_feat(self, inputs: Tensor) -> tuple[Tensor, ...]:
        return self.neck(self.backbone(inputs))

    def forward_train(self, batch: Batch) -> Losses:
        """mmdet's losses: ``loss_rpn_cls``/``loss_rpn_bbox`` (per level), ``loss_cls``, ``acc``, ``loss_bbox``,
        ``loss_mask``."""
        return self.instance_losses(self.backbone(batch.inputs), batch.samples)

    @torch.no_grad()
    def predict(self, batch: Batch) -> list[InstanceResult]:
        """Per image: at most 100 detections with binary masks at ``ori_shape``."""
        return self.predict_instances(self.backbone(batch.inputs), [s.meta for s in batch.samples])

    def forward(self, batch: Batch) -> Any:
        return self.forward_train(batch) if self.training else self.predict(batch)


def parse_losses(losses: Losses) -> tuple[Tensor, dict[str, Tensor]]:
    """mmdet's ``parse_losses``: the sum of the means of the entries whose key contains ``loss`` (per-level lists
    summed), and every entry (detached) for logging."""
    means = {k: v.mean() if isinstance(v, Tensor) else sum(x.mean() for x in v) for k, v in losses.items()}
    total = sum(v for k, v in means.items() if "loss" in k)
    return total, {k: v.detach() for k, v in means.items()}
