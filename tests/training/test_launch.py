"""Slurm/torchrun environment parsing and the sbatch script of mtp-slurm."""
from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest
import shapely

from mtp_core.io import read_vector, write_vector
from training.dist import LaunchError, _slurm_env, cuda_device_index, first_host, rendezvous
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
                "SLURM_JOB_NODELIST", "SLURM_JOB_ID"):
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
    monkeypatch.delenv("MASTER_PORT")
    monkeypatch.setenv("SLURM_JOB_ID", "1234567")  # a raw srun in a job: the port follows the job id
    _slurm_env(None)
    assert os.environ["MASTER_PORT"] == str(20000 + 1234567 % 20000)
    assert _slurm_env(31000) and os.environ["MASTER_PORT"] == "31000"  # --port wins


def test_each_task_finds_its_gpu_also_when_slurm_binds_one_per_task() -> None:
    assert [cuda_device_index(local, 8) for local in (0, 3, 7)] == [0, 3, 7]  # every task sees the node's GPUs
    assert cuda_device_index(5, 1) == 0  # --gpus-per-task=1: CUDA_VISIBLE_DEVICES holds this task's GPU only
    with pytest.raises(LaunchError, match="local rank 5 has no GPU: this task sees 4"):
        cuda_device_index(5, 4)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_busy_port_and_ranks_that_never_start_are_named() -> None:
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        with pytest.raises(LaunchError, match=rf"port {busy.getsockname()[1]} on 127.0.0.1 is already in use .*--port"):
            rendezvous(0, 2, "127.0.0.1", busy.getsockname()[1], start_timeout_s=2)
    start = time.monotonic()
    with pytest.raises(LaunchError, match=r"rank\(s\) \[1, 2\] of 3 never started within 1 s.*--start-timeout"):
        rendezvous(0, 3, "127.0.0.1", _free_port(), start_timeout_s=1)
    assert time.monotonic() - start < 10
    with pytest.raises(LaunchError, match=r"rank 1 could not reach rank 0 at 127.0.0.1:\d+ within 1 s"):
        rendezvous(1, 2, "127.0.0.1", _free_port(), start_timeout_s=1)


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
                 "#SBATCH --signal=USR1@180", "#SBATCH --time=24:00:00", 'if [ -f "$marker" ]; then',
                 'scontrol requeue "$SLURM_JOB_ID"', f"marker={work.resolve()}/requeue_request"):
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
                 f"predict @{rasters.resolve()} --out {out.resolve()}"):
        assert line in script
    for name in ("slurm_predict.sh", "slurm_merge.sh"):
        assert subprocess.run(["bash", "-n", str(out / name)]).returncode == 0
    assert "--dependency=afterany:$job" in capsys.readouterr().out
    assert slurm_main(["--predict", str(tmp_path / "none.txt"), "--partition", "gpu", "--time", "1:00:00"]) == 2
    assert "raster list not found" in capsys.readouterr().err


def test_the_merge_step_joins_layers_and_gathers_every_shards_failures(tmp_path: Path, capsys) -> None:
    """What runs after the array (whatever its tasks' states): one merged layer, one failures.csv, exit 1 if any
    raster failed; run here with bash, as Slurm would."""
    rasters = tmp_path / "rasters.txt"
    rasters.write_text("a.tif\n")
    out = tmp_path / "out"
    assert slurm_main(["--predict", str(rasters), "--out", str(out), "--array-size", "2", "--partition", "gpu",
                       "--time", "1:00:00", "--dry-run"]) == 0
    for i, x in enumerate((0.0, 10.0)):
        write_vector(out / f"r{i}_buildings.gpkg", [shapely.box(x, 0.0, x + 10.0, 10.0)],
                     {"id": [1], "class": [1], "score": [0.9], "area_m2": [100.0], "perimeter_m": [40.0],
                      "source": [f"r{i}.tif"], "model": ["m"]}, "EPSG:32633")
    (out / "failures_shard0-of-2.csv").write_text("raster,kind,message\nbad.tif,input,cannot read bad.tif\n")
    (out / "failures_shard1-of-2.csv").write_text("raster,kind,message\nworse.tif,bug,KeyError: 'x'\n")
    run = subprocess.run(["bash", str(out / "slurm_merge.sh")], capture_output=True, text=True)
    assert run.returncode == 1 and "2 raster(s) failed" in run.stdout, run.stdout + run.stderr
    assert (out / "failures.csv").read_text().splitlines() == [
        "raster,kind,message", "bad.tif,input,cannot read bad.tif", "worse.tif,bug,KeyError: 'x'"]
    geoms, attrs, _ = read_vector(out / "buildings_merged.gpkg")
    assert len(geoms) == 1 and attrs["source"] == ["r0.tif;r1.tif"]  # the building cut by the shard border, whole
    for path in out.glob("failures_shard*.csv"):
        path.unlink()
    assert subprocess.run(["bash", str(out / "slurm_merge.sh")], capture_output=True).returncode == 0
    assert not (out / "failures.csv").exists()
