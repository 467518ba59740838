"""Checkpoint files: safe loading, every MTP / MAE / MMSeg layout, resizing, loading with a report, saving and
conversion.

Released MTP weights come in several layouts (``mtp_spec.md`` §2.6, §5.3, §6): the pretraining encoder file, the
full multi-task pretraining model, MMSeg fine-tuned models, MAE pretraining files, the output of MTP's
``scripts/change_ckpt.py`` and plain state dicts. They are read into our models the way the original
``RVSA_MTP.init_weights`` does, and a :class:`LoadReport` says what was loaded, resized, dropped and left missing.
Files are only ever unpickled with ``torch.load(weights_only=True)`` (:mod:`.safe_load`).
"""
from mtp_core.checkpoint.build import load_model, require_decoder
from mtp_core.checkpoint.convert import change_ckpt_rename, convert_checkpoint
from mtp_core.checkpoint.layouts import LAYOUTS, extract_state_dict
from mtp_core.checkpoint.load import LoadReport, load_weights
from mtp_core.checkpoint.resize import resize_pos_embed, resize_rel_pos
from mtp_core.checkpoint.safe_load import (
    CheckpointError,
    InertList,
    InertObject,
    UnsafeCheckpointError,
    safe_load,
)
from mtp_core.checkpoint.save import atomic_torch_save, save_checkpoint

__all__ = [
    "CheckpointError",
    "InertList",
    "InertObject",
    "LAYOUTS",
    "LoadReport",
    "UnsafeCheckpointError",
    "atomic_torch_save",
    "change_ckpt_rename",
    "convert_checkpoint",
    "extract_state_dict",
    "load_model",
    "load_weights",
    "resize_pos_embed",
    "require_decoder",
    "resize_rel_pos",
    "safe_load",
    "save_checkpoint",
]
