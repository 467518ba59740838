"""Which PyTorch build to install on this machine, and from which package index.

* An NVIDIA driver present (``nvidia-smi``, or ``/proc/driver/nvidia/version`` on Linux): the newest CUDA build the
  driver runs, from PyTorch's own index (PyPI's Windows wheels have no CUDA, and its Linux ones follow the newest CUDA,
  which an older driver cannot run). CUDA 13 needs driver 580, CUDA 12 driver 525 (528 on Windows); older drivers get
  the CPU build and a note to update them.
* No NVIDIA driver on Linux: the CPU build from PyTorch's index (about 200 MB instead of several GB of CUDA libraries).
* macOS on Apple silicon: PyPI's build, which uses the GPU through MPS. Intel Macs have no PyTorch 2.6.
* Windows without NVIDIA: PyPI's build (CPU).
"""
from __future__ import annotations

import functools
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .processes import clean_environment, hidden_window_flags

PYTORCH_INDEX = "https://download.pytorch.org/whl/"
#: (CUDA build, its name, the oldest driver that runs it on Linux, on Windows)
CUDA_BUILDS = (("cu130", "CUDA 13.0", (580, 65), (580, 88)), ("cu128", "CUDA 12.8", (525, 60), (528, 33)))


class UnsupportedPlatform(RuntimeError):
    pass


@dataclass(frozen=True)
class TorchBuild:
    label: str  # what the dock and the log say, e.g. "CUDA 12.8 build (NVIDIA driver 550.54)"
    index_url: str | None  # None: pip's own configured index (PyPI unless the site configured another)
    note: str = ""  # advice shown with the label
    size: str = "about 1 GB"  # on disk, with timm and shapely ("": not known in advance)

    def describe(self) -> str:
        where = self.index_url or "PyPI (pip's configured index)"
        return f"PyTorch {self.label} from {where}" + (f"; {self.note}" if self.note else "")


def choose_torch_build(system: str, machine: str, driver: str | None) -> TorchBuild:
    """The build for ``platform.system()``, ``platform.machine()`` and the NVIDIA driver version (None: no driver)."""
    if system == "Darwin":
        if machine.lower() in ("arm64", "aarch64"):
            return TorchBuild("macOS build (Apple silicon GPU through MPS)", None)
        raise UnsupportedPlatform("PyTorch stopped publishing builds for Intel Macs at version 2.2, and MTP needs "
                                  "2.6 or newer (safe checkpoint loading): use a Mac with Apple silicon, or Linux or "
                                  "Windows")
    if driver:
        numbers = tuple(int(n) for n in re.findall(r"\d+", driver)[:2])
        for tag, name, linux, windows in CUDA_BUILDS:
            if numbers >= (windows if system == "Windows" else linux):
                return TorchBuild(f"{name} build (NVIDIA driver {driver})", PYTORCH_INDEX + tag, size="about 5 GB")
        oldest = ".".join(map(str, CUDA_BUILDS[-1][3 if system == "Windows" else 2]))
        return TorchBuild(f"CPU build (NVIDIA driver {driver} is too old for CUDA 12)", _cpu_index(system),
                          f"update the NVIDIA driver to {oldest} or newer and install again to use the GPU")
    return TorchBuild("CPU build (no NVIDIA driver found)", _cpu_index(system))


def _cpu_index(system: str) -> str | None:
    return PYTORCH_INDEX + "cpu" if system == "Linux" else None


def nvidia_driver_version() -> str | None:
    """The NVIDIA driver's version, or None when there is no NVIDIA driver."""
    proc_file = Path("/proc/driver/nvidia/version")
    if proc_file.is_file():
        match = re.search(r"Kernel Module\s+(?:for \S+\s+)?(\d+\.\d+(?:\.\d+)?)", proc_file.read_text(errors="replace"))
        if match:
            return match.group(1)
    smi = shutil.which("nvidia-smi") or (r"C:\Windows\System32\nvidia-smi.exe" if os.name == "nt" else None)
    if smi is None or not os.path.exists(smi):
        return None
    try:
        done = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=30, env=clean_environment(), creationflags=hidden_window_flags())
    except (OSError, subprocess.SubprocessError):
        return None
    version = done.stdout.strip().splitlines()[0].strip() if done.returncode == 0 and done.stdout.strip() else ""
    return version or None


@functools.lru_cache(maxsize=1)  # the driver does not change during a session; nvidia-smi takes a moment
def torch_build_for_this_machine() -> TorchBuild:
    return choose_torch_build(platform.system(), platform.machine(), nvidia_driver_version())
