"""Child processes started from inside QGIS (the installer's Python and pip): a clean environment, no console window."""
from __future__ import annotations

import os
import subprocess

#: QGIS's own Python settings (Windows sets PYTHONHOME/PYTHONPATH for QGIS) and the user's pip settings that would
#: send packages elsewhere; none of them may reach the plugin's environment.
DROPPED = ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONUSERBASE", "PIP_USER", "PIP_TARGET", "PIP_PREFIX",
           "PIP_ROOT", "VIRTUAL_ENV", "CONDA_PREFIX", "__PYVENV_LAUNCHER__")


def clean_environment() -> dict[str, str]:
    """This process's environment without what points a child Python at QGIS's or another environment's packages.
    pip's own configuration (index, find-links, certificates, proxy) is kept: it is how a site reaches packages."""
    env = {key: value for key, value in os.environ.items() if key.upper() not in DROPPED}
    env["PYTHONNOUSERSITE"] = "1"  # packages under ~/.local must not count as installed
    env["PYTHONIOENCODING"] = "utf-8"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    return env


def hidden_window_flags() -> int:
    """On Windows, no console window flashes up for each child process."""
    return getattr(subprocess, "CREATE_NO_WINDOW", 0)
