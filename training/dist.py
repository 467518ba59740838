"""Distributed launch: one process per GPU, started by Slurm (``srun``) or torchrun, or a single process.

Slurm gives every task ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID`` and the node list; the master address is
the first host of ``SLURM_NODELIST``, expanded here without ``scontrol`` (not every compute node has it).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import torch
import torch.distributed as dist

Launcher = Literal["none", "pytorch", "slurm"]
DEFAULT_PORT = 29500


class LaunchError(RuntimeError):
    """The environment does not describe the launch that was asked for."""


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def first_host(nodelist: str) -> str:
    """First hostname of a Slurm node list: ``gpu[03-05,9],cpu1`` → ``gpu03``; ``a-[001-2]-x`` → ``a-001-x``."""
    nodelist = nodelist.strip()
    if not nodelist:
        raise LaunchError("SLURM_NODELIST is empty")
    first = re.match(r"[^,\[]*(\[[^\]]*\])?[^,]*", nodelist)
    assert first is not None  # the pattern matches any string
    host = first.group(0)
    bracket = re.search(r"\[([^\]]*)\]", host)
    if not bracket:
        return host
    first_range = bracket.group(1).split(",")[0]
    start = first_range.split("-")[0]
    return host[: bracket.start()] + start + host[bracket.end():]


def _env_int(name: str) -> int:
    try:
        return int(os.environ[name])
    except KeyError:
        raise LaunchError(f"{name} is not set: this process was not started the way --launcher says") from None
    except ValueError:
        raise LaunchError(f"{name}={os.environ[name]!r} is not an integer") from None


def _slurm_env(port: int | None) -> tuple[int, int, int]:
    rank, world, local = _env_int("SLURM_PROCID"), _env_int("SLURM_NTASKS"), _env_int("SLURM_LOCALID")
    nodelist = next((os.environ[k] for k in ("SLURM_STEP_NODELIST", "SLURM_NODELIST", "SLURM_JOB_NODELIST")
                     if os.environ.get(k)), "")
    if "MASTER_ADDR" not in os.environ:
        if not nodelist:
            raise LaunchError("SLURM_NODELIST is not set and MASTER_ADDR is not given")
        os.environ["MASTER_ADDR"] = first_host(nodelist)
    os.environ["MASTER_PORT"] = str(port or os.environ.get("MASTER_PORT", DEFAULT_PORT))
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local))
    return rank, world, local


def init_distributed(launcher: Launcher, port: int | None = None, timeout_s: int = 1800) -> DistInfo:
    """Initialise ``torch.distributed`` (NCCL on GPU, gloo on CPU) and pick this process's device."""
    if launcher == "none":
        device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        return DistInfo(device=device)
    if launcher == "slurm":
        rank, world, local = _slurm_env(port)
    elif launcher == "pytorch":
        rank, world, local = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
        if port:
            os.environ["MASTER_PORT"] = str(port)
    else:
        raise LaunchError(f"unknown launcher {launcher!r}: use none, pytorch or slurm")
    if torch.cuda.is_available():
        if local >= torch.cuda.device_count():
            raise LaunchError(
                f"local rank {local} has no GPU: {torch.cuda.device_count()} visible on this node; "
                "start one task per GPU"
            )
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world,
                                timeout=timedelta(seconds=timeout_s))
    return DistInfo(rank, world, local, device)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(obj: object, info: DistInfo) -> object:
    """Rank 0's value everywhere (e.g. the resolved work dir or a stop decision)."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum_(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
