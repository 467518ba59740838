"""Weights shipped with the package: the demo models (:data:`DEMO_CHECKPOINT`, :data:`DEMO_INSTANCES_CHECKPOINT`),
each with its model card."""
from pathlib import Path

#: A small RVSA ViT + UperNet trained on synthetic 0.5 m scenes (see README, "The demo model").
DEMO_CHECKPOINT = Path(__file__).resolve().parent / "mtp_demo_synthetic.pth"

#: The demo model with an instance decoder: one polygon per building, also where buildings touch (see README, "The
#: demo instance model").
DEMO_INSTANCES_CHECKPOINT = Path(__file__).resolve().parent / "mtp_demo_instances.pth"
