"""The right model for a checkpoint file: which segmentor or change detector it needs (from its model card, or
inferred from the weights of a released file), :func:`load_model`, and :func:`require_decoder` (no prediction with a
random head)."""
from __future__ import annotations

import inspect
import math
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from mtp_core.checkpoint.layouts import (
    LAYOUTS,
    PATCH_SIZE,
    backbone_dims,
    card_dict,
    describe_dims,
    extract_state_dict,
    instance_model_for,
    preset_segmentors,
    segmentor_for,
    split_parts,
)
from mtp_core.checkpoint.load import LoadReport, head_channels, load_into
from mtp_core.checkpoint.safe_load import CheckpointError, PathLike, safe_load
from mtp_core.device import resolve_device
from mtp_core.models.card import ModelCard
from mtp_core.models.registry import create_model, default_card, list_models, model_entry


def file_classes(state: Mapping[str, Tensor]) -> int | None:
    """The classes a file's head predicts: a segmentor's ``decode_head.conv_seg`` rows, a Mask R-CNN's ``fc_cls``
    rows without the background."""
    weight = state.get("decode_head.conv_seg.weight")
    if weight is not None:
        return int(weight.shape[0])
    weight = state.get("roi_head.bbox_head.fc_cls.weight")
    return int(weight.shape[0]) - 1 if weight is not None else None


def maskrcnn_args(state: Mapping[str, Tensor], prefix: str = "") -> dict[str, int]:
    """``channels`` and ``fc_out_channels`` of a Mask R-CNN's decoder (``prefix``: ``inssegdecoder.`` in MTP's
    pretraining files)."""
    lateral = state.get(f"{prefix}neck.lateral_convs.0.conv.weight")
    fc = state.get(f"{prefix}roi_head.bbox_head.shared_fcs.1.weight")
    if lateral is None or fc is None:
        raise CheckpointError(f"no Mask R-CNN decoder in this file ({prefix}neck.* / {prefix}roi_head.* missing)")
    return {"channels": int(lateral.shape[0]), "fc_out_channels": int(fc.shape[0])}


def _maskrcnn_target(state: Mapping[str, Tensor], parts: Any, architecture: str | None,
                     num_classes: int | None) -> tuple[str, dict[str, Any], ModelCard]:
    """A Mask R-CNN for an mmdet-named file without a card: backbone size, decoder widths and classes from the
    weights."""
    dims = backbone_dims(state, parts.backbone)
    name = architecture or instance_model_for(dims)
    if name is None or model_entry(name).kind != "instance":
        raise CheckpointError(f"this Mask R-CNN file holds {describe_dims(dims)}; pass one of "
                              f"{', '.join(list_models('instance'))} (CLI: --arch)")
    args: dict[str, Any] = {"num_classes": num_classes or file_classes(state) or 1, **maskrcnn_args(state)}
    return name, args, default_card(name, **args)


def _with_classes(name: str, args: dict[str, Any], num_classes: int) -> dict[str, Any]:
    """arch_args that build ``name`` for another class count: presets take ``num_classes``, the fully specified
    segmentor has it inside its head dicts."""
    params = inspect.signature(model_entry(name).builder).parameters
    if "num_classes" in params:
        return {**args, "num_classes": num_classes}
    if "decode_head" not in params:
        raise CheckpointError(f"{name} has no decode head whose number of classes could be changed")
    out = {**args, "decode_head": {**(args.get("decode_head") or {}), "num_classes": num_classes}}
    if args.get("auxiliary_head"):
        out["auxiliary_head"] = {**args["auxiliary_head"], "num_classes": num_classes}
    return out


