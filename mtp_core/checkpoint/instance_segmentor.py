"""Weights of the segmentor with instances (:class:`mtp_core.models.InstanceSegmentor`): the union of a segmentor's
and a Mask R-CNN's, so each part loads the way its own model loads it.

* ``backbone.*``, ``decode_head.*``, ``auxiliary_head.*``: exactly as a segmentor (every released layout, position
  tables resized, MTP's pretrained UperNet with ``reuse_decoder='semseg'``), through a segmentor sharing the modules;
* ``neck.*``, ``rpn_head.*``, ``roi_head.*``: exactly as a Mask R-CNN (by name, or MTP's pretrained instance decoder
  with ``reuse_decoder='insseg'``; :mod:`.instance`);
* ``reuse_decoder='semseg+insseg'``: both pretrained decoders of MTP's multi-task file, and with a ``dataset`` k also
  that pretraining dataset's predictors (``semseghead_k`` -> ``decode_head.conv_seg``, ``inssegroi*k`` -> the
  Mask R-CNN's), when its classes are the model's (a building pretraining set: background + building).

So a fine-tuned segmentor gives the encoder and UperNet (the instance decoder new), a Mask R-CNN the encoder and the
instance decoder, and our own checkpoints everything. :func:`require_instance_decoder` refuses to predict instances
with an instance decoder that was never trained.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from torch import Tensor

from mtp_core.checkpoint.instance import DECODER_PREFIXES, FC_REG_NOTE, PREDICTORS, check_reuse, plan_maskrcnn
from mtp_core.checkpoint.safe_load import CheckpointError
from mtp_core.models.instance_segmentor import InstanceSegmentor
from mtp_core.models.multitask import task_of_key
from mtp_core.models.segmentor import EncoderDecoder

SEMSEG_HEAD = "semseghead_{k}.1."  # MTP's per-dataset semantic classifier: Sequential(Dropout2d, Conv2d)


def load_instance_segmentor(model: InstanceSegmentor, obj: Any, state: Mapping[str, Tensor], layout: str,
                            source: str, reuse_decoder: str, reinit_classifier: bool, dataset: int | None) -> Any:
    """A :class:`~mtp_core.checkpoint.load.LoadReport` of both parts (see the module docstring)."""
    from mtp_core.checkpoint.load import load_into

    reuse_semseg = reuse_decoder in ("semseg", "semseg+insseg")
    reuse_insseg = reuse_decoder in ("insseg", "semseg+insseg")
    if reuse_insseg:
        check_reuse(state, layout, dataset, model.num_object_classes)
    elif dataset is not None:
        raise CheckpointError("a pretraining dataset's predictors are taken with reuse_decoder='insseg' or "
                              "'semseg+insseg' only")
    semantic = EncoderDecoder(model.backbone, model.decode_head, model.auxiliary_head)  # shares the modules
    report = load_into(semantic, obj, source, "semseg" if reuse_semseg else "none", reinit_classifier)
    if dataset is not None and reuse_semseg:
        _load_semseg_predictor(model, state, dataset, report)

    plan, unused, _, unexpected = plan_maskrcnn(model, state, layout, reuse_insseg, dataset)
    plan = {k: v for k, v in plan.items() if k.startswith(DECODER_PREFIXES)}
    unexpected = [k for k in unexpected if k.startswith(DECODER_PREFIXES) or k.startswith("inssegdecoder.")]
    target = model.state_dict()
    predictors = tuple(PREDICTORS.values())
    fresh = [k for k in target if k.startswith(predictors)] if reinit_classifier else []
    for key in fresh:
        plan.pop(key, None)
    mismatched = [(k, tuple(state[v].shape), tuple(target[k].shape)) for k, v in plan.items()
                  if state[v].shape != target[k].shape]
    if mismatched or unexpected:
        examples = [f"{k}: file {a} vs model {b}" for k, a, b in mismatched[:4]]
        examples += [f"{k}: not in the model" for k in unexpected[: max(0, 6 - len(examples))]]
        hint = (" The box and mask predictors follow the object classes: build the model with the file's classes, "
                "or start new ones with reinit_classifier=True (CLI: --num-classes)"
                if all(k.startswith(predictors) for k, _, _ in mismatched) and not unexpected else
                " Build the model with the file's instance decoder widths (channels, fc_out_channels)")
        raise CheckpointError(f"{source}: the instance decoder does not fit this model ({len(mismatched)} tensors "
                              f"differ in shape, {len(unexpected)} are not in the model): {'; '.join(examples)}."
                              f"{hint}")
    tensors = {k: state[v] for k, v in plan.items()}
    model.load_state_dict(tensors, strict=False)
    used = set(plan.values())
    report.loaded += list(tensors)
    report.reinitialized += fresh
    report.dropped = [k for k in report.dropped if k not in used and task_of_key(k) != "rd"]
    report.unused = sorted(set(report.unused) | {k for k in state if task_of_key(k) == "rd"} |
                           {k for k in unused if task_of_key(k) == "rd"})
    report.missing = [k for k in target if k not in report.loaded and k not in report.reinitialized]
    report.notes = [n for n in report.notes if "reuse_decoder='semseg' loads it" not in n]
    framework = layout in ("mtp_pretrain", "change_ckpt")
    if reuse_insseg:
        report.notes.append("neck, rpn_head and roi_head from MTP's pretrained instance decoder (inssegdecoder)")
        if dataset is not None:
            report.notes.append(f"fc_cls, fc_reg and conv_logits from pretraining dataset {dataset}'s predictors")
            report.notes.append(FC_REG_NOTE)
    elif framework and not (reuse_semseg and reuse_insseg):
        report.notes.append("the file has MTP's pretrained decoders: reuse_decoder='semseg+insseg' loads both")
    if not any(k.startswith(DECODER_PREFIXES) for k in report.loaded):
        report.notes.append("no instance decoder in the file: neck, rpn_head and roi_head start new (train them)")
    return report


def _load_semseg_predictor(model: InstanceSegmentor, state: Mapping[str, Tensor], dataset: int, report: Any) -> None:
    """Dataset ``dataset``'s semantic classifier (``semseghead_k``) as ``decode_head.conv_seg``."""
    prefix = SEMSEG_HEAD.format(k=dataset)
    conv = model.decode_head.conv_seg
    weight, bias = state.get(prefix + "weight"), state.get(prefix + "bias")
    if weight is None or bias is None:
        raise CheckpointError(f"the file has no semantic classifier of dataset {dataset} ({prefix}weight)")
    if weight.shape != conv.weight.shape:
        raise CheckpointError(f"dataset {dataset}'s semantic classifier is {tuple(weight.shape)}, the model's "
                              f"decode_head.conv_seg {tuple(conv.weight.shape)}: its classes (background included) "
                              "must be the model's")
    conv.weight.data.copy_(weight)
    conv.bias.data.copy_(bias)
    keys = ["decode_head.conv_seg.weight", "decode_head.conv_seg.bias"]
    report.reinitialized = [k for k in report.reinitialized if k not in keys]
    report.loaded += keys
    report.notes = [n for n in report.notes if "conv_seg is new" not in n]
    report.notes.append(f"decode_head from MTP's pretrained UperNet, its classifier from dataset {dataset}'s "
                        f"{prefix[:-3]}")


