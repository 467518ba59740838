"""Choosing and describing the compute device and its CPU threads, so users always see what runs their model and
why, and a run never takes more CPUs than it was given."""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Iterator

import torch

from mtp_core.errors import UserError


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` → the first CUDA device if usable, else Apple silicon's GPU (MPS) if usable, else CPU; ``cpu``;
    ``mps``; ``cuda`` / ``cuda:N`` (checked to exist)."""
    spec = spec.strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda:0")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not _mps_available():
            raise UserError("device 'mps' was asked for but this PyTorch sees no Apple silicon GPU (MPS needs macOS "
                            "12.3+ on an M-series Mac and an arm64 build of torch); use --device cpu")
        return torch.device("mps")
    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if not match:
        raise UserError(f"unknown device {spec!r}: use auto, cpu, cuda, cuda:N or mps")
    if not torch.cuda.is_available():
        raise UserError(f"device {spec!r} was asked for but {cuda_unavailable_reason()}; use --device cpu")
    index = int(match.group(1) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise UserError(f"device {spec!r} does not exist: {count} CUDA device(s) visible (cuda:0..cuda:{count - 1})")
    return torch.device("cuda", index)


def cuda_unavailable_reason() -> str:
    """Why CUDA can't be used here, in words a user can act on."""
    if torch.version.cuda is None:
        return "this PyTorch build has no CUDA support (install a CUDA build of torch)"
    return (f"no CUDA device is visible to PyTorch {torch.__version__} (CUDA {torch.version.cuda}): "
            "check the driver and CUDA_VISIBLE_DEVICES")


def describe_device(device: torch.device, threads: int | None = None) -> str:
    """One line: CUDA name and memory, Apple silicon's GPU, or CPU with the threads a run uses and why no GPU is
    used."""
    if device.type == "mps":
        return "mps (Apple silicon GPU, Metal Performance Shaders)"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        memory = props.total_memory / 2**30
        return f"{device} {props.name}, {memory:.1f} GiB, compute capability {props.major}.{props.minor}"
    why = "" if torch.cuda.is_available() else f" ({cuda_unavailable_reason()})"
    return f"cpu, {threads or cpu_threads()} threads{why}"


def cpu_threads(cgroup_root: str | os.PathLike = "/sys/fs/cgroup") -> int:
    """CPU threads this process should use: ``OMP_NUM_THREADS`` when set, else the CPUs it may run on (its affinity,
    e.g. Slurm's ``--cpus-per-task`` or ``taskset``), at most its cgroup's CPU quota (containers, systemd), at least 1.

    ``os.cpu_count()`` counts the machine's CPUs, not this process's: using them all oversubscribes a shared node.
    """
    wanted = os.environ.get("OMP_NUM_THREADS", "").strip()
    if wanted.isdigit() and int(wanted) > 0:
        return int(wanted)
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        count = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        count = min(count, max(1, int(quota)))
    return max(1, count)


def cgroup_cpu_quota(root: str | os.PathLike = "/sys/fs/cgroup") -> float | None:
    """CPUs allowed by this process's cgroup (quota / period), or None when unlimited or unknown.

    cgroup v2: ``cpu.max`` ("max 100000" or "200000 100000") in the process's own cgroup (from ``/proc/self/cgroup``)
    or at the root of the mount (containers); cgroup v1: ``cpu/cpu.cfs_quota_us`` and ``cpu.cfs_period_us``.
    """
    root = Path(root)
    own = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                own = line[3:].strip().lstrip("/")
    for folder in dict.fromkeys([root / own, root]):
        with contextlib.suppress(OSError, ValueError):
            quota, period = (folder / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
    with contextlib.suppress(OSError, ValueError):
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    return None


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``count`` inside the block and restored after it (the count is
    process-wide: inside QGIS it must not stay changed for the rest of the application)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
