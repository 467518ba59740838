"""The committed demo instance model: small, carries its card (0.25 m: the main job resamples 0.5 m scenes 2x), and
splits the rows of a fresh touching scene into houses, where the semantic decoder of the same file merges them."""
from __future__ import annotations

from pathlib import Path

from mtp_core.checkpoint import load_model, safe_load
from mtp_core.inference import InstancePredictor, Predictor
from mtp_core.models.instance_segmentor import InstanceSegmentor
from mtp_core.weights import DEMO_INSTANCES_CHECKPOINT
from mtp_tools.touching_compare import compare

UNSEEN_SEED = 515201  # training used 2000..2099 and 3000..3039, validation 9100..9103, bench/instances.py 424200..


def test_demo_instances_checkpoint_is_small_and_carries_its_card() -> None:
    assert DEMO_INSTANCES_CHECKPOINT.stat().st_size <= 10 * 2**20
    card = safe_load(DEMO_INSTANCES_CHECKPOINT)["meta"]["model_card"]
    assert card["gsd_m"] == 0.25 and card["classes"] == ["background", "building"] and card["tile"] == 256
    model, loaded_card, report = load_model(DEMO_INSTANCES_CHECKPOINT)
    assert not report.missing and loaded_card.description.startswith("demo instance model")
    assert isinstance(model, InstanceSegmentor)


def test_demo_instances_split_touching_rows_that_the_semantic_path_merges(tmp_path: Path) -> None:
    """Polygon F1 (SpaceNet rules) of both paths of the main job on one unseen 384 px scene, half of it in rows."""
    instances = InstancePredictor.from_checkpoint(DEMO_INSTANCES_CHECKPOINT, device="cpu")
    semantic = Predictor.from_checkpoint(DEMO_INSTANCES_CHECKPOINT, device="cpu", instances=False)
    [scene] = compare(semantic, instances, [UNSEEN_SEED], size=384, touching=0.5, out=tmp_path)
    assert scene.touching >= 0.4
    assert scene.instances.f1 >= 0.9  # 0.946 (semantic-only 0.622)
    assert scene.instances.f1 >= scene.semantic.f1 + 0.25
