"""Converting released checkpoints: a complete fine-tuning checkpoint (weights + model card, optionally the
pretrained UperNet decoder), a Mask R-CNN fine-tuning checkpoint from the pretrained instance decoder, a segmentor
with instances from both, or the key renaming of MTP's ``scripts/change_ckpt.py`` for MMRotate."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from torch import Tensor

from mtp_core.checkpoint.build import file_classes, maskrcnn_args, target_for
from mtp_core.checkpoint.instance import check_reuse, insseg_datasets
from mtp_core.checkpoint.layouts import (
    LAYOUTS,
    backbone_dims,
    card_dict,
    describe_dims,
    extract_state_dict,
    instance_model_for,
    split_parts,
)
from mtp_core.checkpoint.load import REUSE_CHOICES, LoadReport, ReuseDecoder, load_into
from mtp_core.checkpoint.safe_load import CheckpointError, PathLike, safe_load
from mtp_core.checkpoint.save import atomic_torch_save, save_checkpoint
from mtp_core.models.multitask import SAMRS_CLASSES, SAMRS_DATASETS
from mtp_core.models.registry import create_model, default_card, list_models, model_entry


def change_ckpt_rename(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The key renaming of MTP's ``scripts/change_ckpt.py``, exactly: every 'encoder' -> 'backbone', otherwise
    'rotdetdecoder.' removed, other keys unchanged (values untouched). MMRotate's Oriented R-CNN then finds its
    ``backbone``/``neck``/``rpn_head``/``roi_head`` weights."""
    renamed: dict[str, Tensor] = {}
    for key, value in state.items():
        if "encoder" in key:
            renamed[key.replace("encoder", "backbone")] = value
        elif "rotdetdecoder" in key:
            renamed[key.replace("rotdetdecoder.", "")] = value
        else:
            renamed[key] = value
    return renamed


def convert_checkpoint(
    src: PathLike,
    dst: PathLike,
    *,
    reuse_decoder: ReuseDecoder = "none",
    architecture: str | None = None,
    num_classes: int | None = None,
    dataset: int | str | None = None,
) -> LoadReport:
    """Turn a released checkpoint into one our tools (or MMRotate) load directly; the output is written atomically.

    ``none``/``semseg``: a complete fine-tuning checkpoint in our format (weights + model card) for the inferred or
    given segmentor — a released encoder gets its ``pos_embed``/rel-pos tables resized and (``semseg``) the
    pretrained 256-channel UperNet as decode head. ``insseg``: a Mask R-CNN fine-tuning checkpoint with mmdet's key
    names from the pretrained instance decoder; ``dataset`` (a name such as ``sota``, or the 1-based index of the
    file's per-dataset heads) also takes that dataset's predictors and classes. ``rotdet``: ``{"state_dict": ...}``
    renamed as MTP's ``change_ckpt.py`` does, for MMRotate.
    """
    if reuse_decoder not in REUSE_CHOICES:
        raise ValueError(f"reuse_decoder must be one of {', '.join(REUSE_CHOICES)}, got {reuse_decoder!r}")
    obj = safe_load(src)
    state, layout = extract_state_dict(obj)
    if dataset is not None and reuse_decoder not in ("insseg", "semseg+insseg"):
        raise CheckpointError("--dataset chooses the pretraining dataset whose instance predictors are reused: it "
                              "goes with --reuse-decoder insseg or semseg+insseg")
    if reuse_decoder == "semseg+insseg":
        from mtp_core.checkpoint.instance_segmentor import convert_to_instance_segmentor

        return convert_to_instance_segmentor(obj, state, layout, src, dst, architecture, num_classes, dataset)
    if reuse_decoder == "insseg":
        return _convert_insseg(obj, state, layout, src, dst, architecture, num_classes, dataset)
    if reuse_decoder == "rotdet":
        return _convert_rotdet(state, layout, src, dst, architecture, num_classes)
    name, args, card = target_for(
        state, layout, card_dict(obj), architecture, num_classes, semseg=reuse_decoder == "semseg"
    )
    model = create_model(name, **args)
    reinit = num_classes is not None and file_classes(state) not in (None, num_classes)
    report = load_into(model, obj, str(src), reuse_decoder, reinit)
    save_checkpoint(dst, model, card, converted_from=Path(src).name, source_layout=layout,
                    reuse_decoder=reuse_decoder, untrained=sorted(report.missing + report.reinitialized))
    return report


