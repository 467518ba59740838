"""Loading checkpoint weights into a model, and building the right model for a file, with a :class:`LoadReport` of
what was loaded, resized, dropped and left missing."""
from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from torch import Tensor, nn

from mtp_core.checkpoint.layouts import (
    BACKBONE_EXTRAS,
    HEAD_NAMES,
    HEAD_PREFIXES,
    LAYOUTS,
    REL_POS_SUFFIXES,
    Parts,
    backbone_dims,
    describe_dims,
    extract_state_dict,
    split_parts,
)
from mtp_core.checkpoint.resize import resize_pos_embed, resize_rel_pos
from mtp_core.checkpoint.safe_load import CheckpointError, PathLike, safe_load
from mtp_core.models.instance_segmentor import InstanceSegmentor
from mtp_core.models.maskrcnn import MaskRCNN
from mtp_core.models.multitask import MultiTaskModel, task_of_key

Mismatch = tuple[str, tuple[int, ...], tuple[int, ...]]  # (model key, file shape, model shape)
ReuseDecoder = Literal["none", "semseg", "insseg", "semseg+insseg", "rotdet"]
REUSE_CHOICES = ("none", "semseg", "insseg", "semseg+insseg", "rotdet")



@dataclass
class LoadReport:
    """What loading a checkpoint did: printed by the CLI, logged by the trainer, checked by tests.

    ``loaded``, ``missing`` and ``reinitialized`` use the model's key names; ``dropped`` (keys in the file the model
    can't use: unexpected by design, e.g. the pretraining norm or detection decoders) uses the file's key names.
    """

    layout: str
    source: str
    loaded: list[str] = field(default_factory=list)
    resized: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    reinitialized: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: keys the file's metadata says were never trained (``mtp convert-ckpt`` wrote them newly initialized)
    untrained: list[str] = field(default_factory=list)
    #: file keys of decoders a multi-task model does not build (the rotated-detection decoder until it exists, or
    #: tasks left out of its task spec): kept in the file, not loaded
    unused: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """Several human-readable lines."""
        lines = [f"checkpoint: {self.source}", f"layout: {self.layout} — {LAYOUTS.get(self.layout, self.layout)}"]
        lines.append(f"loaded: {len(self.loaded)} tensors")
        if self.resized:
            lines.append("resized: " + "; ".join(f"{k} {tuple(a)} -> {tuple(b)}" for k, a, b in self.resized))
        if self.reinitialized:
            lines.append(f"reinitialized: {_compact(self.reinitialized)}")
        if self.missing:
            lines.append(f"missing (left as initialized): {len(self.missing)} tensors: {_compact(self.missing)}")
        if self.dropped:
            lines.append(f"dropped (not used by this model): {len(self.dropped)} tensors: {_compact(self.dropped)}")
        if self.unused:
            lines.append(f"unused (kept in the file; this model builds no such decoder): {len(self.unused)} tensors: "
                         f"{_compact(self.unused)}")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)

    def log(self, logger: logging.Logger, level: int = logging.INFO) -> None:
        for line in self.summary().splitlines():
            logger.log(level, line)


def _compact(keys: list[str], limit: int = 8) -> str:
    """Keys grouped by pattern (indices as ``*``), shortened to module prefixes until at most ``limit`` groups are
    left, so the 74 keys of a decode head fit on one line (the full lists stay in the report)."""
    patterns = [re.sub(r"(?<=\.)\d+(?=\.|$)", "*", k).split(".") for k in keys]
    depth = max((len(p) for p in patterns), default=1)
    while depth > 1 and len({tuple(p[:depth]) for p in patterns}) > limit:
        depth -= 1
    counts = Counter(".".join(p[:depth]) + (".*" if len(p) > depth else "") for p in patterns)
    shown = [f"{p} (x{n})" if n > 1 else p for p, n in list(counts.items())[:limit]]
    if len(counts) > limit:
        shown.append(f"... {len(counts) - limit} more")
    return ", ".join(shown)


def is_segmentor(model: nn.Module) -> bool:
    return isinstance(getattr(model, "backbone", None), nn.Module) and isinstance(
        getattr(model, "decode_head", None), nn.Module
    )


