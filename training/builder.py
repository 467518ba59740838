"""MMSeg-style ``model = dict(type='EncoderDecoder', backbone=dict(type='RVSA_MTP', ...), ...)`` → our modules, and
Open-CD's ``dict(type='SiamEncoderDecoder', neck=dict(type='FeatureFusionNeck'), decode_head=dict(type='UNetHead'))``.

Configs keep MMSeg's and Open-CD's vocabulary so researchers recognise MTP's files; this module is the one place that
maps it onto ``mtp_core`` constructors and says clearly what is not supported.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from mtp_core.models import EncoderDecoder, ModelCard, create_model

GENERIC_ARCH = "mtp_rvsa_upernet"
CHANGE_ARCH = "mtp_rvsa_unet_cd"

_BACKBONE_ARGS = {
    "img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias", "qk_scale",
    "drop_rate", "attn_drop_rate", "drop_path_rate", "out_indices", "interval", "use_checkpoint",
}
# Accepted for compatibility with MTP's files: ignored (no effect in the original either) or only one value works.
_BACKBONE_IGNORED = {"type", "pretrained", "use_rel_pos_bias", "use_shared_rel_pos_bias", "num_classes",
                     "restart_regression"}
_BACKBONE_FIXED = {"use_abs_pos_emb": True, "init_values": None, "hybrid_backbone": None, "norm_layer": None}
_UPER_ARGS = {"in_channels", "channels", "num_classes", "pool_scales", "in_index", "dropout_ratio", "align_corners"}
_FCN_ARGS = {
    "in_channels", "channels", "num_classes", "num_convs", "kernel_size", "concat_input", "in_index",
    "dropout_ratio", "align_corners",
}
_HEAD_COMMON = {"type", "norm_cfg", "loss_decode"}
_UNET_ARGS = {"encoder_channels", "decoder_channels", "channels", "num_classes", "dropout_ratio", "align_corners",
              "in_index"}
# UNetHead arguments of MTP's configs that are checked rather than passed (only one value is what MTP trains)
_UNET_FIXED = {"use_batchnorm": True, "center": False, "attention_type": None, "ignore_index": 255}
_UNET_CHECKED = {"in_channels", "n_blocks"}


class BuildError(ValueError):
    """A model/loss config this project can't build, with what to change."""


@dataclass(frozen=True)
class LossTerm:
    """Cross-entropy on one head's logits, as MMSeg's ``CrossEntropyLoss`` (mean over ALL pixels by default)."""

    head: str  # "decode" or "aux"
    weight: float = 1.0
    avg_non_ignore: bool = False
    class_weight: tuple[float, ...] | None = None


@dataclass(frozen=True)
class SegmentorSpec:
    model: EncoderDecoder
    arch_args: dict[str, Any]
    losses: tuple[LossTerm, ...]
    pretrained: str | None
    sync_bn: bool
    test_mode: str = "slide"
    crop_size: tuple[int, int] = (384, 384)
    stride: tuple[int, int] = (256, 256)
    extra: dict[str, Any] = field(default_factory=dict)
    architecture: str = GENERIC_ARCH


def _pick(cfg: Mapping[str, Any], allowed: set[str], what: str) -> dict[str, Any]:
    unknown = sorted(set(cfg) - allowed - _HEAD_COMMON)
    if unknown:
        close = {k: difflib.get_close_matches(k, sorted(allowed), n=1) for k in unknown}
        hints = ", ".join(f"{k!r}" + (f" (did you mean {c[0]!r}?)" if c else "") for k, c in close.items())
        raise BuildError(f"{what}: unsupported arguments {hints}; supported: {sorted(allowed)}")
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k in allowed}


def _backbone_args(cfg: Mapping[str, Any], ignored: frozenset[str] = frozenset()) -> tuple[dict[str, Any], str | None]:
    if cfg.get("type") != "RVSA_MTP":
        raise BuildError(f"backbone type {cfg.get('type')!r} is not supported: use 'RVSA_MTP'")
    for key, value in _BACKBONE_FIXED.items():
        if key in cfg and cfg[key] != value:
            raise BuildError(f"backbone {key}={cfg[key]!r} is not supported (MTP's models use {value!r})")
    skip = _BACKBONE_IGNORED | ignored
    rest = {k: v for k, v in cfg.items() if k not in skip and k not in _BACKBONE_FIXED}
    return _pick(rest, _BACKBONE_ARGS, "backbone"), cfg.get("pretrained")


def _norm_is_sync(head_cfg: Mapping[str, Any]) -> bool:
    norm = (head_cfg.get("norm_cfg") or {"type": "BN"}).get("type")
    if norm not in ("BN", "SyncBN"):
        raise BuildError(f"norm_cfg type {norm!r} is not supported: use 'BN' or 'SyncBN'")
    return norm == "SyncBN"


