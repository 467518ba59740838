"""Preparing QGIS's Python for the engine, before anything imports it (``classFactory`` calls :func:`prepare`).

* **No triton inside QGIS.** ``import timm`` makes torch look for triton, whose ``libtriton.so`` runs LLVM's static
  initialisers when it loads. The QGIS desktop has already loaded Mesa's ``libLLVM-15`` for OpenGL (Intel, AMD and
  virtual machines alike: one driver file on Debian 12); the two LLVMs collide and QGIS dies with SIGSEGV the moment
  the dock opens. A ``None`` in ``sys.modules`` makes every ``import triton`` fail cleanly: torch then reports no
  triton, and only ``torch.compile`` on a GPU (which the plugin does not use) is lost. It is done in every QGIS
  process (desktop, ``qgis_process``, the Python console), before the plugin imports torch or timm; when something
  loaded triton earlier, it is left alone (too late, and it did not crash).
* **The plugin's dependency folder.** "Install dependencies" (:mod:`qgis_plugin.installer`) puts torch, timm and
  shapely into a virtual environment under the QGIS profile. Its site-packages goes first on ``sys.path``, so its
  shapely 2 wins over an older system one; numpy and GDAL are never installed there, so QGIS's own stay in use.
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

import importlib
import os
import site
import sys
from pathlib import Path

from .dependencies import REQUIREMENTS, find, installed_site_packages

VENDOR_DIR = Path(__file__).resolve().parent / "vendor"
SHAPELY = next(r for r in REQUIREMENTS if r.name == "shapely")


def block_triton() -> bool:
    """Make ``import triton`` fail in this process unless triton is already loaded; True when it is blocked."""
    if "triton" not in sys.modules:
        sys.modules["triton"] = None  # type: ignore[assignment]
    return sys.modules["triton"] is None


def triton_blocked() -> bool:
    return "triton" in sys.modules and sys.modules["triton"] is None


def use_installed_dependencies(site_packages: Path | None = None) -> Path | None:
    """Put the plugin's dependency folder first on ``sys.path`` (with its ``.pth`` files); the folder, or None."""
    folder = site_packages or installed_site_packages()
    if folder is None:
        return None
    entry = str(folder)
    if entry not in sys.path:
        site.addsitedir(entry)  # appends it and runs its .pth files
        sys.path.remove(entry)
        sys.path.insert(0, entry)
        importlib.invalidate_caches()
    return folder


def use_vendored_core() -> None:
    """Put ``vendor/`` first on ``sys.path`` when the plugin carries its own ``mtp_core``."""
    if (VENDOR_DIR / "mtp_core").is_dir() and str(VENDOR_DIR) not in sys.path:
        sys.path.insert(0, str(VENDOR_DIR))


def import_shapely_with_own_geos() -> None:
    """Import shapely bound to the GEOS it ships (see the module docstring); a no-op when it is already imported
    (then it is too late), missing or too old (the dependency check says so, and an installation can then bring a
    newer one into this session) or not on Linux."""
    deepbind = getattr(os, "RTLD_DEEPBIND", 0)
    if not deepbind or "shapely" in sys.modules or not find("shapely", SHAPELY.minimum).ok:
        return
    flags = sys.getdlopenflags()
    sys.setdlopenflags(flags | deepbind)
    try:
        import shapely  # noqa: F401
    finally:
        sys.setdlopenflags(flags)


def prepare() -> None:
    block_triton()
    use_installed_dependencies()
    use_vendored_core()
    import_shapely_with_own_geos()


def use_new_dependencies() -> None:
    """After an installation: the new packages in this session, shapely bound to its own GEOS as at start."""
    use_installed_dependencies()
    import_shapely_with_own_geos()
