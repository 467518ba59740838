"""Weights shipped with the package: the demo model (:data:`DEMO_CHECKPOINT`, with its model card)."""
from pathlib import Path

#: A small RVSA ViT + UperNet trained on synthetic 0.5 m scenes (see README, "The demo model").
DEMO_CHECKPOINT = Path(__file__).resolve().parent / "mtp_demo_synthetic.pth"
