"""Slurm/torchrun environment parsing and the sbatch script of mtp-slurm."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from training.dist import LaunchError, _slurm_env, first_host
from training.loop import REQUEUE_EXIT_CODE
from training.slurm import main as slurm_main

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"
CONFIG = CONFIGS / "mtp" / "spacenetv1" / "rvsa-b-upernet-384-mae-mtp-spacenetv1.py"


@pytest.mark.parametrize(
    ("nodelist", "host"),
    [
        ("node01", "node01"),
        ("gpu[03-05,9],cpu1", "gpu03"),
        ("gpu01,gpu02", "gpu01"),
        ("cn[7]", "cn7"),
        ("a-[001-002]-ib", "a-001-ib"),
        ("r1n[01-02],r2n[03-04]", "r1n01"),
        ("[5-6]x", "5x"),
    ],
)
def test_first_host_of_a_slurm_nodelist(nodelist: str, host: str) -> None:
    assert first_host(nodelist) == host


def test_slurm_variables_become_torch_distributed_ones(monkeypatch) -> None:
    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_STEP_NODELIST",
                "SLURM_JOB_NODELIST"):
        monkeypatch.setenv(key, "")  # so monkeypatch restores what _slurm_env writes
        monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_NODELIST", "gpu[12-15]")
    assert _slurm_env(None) == (5, 8, 1)
    import os

    assert os.environ["MASTER_ADDR"] == "gpu12" and os.environ["MASTER_PORT"] == "29500"
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("5", "8", "1")


def test_missing_slurm_variables_are_explained(monkeypatch) -> None:
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    with pytest.raises(LaunchError, match="SLURM_PROCID is not set"):
        _slurm_env(None)


def test_sbatch_script_runs_one_task_per_gpu_and_requeues(tmp_path: Path, capsys) -> None:
    work = tmp_path / "work"
    rc = slurm_main([str(CONFIG), "--nodes", "2", "--gpus-per-node", "4", "--partition", "gpu", "--time", "24:00:00",
                     "--work-dir", str(work), "--dry-run", "--", "--amp"])
    assert rc == 0
    script = (work / "slurm_train.sh").read_text()
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gres=gpu:4", "#SBATCH --requeue",
                 "#SBATCH --signal=USR1@180", "#SBATCH --time=24:00:00", f'if [ "$rc" -eq {REQUEUE_EXIT_CODE} ]',
                 'scontrol requeue "$SLURM_JOB_ID"'):
        assert line in script
    assert "--launcher slurm --resume --amp" in script and str(CONFIG) in script
    assert subprocess.run(["bash", "-n", str(work / "slurm_train.sh")]).returncode == 0  # valid bash
    assert "slurm_train.sh" in capsys.readouterr().out


def test_bad_slurm_arguments_are_explained(tmp_path: Path, capsys) -> None:
    rc = slurm_main(["missing.py", "--partition", "gpu", "--time", "forever", "--work-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "config file not found" in err and "not a Slurm time" in err


def test_predict_array_script_shards_rasters_across_tasks(tmp_path: Path, capsys) -> None:
    rasters = tmp_path / "rasters.txt"
    rasters.write_text("a.tif\nb.tif\n")
    out = tmp_path / "out"
    rc = slurm_main(["--predict", str(rasters), "--out", str(out), "--array-size", "8", "--partition", "gpu",
                     "--time", "4:00:00", "--dry-run", "--", "--regularize"])
    assert rc == 0
    script = (out / "slurm_predict.sh").read_text()
    for line in ("#SBATCH --array=0-7", "#SBATCH --gres=gpu:1", "#SBATCH --requeue", "--regularize",
                 f"predict @{rasters.resolve()} --out {out.resolve()}", "merge"):
        assert line in script
    assert subprocess.run(["bash", "-n", str(out / "slurm_predict.sh")]).returncode == 0
    capsys.readouterr()
    assert slurm_main(["--predict", str(tmp_path / "none.txt"), "--partition", "gpu", "--time", "1:00:00"]) == 2
    assert "raster list not found" in capsys.readouterr().err
