"""The training loop as researchers use it: resume equality, preemption, distributed runs, the test command."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from osgeo import gdal

from mtp_core.checkpoint import load_model, safe_load
from tests.training.conftest import TINY_CONFIG
from training.config import apply_overrides, load_config, merge
from training.dist import DistInfo
from training.loop import DEFAULTS, OPTIONAL_KEYS, REQUEUE_EXIT_CODE, Trainer

REPO = Path(__file__).resolve().parents[2]


def tiny_cfg(data_root: Path, *options: str) -> dict:
    cfg = merge(DEFAULTS, load_config(TINY_CONFIG))
    roots = [f"{k}.dataset.data_root={data_root}" for k in ("train_dataloader", "val_dataloader", "test_dataloader")]
    return apply_overrides(cfg, [*roots, *options], OPTIONAL_KEYS)


def state(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_resumed_run_equals_uninterrupted_run_bit_for_bit(tiny_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    full = Trainer(tiny_cfg(tiny_dataset), tmp_path / "full", DistInfo())
    (tmp_path / "full").mkdir()
    assert full.run() == 0
    reference = state(full)

    work = tmp_path / "interrupted"
    work.mkdir()
    first = Trainer(tiny_cfg(tiny_dataset), work, DistInfo())
    step = first.train_step

    def step_then_signal(batches):
        parts = step(batches)
        if first.iteration == 4:  # the 5th step: a signal arrives during it
            first.stop.signum = signal.SIGUSR1
        return parts

    monkeypatch.setattr(first, "train_step", step_then_signal)
    assert first.run() == REQUEUE_EXIT_CODE
    assert (work / "last_checkpoint").read_text().endswith("iter_5.pth")

    # a fresh process would rebuild everything; workers now load the data, which must not change anything
    resumed = Trainer(tiny_cfg(tiny_dataset, "train_dataloader.num_workers=2"), work, DistInfo())
    assert resumed.run(resume=True) == 0
    assert resumed.iteration == 16
    for key, value in state(resumed).items():
        assert torch.equal(value, reference[key]), key

    log = [json.loads(line) for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    train = [r for r in log if r["mode"] == "train"]
    assert [r["iter"] for r in train] == [4, 8, 12, 16]
    assert {"loss", "lr", "decode.loss_ce", "decode.acc_seg", "iter_per_s"} <= set(train[0])
    assert [r["iter"] for r in log if r["mode"] == "val"] == [8, 16]
    assert (tmp_path / "full" / "curves.png").stat().st_size > 1000


def test_training_checkpoint_carries_the_model_card_and_loads_as_a_model(tiny_dataset: Path, tmp_path: Path) -> None:
    trainer = Trainer(tiny_cfg(tiny_dataset, "train_cfg.max_iters=2", "default_hooks.checkpoint.interval=2"),
                      tmp_path, DistInfo())
    assert trainer.run() == 0
    ckpt = safe_load(tmp_path / "iter_2.pth")
    assert ckpt["meta"]["iteration"] == 2 and "RVSA_MTP" in ckpt["meta"]["config"]
    model, card, _ = load_model(tmp_path / "iter_2.pth")
    assert card.tile == 64 and card.overlap == 16 and card.classes == ("background", "building")
    for key, value in model.state_dict().items():
        assert torch.equal(value, trainer.model.state_dict()[key])


# SGD for the equality check: AdamW's first steps are ~lr * sign(grad), which turns float-noise differences of
# near-zero gradients into lr-sized ones; with SGD, equal gradients give equal weights up to float noise.
SGD = "optim_wrapper.optimizer={'type': 'SGD', 'lr': 0.01, 'momentum': 0.9, 'weight_decay': 0.0}"


def _train_cmd(work: Path, data: Path, launcher: str, batch: int, optimizer: str = SGD) -> list[str]:
    return [
        "-m", "training.train", str(TINY_CONFIG), "--work-dir", str(work), "--launcher", launcher,
        "--cfg-options", f"train_dataloader.dataset.data_root={data}", f"train_dataloader.batch_size={batch}",
        "train_cfg.max_iters=4", "default_hooks.checkpoint.interval=4", "val_dataloader=None",
        "model.backbone.drop_path_rate=0.0", "model.decode_head.dropout_ratio=0.0", optimizer,
    ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    launch = ("SLURM_", "MASTER_", "RANK", "WORLD_SIZE", "LOCAL_RANK")  # this process's launch, not the children's
    env = {k: v for k, v in os.environ.items() if not k.startswith(launch)}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **extra}


def _weights(work: Path) -> dict[str, torch.Tensor]:
    return safe_load(work / "iter_4.pth")["state_dict"]


def test_two_process_runs_slurm_and_torchrun_equal_one_process(tiny_dataset: Path, tmp_path: Path) -> None:
    single = tmp_path / "single"
    subprocess.run([sys.executable, *_train_cmd(single, tiny_dataset, "none", 2)], env=_env(), check=True,
                   capture_output=True, timeout=300)

    slurm, port = tmp_path / "slurm", str(_free_port())
    procs = [
        subprocess.Popen([sys.executable, *_train_cmd(slurm, tiny_dataset, "slurm", 1)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT,
                         env=_env(SLURM_PROCID=str(r), SLURM_NTASKS="2", SLURM_LOCALID=str(r),
                                  SLURM_NODELIST="localhost", MASTER_PORT=port))
        for r in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs

    torchrun = tmp_path / "torchrun"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          f"--master_port={_free_port()}", *_train_cmd(torchrun, tiny_dataset, "pytorch", 1)],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr

    reference = _weights(single)
    for work in (slurm, torchrun):
        weights = _weights(work)
        assert weights.keys() == reference.keys()
        for key, value in reference.items():
            if value.is_floating_point():
                torch.testing.assert_close(weights[key], value, rtol=1e-4, atol=1e-5, msg=f"{work.name}: {key}")
            else:
                assert torch.equal(weights[key], value), key
    assert "2 process(es)" in outputs[0]


def test_a_real_sigusr1_checkpoints_and_exits_with_the_requeue_code(tiny_dataset: Path, tmp_path: Path) -> None:
    cmd = _train_cmd(tmp_path, tiny_dataset, "none", 2)
    cmd[cmd.index("train_cfg.max_iters=4")] = "train_cfg.max_iters=100000"
    proc = subprocess.Popen([sys.executable, *cmd], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    for line in proc.stdout:
        if "iter 4/100000" in line:
            proc.send_signal(signal.SIGUSR1)
            break
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == REQUEUE_EXIT_CODE, rest
    assert "stopped by SIGUSR1" in rest
    pointer = Path((tmp_path / "last_checkpoint").read_text())
    assert pointer.exists() and int(pointer.stem.split("_")[1]) >= 4
    assert (tmp_path / "curves.png").stat().st_size > 1000  # also at a stop
    text_log = next(tmp_path.glob("*.log")).read_text()  # the console log, in the work dir
    assert "iter 4/100000 | base_lr" in text_log and "stopped by SIGUSR1" in text_log
    assert not (tmp_path / "requeue_request").exists()  # not a Slurm job: nothing to requeue


def test_test_command_reports_metrics_and_writes_maps(tiny_dataset: Path, tmp_path: Path, capsys, caplog) -> None:
    from osgeo import gdal

    from training.test import main as test_main

    trainer = Trainer(tiny_cfg(tiny_dataset, "train_cfg.max_iters=2", "default_hooks.checkpoint.interval=2"),
                      tmp_path / "train", DistInfo())
    (tmp_path / "train").mkdir()
    trainer.run()
    capsys.readouterr()
    show, out = tmp_path / "show", tmp_path / "out"
    command = [str(TINY_CONFIG), str(tmp_path / "train" / "iter_2.pth"), "--cfg-options",
               f"test_dataloader.dataset.data_root={tiny_dataset}"]
    assert test_main([*command, "--work-dir", str(tmp_path / "test"), "--show-dir", str(show), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    results = json.loads(next((tmp_path / "test").glob("results_*.json")).read_text())
    assert {"aAcc", "mIoU", "mAcc", "mDice", "mFscore", "building_f1", "building_tp"} <= set(results)
    assert results["images"] == 2 and f"building F1 {results['building_f1']:.2f} (precision" in printed
    assert sorted(p.name for p in show.iterdir()) == ["val_0_overlay.png", "val_1_overlay.png"]
    assert sorted(p.name for p in out.iterdir()) == ["val_0.png", "val_1.png"]  # MMSeg 1.x's --out: raw class ids
    raw = gdal.Open(str(out / "val_0.png"))
    assert (raw.RasterCount, raw.RasterYSize, raw.RasterXSize) == (1, 96, 80) and raw.ReadAsArray().max() <= 1

    with caplog.at_level("INFO", logger="mtp.test"):
        assert test_main([*command, "--work-dir", str(tmp_path / "tta"), "--tta"]) == 0
    assert "TTA: 12 views (no tta_pipeline in the config: MMSeg's ratios" in caplog.text
    assert json.loads(next((tmp_path / "tta").glob("results_*.json")).read_text())["images"] == 2


def test_bad_command_lines_are_explained(tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    from training.train import main as train_main

    assert train_main([str(TINY_CONFIG), "--work-dir", str(tmp_path), "--cfg-options", "train_cfg.max_iter=3"]) == 2
    assert "did you mean 'train_cfg.max_iters'" in capsys.readouterr().err
    assert train_main([str(tmp_path / "nope.py")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert train_main([str(TINY_CONFIG), "--launcher", "slurm", "--work-dir", str(tmp_path)]) == 2
    assert "SLURM_PROCID is not set" in capsys.readouterr().err


def test_test_command_on_georeferenced_spacenet_chips_writes_mask_geotiffs(tiny_dataset: Path, tmp_path: Path) -> None:
    from mtp_core.io import describe_raster
    from tests.conftest import shared_file
    from training.test import main as test_main

    chips = shared_file("realdata", "spacenet1_AOI_0_TEST", "AOI_0_TEST")
    trainer = Trainer(tiny_cfg(tiny_dataset, "train_cfg.max_iters=1", "default_hooks.checkpoint.interval=1"),
                      tmp_path / "train", DistInfo())
    (tmp_path / "train").mkdir()
    trainer.run()
    dataset = ("test_dataloader.dataset={'type': 'SpaceNetV1RawDataset', 'data_root': '%s', 'pipeline': "
               "[{'type': 'LoadImageFromFile'}, {'type': 'LoadAnnotations'}, {'type': 'PackSegInputs'}]}" % chips)
    show = tmp_path / "show"
    assert test_main([str(TINY_CONFIG), str(tmp_path / "train" / "iter_1.pth"), "--work-dir", str(tmp_path / "t"),
                      "--show-dir", str(show), "--cfg-options", dataset]) == 0
    results = json.loads(next((tmp_path / "t").glob("results_*.json")).read_text())
    assert results["images"] == 10 and results["building_tp"] + results["building_fn"] > 0
    chip = chips / "3band" / "3band_013022223130_Public_img10.tif"
    mask, source = describe_raster(show / f"{chip.stem}_mask.tif"), describe_raster(chip)
    assert (mask.epsg, mask.geotransform, mask.width, mask.height) == (4326, source.geotransform, source.width,
                                                                       source.height)
    assert len(list(show.glob("*_overlay.png"))) == 10


def test_bf16_amp_trains_and_a_crashed_run_resumes_bit_for_bit(tiny_dataset: Path, tmp_path: Path,
                                                                 monkeypatch) -> None:
    amp = ("optim_wrapper.type=AmpOptimWrapper", "optim_wrapper.dtype=bfloat16", "val_dataloader=None",
           "train_cfg.max_iters=6", "default_hooks.checkpoint.interval=3", "default_hooks.logger.interval=1",
           "optim_wrapper.clip_grad={'max_norm': 1.0}")
    full = Trainer(tiny_cfg(tiny_dataset, *amp), tmp_path / "full", DistInfo())
    (tmp_path / "full").mkdir()
    assert full.optim_wrapper.cast_dtype == torch.bfloat16 and full.run() == 0
    reference = state(full)
    records = [json.loads(line) for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert all(0 < r["grad_norm"] and r["loss"] == r["loss"] for r in records)  # clipped norms, finite losses
    assert [r["lr"] / r["base_lr"] for r in records[1:2]] == pytest.approx([0.9**5])  # layer 0's scale (4 + 2 ids)

    work = tmp_path / "crashed"
    work.mkdir()
    first = Trainer(tiny_cfg(tiny_dataset, *amp), work, DistInfo())
    step = first.train_step

    def crash_in_step_5(batches):
        if first.iteration == 4:
            raise RuntimeError("node failure")
        return step(batches)

    monkeypatch.setattr(first, "train_step", crash_in_step_5)
    with pytest.raises(RuntimeError, match="node failure"):
        first.run()
    assert [json.loads(line)["iter"] for line in (work / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    resumed = Trainer(tiny_cfg(tiny_dataset, *amp), work, DistInfo())
    assert resumed.run(resume=True) == 0
    for key, value in state(resumed).items():
        assert torch.equal(value, reference[key]), key
    logged = [json.loads(line)["iter"] for line in (work / "log.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4, 5, 6]  # iteration 4, re-run after the checkpoint at 3, is logged once


def test_resume_true_with_load_from_resumes_as_mmengine(tiny_dataset: Path, tmp_path: Path) -> None:
    from training.train import main as train_main

    short = ("val_dataloader=None", "train_cfg.max_iters=3", "default_hooks.checkpoint.interval=2",
             "default_hooks.logger.interval=1")
    first = Trainer(tiny_cfg(tiny_dataset, *short), tmp_path / "first", DistInfo())
    (tmp_path / "first").mkdir()
    first.run()
    assert first.resume_source(None) is None
    first.cfg["resume"] = True  # resume=True without load_from: the work dir's last checkpoint
    assert first.resume_source(None) == (tmp_path / "first" / "iter_3.pth").resolve()
    other = tmp_path / "other"
    options = [f"train_dataloader.dataset.data_root={tiny_dataset}", *short, "resume=True",
               f"load_from={tmp_path / 'first' / 'iter_2.pth'}"]
    assert train_main([str(TINY_CONFIG), "--work-dir", str(other), "--cfg-options", *options]) == 0
    assert [json.loads(line)["iter"] for line in (other / "log.jsonl").read_text().splitlines()] == [3]
    expected = safe_load(tmp_path / "first" / "iter_3.pth")["state_dict"]
    for key, value in safe_load(other / "iter_3.pth")["state_dict"].items():
        assert torch.equal(value, expected[key]), key


def test_wrong_val_data_and_batch_one_with_batch_norm_fail_at_start(tiny_dataset: Path, tmp_path: Path,
                                                                      capsys) -> None:
    from training.train import main as train_main

    base = [str(TINY_CONFIG), "--work-dir", str(tmp_path), "--cfg-options",
            f"train_dataloader.dataset.data_root={tiny_dataset}"]
    assert train_main([*base, f"val_dataloader.dataset.data_root={tmp_path / 'nowhere'}"]) == 2
    assert f"data_root not found: {tmp_path / 'nowhere'}" in capsys.readouterr().err
    assert train_main([*base, f"val_dataloader.dataset.data_root={tiny_dataset}",
                       "train_dataloader.batch_size=1"]) == 2
    assert "batch_size=1 with BatchNorm" in capsys.readouterr().err
    missing = tmp_path / "stage1.pth"  # a later stage run before the stage that makes its starting weights
    assert train_main([*base, f"val_dataloader.dataset.data_root={tiny_dataset}", f"load_from={missing}"]) == 2
    assert f"load_from = '{missing}': no such file" in capsys.readouterr().err
    assert not list(tmp_path.glob("iter_*.pth"))


def test_resuming_with_another_number_of_processes_is_deterministic(tiny_dataset: Path, tmp_path: Path,
                                                                     caplog) -> None:
    """A 2-process checkpoint (made here by re-labelling a 1-process one) continued by 1 process, twice."""
    short = ("val_dataloader=None", "train_cfg.max_iters=4", "default_hooks.checkpoint.interval=2")
    first = Trainer(tiny_cfg(tiny_dataset, *short), tmp_path, DistInfo())
    first.run()
    ckpt = safe_load(tmp_path / "iter_2.pth")
    ckpt["rng"]["ranks"] *= 2
    ckpt["sampler"]["world_size"] = 2
    ckpt["sampler"]["position"] *= 2
    from mtp_core.checkpoint import atomic_torch_save

    atomic_torch_save(ckpt, tmp_path / "two.pth")
    results = []
    for run in ("a", "b"):
        trainer = Trainer(tiny_cfg(tiny_dataset, *short), tmp_path / run, DistInfo())
        (tmp_path / run).mkdir()
        with caplog.at_level("WARNING", logger="mtp.train"):
            assert trainer.run(resume=str(tmp_path / "two.pth")) == 0
        assert trainer.sampler.first_position == 8  # 2 ranks x 2 iterations x batch 2: no sample seen twice
        results.append(state(trainer))
    assert "written by 2 process(es), this run has 1" in caplog.text and "effective batch 4 -> 2" in caplog.text
    for key, value in results[0].items():
        assert torch.equal(value, results[1][key]), key


def test_16_bit_training_data_gives_the_card_its_band_ranges(tiny_dataset: Path, tmp_path: Path) -> None:
    """The trained model's card carries the training set's scaling, and validation uses it: inference then scales
    every raster as the model's training chips were (mtp_core.io.scaling)."""
    root = tmp_path / "data16"
    for split in ("train", "val"):
        shutil.copytree(tiny_dataset / split / "labels", root / split / "labels")
        (root / split / "images").mkdir(parents=True)
        for png in sorted((tiny_dataset / split / "images").glob("*.png")):
            rgb = gdal.Open(str(png)).ReadAsArray().astype(np.uint16) * (40 if split == "train" else 7)
            mem = gdal.GetDriverByName("MEM").Create("", rgb.shape[2], rgb.shape[1], 3, gdal.GDT_UInt16)
            for b in range(3):
                mem.GetRasterBand(b + 1).WriteArray(rgb[b])
            gdal.GetDriverByName("PNG").CreateCopy(str(root / split / "images" / png.name), mem)  # 16-bit PNG
    trainer = Trainer(tiny_cfg(root), tmp_path / "work", DistInfo())
    ranges = trainer.train_set.band_ranges
    assert ranges is not None and ranges[0][1] > 255  # fitted on the 16-bit training images
    assert trainer.card.band_ranges == ranges and trainer.val_set.band_ranges == ranges