def _classifier_keys(target: Mapping[str, Tensor]) -> list[str]:
    return [k for k in target if k.startswith(tuple(f"{h}.conv_seg." for h in HEAD_NAMES))]


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape)


def _architecture_error(
    source: str,
    mismatched: list[Mismatch],
    unexpected: list[str],
    dims: tuple[int, int] | None,
    head_channels: int | None,
    model: nn.Module,
) -> CheckpointError:
    examples = [f"{k}: file {a} vs model {b}" for k, a, b in mismatched[:4]]
    examples += [f"{k}: not in the model" for k in unexpected[: max(0, 6 - len(examples))]]
    hint = f" The file holds {describe_dims(dims)}."
    decode = getattr(model, "decode_head", None)
    if head_channels is not None and decode is not None and head_channels != decode.channels:
        hint += (
            f" Its decode head has {head_channels} channels (the model {decode.channels}): "
            f"build with decode_channels={head_channels}."
        )
    return CheckpointError(
        f"{source} holds weights of another architecture than this model ({len(mismatched)} tensors differ in shape, "
        f"{len(unexpected)} are not in the model). First differences: {'; '.join(examples)}.{hint}"
    )


def _class_count_error(
    source: str, key: str, file_shape: tuple[int, ...], model_shape: tuple[int, ...]
) -> CheckpointError:
    return CheckpointError(
        f"{source}: {key} is trained for {file_shape[0]} classes but the model has {model_shape[0]}. To start a new "
        f"classifier for {model_shape[0]} classes from these weights pass reinit_classifier=True (CLI: --num-classes "
        f"{model_shape[0]}); to use the trained one build the model with num_classes={file_shape[0]}"
    )


def head_channels(state: Mapping[str, Tensor]) -> int | None:
    weight = state.get("decode_head.conv_seg.weight")
    return int(weight.shape[1]) if weight is not None else None


def _plan_keys(
    parts: Parts, target: Mapping[str, Tensor], segmentor: bool, report: LoadReport
) -> tuple[dict[str, str], list[str]]:
    """Model key -> file key for the backbone and heads; file keys the model lacks go to ``dropped`` when a rule
    says the model can't use them (pretraining norm, MAE extras, training-only auxiliary head), else to unexpected."""
    prefix = "backbone." if segmentor else ""
    plan: dict[str, str] = {}
    unexpected: list[str] = []
    for rel, key in parts.backbone.items():
        if prefix + rel in target:
            plan[prefix + rel] = key
        elif rel.startswith(BACKBONE_EXTRAS):
            report.dropped.append(key)
        else:
            unexpected.append(key)
    for key in parts.heads:
        if not segmentor or (key.startswith("auxiliary_head.") and key not in target):
            report.dropped.append(key)
        elif key in target:
            plan[key] = key
        else:
            unexpected.append(key)
    return plan, unexpected


def _fit_shapes(
    plan: dict[str, str],
    state: Mapping[str, Tensor],
    target: Mapping[str, Tensor],
    pos_key: str,
    num_extra: int,
    report: LoadReport,
) -> tuple[dict[str, Tensor], list[Mismatch], list[Mismatch]]:
    """Tensors to load (``pos_embed`` and full-attention rel-pos tables resized), other shape mismatches, and
    classifier mismatches (same input channels, another class count)."""
    classifiers = set(_classifier_keys(target))
    tensors: dict[str, Tensor] = {}
    mismatched: list[Mismatch] = []
    class_mismatch: list[Mismatch] = []
    for tkey, skey in plan.items():
        value, want = state[skey], _shape(target[tkey])
        have = _shape(value)
        if tkey == pos_key and (have != want or num_extra) and len(have) == 3 and have[-1] == want[-1]:
            value = resize_pos_embed(value, want[1], num_extra)
        elif tkey.endswith(REL_POS_SUFFIXES) and have != want and have[1:] == want[1:]:
            value = resize_rel_pos(value, want[0])
        if _shape(value) != want:
            is_classifier = tkey in classifiers and have[1:] == want[1:]
            (class_mismatch if is_classifier else mismatched).append((tkey, have, want))
            continue
        if _shape(value) != have:
            report.resized.append((tkey, have, want))
        tensors[tkey] = value
    return tensors, mismatched, class_mismatch


