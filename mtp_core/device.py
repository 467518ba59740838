"""Choosing and describing the compute device, so users always see what runs their model and why."""
from __future__ import annotations

import re

import torch


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` → the first CUDA device if usable, else CPU; ``cpu``; ``cuda`` / ``cuda:N`` (checked to exist)."""
    spec = spec.strip().lower()
    if spec == "auto":
        return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if not match:
        raise ValueError(f"unknown device {spec!r}: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} was asked for but {cuda_unavailable_reason()}; use --device cpu")
    index = int(match.group(1) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise ValueError(f"device {spec!r} does not exist: {count} CUDA device(s) visible (cuda:0..cuda:{count - 1})")
    return torch.device("cuda", index)


def cuda_unavailable_reason() -> str:
    """Why CUDA can't be used here, in words a user can act on."""
    if torch.version.cuda is None:
        return "this PyTorch build has no CUDA support (install a CUDA build of torch)"
    return (f"no CUDA device is visible to PyTorch {torch.__version__} (CUDA {torch.version.cuda}): "
            "check the driver and CUDA_VISIBLE_DEVICES")


def describe_device(device: torch.device) -> str:
    """One line: CUDA name and memory, or CPU with its thread count and why no GPU is used."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        memory = props.total_memory / 2**30
        return f"{device} {props.name}, {memory:.1f} GiB, compute capability {props.major}.{props.minor}"
    why = "" if torch.cuda.is_available() else f" ({cuda_unavailable_reason()})"
    return f"cpu, {torch.get_num_threads()} threads{why}"
