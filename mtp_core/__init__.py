"""MTP for QGIS core library: geo I/O, tiling, models, checkpoints, inference, vectorization, metrics.

No Qt, no QGIS. The package itself imports nothing heavy, so ``mtp_core.io`` works without torch; importing
``mtp_core.models`` registers the MTP models with timm (``timm.create_model("mtp_vit_b_rvsa")``).
"""
from __future__ import annotations

__version__ = "0.1.0"