def load_into(
    model: nn.Module, obj: Any, source: str, reuse_decoder: str, reinit_classifier: bool, dataset: int | None = None
) -> LoadReport:
    if reuse_decoder not in REUSE_CHOICES:
        raise ValueError(f"reuse_decoder must be one of {', '.join(REUSE_CHOICES)}, got {reuse_decoder!r}")
    if reuse_decoder == "rotdet":
        raise CheckpointError(
            "reuse_decoder='rotdet' renames the keys for MMRotate's Oriented R-CNN (as MTP's change_ckpt.py); our "
            "models have no rotated-detection head. Use convert_checkpoint(src, dst, reuse_decoder='rotdet')"
        )
    state, layout = extract_state_dict(obj)
    if isinstance(model, InstanceSegmentor):
        from mtp_core.checkpoint.instance_segmentor import load_instance_segmentor

        return load_instance_segmentor(model, obj, state, layout, source, reuse_decoder, reinit_classifier, dataset)
    if reuse_decoder == "semseg+insseg":
        raise CheckpointError("reuse_decoder='semseg+insseg' loads both of MTP's pretrained decoders into a segmentor "
                              "with instances (mtp_vit_b_rvsa_upernet_maskrcnn, ...), not into this model")
    if isinstance(model, MaskRCNN):
        return _load_maskrcnn(model, state, layout, source, reuse_decoder, reinit_classifier, dataset)
    if reuse_decoder == "insseg" or dataset is not None:
        raise CheckpointError(
            "reuse_decoder='insseg' (and its dataset) loads MTP's instance decoder into a Mask R-CNN model "
            "(mtp_vit_b_rvsa_maskrcnn, ...), not into this model")
    parts = split_parts(state, layout)
    if isinstance(model, MultiTaskModel):
        if reuse_decoder != "none" or reinit_classifier:
            raise CheckpointError(
                "reuse_decoder and reinit_classifier apply to segmentors: a multi-task model loads its decoders by name"
            )
        return _load_multitask(model, state, parts, layout, source)
    target = model.state_dict()
    segmentor = is_segmentor(model)
    report = LoadReport(layout=layout, source=source)
    plan, unexpected = _plan_keys(parts, target, segmentor, report)
    new_heads = {h for h in HEAD_NAMES if f"{h}.conv_seg.weight" in target} if reinit_classifier else set()
    if reuse_decoder == "semseg":
        _plan_semseg_decoder(model, state, parts, target, plan, unexpected, report)
        new_heads.add("decode_head")
    else:
        report.dropped.extend(parts.semseg_decoder.values())
        if parts.semseg_decoder and segmentor:
            report.notes.append("the file has MTP's pretrained UperNet: reuse_decoder='semseg' loads it")
    report.dropped.extend(parts.unused)
    fresh = [k for k in _classifier_keys(target) if k.split(".", 1)[0] in new_heads]
    report.dropped.extend(plan.pop(k) for k in fresh if k in plan)

    pos_key = ("backbone." if segmentor else "") + "pos_embed"
    num_extra = 1 if "cls_token" in parts.backbone else 0
    tensors, mismatched, class_mismatch = _fit_shapes(plan, state, target, pos_key, num_extra, report)
    if mismatched or unexpected:
        dims = backbone_dims(state, parts.backbone)
        raise _architecture_error(source, mismatched, unexpected, dims, head_channels(state), model)
    if class_mismatch:
        raise _class_count_error(source, *class_mismatch[0])
    if not tensors:
        raise CheckpointError(
            f"nothing in {source} fits this model (a {LAYOUTS[layout]} file; all {len(state)} tensors were dropped)"
        )

    for name in (h for h in HEAD_NAMES if h in new_heads):
        head = getattr(model, name)
        head.reset_classifier(head.num_classes)
    model.load_state_dict(tensors, strict=False)
    report.loaded = list(tensors)
    report.reinitialized = fresh
    report.missing = [k for k in target if k not in tensors and k not in fresh]
    return report


