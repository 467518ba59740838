"""``mtp-slurm``: ready sbatch scripts, submitted unless --dry-run.

Training (``mtp-slurm CONFIG --nodes N --gpus-per-node G ...``): one task per GPU (``srun`` starts them,
``--launcher slurm`` wires them up), ``--requeue``, and USR1 three minutes before the time limit. On USR1, or the
SIGTERM of a preemption, the trainer checkpoints, rank 0 leaves a requeue marker in the work dir and the ranks exit
with ``REQUEUE_EXIT_CODE``; the script requeues the job when it finds the marker (whatever srun's exit status, which
``--kill-on-bad-exit`` makes unreliable), deleting it first: one requeue per stop. The requeued job resumes from the
last checkpoint (``--resume`` is always passed).

Batch prediction (``mtp-slurm --predict RASTERS.txt --out DIR --array-size N ...``): an array job of N one-GPU tasks;
task K runs ``mtp predict`` on every N-th raster (its shard, from ``SLURM_ARRAY_TASK_ID``), rasters already done are
skipped, so a requeued or resubmitted array finishes the rest; ``mtp merge`` then joins the per-raster layers.
"""
from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from mtp_core.io import atomic_path
from training.preemption import REQUEUE_MARKER

SIGNAL_LEAD_S = 180


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtp-slurm", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", help="training config (not with --predict)")
    parser.add_argument("--predict", default=None, metavar="RASTERS",
                        help="batch prediction instead of training: a text file with one raster path per line")
    parser.add_argument("--out", default=None, help="--predict: output folder")
    parser.add_argument("--array-size", type=int, default=4, help="--predict: number of array tasks (one GPU each)")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--partition", required=True)
    parser.add_argument("--time", required=True, help="time limit, e.g. 24:00:00 or 2-00:00:00")
    parser.add_argument("--cpus-per-task", type=int, default=8)
    parser.add_argument("--account", default=None)
    parser.add_argument("--job-name", default=None)
    parser.add_argument("--work-dir", default=None, help="default: ./work_dirs/CONFIG_NAME")
    parser.add_argument("--dry-run", action="store_true", help="write the script and print it, do not submit")
    parser.epilog = ("Arguments after '--' go to training.train (e.g. -- --amp) or, with --predict, to mtp predict "
                     "(e.g. -- --checkpoint model.pth --regularize)")
    return parser


def sbatch_script(args: argparse.Namespace, work_dir: Path, python: str, repo: Path) -> str:
    train = [python, "-m", "training.train", str(Path(args.config).resolve()), "--work-dir", str(work_dir.resolve()),
             "--launcher", "slurm", "--resume", *args.train_args]
    marker = shlex.quote(str(work_dir.resolve() / REQUEUE_MARKER))
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={args.job_name or Path(args.config).stem}",
        f"#SBATCH --partition={args.partition}",
        *([f"#SBATCH --account={args.account}"] if args.account else []),
        f"#SBATCH --nodes={args.nodes}",
        f"#SBATCH --ntasks-per-node={args.gpus_per_node}",
        f"#SBATCH --gres=gpu:{args.gpus_per_node}",
        f"#SBATCH --cpus-per-task={args.cpus_per_task}",
        f"#SBATCH --time={args.time}",
        f"#SBATCH --output={work_dir.resolve()}/slurm-%j.out",
        "#SBATCH --open-mode=append",
        "#SBATCH --requeue",
        f"#SBATCH --signal=USR1@{SIGNAL_LEAD_S}",
        "",
        "# the master port is 20000 + SLURM_JOB_ID % 20000 (training.dist); --port overrides it",
        f"marker={marker}  # written by rank 0 when a stop signal asks for a requeue",
        'rm -f "$marker"',
        "# a SIGTERM to this script (preemption) waits for srun: the ranks checkpoint first",
        "trap 'echo \"batch script: SIGTERM, waiting for the training step to checkpoint\"' TERM",
        f"cd {shlex.quote(str(repo))}",
        "srun --kill-on-bad-exit=1 " + shlex.join(train),
        "rc=$?",
        'if [ -f "$marker" ]; then',
        '  echo "$(cat "$marker"): requeueing job $SLURM_JOB_ID (srun exit status $rc)"',
        '  rm -f "$marker"',
        '  scontrol requeue "$SLURM_JOB_ID"',
        "  exit $?",
        "fi",
        'exit "$rc"',
        "",
    ]
    return "\n".join(lines)


