"""Device choice/description and the model card: what users see and what checkpoints carry."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest
import torch

from mtp_core.device import cgroup_cpu_quota, cpu_threads, describe_device, resolve_device
from mtp_core.models import ModelCard, create_model, default_card


def test_auto_device_is_cuda_when_available_else_cpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(" CPU ") == torch.device("cpu")


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "tpu"])
def test_unknown_device_names_the_valid_choices(spec: str) -> None:
    with pytest.raises(ValueError, match="auto, cpu, cuda, cuda:N or mps"):
        resolve_device(spec)


def test_cuda_without_gpu_says_why_and_what_to_do(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="--device cpu"):
        resolve_device("cuda")


def test_cpu_description_names_threads_and_why_no_gpu() -> None:
    text = describe_device(torch.device("cpu"))
    assert text.startswith(f"cpu, {torch.get_num_threads()} threads")
    if not torch.cuda.is_available():
        assert "CUDA" in text


def test_default_card_rebuilds_the_model() -> None:
    card = default_card("mtp_vit_tiny_rvsa_upernet", num_classes=3, img_size=128)
    assert card.num_classes == 3 and card.stride == 256 and card.bands == (1, 2, 3)
    model = create_model(card.architecture, **card.arch_args)
    assert model.num_classes == 3 and model.backbone.img_size == 128


def test_card_round_trips_through_plain_types() -> None:
    card = default_card("mtp_vit_b_rvsa_upernet").replace(gsd_m=0.3, threshold=0.4,
                                                        band_ranges=((0, 4000), (0, 3500), (10, 3000)))
    data = card.to_dict()
    assert all(not isinstance(v, tuple) for v in data.values())
    # plain containers only: what torch.load(weights_only=True) accepts
    restored = ModelCard.from_dict(pickle.loads(pickle.dumps(data)))
    assert restored == card


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(classes=("building",)), "at least 2 classes"),
        (dict(bands=(1, 2)), "differ in length"),
        (dict(bands=(0, 1, 2)), "1-based"),
        (dict(overlap=384), "overlap < tile"),
        (dict(std=(1.0, 0.0, 1.0)), "std must be positive"),
        (dict(threshold=1.5), "threshold"),
        (dict(band_ranges=((0, 255), (0, 255))), "band_ranges"),
        (dict(band_ranges=((9, 1), (0, 255), (0, 255))), "band_ranges"),
    ],
)
def test_invalid_cards_are_explained(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        default_card("mtp_vit_b_rvsa_upernet").replace(**changes)


def test_card_with_unknown_fields_is_refused() -> None:
    data = default_card("mtp_vit_b_rvsa_upernet").to_dict() | {"colour": "red"}
    with pytest.raises(ValueError, match="unknown model card fields"):
        ModelCard.from_dict(data)


def test_default_card_needs_a_segmentor() -> None:
    with pytest.raises(ValueError, match="is a backbone"):
        default_card("mtp_vit_b_rvsa")


def test_unknown_model_name_suggests_close_ones() -> None:
    with pytest.raises(ValueError, match="Did you mean mtp_vit_b_rvsa"):
        create_model("mtp_vit_b_rvs")


def test_cpu_threads_follow_omp_affinity_and_cgroup_quota(tmp_path, monkeypatch) -> None:
    """Threads a run uses: OMP_NUM_THREADS when set, else this process's CPUs (affinity), capped by the cgroup."""
    allowed = len(os.sched_getaffinity(0))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert cpu_threads(tmp_path / "no-cgroup") == allowed
    (tmp_path / "cpu.max").write_text("max 100000\n")  # cgroup v2, unlimited
    assert cgroup_cpu_quota(tmp_path) is None and cpu_threads(tmp_path) == allowed
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs
    assert cgroup_cpu_quota(tmp_path) == 1.5 and cpu_threads(tmp_path) == 1
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(v1) is None
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    assert cgroup_cpu_quota(v1) == 1.0
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads(tmp_path) == 3


def test_cpu_threads_follow_the_affinity_of_a_pinned_process() -> None:
    """As ``taskset -c 0`` or Slurm's --cpus-per-task pin a job: one allowed CPU, one thread, however many the node
    has (os.cpu_count() would say all)."""
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); os.environ.pop('OMP_NUM_THREADS', "
            "None); from mtp_core.device import cpu_threads; print(cpu_threads('/nonexistent'))")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "1"


def test_apple_silicon_is_used_when_there_is_no_cuda(monkeypatch) -> None:
    """On an M-series Mac (MPS available, no CUDA) auto picks the GPU; asked for without one, mps is explained."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps") == resolve_device("mps")
    assert describe_device(torch.device("mps")).startswith("mps (Apple silicon GPU")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="no Apple silicon GPU"):
        resolve_device("mps")
