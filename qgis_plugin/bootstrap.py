"""Preparing QGIS's Python for the engine, before anything imports it (``classFactory`` calls :func:`prepare`).

* **The vendored engine.** The built plugin (``scripts/build_plugin.sh``) ships ``mtp_core`` in ``vendor/`` beside
  the plugin's modules, because plugins.qgis.org installs one folder and QGIS's Python has no ``mtp_core`` of its own.
  Only ``vendor/`` goes on ``sys.path``, never the plugin folder: that folder holds a ``processing`` package, which
  would hide QGIS's own ``processing`` from every plugin. It goes first, so the engine the plugin was built with wins
  over any other installed copy. A source checkout has no ``vendor/``; ``mtp_core`` then comes from the project's
  install.
* **shapely with its own GEOS.** The QGIS binaries (``qgis``, ``qgis_process``) link QGIS's GEOS (3.11 on Debian 12)
  into the process's global symbol scope. A shapely wheel's extensions then bind every GEOS function that QGIS's GEOS
  also has to QGIS's copy, and only the newer ones (coverage simplification) to the GEOS the wheel ships. Two GEOS
  builds get mixed in one call chain, which gives wrong results or crashes: ``mtp:extractbuildings`` failed in
  ``qgis_process`` with "WKB output dimension must be 2 or 3". Loading shapely with ``RTLD_DEEPBIND`` makes it bind
  to its own GEOS. Only Linux shares symbols this way; elsewhere the flag does not exist and nothing is needed.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

VENDOR_DIR = Path(__file__).resolve().parent / "vendor"


def use_vendored_core() -> None:
    """Put ``vendor/`` first on ``sys.path`` when the plugin carries its own ``mtp_core``."""
    if (VENDOR_DIR / "mtp_core").is_dir() and str(VENDOR_DIR) not in sys.path:
        sys.path.insert(0, str(VENDOR_DIR))


def import_shapely_with_own_geos() -> None:
    """Import shapely bound to the GEOS it ships (see the module docstring); a no-op when it is already imported
    (then it is too late), not installed (the dependency check says what to install) or not on Linux."""
    deepbind = getattr(os, "RTLD_DEEPBIND", 0)
    if not deepbind or "shapely" in sys.modules or importlib.util.find_spec("shapely") is None:
        return
    flags = sys.getdlopenflags()
    sys.setdlopenflags(flags | deepbind)
    try:
        import shapely  # noqa: F401
    finally:
        sys.setdlopenflags(flags)



def prepare() -> None:
    use_vendored_core()
    import_shapely_with_own_geos()
