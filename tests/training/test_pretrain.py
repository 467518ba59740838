"""Multi-task pretraining (``python -m training.pretrain``): MTP's options, its checkpoints, the loss terms, resuming
bit for bit in process and as a 2-task Slurm job preempted by a SIGTERM to its process group."""
from __future__ import annotations

import json
import signal
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mtp_core.checkpoint import load_weights, safe_load
from mtp_core.models import create_model
from mtp_tools.samrs import spacenet_images, synthetic_images, write_samrs
from tests.conftest import SHARED
from tests.training.test_preemption import _assert_same_weights, _lines, _run_until, slurm  # noqa: F401 (fixture)
from tests.training.test_train_loop import REPO
from training.config import ConfigError
from training.dist import DistInfo
from training.preemption import REQUEUE_EXIT_CODE
from training.pretrain import Pretrainer, batch_sizes, main, resolve_config
from training.pretrain_checkpoint import MTP_KEYS
from training.slurm import main as slurm_main

CONFIG = REPO / "training" / "configs" / "tiny" / "pretrain-tiny-64-ss-is.py"
LOSS_TERMS = {f"ss/{d}/loss_ce" for d in ("synth", "real")} | {
    f"is/{d}/{k}" for d in ("synth", "real")
    for k in ("loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask")}


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pretrain_sets")
    write_samrs(root / "synth", synthetic_images(6, 96, seed=0))
    write_samrs(root / "real", spacenet_images(SHARED / "realdata"))
    write_samrs(root / "synth_val", synthetic_images(2, 96, seed=50))
    return {"synth": root / "synth", "real": root / "real", "synth_val": root / "synth_val"}


def options(sets: dict[str, Path], *extra: str) -> list[str]:
    return [f"data.synth.data_root={sets['synth']}", f"data.real.data_root={sets['real']}", *extra]


def pretrainer(sets: dict[str, Path], work: Path, *extra: str) -> Pretrainer:
    work.mkdir(parents=True, exist_ok=True)
    return Pretrainer(resolve_config(str(CONFIG), options(sets, *extra)), work, DistInfo())


def test_options_are_checked_in_one_line(sets: dict[str, Path], tmp_path: Path, capsys) -> None:
    for extra, message in ((["batch_mode=even"], "batch_mode 'even'"), (["image_size=100"], "multiple of 32"),
                           (["datasets=['synth','fast']"], "no data.fast"), (["backbone=vit_h"], "backbone 'vit_h'")):
        with pytest.raises(ConfigError, match=message):
            resolve_config(str(CONFIG), options(sets, *extra))
    assert main([str(CONFIG), "--work-dir", str(tmp_path), "--cfg-options", "end_iter=0"]) == 2
    assert capsys.readouterr().err.startswith("mtp-pretrain: error: ") and not (tmp_path / "log.jsonl").exists()
    assert batch_sizes(3, [17480, 11725, 64147], "avg") == [1, 1, 1]
    assert batch_sizes(96, [17480, 11725, 64147], "ratio") == [17, 12, 65]  # MTP's int(96 * n / total)
    with pytest.raises(ValueError, match="gives a dataset no image"):
        batch_sizes(2, [10, 10, 10], "avg")


