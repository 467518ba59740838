"""The committed demo change detector: small, carries its card, and finds the changed buildings of fresh pairs."""
from __future__ import annotations

import numpy as np

from mtp_core.checkpoint import load_model, safe_load
from mtp_core.inference import Predictor
from mtp_core.weights import DEMO_CD_CHECKPOINT
from mtp_tools.synthetic.pair import render_pair

UNSEEN_SEEDS = (515100, 515101)  # training used 2000..2063, validation 9100..9105


def test_demo_cd_checkpoint_is_small_and_carries_its_card() -> None:
    assert DEMO_CD_CHECKPOINT.stat().st_size <= 10 * 2**20
    card = safe_load(DEMO_CD_CHECKPOINT)["meta"]["model_card"]
    assert card["gsd_m"] == 0.5 and card["classes"] == ["unchanged", "changed"] and card["tile"] == 256
    model, loaded_card, report = load_model(DEMO_CD_CHECKPOINT)
    assert not report.missing and loaded_card.description.startswith("demo change detector")
    assert model.num_inputs == 2


def test_demo_cd_model_finds_the_changed_buildings_of_fresh_pairs() -> None:
    """Pixel F1 of "changed" on two unseen pairs (sun, season, light, cars and misregistration all differ)."""
    predictor = Predictor.from_checkpoint(DEMO_CD_CHECKPOINT, device="cpu", batch_size=8)
    tp = fp = fn = 0
    for seed in UNSEEN_SEEDS:
        pair = render_pair(384, 384, seed)
        image = np.concatenate([pair.before, pair.after], axis=-1).astype(np.float32)
        classes, _ = predictor.predict_array(image)
        pred, truth = classes == 1, pair.change_mask == 1
        tp += int((pred & truth).sum())
        fp += int((pred & ~truth).sum())
        fn += int((~pred & truth).sum())
    assert 2 * tp / (2 * tp + fp + fn) >= 0.8