def _convert_rotdet(
    state: Mapping[str, Tensor],
    layout: str,
    src: PathLike,
    dst: PathLike,
    architecture: str | None,
    num_classes: int | None,
) -> LoadReport:
    if architecture is not None or num_classes is not None:
        raise CheckpointError("reuse_decoder='rotdet' only renames keys for MMRotate: --arch/--num-classes don't apply")
    if not any("rotdetdecoder" in k for k in state):
        raise CheckpointError(
            "reuse_decoder='rotdet' needs the full MTP pretraining file (*_pretrn_model.pth) with its "
            f"rotated-detection decoder (rotdetdecoder.*); {src} is a {LAYOUTS[layout]} file without one"
        )
    renamed = change_ckpt_rename(state)
    atomic_torch_save({"state_dict": renamed}, dst)
    return LoadReport(
        layout=layout,
        source=str(src),
        loaded=list(renamed),
        notes=["keys renamed as MTP's scripts/change_ckpt.py does (encoder -> backbone, rotdetdecoder. removed)"],
    )


def _dataset_index(obj: Any, state: Mapping[str, Tensor], dataset: int | str) -> tuple[int, str | None]:
    """(1-based head index, dataset name if known) of ``dataset``: an index, or a name from the file's metadata (our
    pretraining files) or, for files with SAMRS's heads (the released ones), SOTA / SIOR / FAST."""
    heads = insseg_datasets(state)
    meta = obj.get("meta") if isinstance(obj, Mapping) else None
    names = [str(d[0]) for d in meta.get("datasets", [])] if isinstance(meta, Mapping) else []
    if not names and [heads.get(k + 1) for k in range(len(SAMRS_DATASETS))] == [d.num_classes for d in SAMRS_DATASETS]:
        names = [d.name for d in SAMRS_DATASETS]
    if isinstance(dataset, int) or str(dataset).isdigit():
        index = int(dataset)
        return index, names[index - 1] if 0 < index <= len(names) else None
    if str(dataset).lower() in [n.lower() for n in names]:
        index = [n.lower() for n in names].index(str(dataset).lower()) + 1
        return index, names[index - 1]
    known = ", ".join(names) if names else "none: give the head's 1-based index"
    raise CheckpointError(f"dataset {dataset!r} is not one of the file's pretraining datasets ({known}; heads "
                          f"{sorted(heads)})")


def _dataset_classes(obj: Any, name: str | None, index: int, count: int) -> tuple[str, ...]:
    meta = obj.get("meta") if isinstance(obj, Mapping) else None
    listed = meta.get("classes") if isinstance(meta, Mapping) else None
    if isinstance(listed, list) and 0 < index <= len(listed) and len(listed[index - 1]) == count:
        return tuple(str(c) for c in listed[index - 1])
    if name is not None and len(SAMRS_CLASSES.get(name.lower(), ())) == count:
        return SAMRS_CLASSES[name.lower()]
    return tuple(f"class_{i}" for i in range(count))


def _convert_insseg(obj: Any, state: Mapping[str, Tensor], layout: str, src: PathLike, dst: PathLike,
                    architecture: str | None, num_classes: int | None, dataset: int | str | None) -> LoadReport:
    index, name = _dataset_index(obj, state, dataset) if dataset is not None else (None, None)
    heads = insseg_datasets(state)
    if index is not None and num_classes is not None and num_classes != heads.get(index):
        raise CheckpointError(f"--num-classes {num_classes} disagrees with dataset {dataset}'s {heads.get(index)} "
                              "classes; leave it out to take the dataset's predictors")
    classes_count = heads.get(index, 0) if index is not None else (num_classes or 1)
    check_reuse(state, layout, index, classes_count)
    dims = backbone_dims(state, split_parts(state, layout).backbone)
    architecture = architecture or instance_model_for(dims)
    if architecture is None or model_entry(architecture).kind != "instance":
        raise CheckpointError(f"--reuse-decoder insseg builds a Mask R-CNN ({', '.join(list_models('instance'))}); "
                              f"the file holds {describe_dims(dims)}")
    args = {"num_classes": classes_count, **maskrcnn_args(state, "inssegdecoder.")}
    model = create_model(architecture, **args)
    report = load_into(model, obj, str(src), "insseg", False, index)
    card = default_card(architecture, **args)
    if index is not None:
        card = card.replace(classes=("background", *_dataset_classes(obj, name, index, classes_count)))
    save_checkpoint(dst, model, card, converted_from=Path(src).name, source_layout=layout, reuse_decoder="insseg",
                    insseg_dataset=name or index, untrained=sorted(report.missing + report.reinitialized))
    return report
