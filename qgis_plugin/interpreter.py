"""QGIS's own Python interpreter: the one that can make the plugin's environment.

Inside QGIS, ``sys.executable`` is usually the QGIS binary itself, and the first ``python3`` on ``PATH`` may be another
interpreter altogether (pyenv, conda, a Homebrew Python): packages installed with either would be built for the wrong
Python or land where QGIS never looks. The interpreter QGIS embeds lives in its installation, ``sys.base_prefix``
(Debian: ``/usr/bin/python3.11``; OSGeo4W and the standalone Windows installer: ``apps\\PythonXY\\python.exe``;
the macOS bundle: ``Contents/MacOS/bin/python3``). Each candidate is asked for its version and prefix, and only one
equal to this process's is used.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .processes import clean_environment, hidden_window_flags

PROBE = "import sys; print('%d.%d' % sys.version_info[:2]); print(sys.base_prefix)"


class InterpreterNotFound(RuntimeError):
    pass


def candidates(base_prefix: str = sys.base_prefix, executable: str = sys.executable,
               version: tuple[int, int] = sys.version_info[:2], windows: bool = os.name == "nt") -> list[Path]:
    """Where QGIS's Python can be, most likely first; they need not exist."""
    base = Path(base_prefix)
    major, minor = version
    if windows:
        found = [base / "python.exe", base / f"python{major}.exe", base / f"python{major}{minor}.exe"]
    else:
        found = [base / "bin" / f"python{major}.{minor}", base / "bin" / f"python{major}", base / "bin" / "python"]
    found.append(Path(executable).parent / "bin" / f"python{major}")  # the macOS bundle: Contents/MacOS/bin
    return list(dict.fromkeys(found))


def find_interpreter() -> str:
    """The path of QGIS's own Python (same version and installation as this process)."""
    want = (f"{sys.version_info[0]}.{sys.version_info[1]}", os.path.realpath(sys.base_prefix))
    tried = []
    for path in candidates():
        if not path.is_file():
            continue
        tried.append(str(path))
        try:
            done = subprocess.run([str(path), "-c", PROBE], capture_output=True, text=True, timeout=60,
                                  env=clean_environment(), creationflags=hidden_window_flags())
        except (OSError, subprocess.SubprocessError):
            continue
        lines = done.stdout.split("\n")
        if done.returncode == 0 and len(lines) >= 2 and (lines[0], os.path.realpath(lines[1].strip())) == want:
            return str(path)
    raise InterpreterNotFound(
        f"QGIS's Python {want[0]} was not found in {sys.base_prefix} (tried: {', '.join(tried) or 'nothing there'}); "
        "the plugin needs it to install its dependencies. Install them by hand as the README explains.")