def test_checkpoints_in_mtps_layout_and_every_loss_term_logged(sets: dict[str, Path], tmp_path: Path) -> None:
    work = tmp_path / "run"
    runner = pretrainer(sets, work)
    groups = runner.optim_wrapper.param_groups  # the original's constructor on encoder.* names: no layer decay
    assert [(g["group_name"], g["lr_scale"], g["weight_decay"]) for g in groups] == [
        ("layer_5_no_decay", 1.0, 0.0), ("layer_5_decay", 1.0, 0.05)]
    assert runner.run() == 0
    names = sorted(p.name for p in work.glob("*.pth"))
    stems = ["Iter_3_vit_tiny_rvsa_ss_is_pretrn_model", "Iter_6_vit_tiny_rvsa_ss_is_pretrn_model",
             "last_vit_tiny_rvsa_ss_is_pretrn_model"]
    assert names == sorted([f"{s}.pth" for s in stems] + [f"{s}_encoder.pth" for s in stems])
    full, encoder = safe_load(work / f"{stems[0]}.pth"), safe_load(work / f"{stems[0]}_encoder.pth")
    assert list(full) == [*MTP_KEYS, "meta"] and list(encoder) == list(MTP_KEYS)
    assert full["iteration"] == 3 and full["epoch"] == 0 and list(full["state_dict"]) == list(
        runner.model.state_dict())
    assert list(encoder["state_dict"]) == list(runner.model.encoder.state_dict())  # no prefix, with the norm
    assert isinstance(full["loss_pretrain"], np.ndarray) and full["loss_pretrain"].dtype == np.float64
    records = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records] == list(range(1, 7)) and LOSS_TERMS <= set(records[0])
    np.testing.assert_allclose(safe_load(work / "last_vit_tiny_rvsa_ss_is_pretrn_model.pth")["loss_pretrain"],
                               [r["loss"] for r in records], rtol=1e-6)
    for r in records:  # the total is the unweighted sum of every task's and dataset's losses
        assert r["loss"] == pytest.approx(sum(r[k] for k in LOSS_TERMS), rel=1e-5)
    assert (work / "curves.png").is_file()

    # the schedule is torch's CosineAnnealingLR state: the original's scheduler (and its optimizer's rates, which it
    # loads with the optimizer state) continue from it to our next rate
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in groups]
    optimizer = torch.optim.AdamW([{"params": [p]} for p in params], lr=2e-4)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 6, eta_min=0)
    cosine.load_state_dict(full["scheduler"])
    for group, saved in zip(optimizer.param_groups, full["optimizer"]["param_groups"]):
        group["lr"] = saved["lr"]
    assert full["scheduler"]["last_epoch"] == 3 and full["scheduler"]["_last_lr"] == pytest.approx([1e-4, 1e-4])
    cosine.step()
    assert cosine.get_last_lr() == pytest.approx([2e-4 * (1 + np.cos(np.pi * 4 / 6)) / 2] * 2, rel=1e-9)

    # the framework file loads into a fresh model by name, strictly
    model = create_model("mtp_vit_tiny_rvsa_multitask", datasets=[("synth", 1), ("real", 1)], img_size=64,
                         decoder_args={"ss": {"channels": 16}, "is": {"channels": 16, "fc_out_channels": 64}})
    report = load_weights(model, work / f"{stems[-1]}.pth")
    assert report.layout == "mtp_pretrain" and not report.missing and not report.unused


def test_numpy_1_and_2_pickle_names_both_load(sets: dict[str, Path], tmp_path: Path) -> None:
    """The loss array pickled under the other numpy major's module names (``numpy.core`` <-> ``numpy._core``, as in
    files written by MTP under numpy 1.x) loads as the file written here does."""
    runner = pretrainer(sets, tmp_path / "w", "end_iter=1", "interval=1")
    assert runner.run() == 0
    source = tmp_path / "w" / "Iter_1_vit_tiny_rvsa_ss_is_pretrn_model_encoder.pth"
    renamed = tmp_path / "numpy2.pth"
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(renamed, "w", zipfile.ZIP_STORED) as new:
        for item in old.infolist():
            data = old.read(item)
            if item.filename.endswith("data.pkl"):
                old_name, new_name = b"numpy.core.multiarray", b"numpy._core.multiarray"
                if new_name in data:
                    old_name, new_name = new_name, old_name
                assert old_name in data
                data = data.replace(old_name, new_name)
            new.writestr(item, data)
    np.testing.assert_array_equal(safe_load(renamed)["loss_pretrain"], safe_load(source)["loss_pretrain"])


def test_resumed_run_equals_uninterrupted_run_bit_for_bit(sets: dict[str, Path], tmp_path: Path,
                                                          monkeypatch) -> None:
    full = pretrainer(sets, tmp_path / "full")
    assert full.run() == 0

    work = tmp_path / "stopped"
    first = pretrainer(sets, work)
    step = first.train_step

    def step_then_signal(batches):
        parts = step(batches)
        if first.iteration == 1:  # a signal arrives during the 2nd step
            first.stop.signum = signal.SIGTERM
        return parts

    monkeypatch.setattr(first, "train_step", step_then_signal)
    assert first.run() == REQUEUE_EXIT_CODE
    assert (work / "last_checkpoint").read_text().endswith("Iter_2_vit_tiny_rvsa_ss_is_pretrn_model.pth")
    resumed = pretrainer(sets, work, "workers=2")  # DataLoader workers now: the same samples
    assert resumed.run(resume=True) == 0
    last = "last_vit_tiny_rvsa_ss_is_pretrn_model.pth"
    _assert_same_weights(work / last, tmp_path / "full" / last)
    assert safe_load(work / last)["loss_pretrain"].tolist() == safe_load(tmp_path / "full" / last)[
        "loss_pretrain"].tolist()
    assert len(_lines(work / "log.jsonl")) == 6

    # a checkpoint of the original code (no random states) resumes its weights, optimizer and schedule
    original = {k: v for k, v in safe_load(work / "Iter_3_vit_tiny_rvsa_ss_is_pretrn_model.pth").items()
                if k != "meta"}
    torch.save(original, tmp_path / "original.pth")
    again = pretrainer(sets, tmp_path / "again", "end_iter=4")
    again.resume(tmp_path / "original.pth")
    assert again.iteration == 3 and again.scheduler.last_step == 3 and len(again.loss_pretrain) == 3
    with pytest.raises(ValueError, match="holds only an encoder"):
        again.resume(work / "Iter_3_vit_tiny_rvsa_ss_is_pretrn_model_encoder.pth")