def unet_widths(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """``decoder_channels`` and ``channels`` of a UNet change head in a file (none when the file has no head)."""
    widths = []
    while (weight := state.get(f"decode_head.blocks.{len(widths)}.conv2.0.weight")) is not None:
        widths.append(int(weight.shape[0]))
    if not widths:
        return {}
    return {"decoder_channels": tuple(widths), "channels": widths[-1]}


def target_for(
    state: Mapping[str, Tensor],
    layout: str,
    card_data: dict[str, Any] | None,
    architecture: str | None,
    num_classes: int | None,
    semseg: bool,
) -> tuple[str, dict[str, Any], ModelCard]:
    """Which segmentor to build for a file, with which arguments, and its model card.

    Our files carry the card. Released files have none: the backbone size comes from the weights (embed_dim from
    ``patch_embed.proj.weight``, depth from the number of blocks), classes and head width from
    ``decode_head.conv_seg``, and a fine-tuned model's crop size from its ``pos_embed``.
    """
    if card_data is not None:
        card = ModelCard.from_dict(card_data)
        if architecture is not None and architecture != card.architecture:
            raise CheckpointError(f"the checkpoint was saved for {card.architecture}, not {architecture}")
        args = dict(card.arch_args)
        instance = model_entry(card.architecture).kind == "instance"  # its card lists background + object classes
        current = card.num_classes - 1 if instance else card.num_classes
        if num_classes is not None and num_classes != current:
            args = _with_classes(card.architecture, args, num_classes)
            classes = default_card(card.architecture, num_classes=num_classes).classes
            card = card.replace(arch_args=args, classes=classes)
        return card.architecture, args, card

    parts = split_parts(state, layout)
    if layout == "mmdet_maskrcnn":
        return _maskrcnn_target(state, parts, architecture, num_classes)
    kind = model_entry(architecture).kind if architecture is not None else (
        "change" if layout == "opencd" else "segmentor")
    presets = preset_segmentors("change") + preset_segmentors() if architecture else preset_segmentors(kind)
    if architecture is None:
        dims = backbone_dims(state, parts.backbone)
        architecture = segmentor_for(dims, kind)
        if architecture is None:
            raise CheckpointError(
                f"cannot tell the architecture of this {LAYOUTS[layout]} file: it holds {describe_dims(dims)}; "
                f"pass one of {', '.join(presets)} (CLI: --arch)"
            )
    elif kind not in ("segmentor", "change"):
        raise CheckpointError(
            f"{architecture} is a {kind}; load_model builds segmentors and change detectors ({', '.join(presets)}). "
            "For a bare backbone use create_model() and load_weights()"
        )
    elif architecture not in presets:
        raise CheckpointError(
            f"{architecture} needs its full arguments, which only our checkpoints' model cards hold; for this file "
            f"pick one of {', '.join(presets)}"
        )
    classes_in_file = file_classes(state)
    args: dict[str, Any] = {"num_classes": num_classes if num_classes is not None else classes_in_file or 2}
    if kind == "change":
        args.update(unet_widths(state))
    else:
        semseg_seg = parts.semseg_decoder.get("conv_seg.weight") if semseg else None
        channels = int(state[semseg_seg].shape[1]) if semseg_seg else head_channels(state)
        if channels is not None:
            args["decode_channels"] = channels
    pos = parts.backbone.get("pos_embed")
    if parts.heads and pos is not None:  # a fine-tuned model ran at its crop size (LoveDA: 512), keep it
        grid = math.isqrt(state[pos].shape[1])
        if grid * grid == state[pos].shape[1]:
            args["img_size"] = grid * PATCH_SIZE
    card = default_card(architecture, **args)
    if "img_size" in args:
        card = card.replace(tile=args["img_size"])
    return architecture, args, card


def load_model(
    path: PathLike,
    *,
    architecture: str | None = None,
    num_classes: int | None = None,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, ModelCard, LoadReport]:
    """Build the right segmentor for a checkpoint file and load it: ``(model in eval mode, card, report)``.

    Our files carry their model card; for released MTP/MMSeg/MAE files the architecture is inferred from the weights
    (or given by name) and the card is the named config's default. ``num_classes`` different from the file's
    starts a new classifier.
    """
    obj = safe_load(path)
    state, layout = extract_state_dict(obj)
    name, args, card = target_for(state, layout, card_dict(obj), architecture, num_classes, semseg=False)
    model = create_model(name, **args)
    reinit = num_classes is not None and file_classes(state) not in (None, num_classes)
    report = load_into(model, obj, str(path), "none", reinit)
    meta = obj.get("meta") if isinstance(obj, dict) else None
    if isinstance(meta, dict) and meta.get("untrained"):
        report.untrained = [str(k) for k in meta["untrained"]]
        report.notes.append(f"written by mtp convert-ckpt from {meta.get('converted_from', 'another file')}: "
                            f"{len(report.untrained)} tensors there were new (untrained), a starting point for "
                            "fine-tuning")
    target = resolve_device(device) if isinstance(device, str) else device
    return model.to(target).eval(), card, report


def require_decoder(report: LoadReport, architecture: str = "") -> None:
    """Refuses a checkpoint for prediction when its decode head was not in the file or never trained: a backbone-only
    file (an MTP ``*_encoder.pth``, an MAE file) would otherwise predict with a random head."""
    absent = [k for k in report.missing + report.reinitialized if k.startswith("decode_head.")]
    size = "l" if "vit_l" in architecture else "b"
    config = f"training/configs/mtp/spacenetv1/rvsa-{size}-upernet-384-mae-mtp-spacenetv1.py"
    what = "a segmentor"
    if architecture and model_entry(architecture).kind == "change":
        config, what = f"training/configs/mtp/levir/rvsa-{size}-unet-256-mae-mtp_levir.py", "a change detector"
    fine_tune = (f"fine-tune {what} from it first (python -m training.train {config} --cfg-options "
                 f"model.backbone.pretrained={report.source}) and predict with the checkpoint that writes")
    if absent:
        raise CheckpointError(
            f"{report.source} ({LAYOUTS.get(report.layout, report.layout)}) has no trained decoder "
            f"({len(absent)} decode_head tensors missing, e.g. {absent[0]}), so its predictions would be random; "
            f"{fine_tune}")
    untrained = [k for k in report.untrained if k.startswith("decode_head.")]
    if untrained:
        raise CheckpointError(
            f"{report.source} was written by mtp convert-ckpt with a new, untrained decoder ({len(untrained)} "
            f"decode_head tensors, e.g. {untrained[0]}), so its predictions would be random; {fine_tune}")


