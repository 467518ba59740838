"""Weights shipped with the package: the demo models (:data:`DEMO_CHECKPOINT`, :data:`DEMO_INSTANCES_CHECKPOINT`)
and the demo change detector (:data:`DEMO_CD_CHECKPOINT`), each with its model card."""
from pathlib import Path

_HERE = Path(__file__).resolve().parent
#: A small RVSA ViT + UperNet trained on synthetic 0.5 m scenes (see README, "The demo model").
DEMO_CHECKPOINT = _HERE / "mtp_demo_synthetic.pth"
#: The demo model with an instance decoder: one polygon per building, also where buildings touch (see README, "The
#: demo instance model").
DEMO_INSTANCES_CHECKPOINT = _HERE / "mtp_demo_instances.pth"
#: A small RVSA ViT + UNet change detector trained on synthetic 0.5 m before/after pairs (README, "The demo change
#: detector").
DEMO_CD_CHECKPOINT = _HERE / "mtp_demo_synthetic_cd.pth"