def test_amp_checkpointing_and_validation_after_the_last_iteration(sets: dict[str, Path], tmp_path: Path) -> None:
    runner = pretrainer(sets, tmp_path / "w", "end_iter=2", "interval=2", "mixed_precision=True", "use_ckpt=True",
                        f"val_data={{'synth': {{'data_root': '{sets['synth_val']}', 'ann_file': 'instances.json'}}, "
                        f"'real': {{'data_root': '{sets['synth_val']}', 'ann_file': 'instances.json'}}}}")
    assert "dtype=bfloat16" in repr(runner.optim_wrapper) and runner.model.encoder.use_checkpoint
    assert runner.run() == 0
    val = [json.loads(line) for line in (tmp_path / "w" / "log.jsonl").read_text().splitlines()][-1]
    assert val["mode"] == "val" and val["iter"] == 2
    assert {"synth/mIoU", "synth/bbox_mAP", "synth/segm_mAP", "synth/mask_f1", "real/mIoU", "average"} <= set(val)


def test_two_slurm_tasks_preempted_by_sigterm_resume_bit_for_bit(sets: dict[str, Path], tmp_path: Path,
                                                                 slurm: dict[str, str]) -> None:  # noqa: F811
    """mtp-slurm --pretrain: 2 tasks (DDP, SyncBN, gloo); SIGTERM to the batch script's process group; the requeued
    job finishes; an uninterrupted job equals it bit for bit."""
    extra = options(sets, "batch_size=2", "end_iter=5", "interval=5")  # 1 image per dataset and task
    scripts = {}
    for name in ("preempted", "uninterrupted"):
        assert slurm_main([str(CONFIG), "--pretrain", "--nodes", "1", "--gpus-per-node", "2", "--partition", "cpu",
                           "--time", "1:00:00", "--work-dir", str(tmp_path / name), "--dry-run", "--",
                           "--cfg-options", *extra]) == 0
        scripts[name] = tmp_path / name / "slurm_train.sh"
        assert "-m training.pretrain" in scripts[name].read_text()
    work = tmp_path / "preempted"
    rc, out = _run_until(["bash", str(scripts["preempted"])], slurm, "iter 2/5", signal.SIGTERM)
    assert rc == 0 and f"exit {REQUEUE_EXIT_CODE}" in _lines(tmp_path / "srun.log")[0], out
    assert "stopped by SIGTERM" in out and _lines(tmp_path / "scontrol.log") == [f"requeue {slurm['SLURM_JOB_ID']}"]
    stopped = Path((work / "last_checkpoint").read_text())
    assert stopped.name.startswith("Iter_") and 2 <= safe_load(stopped)["iteration"] < 5
    assert len(safe_load(stopped)["meta"]["rng"]["ranks"]) == 2
    requeued = subprocess.run(["bash", str(scripts["preempted"])], env={**slurm, "SLURM_RESTART_COUNT": "1"},
                              cwd=REPO, capture_output=True, text=True, timeout=300)
    assert requeued.returncode == 0 and f"resumed from {stopped}" in requeued.stdout, requeued.stdout + requeued.stderr
    full = subprocess.run(["bash", str(scripts["uninterrupted"])], env=slurm, cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert full.returncode == 0, full.stdout + full.stderr
    last = "last_vit_tiny_rvsa_ss_is_pretrn_model.pth"
    _assert_same_weights(work / last, tmp_path / "uninterrupted" / last)
    assert len(_lines(work / "log.jsonl")) == 5