def _load_multitask(
    model: MultiTaskModel, state: Mapping[str, Tensor], parts: Parts, layout: str, source: str
) -> LoadReport:
    """A multi-task framework takes a released pretraining file by name: the encoder and the decoders and
    per-dataset heads of its tasks, every shape exact; keys of tasks it does not build stay in the file, reported as
    unused. Backbone-only files (MTP encoder, MAE, fine-tuned models) initialise the encoder (``encoder.*``)."""
    target = model.state_dict()
    report = LoadReport(layout=layout, source=source)
    plan: dict[str, str] = {}
    unexpected: list[str] = []
    for rel, key in parts.backbone.items():
        if "encoder." + rel in target:
            plan["encoder." + rel] = key
        elif rel.startswith(BACKBONE_EXTRAS):
            report.dropped.append(key)
        else:
            unexpected.append(key)
    for key in [*parts.semseg_decoder.values(), *parts.heads, *parts.unused]:
        task = task_of_key(key)
        if key in target:
            plan[key] = key
        elif task is not None and task not in model.tasks:
            report.unused.append(key)
        elif key.startswith(HEAD_PREFIXES):
            report.dropped.append(key)  # a fine-tuned segmentor's head
        else:
            unexpected.append(key)
    num_extra = 1 if "cls_token" in parts.backbone else 0
    tensors, mismatched, _ = _fit_shapes(plan, state, target, "encoder.pos_embed", num_extra, report)
    if mismatched or unexpected:
        examples = [f"{k}: file {a} vs model {b}" for k, a, b in mismatched[:4]]
        examples += [f"{k}: not in the model" for k in unexpected[: max(0, 6 - len(examples))]]
        raise CheckpointError(
            f"{source} does not fit this multi-task model ({len(mismatched)} tensors differ in shape, "
            f"{len(unexpected)} are not in the model): {'; '.join(examples)}. The per-dataset heads follow the "
            f"datasets and their class counts ({', '.join(f'{d.name}: {d.num_classes}' for d in model.datasets)} "
            "here); build the model with the file's datasets, backbone and tasks"
        )
    if not tensors:
        raise CheckpointError(f"nothing in {source} fits this model (a {LAYOUTS[layout]} file)")
    model.load_state_dict(tensors, strict=False)
    report.loaded = list(tensors)
    report.missing = [k for k in target if k not in tensors]
    return report


def _load_maskrcnn(model: MaskRCNN, state: Mapping[str, Tensor], layout: str, source: str, reuse_decoder: str,
                   reinit_classifier: bool, dataset: int | None) -> LoadReport:
    """Backbone, FPN, RPN and RoI heads by name (or, with ``reuse_decoder='insseg'``, from MTP's instance decoder and
    optionally one pretraining dataset's predictors; see :mod:`.instance`); position tables resized as for
    segmentors; predictors of another class count refused unless ``reinit_classifier``."""
    from mtp_core.checkpoint.instance import FC_REG_NOTE, PREDICTORS, check_reuse, plan_maskrcnn

    if reuse_decoder == "semseg":
        raise CheckpointError("reuse_decoder='semseg' loads a decode head: a Mask R-CNN model has none (use 'insseg')")
    reuse = reuse_decoder == "insseg"
    if reuse:
        check_reuse(state, layout, dataset, model.num_classes)
    elif dataset is not None:
        raise CheckpointError("a pretraining dataset's predictors are taken with reuse_decoder='insseg' only")
    target = model.state_dict()
    plan, unused, dropped, unexpected = plan_maskrcnn(model, state, layout, reuse, dataset)
    report = LoadReport(layout=layout, source=source, unused=unused, dropped=dropped)
    predictors = tuple(PREDICTORS.values())
    if reinit_classifier:
        report.reinitialized = [k for k in target if k.startswith(predictors)]
        report.dropped.extend(plan.pop(k) for k in report.reinitialized if k in plan)
    num_extra = 1 if "cls_token" in split_parts(state, layout).backbone else 0
    tensors, mismatched, _ = _fit_shapes(plan, state, target, "backbone.pos_embed", num_extra, report)
    classes = [m for m in mismatched if m[0].startswith(predictors)]
    others = [m for m in mismatched if not m[0].startswith(predictors)]
    if others or unexpected:
        dims = backbone_dims(state, {k.removeprefix("backbone."): v for k, v in plan.items()})
        raise _architecture_error(source, others, unexpected, dims, None, model)
    if classes:
        key, have, want = classes[0]
        raise CheckpointError(
            f"{source}: {key} is trained for another number of classes (file {have}, model {want}); build the "
            f"model with the file's classes, or start new predictors with reinit_classifier=True (CLI: --num-classes)")
    if not tensors:
        raise CheckpointError(f"nothing in {source} fits this Mask R-CNN (a {LAYOUTS[layout]} file)")
    model.load_state_dict(tensors, strict=False)
    report.loaded = list(tensors)
    report.missing = [k for k in target if k not in tensors and k not in report.reinitialized]
    if reuse:
        report.notes.append("neck, rpn_head and roi_head from MTP's pretrained instance decoder (inssegdecoder)")
        if dataset is not None:
            report.notes.append(f"fc_cls, fc_reg and conv_logits from pretraining dataset {dataset}'s predictors")
            report.notes.append(FC_REG_NOTE)
    elif any(k.startswith("inssegdecoder.") for k in state):
        report.notes.append("the file has MTP's pretrained instance decoder: reuse_decoder='insseg' loads it")
    return report