def _loss_terms(head_cfg: Mapping[str, Any], head: str, default_weight: float) -> list[LossTerm]:
    losses = head_cfg.get("loss_decode", {"type": "CrossEntropyLoss", "loss_weight": default_weight})
    terms = []
    for loss in [losses] if isinstance(losses, Mapping) else losses:
        kind = str(loss.get("type", "")).removeprefix("mmseg.")  # Open-CD's configs name MMSeg's scope
        if kind != "CrossEntropyLoss" or loss.get("use_sigmoid", False):
            raise BuildError(f"loss {dict(loss)} is not supported: use CrossEntropyLoss with use_sigmoid=False")
        weights = loss.get("class_weight")
        terms.append(
            LossTerm(head, float(loss.get("loss_weight", 1.0)), bool(loss.get("avg_non_ignore", False)),
                     tuple(weights) if weights else None)
        )
    return terms


def build_segmentor(model_cfg: Mapping[str, Any]) -> SegmentorSpec:
    """Build the model of an MMSeg-style config (``EncoderDecoder`` + ``RVSA_MTP`` + ``UPerHead``) or of an Open-CD
    one (``SiamEncoderDecoder`` + ``RVSA_MTP`` + ``FeatureFusionNeck`` + ``UNetHead``)."""
    if model_cfg.get("type") == "SiamEncoderDecoder":
        return build_change_detector(model_cfg)
    if model_cfg.get("type", "EncoderDecoder") != "EncoderDecoder":
        raise BuildError(f"model type {model_cfg.get('type')!r} is not supported: use 'EncoderDecoder' (segmentation) "
                         "or 'SiamEncoderDecoder' (change detection)")
    if model_cfg.get("pretrained"):
        raise BuildError("model.pretrained is not used by MTP configs: set model.backbone.pretrained or load_from")
    backbone, pretrained = _backbone_args(model_cfg["backbone"])
    head_cfg = model_cfg["decode_head"]
    if head_cfg.get("type") != "UPerHead":
        raise BuildError(f"decode_head type {head_cfg.get('type')!r} is not supported: use 'UPerHead'")
    arch_args: dict[str, Any] = {
        "backbone": backbone,
        "decode_head": _pick(head_cfg, _UPER_ARGS, "decode_head"),
        "auxiliary_head": None,
    }
    losses = _loss_terms(head_cfg, "decode", 1.0)
    sync_bn = _norm_is_sync(head_cfg)
    aux_cfg = model_cfg.get("auxiliary_head")
    if aux_cfg:
        if aux_cfg.get("type") != "FCNHead":
            raise BuildError(f"auxiliary_head type {aux_cfg.get('type')!r} is not supported: use 'FCNHead'")
        arch_args["auxiliary_head"] = _pick(aux_cfg, _FCN_ARGS, "auxiliary_head")
        losses += _loss_terms(aux_cfg, "aux", 0.4)
        sync_bn |= _norm_is_sync(aux_cfg)
    model = create_model(GENERIC_ARCH, **arch_args)
    test_cfg = model_cfg.get("test_cfg") or {"mode": "whole"}
    mode = test_cfg.get("mode", "whole")
    crop = tuple(test_cfg.get("crop_size", (backbone.get("img_size", 384),) * 2))
    stride = tuple(test_cfg.get("stride", crop))
    return SegmentorSpec(model, arch_args, tuple(losses), pretrained, sync_bn, mode, crop, stride)  # type: ignore[arg-type]


def build_change_detector(model_cfg: Mapping[str, Any]) -> SegmentorSpec:
    """Open-CD's ``SiamEncoderDecoder`` as MTP configures it (``mtp_multitask_spec.md`` §5.1): the CD copy of
    ``RVSA_MTP`` (``frozen_stages`` is accepted and, as in the original, has no effect), ``abs_diff`` fusion and
    MTP's ``UNetHead``; test mode ``whole`` (or ``slide``)."""
    if model_cfg.get("pretrained"):
        raise BuildError("model.pretrained is not used by MTP configs: set model.backbone.pretrained or load_from")
    if model_cfg.get("auxiliary_head"):
        raise BuildError("an auxiliary head is not supported for change detection (MTP's configs have none)")
    backbone, pretrained = _backbone_args(model_cfg["backbone"], frozenset({"frozen_stages"}))
    neck_cfg = dict(model_cfg.get("neck") or {})
    if neck_cfg.get("type") != "FeatureFusionNeck":
        raise BuildError(f"neck type {neck_cfg.get('type')!r} is not supported: SiamEncoderDecoder needs "
                         "'FeatureFusionNeck'")
    neck = _pick({k: v for k, v in neck_cfg.items() if k != "type"}, {"policy", "out_indices"}, "neck")
    head_cfg = model_cfg["decode_head"]
    if head_cfg.get("type") != "UNetHead":
        raise BuildError(f"decode_head type {head_cfg.get('type')!r} is not supported for change detection: use "
                         "'UNetHead'")
    for key, value in _UNET_FIXED.items():
        if key in head_cfg and head_cfg[key] != value:
            raise BuildError(f"decode_head {key}={head_cfg[key]!r} is not supported (MTP's UNetHead uses {value!r})")
    head = _pick({k: v for k, v in head_cfg.items() if k not in _UNET_FIXED and k not in _UNET_CHECKED},
                 _UNET_ARGS, "decode_head")
    decoder = head.get("decoder_channels", (512, 256, 128, 64))
    if "n_blocks" in head_cfg and head_cfg["n_blocks"] != len(decoder):
        raise BuildError(f"decode_head n_blocks={head_cfg['n_blocks']} but decoder_channels has {len(decoder)} "
                         "entries: give one width per block")
    if "in_channels" in head_cfg and "encoder_channels" in head and tuple(head_cfg["in_channels"]) != tuple(
            head["encoder_channels"]):
        raise BuildError(f"decode_head in_channels {head_cfg['in_channels']} and encoder_channels "
                         f"{head['encoder_channels']} differ: both describe the fused backbone maps")
    arch_args: dict[str, Any] = {"backbone": backbone, "neck": neck, "decode_head": head}
    model = create_model(CHANGE_ARCH, **arch_args)
    test_cfg = model_cfg.get("test_cfg") or {"mode": "whole"}
    mode = test_cfg.get("mode", "whole")
    crop = tuple(test_cfg.get("crop_size", (backbone.get("img_size", 256),) * 2))
    stride = tuple(test_cfg.get("stride", crop))
    return SegmentorSpec(model, arch_args, tuple(_loss_terms(head_cfg, "decode", 1.0)), pretrained,  # type: ignore[arg-type]
                         _norm_is_sync(head_cfg), mode, crop, stride, architecture=CHANGE_ARCH)  # type: ignore[arg-type]