def require_instance_decoder(report: Any) -> None:
    """Refuses instance prediction when the instance decoder was not in the file or never trained (a segmentor
    initialised it, or ``mtp convert-ckpt`` made it new): its instances would be random."""
    absent = [k for k in report.missing + report.reinitialized + report.untrained if k.startswith(DECODER_PREFIXES)]
    if absent:
        raise CheckpointError(
            f"{report.source} has no trained instance decoder ({len(absent)} tensors new or missing, e.g. "
            f"{absent[0]}): fine-tune it first (python -m training.train training/configs/mtp/spacenetv1/"
            f"rvsa-b-upernet-maskrcnn-384-mae-mtp-spacenetv1.py --cfg-options load_from={Path(report.source).name}), "
            "or predict with its semantic decoder only (--semantic-only)")


def instance_segmentor_for(dims: tuple[int, int] | None) -> str | None:
    """The preset segmentor with instances (``mtp_vit_*_rvsa_upernet_maskrcnn``) whose backbone has these
    (embed_dim, depth), if any."""
    from mtp_core.checkpoint.layouts import _segmentor_dims
    from mtp_core.models.registry import list_models

    names = [n for n in list_models("segmentor") if n.startswith("mtp_vit_") and n.endswith("_upernet_maskrcnn")]
    return next((n for n in names if dims is not None and _segmentor_dims(n) == dims), None)


