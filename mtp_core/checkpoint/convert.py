"""Converting released checkpoints: a complete fine-tuning checkpoint (weights + model card, optionally the
pretrained UperNet decoder), or the key renaming of MTP's ``scripts/change_ckpt.py`` for MMRotate."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from torch import Tensor

from mtp_core.checkpoint.build import file_classes, target_for
from mtp_core.checkpoint.layouts import LAYOUTS, card_dict, extract_state_dict
from mtp_core.checkpoint.load import REUSE_CHOICES, LoadReport, ReuseDecoder, load_into
from mtp_core.checkpoint.safe_load import CheckpointError, PathLike, safe_load
from mtp_core.checkpoint.save import atomic_torch_save, save_checkpoint
from mtp_core.models.registry import create_model


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
) -> LoadReport:
    """Turn a released checkpoint into one our tools (or MMRotate) load directly; the output is written atomically.

    ``none``/``semseg``: a complete fine-tuning checkpoint in our format (weights + model card) for the inferred or
    given segmentor — a released encoder gets its ``pos_embed``/rel-pos tables resized and (``semseg``) the
    pretrained 256-channel UperNet as decode head. ``rotdet``: ``{"state_dict": ...}`` renamed as MTP's
    ``change_ckpt.py`` does, for MMRotate.
    """
    if reuse_decoder not in REUSE_CHOICES:
        raise ValueError(f"reuse_decoder must be one of {', '.join(REUSE_CHOICES)}, got {reuse_decoder!r}")
    obj = safe_load(src)
    state, layout = extract_state_dict(obj)
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
