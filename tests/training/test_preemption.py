"""Preemption as Slurm delivers it, with real processes: the signal goes to every process of the job step (DataLoader
workers too), srun kills the other ranks when one exits non-zero, the batch script requeues, the job resumes.

``srun`` and ``scontrol`` are stand-ins on PATH: srun starts SLURM_NNODES x SLURM_NTASKS_PER_NODE tasks with Slurm's
task variables, forwards signals to them and, with ``--kill-on-bad-exit=1``, SIGKILLs the others once a task exits
non-zero and then exits 137 itself; scontrol records its arguments.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtp_core.checkpoint import safe_load
from tests.training.conftest import TINY_CONFIG
from tests.training.test_train_loop import REPO, _env
from training.loop import REQUEUE_EXIT_CODE
from training.slurm import main as slurm_main

FAKE_SRUN = '''#!{python}
import os, signal, subprocess, sys, time
args = sys.argv[1:]
kill_on_bad_exit = "--kill-on-bad-exit=1" in args
while args[0].startswith("--"):
    args.pop(0)
per_node = int(os.environ["SLURM_NTASKS_PER_NODE"])
world = int(os.environ["SLURM_NNODES"]) * per_node
tasks = []
for rank in range(world):
    env = dict(os.environ, SLURM_PROCID=str(rank), SLURM_NTASKS=str(world), SLURM_LOCALID=str(rank % per_node),
               SLURM_NODEID=str(rank // per_node), SLURM_STEP_NODELIST="localhost")
    tasks.append(subprocess.Popen(args, env=env))
def forward(signum, frame):
    for task in tasks:
        if task.poll() is None:
            task.send_signal(signum)
for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
    signal.signal(sig, forward)
rc, codes = 0, {{}}
while len(codes) < world:
    for rank, task in enumerate(tasks):
        if rank not in codes and task.poll() is not None:
            codes[rank] = task.returncode
            with open(os.environ["FAKE_SRUN_LOG"], "a") as log:
                log.write(f"task {{rank}} exit {{task.returncode}}\\n")
            if task.returncode != 0 and kill_on_bad_exit and rc == 0:
                rc = 137
                for other in tasks:
                    if other.poll() is None:
                        other.kill()
            rc = rc or max(codes.values(), key=abs)
    time.sleep(0.02)
sys.exit(rc if rc >= 0 else 128 - rc)
'''
FAKE_SCONTROL = '''#!{python}
import os, sys
with open(os.environ["FAKE_SCONTROL_LOG"], "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
'''


@pytest.fixture()
def slurm(tmp_path: Path) -> dict[str, str]:
    """Environment of a Slurm job whose PATH has the stand-ins; the job id gives a free master port."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text.format(python=sys.executable))
        (bin_dir / name).chmod(0o755)
    return _env(PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID=str(_job_id_with_a_free_port()),
                SLURM_NNODES="1", SLURM_NTASKS_PER_NODE="2", SLURM_NODELIST="localhost",
                FAKE_SRUN_LOG=str(tmp_path / "srun.log"), FAKE_SCONTROL_LOG=str(tmp_path / "scontrol.log"))


def _job_id_with_a_free_port() -> int:
    """A job id whose port (20000 + id % 20000, training.dist.job_port) is free now."""
    for port in range(20000 + os.getpid() % 15000, 40000):
        with socket.socket() as sock:
            try:
                sock.bind(("", port))
            except OSError:
                continue
            return port - 20000
    raise RuntimeError("no free port in 20000-39999")


def _options(data: Path, max_iters: int, *extra: str) -> list[str]:
    return ["--cfg-options", f"train_dataloader.dataset.data_root={data}", "val_dataloader=None",
            f"train_cfg.max_iters={max_iters}", f"default_hooks.checkpoint.interval={max_iters}",
            "default_hooks.logger.interval=1", "train_dataloader.batch_size=1", *extra]


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _run_until(cmd: list[str], env: dict[str, str], line_part: str, signum: int) -> tuple[int, str]:
    """Run ``cmd`` in a session of its own; at the first output line containing ``line_part`` send ``signum`` to the
    whole process group, as slurmstepd signals every process of a job step."""
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line_part in line:
            os.killpg(proc.pid, signum)
            break
    rest = proc.communicate(timeout=300)[0]
    return proc.returncode, "".join(seen) + rest


def _assert_same_weights(a: Path, b: Path) -> None:
    got, want = safe_load(a)["state_dict"], safe_load(b)["state_dict"]
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert torch.equal(got[key], value), key


