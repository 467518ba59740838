"""Distributed launch: one process per GPU, started by Slurm (``srun``) or torchrun, or a single process.

Slurm gives every task ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID`` and the node list; the master address is
the first host of ``SLURM_NODELIST``, expanded here without ``scontrol`` (not every compute node has it), and the
port is derived from ``SLURM_JOB_ID`` so two jobs on one node do not collide. Slurm tasks meet in a start-up
rendezvous of their own first: when some never start, rank 0 says which after ``start_timeout_s`` instead of
waiting out the collective timeout.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import torch
import torch.distributed as dist

Launcher = Literal["none", "pytorch", "slurm"]
DEFAULT_PORT = 29500
START_TIMEOUT_S = 300


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


def job_port(job_id: str | None) -> int:
    """The master port of a Slurm job: ``20000 + SLURM_JOB_ID % 20000`` (29500 outside a job)."""
    return 20000 + int(job_id) % 20000 if job_id and job_id.isdigit() else DEFAULT_PORT


def _slurm_env(port: int | None) -> tuple[int, int, int]:
    rank, world, local = _env_int("SLURM_PROCID"), _env_int("SLURM_NTASKS"), _env_int("SLURM_LOCALID")
    nodelist = next((os.environ[k] for k in ("SLURM_STEP_NODELIST", "SLURM_NODELIST", "SLURM_JOB_NODELIST")
                     if os.environ.get(k)), "")
    if "MASTER_ADDR" not in os.environ:
        if not nodelist:
            raise LaunchError("SLURM_NODELIST is not set and MASTER_ADDR is not given")
        os.environ["MASTER_ADDR"] = first_host(nodelist)
    os.environ["MASTER_PORT"] = str(port or os.environ.get("MASTER_PORT") or job_port(os.environ.get("SLURM_JOB_ID")))
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local))
    return rank, world, local


def cuda_device_index(local_rank: int, visible: int) -> int:
    """This task's GPU: its local rank when every task sees all GPUs of the node, the only one when Slurm binds one
    GPU per task (``--gpus-per-task=1``: ``CUDA_VISIBLE_DEVICES`` holds just that GPU)."""
    if visible == 1:
        return 0
    if local_rank < visible:
        return local_rank
    raise LaunchError(
        f"local rank {local_rank} has no GPU: this task sees {visible} (CUDA_VISIBLE_DEVICES="
        f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); start one task per GPU or bind one GPU per task "
        "(srun --gpus-per-task=1)")


def rendezvous(rank: int, world: int, host: str, port: int, start_timeout_s: float,
               timeout_s: float = 1800) -> dist.Store:
    """A TCP store every rank has joined; a port in use, an unreachable rank 0 or ranks that never start are
    reported as such (which ranks) after ``start_timeout_s``."""
    wait = timedelta(seconds=start_timeout_s)
    try:
        store = dist.TCPStore(host, port, None, rank == 0, wait, wait_for_workers=False)
    except dist.DistNetworkError as exc:
        if "EADDRINUSE" in str(exc) or "address already in use" in str(exc).lower():
            raise LaunchError(f"port {port} on {host} is already in use (another job on this node?): choose "
                              "another with --port or MASTER_PORT") from None
        raise LaunchError(f"rank {rank} could not reach rank 0 at {host}:{port} within {start_timeout_s:g} s: rank 0 "
                          "did not start, or the tasks disagree on MASTER_ADDR/--port (see --start-timeout)") from None
    store.set(f"mtp/started/{rank}", "1")
    store.add("mtp/started", 1)
    if rank == 0:
        deadline = time.monotonic() + start_timeout_s
        while store.add("mtp/started", 0) < world:
            if time.monotonic() > deadline:
                missing = [r for r in range(world) if not store.check([f"mtp/started/{r}"])]
                raise LaunchError(f"rank(s) {missing} of {world} never started within {start_timeout_s:g} s: see "
                                  "their errors in the job output (raise --start-timeout if start-up is slow)")
            time.sleep(0.05)
        store.set("mtp/all_started", "1")
    else:
        try:
            store.wait(["mtp/all_started"], wait)
        except dist.DistError:
            raise LaunchError(f"rank {rank}: not every rank started within {start_timeout_s:g} s (rank 0 names the "
                              "missing ones)") from None
    store.set_timeout(timedelta(seconds=timeout_s))
    return dist.PrefixStore("pg/", store)


def init_distributed(launcher: Launcher, port: int | None = None, timeout_s: int = 1800,
                     start_timeout_s: float = START_TIMEOUT_S) -> DistInfo:
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
        index = cuda_device_index(local, torch.cuda.device_count())
        torch.cuda.set_device(index)
        device, backend = torch.device("cuda", index), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        timeout = timedelta(seconds=timeout_s)
        if launcher == "slurm":
            store = rendezvous(rank, world, os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                               start_timeout_s, timeout_s)
            dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
        else:  # torchrun's agent runs the rendezvous and reports missing workers itself
            dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world, timeout=timeout)
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


def per_tensor_allreduce(_state, bucket):  # type: ignore[no-untyped-def]  # DDP checks real annotations, not strings
    """DDP comm hook (``dist.GradBucket`` -> ``Future[Tensor]``): DDP's mean of gradients, each parameter's gradient
    reduced on its own.

    A collective sums an element in an order that depends on its offset in the reduced buffer, and DDP rebuilds its
    gradient buckets after its first iteration: a resumed run (whose first iteration is a later one) would reduce
    some gradients in another order than the uninterrupted run, and 3 or more ranks round differently. Per tensor,
    the order is the same in every iteration of every run. Used on CPU (gloo), where it costs little.
    """
    buffer = bucket.buffer().div_(dist.get_world_size())
    for grad in bucket.gradients():  # views into the buffer
        dist.all_reduce(grad)
    future = torch.futures.Future()
    future.set_result(buffer)
    return future
