"""Deterministic weight recipes of the MTP reference data (``shared/reference/mtp/README.md``).

They rebuild the exact weights of the goldens from a key manifest, so parity checks (tests, ``bench/``) need no
stored weight file.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

STRESS_RULES = ((".sampling_", 25.0), ("rel_pos", 10.0), ("relative_position_bias_table", 10.0))
_UNIT_MEAN_SUFFIXES = ("norm1.weight", "norm2.weight", ".ln.weight")


def _init_mean(key: str) -> float:
    return 1.0 if key.endswith(_UNIT_MEAN_SUFFIXES) or key == "norm.weight" else 0.0


def det_init_(model: nn.Module, seed: int = 0, std: float = 0.02) -> None:
    """One generator for the whole model, parameters drawn in state_dict order; buffers keep their values."""
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key in model.state_dict().keys():
            if key in params:
                params[key].normal_(_init_mean(key), std, generator=g)


def det_init_tensors(manifest: Iterable[dict], seed: int = 0, std: float = 0.02) -> dict[str, torch.Tensor]:
    """The same weights from a key manifest alone (``[{"key", "shape", "kind"}, ...]``), without a model."""
    g = torch.Generator().manual_seed(seed)
    return {
        e["key"]: torch.empty(e["shape"]).normal_(_init_mean(e["key"]), std, generator=g)
        for e in manifest
        if e["kind"] == "param"
    }


def stress_scale_(model: nn.Module) -> None:
    """Scale the RVSA geometry parameters up so offsets, scales and angles are far from trivial."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key in model.state_dict().keys():
            if key in params:
                factor = next((f for pattern, f in STRESS_RULES if pattern in key), None)
                if factor is not None:
                    params[key].mul_(factor)


def golden_input(shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    return torch.empty(shape).normal_(0.0, 1.0, generator=torch.Generator().manual_seed(seed))
