"""MTP for QGIS core library: models, checkpoints, geo I/O, tiling, inference, vectorization, metrics.

No Qt, no QGIS. Importing the package registers the MTP models with timm (``timm.create_model("mtp_vit_b_rvsa")``).
"""
from __future__ import annotations

__version__ = "0.1.0"

from mtp_core import models  # noqa: E402,F401  (registers the named models with timm)
