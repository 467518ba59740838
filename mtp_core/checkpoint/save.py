"""Writing checkpoints: our layout (``{"state_dict", "meta": {"model_card", ...}}``) that loads with
``torch.load(weights_only=True)`` anywhere, written atomically (a crash never leaves a truncated file)."""
from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import mtp_core
from mtp_core.checkpoint.load import is_segmentor
from mtp_core.checkpoint.safe_load import PathLike
from mtp_core.io.atomic import atomic_path
from mtp_core.models.card import ModelCard
from mtp_core.models.maskrcnn import MaskRCNN


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` that leaves either the old file or the complete new one, never a truncated checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)



_PLAIN_TYPES = (type(None), bool, int, float, str, bytes)


def _check_plain(value: Any, where: str) -> None:
    """Meta must load with ``weights_only=True`` anywhere: only plain Python values and tensors."""
    if type(value) in _PLAIN_TYPES or isinstance(value, Tensor):  # exact types: np.float64 or TorchVersion are not
        return
    if type(value) in (list, tuple):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if type(value) is dict:
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: keys must be strings, got {key!r}")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise ValueError(
        f"{where} is a {type(value).__module__}.{type(value).__qualname__}: checkpoint metadata must be plain "
        "Python values (None, bool, int, float, str, bytes, list, tuple, dict) or tensors, so it loads safely"
    )


def save_checkpoint(path: PathLike, model: nn.Module, card: ModelCard, **extra_meta: Any) -> None:
    """Write ``{"state_dict", "meta": {"model_card", "mtp_core_version", ...}}`` atomically.

    The card travels with the weights, so :func:`load_model` rebuilds the exact network and its data conventions.
    Everything in the file loads with ``torch.load(weights_only=True)`` (metadata must be plain values).
    """
    if isinstance(model, MaskRCNN):
        predicted = model.num_classes + 1  # the card lists the background first
    elif is_segmentor(model):
        predicted = model.decode_head.num_classes
    else:
        raise ValueError("save_checkpoint writes segmentors and Mask R-CNNs (their card describes one); save a "
                         "backbone inside one")
    if predicted != card.num_classes:
        raise ValueError(f"the card lists {card.num_classes} classes but the model predicts {predicted}")
    meta = {
        "model_card": card.to_dict(),
        "mtp_core_version": mtp_core.__version__,
        "torch_version": str(torch.__version__),  # TorchVersion is a str subclass that weights_only refuses
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra_meta,
    }
    _check_plain(meta, "meta")
    state = OrderedDict((k, v.detach().cpu()) for k, v in model.state_dict().items())
    atomic_torch_save({"state_dict": state, "meta": meta}, path)


