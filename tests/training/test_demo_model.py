"""The committed demo model: small, carries its card, and segments freshly generated scenes (IoU >= 0.8)."""
from __future__ import annotations

import numpy as np

from mtp_core.checkpoint import load_model, safe_load
from mtp_core.inference import Predictor
from mtp_core.weights import DEMO_CHECKPOINT
from mtp_tools.synthetic import render_scene

UNSEEN_SEEDS = (424242, 515151, 606060)  # training used 1000..1047, validation 9000..9005


def test_demo_checkpoint_is_small_and_carries_its_card() -> None:
    assert DEMO_CHECKPOINT.stat().st_size <= 15 * 2**20
    meta = safe_load(DEMO_CHECKPOINT)["meta"]
    card = meta["model_card"]
    assert card["gsd_m"] == 0.5 and card["classes"] == ["background", "building"] and card["tile"] == 256
    model, loaded_card, report = load_model(DEMO_CHECKPOINT)
    assert not report.missing and loaded_card.description.startswith("demo model")


def test_demo_model_reaches_building_iou_08_on_fresh_scenes() -> None:
    predictor = Predictor.from_checkpoint(DEMO_CHECKPOINT, device="cpu", batch_size=8)
    intersection = union = 0
    for seed in UNSEEN_SEEDS:
        scene = render_scene(512, 512, seed)
        classes, _ = predictor.predict_array(scene.image.astype(np.float32))
        pred, truth = classes == 1, scene.mask == 1
        intersection += int((pred & truth).sum())
        union += int((pred | truth).sum())
    assert intersection / union >= 0.8
