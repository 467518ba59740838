"""Checkpoint layouts: which of the released MTP / MAE / MMSeg / change_ckpt layouts a file has, its state dict, and
the backbone and decoder parts inside it (``mtp_spec.md`` §2.6, §5.3, §6)."""
from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Mapping

import torch
from torch import Tensor

from mtp_core.checkpoint.safe_load import CheckpointError
from mtp_core.models.registry import create_model, list_models, model_entry

LAYOUTS: dict[str, str] = {
    "mtp_core": "mtp_core checkpoint (state_dict + model card)",
    "mmseg": "MMSeg/MMEngine fine-tuned segmentor (backbone.* + decode_head.*)",
    "opencd": "Open-CD fine-tuned change detector (backbone.* + MTP's UNet head decode_head.blocks.*)",
    "mtp_pretrain": "full MTP multi-task pretraining model (encoder.* + semsegdecoder/insseg/rotdet decoders)",
    "change_ckpt": "output of MTP's scripts/change_ckpt.py (backbone.* with the pretraining decoders)",
    "mmdet_maskrcnn": "Mask R-CNN with MMDet's names (backbone.*, neck.*, rpn_head.*, roi_head.*)",
    "backbone_prefixed": "backbone.* checkpoint without a segmentation head (MMDet/MMRotate/MMPretrain)",
    "mtp_encoder": "MTP pretraining encoder (*_pretrn_model_encoder.pth: no prefix, with norm.*)",
    "mae": "MAE pretraining (cls_token, mask_token, decoder_*)",
    "backbone": "bare RVSA backbone state dict (no prefix)",
}
PRETRAIN_DECODER_MARKS = ("semsegdecoder.", "semseghead_", "insseg", "rotdetroiboxhead", "rotdetdecoder.")
SEMSEG_PREFIX = "semsegdecoder.decode_head."
HEAD_NAMES = ("decode_head", "auxiliary_head")
HEAD_PREFIXES = tuple(f"{h}." for h in HEAD_NAMES)
# Backbone-namespace keys a target without them can't use: the pretraining/MAE final norm, MAE's cls/mask tokens and
# decoder, a classification head.
BACKBONE_EXTRAS = ("norm.", "cls_token", "mask_token", "decoder_", "fc_norm.", "head.")
REL_POS_SUFFIXES = ("full_attn_rel_pos_h", "full_attn_rel_pos_w")
PATCH_SIZE = 16  # every MTP model (RVSAViT supports no other)
UNET_BLOCKS = "decode_head.blocks."  # MTP's UNet change-detection head (Open-CD)


def card_dict(obj: Any) -> dict[str, Any] | None:
    meta = obj.get("meta") if isinstance(obj, Mapping) else None
    card = meta.get("model_card") if isinstance(meta, Mapping) else None
    return dict(card) if isinstance(card, Mapping) else None


def _weights_of(obj: Any) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"a checkpoint must be a dict of weights, got {type(obj).__name__}")
    for key in ("state_dict", "model"):
        inner = obj.get(key)
        if isinstance(inner, Mapping) and any(isinstance(v, Tensor) for v in inner.values()):
            return inner
    if any(isinstance(v, Tensor) for v in obj.values()):
        return obj
    raise CheckpointError(
        f"no weights found: the checkpoint has no 'state_dict' or 'model' entry holding tensors "
        f"(top-level keys: {', '.join(map(str, list(obj)[:10]))})"
    )


def _classify(keys: list[str], has_card: bool) -> str:
    if has_card:
        return "mtp_core"
    if any(k.startswith("encoder.") for k in keys):
        return "mtp_pretrain"
    if any(k.startswith("backbone.") for k in keys):
        if any(k.startswith(PRETRAIN_DECODER_MARKS) for k in keys):
            return "change_ckpt"
        if any(k.startswith("roi_head.mask_head.") for k in keys):
            return "mmdet_maskrcnn"
        if any(k.startswith(UNET_BLOCKS) for k in keys):
            return "opencd"
        return "mmseg" if any(k.startswith("decode_head.") for k in keys) else "backbone_prefixed"
    if any(k.startswith(("cls_token", "mask_token", "decoder_")) for k in keys):
        return "mae"
    return "mtp_encoder" if "norm.weight" in keys and any(k.startswith("fpn1.") for k in keys) else "backbone"


