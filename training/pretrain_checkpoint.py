"""MTP's pretraining checkpoints: names, contents and the learning-rate schedule in the layout the original writes.

``main_pretrain.py`` writes, every ``--interval`` iterations and at the end, a full file and an encoder file::

    Iter_{it}_{backbone}_{tasks}pretrn_model.pth           {'epoch', 'iteration', 'state_dict', 'optimizer',
    Iter_{it}_{backbone}_{tasks}pretrn_model_encoder.pth    'scheduler', 'loss_pretrain': np.ndarray}
    last_{backbone}_{tasks}pretrn_model[_encoder].pth

with ``tasks`` as ``ss_is_`` (each task and ``_``), the framework's (or the encoder's) ``state_dict``, the AdamW
state and torch's ``CosineAnnealingLR`` state. Ours add one ``meta`` entry (every rank's random state, the config,
the task spec) that the original ignores, so a run resumes bit for bit; both load with ``weights_only=True``
(:func:`mtp_core.checkpoint.safe_load`: the numpy array under numpy 1.x and 2.x names).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mtp_core.checkpoint import atomic_torch_save
from training.optim import ParamScheduler

MTP_KEYS = ("epoch", "iteration", "state_dict", "optimizer", "scheduler", "loss_pretrain")


def checkpoint_stem(iteration: int | None, backbone: str, tasks: Sequence[str]) -> str:
    """``Iter_{it}_{backbone}_{tasks}pretrn_model``, or ``last_...`` for the final file (``iteration=None``)."""
    tasks_str = "".join(f"{t}_" for t in tasks)
    head = "last" if iteration is None else f"Iter_{iteration}"
    return f"{head}_{backbone}_{tasks_str}pretrn_model"


def cosine_state_dict(scheduler: ParamScheduler, t_max: int, eta_min: float = 0.0) -> dict[str, Any]:
    """The schedule as ``torch.optim.lr_scheduler.CosineAnnealingLR.state_dict()`` (what the original saves and
    loads), at the step whose rates are set now."""
    return {
        "T_max": int(t_max), "eta_min": float(eta_min), "base_lrs": [float(v) for v in scheduler.initial_lrs],
        "last_epoch": int(scheduler.last_step), "_step_count": int(scheduler.last_step) + 1, "_is_initial": False,
        "_get_lr_called_within_step": False, "_last_lr": [float(v) for v in scheduler.get_last_lr()],
    }


def load_cosine_state(scheduler: ParamScheduler, state: Mapping[str, Any]) -> None:
    """Continue a schedule saved by :func:`cosine_state_dict` or by the original (``last_epoch``, ``base_lrs``)."""
    missing = [k for k in ("last_epoch", "base_lrs") if k not in state]
    if missing:
        raise ValueError(f"the checkpoint's scheduler state has no {missing}: not a CosineAnnealingLR state")
    scheduler.load_state_dict({"last_step": int(state["last_epoch"]), "initial_lrs": list(state["base_lrs"])})


def save_pretrain_checkpoint(work_dir: Path, stem: str, model_state: Mapping[str, Any],
                             encoder_state: Mapping[str, Any], common: Mapping[str, Any],
                             meta: Mapping[str, Any]) -> Path:
    """Write ``stem.pth`` (the framework, plus ``meta``) and ``stem_encoder.pth`` atomically; returns the first.

    ``common`` holds ``epoch``, ``iteration``, ``optimizer``, ``scheduler`` and ``loss_pretrain`` (a list of floats,
    saved as the original's float64 array).
    """
    def ordered(state: Mapping[str, Any]) -> dict[str, Any]:
        values = {**common, "state_dict": dict(state), "loss_pretrain": np.array(common["loss_pretrain"])}
        return {key: values[key] for key in MTP_KEYS}

    full = work_dir / f"{stem}.pth"
    atomic_torch_save({**ordered(model_state), "meta": dict(meta)}, full)
    atomic_torch_save(ordered(encoder_state), work_dir / f"{stem}_encoder.pth")
    return full