def model_card(spec: SegmentorSpec, preprocessor_cfg: Mapping[str, Any], classes: tuple[str, ...],
               overrides: Mapping[str, Any] | None = None) -> ModelCard:
    """The card saved with trained checkpoints: the exact network plus the data conventions of the config.

    A change detector tested whole-image (Open-CD's ``mode='whole'``) gets a quarter-tile overlap for rasters, where
    tiles must be blended; its mean/std are one date's (the config repeats them for the second date)."""
    tile = spec.crop_size[0]
    overlap = tile - spec.stride[0]
    if spec.architecture == CHANGE_ARCH and overlap == 0:
        overlap = tile // 4
    mean = tuple(preprocessor_cfg.get("mean", (123.675, 116.28, 103.53)))
    std = tuple(preprocessor_cfg.get("std", (58.395, 57.12, 57.375)))
    if spec.architecture == CHANGE_ARCH and len(mean) == 6:
        if mean[:3] != mean[3:] or std[:3] != std[3:]:
            raise BuildError(f"the preprocessor normalises the two dates differently (mean {list(mean)}, std "
                             f"{list(std)}); a change detector's card holds one mean/std for both")
        mean, std = mean[:3], std[:3]
    card = ModelCard(
        architecture=spec.architecture,
        arch_args=spec.arch_args,
        classes=classes,
        tile=tile,
        overlap=overlap,
        mean=mean,
        std=std,
    )
    return card.replace(**dict(overrides or {}))


def segmentation_loss(
    logits: Tensor, aux_logits: Tensor | None, target: Tensor, terms: tuple[LossTerm, ...], ignore_index: int = 255
) -> tuple[Tensor, dict[str, Tensor]]:
    """Total loss and its parts (``decode.loss_ce``, ``aux.loss_ce``, ``decode.acc_seg``) as MMSeg logs them.

    Logits of another size than the label (MTP's OSCD pipeline keeps 96 px labels under 224 px images) are resized
    to it bilinearly, as MMSeg's ``loss_by_feat`` does."""
    if tuple(logits.shape[-2:]) != tuple(target.shape[-2:]):
        logits = F.interpolate(logits, size=tuple(target.shape[-2:]), mode="bilinear", align_corners=False)
        if aux_logits is not None:
            aux_logits = F.interpolate(aux_logits, size=tuple(target.shape[-2:]), mode="bilinear", align_corners=False)
    parts: dict[str, Tensor] = {}
    total = logits.new_zeros((), dtype=torch.float32)
    for term in terms:
        pred = logits if term.head == "decode" else aux_logits
        if pred is None:
            raise BuildError("an auxiliary loss is configured but the model has no auxiliary head")
        weight = pred.new_tensor(term.class_weight, dtype=torch.float32) if term.class_weight else None
        per_pixel = F.cross_entropy(pred.float(), target, weight=weight, reduction="none", ignore_index=ignore_index)
        valid = (target != ignore_index).sum().clamp_min(1) if term.avg_non_ignore else per_pixel.numel()
        loss = term.weight * per_pixel.sum() / valid
        parts[f"{term.head}.loss_ce"] = parts.get(f"{term.head}.loss_ce", 0) + loss
        total = total + loss
    with torch.no_grad():
        valid_mask = target != ignore_index
        correct = (logits.argmax(1) == target) & valid_mask
        parts["decode.acc_seg"] = 100.0 * correct.sum() / valid_mask.sum().clamp_min(1)
    return total, parts
