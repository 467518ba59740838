"""The MTP Processing provider: the engine's jobs in the toolbox, the batch dialog, the modeler and ``qgis_process``.

Importing this package also makes a vendored engine importable. The built plugin (``scripts/build_plugin.sh``) ships
``mtp_core`` in ``vendor/`` beside the plugin's modules, because plugins.qgis.org installs one folder and QGIS's
Python has no ``mtp_core`` of its own. Only ``vendor/`` goes on ``sys.path``, never the plugin folder itself: that
folder holds a ``processing`` package, which would hide QGIS's own ``processing`` from every other plugin. It goes
first, so the engine the plugin was built with wins over any other installed copy. In a source checkout there is no
``vendor/`` and ``mtp_core`` comes from the project's install.
"""
from __future__ import annotations

import sys
from pathlib import Path

VENDOR_DIR = Path(__file__).resolve().parent.parent / "vendor"


def use_vendored_core() -> None:
    """Put ``vendor/`` first on ``sys.path`` when the plugin carries its own ``mtp_core``."""
    if (VENDOR_DIR / "mtp_core").is_dir() and str(VENDOR_DIR) not in sys.path:
        sys.path.insert(0, str(VENDOR_DIR))


use_vendored_core()

from .provider import MTPProvider  # noqa: E402  (after the path set-up, for the algorithms' lazy engine imports)

__all__ = ["MTPProvider", "VENDOR_DIR", "use_vendored_core"]
