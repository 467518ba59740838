"""What the plugin needs from QGIS's Python, checked without importing it (a missing torch must not break QGIS)."""
from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass

import numpy

REQUIRED = {"torch": "torch>=2.1", "timm": "timm>=0.9", "shapely": "shapely>=2.0,<2.2"}


@dataclass(frozen=True)
class DependencyStatus:
    missing: tuple[str, ...]
    install_command: str

    @property
    def ok(self) -> bool:
        return not self.missing


def python_executable() -> str:
    """The interpreter QGIS runs (inside QGIS ``sys.executable`` can be the qgis binary itself)."""
    if os.path.basename(sys.executable).lower().startswith("python"):
        return sys.executable
    name = "python.exe" if os.name == "nt" else os.path.join("bin", "python3")
    return os.path.join(sys.exec_prefix, name)


def check_dependencies() -> DependencyStatus:
    """Missing packages and the one command that installs them without touching QGIS's own numpy."""
    missing = tuple(name for name in REQUIRED if importlib.util.find_spec(name) is None)
    specs = " ".join(f'"{REQUIRED[name]}"' for name in missing)
    # numpy pinned to the version QGIS was built with, so pip can never upgrade it under QGIS
    command = f'"{python_executable()}" -m pip install --user {specs} "numpy=={numpy.__version__}"' if missing else ""
    return DependencyStatus(missing, command)


def environment_report() -> str:
    """Versions and the compute device, or what to install; plain text for the message log and dialogs."""
    status = check_dependencies()
    if not status.ok:
        return (
            f"MTP needs {', '.join(status.missing)} in QGIS's Python ({python_executable()}).\n"
            f"Install with:\n{status.install_command}\nthen restart QGIS."
        )
    import torch

    from mtp_core import __version__
    from mtp_core.device import describe_device, resolve_device

    return (
        f"mtp_core {__version__}, torch {torch.__version__}, numpy {numpy.__version__}\n"
        f"device: {describe_device(resolve_device('auto'))}"
    )