def _plan_semseg_decoder(
    model: nn.Module,
    state: Mapping[str, Tensor],
    parts: Parts,
    target: Mapping[str, Tensor],
    plan: dict[str, str],
    unexpected: list[str],
    report: LoadReport,
) -> None:
    """MTP's pretrained UperNet (``semsegdecoder.decode_head.*``) -> ``decode_head.*``, except its unused conv_seg."""
    if not is_segmentor(model):
        raise CheckpointError(
            "reuse_decoder='semseg' loads a decode head: the target must be a segmentor, not a bare backbone"
        )
    if not parts.semseg_decoder:
        raise CheckpointError(
            "reuse_decoder='semseg' needs MTP's pretrained UperNet (semsegdecoder.decode_head.*), which only the full "
            "pretraining file (*_pretrn_model.pth, or its change_ckpt.py output) holds; this file has none"
        )
    channels = int(state[parts.semseg_decoder["conv_seg.weight"]].shape[1])
    if model.decode_head.channels != channels:
        raise CheckpointError(
            f"the pretrained UperNet has {channels} channels but the model's decode head has "
            f"{model.decode_head.channels}: build the segmentor with decode_channels={channels} to reuse it"
        )
    for rel, key in parts.semseg_decoder.items():
        if "decode_head." + rel in target:
            plan["decode_head." + rel] = key
        else:
            unexpected.append(key)
    report.notes.append(
        "decode_head from MTP's pretrained UperNet; its classifier was unused in pretraining, so conv_seg is new"
    )


def load_weights(
    model: nn.Module,
    source: PathLike | Mapping[str, Any],
    *,
    reuse_decoder: ReuseDecoder = "none",
    reinit_classifier: bool = False,
    dataset: int | None = None,
) -> LoadReport:
    """Load any supported checkpoint (a path or an already loaded object) into a backbone or a segmentor.

    Keys are mapped from the file's layout, ``pos_embed`` and the full-attention relative-position tables are resized
    as the original ``init_weights`` does, and what the model can't use is dropped and reported. Shapes are strict:
    anything else that does not fit raises :class:`CheckpointError` naming the keys (another architecture, another
    number of classes — ``reinit_classifier=True`` starts a new classifier instead of loading it).
    ``reuse_decoder='semseg'`` also loads MTP's pretrained UperNet into ``decode_head`` (256 channels);
    ``reuse_decoder='insseg'`` loads its instance decoder into a Mask R-CNN (with ``dataset`` k, 1-based, also that
    pretraining dataset's predictors).
    """
    if isinstance(source, Mapping):
        return load_into(model, source, "<checkpoint object>", reuse_decoder, reinit_classifier, dataset)
    return load_into(model, safe_load(source), str(source), reuse_decoder, reinit_classifier, dataset)