def convert_to_instance_segmentor(obj: Any, state: Mapping[str, Tensor], layout: str, src: Any, dst: Any,
                                  architecture: str | None, num_classes: int | None, dataset: int | str | None) -> Any:
    """``mtp convert-ckpt --reuse-decoder semseg+insseg``: MTP's multi-task file (encoder, UperNet and instance
    decoder) -> a complete checkpoint of a segmentor with instances; ``dataset`` also takes that pretraining
    dataset's predictors and class names."""
    from mtp_core.checkpoint.build import maskrcnn_args
    from mtp_core.checkpoint.convert import _dataset_classes, _dataset_index
    from mtp_core.checkpoint.instance import insseg_datasets
    from mtp_core.checkpoint.layouts import SEMSEG_PREFIX, backbone_dims, describe_dims, split_parts
    from mtp_core.checkpoint.load import load_into
    from mtp_core.checkpoint.save import save_checkpoint
    from mtp_core.models.registry import create_model, default_card, model_entry

    conv_seg = state.get(SEMSEG_PREFIX + "conv_seg.weight")
    if conv_seg is None or not any(k.startswith("inssegdecoder.") for k in state):
        lacks = "no UperNet" if conv_seg is None else "no instance decoder"
        raise CheckpointError("--reuse-decoder semseg+insseg needs MTP's multi-task pretraining file with both "
                              "decoders (semsegdecoder.* and inssegdecoder.*: *_pretrn_model.pth trained with "
                              f"--tasks ss is); {src} has {lacks}")
    index, name = _dataset_index(obj, state, dataset) if dataset is not None else (None, None)
    objects = insseg_datasets(state).get(index) if index is not None else None
    if index is not None and objects is None:
        raise CheckpointError(f"the file has no instance predictors of dataset {dataset}")
    if objects is not None and num_classes is not None and num_classes != objects + 1:
        raise CheckpointError(f"--num-classes {num_classes} disagrees with dataset {dataset}'s {objects} object "
                              f"classes (+ background); leave it out to take the dataset's predictors")
    classes_count = objects + 1 if objects is not None else (num_classes or 2)
    dims = backbone_dims(state, split_parts(state, layout).backbone)
    architecture = architecture or instance_segmentor_for(dims)
    if architecture is None or not architecture.endswith("_upernet_maskrcnn") or \
            model_entry(architecture).kind != "segmentor":
        raise CheckpointError("--reuse-decoder semseg+insseg builds a segmentor with instances "
                              "(mtp_vit_{b,l,tiny}_rvsa_upernet_maskrcnn); the file holds " + describe_dims(dims))
    args = {"num_classes": classes_count, "decode_channels": int(conv_seg.shape[1]),
            **maskrcnn_args(state, "inssegdecoder.")}
    model = create_model(architecture, **args)
    report = load_into(model, obj, str(src), "semseg+insseg", False, index)
    card = default_card(architecture, **args)
    if index is not None:
        card = card.replace(classes=("background", *_dataset_classes(obj, name, index, objects)))
    save_checkpoint(dst, model, card, converted_from=Path(src).name, source_layout=layout,
                    reuse_decoder="semseg+insseg", insseg_dataset=name or index,
                    untrained=sorted(report.missing + report.reinitialized))
    return report
