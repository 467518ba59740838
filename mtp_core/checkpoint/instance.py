"""Weights of the Mask R-CNN fine-tuning model (:class:`mtp_core.models.MaskRCNN`): from its own checkpoints and
mmdet-named files by name, and from MTP's pretraining files by reusing the instance decoder.

Reuse (``reuse_decoder='insseg'``, spec §6.1): ``encoder.*`` -> ``backbone.*`` (position tables resized),
``inssegdecoder.{neck,rpn_head,roi_head}.*`` -> the same names at the top level (mmdet's ``MaskRCNN``), and, for a
chosen dataset k, its predictors ``inssegroiboxhead_fc_cls{k}`` / ``inssegroiboxhead_fc_reg{k}`` /
``inssegroimaskhead_conv{k}`` -> ``roi_head.bbox_head.fc_cls`` / ``fc_reg`` / ``roi_head.mask_head.conv_logits``.
Without a dataset the predictors stay newly initialised for the model's own classes. The semantic and rotated
decoders and the other datasets' heads are reported unused. (In the output of MTP's ``change_ckpt.py`` the
top-level ``neck``/``rpn_head``/``roi_head`` are the *rotated* decoder's: they are never loaded here.)
"""
from __future__ import annotations

import re
from typing import Mapping

from torch import Tensor

from mtp_core.checkpoint.layouts import BACKBONE_EXTRAS, LAYOUTS, split_parts
from mtp_core.checkpoint.safe_load import CheckpointError
from mtp_core.models.maskrcnn import MaskRCNN

DECODER_PREFIXES = ("neck.", "rpn_head.", "roi_head.")
PREDICTORS = {  # framework key template -> Mask R-CNN key prefix
    "inssegroiboxhead_fc_cls{k}.": "roi_head.bbox_head.fc_cls.",
    "inssegroiboxhead_fc_reg{k}.": "roi_head.bbox_head.fc_reg.",
    "inssegroimaskhead_conv{k}.": "roi_head.mask_head.conv_logits.",
}
FC_REG_NOTE = ("roi_head.bbox_head.fc_reg comes from MTP's pretraining, whose RoI box loss trains it toward a constant "
               "(MTP's box target is the all-ones weight, not the encoded ground truth): these are not meaningful box "
               "regressors, fine-tune them")


def insseg_datasets(state: Mapping[str, Tensor]) -> dict[int, int]:
    """Dataset index k (1-based) -> its number of object classes, from the ``inssegroiboxhead_fc_cls{k}`` heads."""
    out = {}
    for key, value in state.items():
        match = re.fullmatch(r"inssegroiboxhead_fc_cls(\d+)\.weight", key)
        if match:
            out[int(match.group(1))] = int(value.shape[0]) - 1
    return dict(sorted(out.items()))


def plan_maskrcnn(model: MaskRCNN, state: Mapping[str, Tensor], layout: str, reuse_insseg: bool,
                  dataset: int | None) -> tuple[dict[str, str], list[str], list[str], list[str]]:
    """(model key -> file key, unused file keys, dropped file keys, unexpected file keys)."""
    target = model.state_dict()
    parts = split_parts(state, layout)
    plan: dict[str, str] = {}
    unused, dropped, unexpected = [], [], []
    for rel, key in parts.backbone.items():
        if "backbone." + rel in target:
            plan["backbone." + rel] = key
        elif rel.startswith(BACKBONE_EXTRAS):
            dropped.append(key)
        else:
            unexpected.append(key)
    framework = layout in ("mtp_pretrain", "change_ckpt")
    predictors = {t.format(k=dataset): p for t, p in PREDICTORS.items()} if dataset is not None else {}
    for key in state:
        if key in plan.values() or key in dropped or key in unexpected or key.startswith(("encoder.", "backbone.")):
            continue
        if framework:
            if reuse_insseg and key.startswith("inssegdecoder."):
                plan[key.removeprefix("inssegdecoder.")] = key
            elif reuse_insseg and key.startswith(tuple(predictors)):
                prefix = next(p for p in predictors if key.startswith(p))
                plan[predictors[prefix] + key.removeprefix(prefix)] = key
            else:
                unused.append(key)
        elif key.startswith(DECODER_PREFIXES) and key in target:
            plan[key] = key
        elif key.startswith(DECODER_PREFIXES):
            unexpected.append(key)
        else:
            dropped.append(key)  # e.g. a segmentor's decode_head
    missing_plan = [k for k in plan if k not in target]
    unexpected += [plan.pop(k) for k in missing_plan]
    return plan, unused, dropped, unexpected


def check_reuse(state: Mapping[str, Tensor], layout: str, dataset: int | None, num_classes: int) -> None:
    """Refuse a reuse that cannot work, with what to do instead."""
    if layout not in ("mtp_pretrain", "change_ckpt") or not any(k.startswith("inssegdecoder.") for k in state):
        raise CheckpointError(
            "reuse_decoder='insseg' needs MTP's instance decoder (inssegdecoder.*), which only the full pretraining "
            f"file (*_pretrn_model.pth, or its change_ckpt.py output) holds; this is a {LAYOUTS[layout]} file")
    if dataset is None:
        return
    heads = insseg_datasets(state)
    if dataset not in heads:
        raise CheckpointError(f"the file has no instance predictors of dataset {dataset} (it has datasets "
                              f"{sorted(heads)})")
    if heads[dataset] != num_classes:
        raise CheckpointError(f"dataset {dataset}'s predictors are for {heads[dataset]} classes, the model has "
                              f"{num_classes}: build it with num_classes={heads[dataset]}")