def test_preempting_the_whole_step_checkpoints_requeues_once_and_resumes_bit_for_bit(
        tiny_dataset: Path, tmp_path: Path, slurm: dict[str, str]) -> None:
    """2 tasks x 2 DataLoader workers, dropout and drop-path on; SIGTERM to the process group of the batch script
    (bash, srun, ranks, workers), srun --kill-on-bad-exit; the requeued job finishes; an uninterrupted job equals it."""
    options = _options(tiny_dataset, 8, "train_dataloader.num_workers=2")
    scripts = {}
    for name in ("preempted", "uninterrupted"):
        assert slurm_main([str(TINY_CONFIG), "--nodes", "1", "--gpus-per-node", "2", "--partition", "cpu", "--time",
                           "1:00:00", "--work-dir", str(tmp_path / name), "--dry-run", "--", *options]) == 0
        scripts[name] = tmp_path / name / "slurm_train.sh"
    work = tmp_path / "preempted"

    rc, out = _run_until(["bash", str(scripts["preempted"])], slurm, "iter 2/8", signal.SIGTERM)
    tasks = _lines(tmp_path / "srun.log")
    assert rc == 0 and tasks[0].endswith(f"exit {REQUEUE_EXIT_CODE}"), out  # a rank stopped with the requeue code
    assert "srun exit status 137" in out and "stopped by SIGTERM" in out, out  # srun's status is not 75 ...
    assert _lines(tmp_path / "scontrol.log") == [f"requeue {slurm['SLURM_JOB_ID']}"]  # ... the job is requeued once
    assert "DataLoader worker" not in out and not (work / "requeue_request").exists()
    assert "deprecated" not in out  # no per-rank warning from the SyncBN all-reduce
    stopped_at = int(Path((work / "last_checkpoint").read_text()).stem.split("_")[1])
    assert 2 <= stopped_at < 8 and (work / "curves.png").is_file()

    requeued = subprocess.run(["bash", str(scripts["preempted"])], env={**slurm, "SLURM_RESTART_COUNT": "1"},
                              cwd=REPO, capture_output=True, text=True, timeout=300)
    assert requeued.returncode == 0, requeued.stdout + requeued.stderr
    assert f"resumed from {work / f'iter_{stopped_at}.pth'} at iteration {stopped_at}" in requeued.stdout
    assert len(_lines(tmp_path / "scontrol.log")) == 1  # no requeue when the job finishes

    full = subprocess.run(["bash", str(scripts["uninterrupted"])], env=slurm, cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert full.returncode == 0, full.stdout + full.stderr
    _assert_same_weights(work / "iter_8.pth", tmp_path / "uninterrupted" / "iter_8.pth")
    assert len(_lines(work / "log.jsonl")) == 8  # one line per iteration, none repeated by the resumed run


def test_two_nodes_of_two_tasks_resume_every_ranks_random_state(tiny_dataset: Path, tmp_path: Path,
                                                               slurm: dict[str, str]) -> None:
    """Ranks draw different dropout masks (diff_rank_seed): only their own RNG states make the resume exact."""
    env = {**slurm, "SLURM_NNODES": "2"}

    def srun(work: Path, *extra: str) -> list[str]:
        return ["srun", "--kill-on-bad-exit=1", sys.executable, "-m", "training.train", str(TINY_CONFIG),
                "--work-dir", str(work), "--launcher", "slurm", *extra,
                *_options(tiny_dataset, 5, "randomness.diff_rank_seed=True")]

    rc, out = _run_until(srun(tmp_path / "stopped"), env, "iter 1/5", signal.SIGUSR1)
    assert rc == 137 and f"exit {REQUEUE_EXIT_CODE}" in _lines(tmp_path / "srun.log")[0], out
    stopped = Path((tmp_path / "stopped" / "last_checkpoint").read_text())
    assert int(stopped.stem.split("_")[1]) < 5
    ranks = safe_load(stopped)["rng"]["ranks"]
    assert len(ranks) == 4 and len({bytes(r["torch"].numpy()) for r in ranks}) == 4
    resumed = subprocess.run(srun(tmp_path / "stopped", "--resume"), env=env, cwd=REPO, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    full = subprocess.run(srun(tmp_path / "full"), env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stdout + full.stderr
    assert "4 process(es)" in full.stdout
    _assert_same_weights(tmp_path / "stopped" / "iter_5.pth", tmp_path / "full" / "iter_5.pth")