def extract_state_dict(obj: Any) -> tuple[dict[str, Tensor], str]:
    """The tensors of a loaded checkpoint and its layout name (a key of :data:`LAYOUTS`).

    Takes ``obj['state_dict']`` (MTP, MMEngine, change_ckpt.py, ours), else ``obj['model']`` (MAE), else ``obj``
    itself, as the original ``init_weights`` does, and strips a DataParallel ``module.`` prefix.
    """
    weights = _weights_of(obj)
    state = {str(k): v for k, v in weights.items() if isinstance(v, Tensor)}
    if any(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state, _classify(list(state), card_dict(obj) is not None)


@dataclass
class Parts:
    """Source keys sorted by what they are for; each dict maps a key relative to its module -> the source key."""

    backbone: dict[str, str] = field(default_factory=dict)
    heads: dict[str, str] = field(default_factory=dict)  # "decode_head.*" / "auxiliary_head.*"
    semseg_decoder: dict[str, str] = field(default_factory=dict)  # MTP's pretrained UperNet, relative to the head
    unused: list[str] = field(default_factory=list)  # detection decoders, dataset classifiers, ...


def split_parts(state: Mapping[str, Tensor], layout: str) -> Parts:
    parts = Parts()
    for key in state:
        if key.startswith(SEMSEG_PREFIX):
            parts.semseg_decoder[key.removeprefix(SEMSEG_PREFIX)] = key
        elif layout == "mtp_pretrain":
            # The original strips 'encoder.' from every key when the first sorted key starts with 'encoder'.
            if key.startswith("encoder."):
                parts.backbone[key.removeprefix("encoder.")] = key
            else:
                parts.unused.append(key)
        elif layout in ("mtp_encoder", "mae", "backbone"):
            parts.backbone[key] = key
        elif key.startswith("backbone."):
            parts.backbone[key.removeprefix("backbone.")] = key
        elif key.startswith(HEAD_PREFIXES):
            parts.heads[key] = key
        else:
            parts.unused.append(key)
    return parts


def backbone_dims(state: Mapping[str, Tensor], backbone: Mapping[str, str]) -> tuple[int, int] | None:
    """(embed_dim, depth) of the source backbone: the patch-embedding width and the number of blocks."""
    proj = backbone.get("patch_embed.proj.weight")
    blocks = [int(m.group(1)) for k in backbone if (m := re.match(r"blocks\.(\d+)\.", k))]
    if proj is None or not blocks:
        return None
    return int(state[proj].shape[0]), max(blocks) + 1


@lru_cache(maxsize=None)
def _segmentor_dims(name: str) -> tuple[int, int]:
    """(embed_dim, depth) of a registered segmentor's (or Mask R-CNN's) backbone, built on the meta device."""
    with torch.device("meta"):
        model = create_model(name)
    return model.backbone.embed_dim, len(model.backbone.blocks)


def preset_segmentors(kind: str = "segmentor") -> list[str]:
    """Segmentors (or change detectors, ``kind="change"``) configured by ``num_classes``/head widths/backbone
    overrides (not the fully specified ones, which need the dicts of a model card)."""
    names = list_models(kind)  # type: ignore[arg-type]
    return [n for n in names if "num_classes" in inspect.signature(model_entry(n).builder).parameters]


def segmentor_for(dims: tuple[int, int] | None, kind: str = "segmentor") -> str | None:
    """The preset segmentor (or change detector) whose backbone has these (embed_dim, depth), if any."""
    return next((n for n in preset_segmentors(kind) if dims is not None and _segmentor_dims(n) == dims), None)


def instance_model_for(dims: tuple[int, int] | None) -> str | None:
    """The Mask R-CNN (``mtp_vit_*_rvsa_maskrcnn``) whose backbone has these (embed_dim, depth), if any."""
    return next((n for n in list_models("instance") if dims is not None and _segmentor_dims(n) == dims), None)


def describe_dims(dims: tuple[int, int] | None) -> str:
    if dims is None:
        return "no RVSA ViT backbone (no patch_embed.proj.weight / blocks.* keys)"
    name = segmentor_for(dims)
    size = {768: "ViT-B", 1024: "ViT-L"}.get(dims[0], "ViT")
    known = f": build {name}, or let load_model() pick the architecture" if name else ""
    return f"a {size} backbone (embed_dim {dims[0]}, {dims[1]} blocks){known}"


