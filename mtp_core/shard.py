"""Splitting a batch of rasters across a Slurm array or several GPUs, so each process does its share.

``--shard K/N`` (0-based K) takes every N-th raster of the sorted input list; without it, the shard comes from
``SLURM_ARRAY_TASK_ID``/``SLURM_ARRAY_TASK_COUNT`` (array indices relative to ``SLURM_ARRAY_TASK_MIN``) or torchrun's
``RANK``/``WORLD_SIZE``. A VRT mosaic given alone is split into its source tiles.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping, Sequence

from mtp_core.errors import UserError
from mtp_core.io import open_raster


def parse_shard(text: str | None, env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(index, count) from ``K/N``, else from the Slurm array or torchrun environment, else (0, 1).

    Slurm arrays may step (``--array=0-15:2`` runs tasks 0, 2, ..., 14: shards 0..7 of 8); an array whose task ids
    are not evenly spaced (``--array=1,4,9``) cannot say which share is whose, so it needs ``--shard``.
    """
    env = os.environ if env is None else env
    if text:
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not match:
            raise UserError(f"--shard {text!r}: write it as K/N, e.g. 0/4 (K from 0 to N-1)")
        k, n = int(match.group(1)), int(match.group(2))
    elif "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        task, first = int(env["SLURM_ARRAY_TASK_ID"]), int(env.get("SLURM_ARRAY_TASK_MIN", 0))
        step, n = int(env.get("SLURM_ARRAY_TASK_STEP") or 1), int(env["SLURM_ARRAY_TASK_COUNT"])
        k = (task - first) // max(step, 1)
        last = env.get("SLURM_ARRAY_TASK_MAX")
        if (task - first) % max(step, 1) or (last is not None and first + (n - 1) * step != int(last)):
            raise UserError(f"this Slurm array's task ids are not evenly spaced (task {task}, min {first}, max "
                            f"{last}, {n} tasks): give each task its share with --shard K/{n}")
    elif "RANK" in env and "WORLD_SIZE" in env:
        k, n = int(env["RANK"]), int(env["WORLD_SIZE"])
    else:
        return 0, 1
    if n < 1 or not 0 <= k < n:
        raise UserError(f"shard {k}/{n} is out of range: K must be in 0..N-1")
    return k, n


def vrt_sources(path: Path) -> list[Path]:
    """Source rasters of a VRT mosaic (its own file excluded)."""
    dataset = open_raster(str(path))
    return [Path(p) for p in (dataset.GetFileList() or [])[1:]]


def select_shard(rasters: Sequence[str | Path], index: int, count: int) -> list[Path]:
    """This shard's rasters: sorted, every ``count``-th from ``index`` (a lone VRT is split into its tiles)."""
    paths = [Path(p) for p in rasters]
    if count > 1 and len(paths) == 1 and paths[0].suffix.lower() == ".vrt":
        paths = vrt_sources(paths[0])
    ordered = sorted(dict.fromkeys(paths))
    return ordered[index::count]
