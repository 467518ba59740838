"""A segmentor with instances: one RVSA encoder, MMSeg's UperNet (semantic classes) and mmdet's Mask R-CNN decoder
(one instance per object), the "semantic segmentation + instances" of MTP's multi-task design for buildings.

Semantic masks merge buildings that touch (terraces, semi-detached pairs, dense settlements) into one region; the
instance decoder tells them apart. Both decoders read the same four encoder maps, so a tile costs one encoder pass.
Keys are the union of MMSeg's ``EncoderDecoder`` and mmdet's ``MaskRCNN`` (``backbone.``, ``decode_head.``,
``auxiliary_head.``, ``neck.``, ``rpn_head.``, ``roi_head.``): a fine-tuned segmentor, a Mask R-CNN and MTP's
multi-task pretraining file (encoder and both decoders) all load into it by name (:mod:`mtp_core.checkpoint`).

The object classes are the semantic classes without the background: object class k is semantic class k + 1, so one
model card (``("background", "building")``) describes both heads. ``forward`` gives the semantic logits, so every
semantic front end (the Predictor, ``mtp predict`` with ``--semantic-only``, the test loop) runs it unchanged.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from mtp_core.models.dihedral import IDENTITY, VIEWS, View
from mtp_core.models.maskrcnn import InstanceHeads, SoftInstances
from mtp_core.models.multitask.structures import ImageMeta, Sample
from mtp_core.models.multitask.task import Losses
from mtp_core.models.segmentor import EncoderDecoder


class InstanceSegmentor(InstanceHeads, EncoderDecoder):
    """``backbone`` + ``decode_head`` (+ ``auxiliary_head``) + ``neck``/``rpn_head``/``roi_head`` for the
    ``decode_head.num_classes - 1`` object classes. ``channels`` and ``fc_out_channels`` size the Mask R-CNN decoder
    (256 and 1024 in MTP's), ``anchor_scale`` sets its anchors (MTP's 8)."""

    def __init__(self, backbone: nn.Module, decode_head: nn.Module, auxiliary_head: nn.Module | None = None,
                 channels: int = 256, fc_out_channels: int = 1024, anchor_scale: float = 8.0) -> None:
        super().__init__(backbone, decode_head, auxiliary_head)
        if decode_head.num_classes < 2:
            raise ValueError("a segmentor with instances needs a background class and at least one object class "
                             f"(decode_head.num_classes >= 2), got {decode_head.num_classes}")
        self.build_instance_heads(list(backbone.out_channels), decode_head.num_classes - 1, channels,
                                  fc_out_channels, anchor_scale)

    @property
    def num_object_classes(self) -> int:
        return self.decode_head.num_classes - 1

    def forward(self, x: Tensor, return_aux: bool = False, samples: Sequence[Sample] | None = None) -> Any:
        """The semantic logits (as :class:`EncoderDecoder`); with ``samples`` (training) :meth:`forward_train`'s
        outputs, so a DistributedDataParallel wrapper sees the whole step."""
        if samples is not None:
            return self.forward_train(x, samples)
        return super().forward(x, return_aux)

    def forward_train(self, inputs: Tensor, samples: Sequence[Sample]) -> tuple[Tensor, Tensor | None, Losses]:
        """One encoder pass: the semantic logits at the input size (and the auxiliary head's), and mmdet's instance
        losses (``samples``: boxes, 0-based object labels and masks at the padded size)."""
        maps = self.backbone(inputs)
        size = inputs.shape[2:]
        logits = self._resize(self.decode_head(maps), self.decode_head, size)
        aux = self._resize(self.auxiliary_head(maps), self.auxiliary_head, size) if self.auxiliary_head else None
        return logits, aux, self.instance_losses(maps, samples)

    def predict_with_instances(self, inputs: Tensor, metas: Sequence[ImageMeta] | None = None
                               ) -> tuple[Tensor, list[SoftInstances]]:
        """Semantic logits at the input size and each image's detections with their unpasted mask probabilities
        (``metas`` default: every image as it is, ``inputs``' size)."""
        maps = self.backbone(inputs)
        logits = self._resize(self.decode_head(maps), self.decode_head, inputs.shape[2:])
        if metas is None:
            metas = [ImageMeta.of_size(*inputs.shape[2:])] * inputs.shape[0]
        return logits, self.predict_soft_instances(maps, metas)

    def predict_with_instances_tta(self, inputs: Tensor, views: Sequence[View] = VIEWS
                                   ) -> tuple[Tensor, list[SoftInstances]]:
        """Test-time augmentation over square tiles' ``views`` (:mod:`~mtp_core.models.dihedral`, the identity
        first): the mean of the views' semantic probabilities (not logits) at the input size, and detections merged
        over the views as MMDetection's Mask R-CNN ``aug_test`` does (:meth:`detect_in_views`: boxes and scores
        averaged before NMS, then each mask the mean of the views' masks). The views' FPN maps are held until the
        masks are read."""
        if inputs.shape[-1] != inputs.shape[-2]:
            raise ValueError(f"test-time augmentation turns square tiles, got {tuple(inputs.shape[-2:])}")
        if not views or views[0] != IDENTITY:
            raise ValueError("the first view must be the identity: its proposals are the ones classified")
        size = inputs.shape[-1]
        metas = [ImageMeta.of_size(size, size)] * inputs.shape[0]
        probs = torch.zeros((), device=inputs.device)
        feats = []
        for view in views:
            maps = self.backbone(view.apply(inputs))
            logits = self._resize(self.decode_head(maps), self.decode_head, inputs.shape[2:])
            probs = probs + view.undo(torch.softmax(logits.float(), dim=1))
            feats.append(self.neck(maps))
        dets = self.detect_in_views(feats, views, metas, size)
        return probs / len(views), self._soft_instances(dets, metas, self.mask_probs_in_views(feats, views, dets, size))
