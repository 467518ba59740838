"""Seeds and the RNG states of every rank, so that a resumed run draws the same dropout and drop-path masks.

``randomness = dict(seed=0, diff_rank_seed=False)`` as MMEngine: every rank seeds python, numpy and torch (CPU and
CUDA) with ``seed``, or ``seed + rank`` with ``diff_rank_seed``. Data augmentation does not use these generators (it
is seeded per sample, see ``training.data``). A checkpoint holds the state of every rank: CPU, the CUDA generator of
the rank's own device, numpy and python. A resume with the same number of processes gives each rank its own state
back; with another number the generators are re-seeded from ``(seed, iteration, rank)``: deterministic, but not the
draws of the original run.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

RngState = dict[str, Any]


def seed_everything(seed: int, rank: int = 0, diff_rank_seed: bool = False) -> int:
    """Seed python, numpy and torch (every CUDA device too); returns the seed this rank used."""
    seed = seed + rank if diff_rank_seed else seed
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return seed


def rng_state(device: torch.device) -> RngState:
    """This process's generators; CUDA only for ``device`` (the rank's own GPU)."""
    np_state = np.random.get_state(legacy=False)
    np_state["state"]["key"] = np_state["state"]["key"].tolist()  # plain lists load with weights_only=True
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": np_state,
        "python": random.getstate(),
    }


def set_rng_state(state: RngState, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and isinstance(state.get("cuda"), torch.Tensor):
        torch.cuda.set_rng_state(state["cuda"], device)
    np_state = dict(state["numpy"])
    np_state["state"] = dict(np_state["state"], key=np.array(np_state["state"]["key"], dtype=np.uint32))
    np.random.set_state(np_state)
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))


def gather_rng_states(device: torch.device) -> list[RngState]:
    """Every rank's :func:`rng_state`, in rank order (a collective: every rank calls it)."""
    state = rng_state(device)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [state]
    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states


def restore_rng_states(states: list[RngState], rank: int, world_size: int, device: torch.device, seed: int,
                       iteration: int) -> bool:
    """This rank's saved state; False (and a deterministic re-seed) when the checkpoint has another world size."""
    if len(states) == world_size:
        set_rng_state(states[rank], device)
        return True
    seed_everything(int(np.random.SeedSequence([seed, iteration, rank]).generate_state(1)[0]))
    return False