def predict_array_script(args: argparse.Namespace, out: Path, python: str, repo: Path) -> str:
    rasters = Path(args.predict).resolve()
    predict = [python, "-m", "mtp_core.cli", "predict", f"@{rasters}", "--out", str(out.resolve()), *args.train_args]
    merge = [python, "-m", "mtp_core.cli", "merge", f"{out.resolve()}/*_buildings.gpkg", "--out",
             str(out.resolve() / "buildings_merged.gpkg")]
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={args.job_name or 'mtp-predict'}",
        f"#SBATCH --partition={args.partition}",
        *([f"#SBATCH --account={args.account}"] if args.account else []),
        f"#SBATCH --array=0-{args.array_size - 1}",
        "#SBATCH --ntasks=1",
        "#SBATCH --gres=gpu:1",
        f"#SBATCH --cpus-per-task={args.cpus_per_task}",
        f"#SBATCH --time={args.time}",
        f"#SBATCH --output={out.resolve()}/slurm-%A_%a.out",
        "#SBATCH --requeue",
        "",
        f"cd {shlex.quote(str(repo))}",
        "# mtp predict reads its shard from SLURM_ARRAY_TASK_ID/COUNT; rasters already done are skipped",
        shlex.join(predict),
        "# when every task is done: sbatch --dependency=afterok:$SLURM_ARRAY_JOB_ID --wrap \"<the line below>\"",
        "# " + " ".join(merge),
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args = build_parser().parse_args(argv[:split])
    args.train_args = argv[split + 1 :]
    problems = []
    if args.predict:
        if not Path(args.predict).is_file():
            problems.append(f"raster list not found: {args.predict}")
        if not args.out:
            problems.append("--predict needs --out DIR")
        if args.array_size < 1:
            problems.append("--array-size must be >= 1")
    elif not args.config or not Path(args.config).is_file():
        problems.append(f"config file not found: {args.config}")
    if args.nodes < 1 or args.gpus_per_node < 1:
        problems.append("--nodes and --gpus-per-node must be >= 1")
    if not re.fullmatch(r"(\d+-)?\d+(:\d{2}){0,2}", args.time):
        problems.append(f"--time {args.time!r} is not a Slurm time (e.g. 24:00:00 or 2-00:00:00)")
    if problems:
        print("mtp-slurm: error: " + "; ".join(problems), file=sys.stderr)
        return 2
    repo = Path.cwd().resolve()
    if args.predict:
        folder = Path(args.out)
        script, text = folder / "slurm_predict.sh", predict_array_script(args, folder, sys.executable, repo)
    else:
        folder = Path(args.work_dir or Path("work_dirs") / Path(args.config).stem)
        script, text = folder / "slurm_train.sh", sbatch_script(args, folder, sys.executable, repo)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(script) as tmp:
        tmp.write_text(text, encoding="utf-8")
    script.chmod(0o755)
    if args.dry_run:
        print(script.read_text(encoding="utf-8"))
        print(f"# written to {script}; submit with: sbatch {script}")
        return 0
    if shutil.which("sbatch") is None:
        print(f"mtp-slurm: error: sbatch not found on this machine; the script is in {script}", file=sys.stderr)
        return 2
    result = subprocess.run(["sbatch", str(script)], capture_output=True, text=True)
    print(result.stdout.strip() or result.stderr.strip())
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
