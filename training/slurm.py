"""``mtp-slurm``: ready sbatch scripts, submitted unless --dry-run.

Training (``mtp-slurm CONFIG --nodes N --gpus-per-node G ...``; ``--pretrain`` for multi-task pretraining with
``training.pretrain``): one task per GPU (``srun`` starts them,
``--launcher slurm`` wires them up), ``--requeue``, and USR1 three minutes before the time limit. On USR1, or the
SIGTERM of a preemption, the trainer checkpoints, rank 0 leaves a requeue marker in the work dir and the ranks exit
with ``REQUEUE_EXIT_CODE``; the script requeues the job when it finds the marker (whatever srun's exit status, which
``--kill-on-bad-exit`` makes unreliable), deleting it first: one requeue per stop. The requeued job resumes from the
last checkpoint (``--resume`` is always passed).

Batch prediction (``mtp-slurm --predict RASTERS.txt --out DIR --array-size N ...``): an array job of N one-GPU tasks;
task K runs ``mtp predict`` on every N-th raster (its shard, from ``SLURM_ARRAY_TASK_ID``), rasters already done are
skipped, so a requeued or resubmitted array finishes the rest; a raster that fails is reported and the task goes on.
A second job, run after the array whatever its tasks' states (``afterany``), joins the per-raster layers with
``mtp merge`` and gathers the shards' failures into ``failures.csv``.
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
    parser.add_argument("--pretrain", action="store_true",
                        help="the config is a multi-task pretraining config: run training.pretrain (MTP's "
                             "main_pretrain.py) instead of training.train")
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
    module = "training.pretrain" if args.pretrain else "training.train"
    train = [python, "-m", module, str(Path(args.config).resolve()), "--work-dir", str(work_dir.resolve()),
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
        "# mtp predict reads its shard from SLURM_ARRAY_TASK_ID/COUNT; rasters already done are skipped; a raster that",
        "# fails is listed in failures_shardK-of-N.csv and the task exits 1 (the others go on)",
        shlex.join(predict),
        "",
    ]
    return "\n".join(lines)


def merge_script(args: argparse.Namespace, out: Path, python: str, repo: Path) -> str:
    """The step after the array (``--dependency=afterany``): joins the building layers, gathers every shard's
    failures into ``failures.csv`` and exits 1 when any raster failed, so the job's state says so."""
    out = out.resolve()
    merge = [python, "-m", "mtp_core.cli", "merge", "--out", str(out / "buildings_merged.gpkg")]
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={args.job_name or 'mtp-predict'}-merge",
        f"#SBATCH --partition={args.partition}",
        *([f"#SBATCH --account={args.account}"] if args.account else []),
        "#SBATCH --ntasks=1",
        f"#SBATCH --cpus-per-task={min(args.cpus_per_task, 4)}",
        f"#SBATCH --time={args.time}",
        f"#SBATCH --output={out}/slurm-%j-merge.out",
        "",
        f"cd {shlex.quote(str(repo))}",
        f"out={shlex.quote(str(out))}",
        "shopt -s nullglob",
        'layers=("$out"/*_buildings.gpkg)',
        'status=0',
        'if [ ${#layers[@]} -gt 0 ]; then',
        f'  {shlex.join(merge)} "${{layers[@]}}" || status=$?',
        'else',
        '  echo "no building layers in $out"',
        'fi',
        'shards=("$out"/failures_shard*.csv)',
        'rm -f "$out/failures.csv"',
        'if [ ${#shards[@]} -gt 0 ]; then',
        '  awk "FNR > 1 || NR == 1" "${shards[@]}" > "$out/failures.csv"',
        '  failed=$(($(wc -l < "$out/failures.csv") - 1))',
        '  if [ "$failed" -gt 0 ]; then',
        '    echo "$failed raster(s) failed; see $out/failures.csv"',
        '    [ "$status" -ne 0 ] || status=1',
        '  fi',
        'fi',
        'exit "$status"',
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
        scripts = {folder / "slurm_predict.sh": predict_array_script(args, folder, sys.executable, repo),
                   folder / "slurm_merge.sh": merge_script(args, folder, sys.executable, repo)}
    else:
        folder = Path(args.work_dir or Path("work_dirs") / Path(args.config).stem)
        scripts = {folder / "slurm_train.sh": sbatch_script(args, folder, sys.executable, repo)}
    folder.mkdir(parents=True, exist_ok=True)
    for script, text in scripts.items():
        with atomic_path(script) as tmp:
            tmp.write_text(text, encoding="utf-8")
        script.chmod(0o755)
    first, *after = scripts
    if args.dry_run:
        for script in scripts:
            print(script.read_text(encoding="utf-8"))
        print(f"# written to {', '.join(map(str, scripts))}; submit with: "
              + (f"job=$(sbatch --parsable {first}) && sbatch --dependency=afterany:$job {after[0]}" if after
                 else f"sbatch {first}"))
        return 0
    if shutil.which("sbatch") is None:
        print(f"mtp-slurm: error: sbatch not found on this machine; the scripts are in {folder}", file=sys.stderr)
        return 2
    result = subprocess.run(["sbatch", "--parsable", str(first)], capture_output=True, text=True)
    print(result.stdout.strip() or result.stderr.strip())
    if result.returncode or not after:
        return result.returncode
    job = result.stdout.strip().split(";")[0]
    result = subprocess.run(["sbatch", f"--dependency=afterany:{job}", str(after[0])], capture_output=True, text=True)
    print(result.stdout.strip() or result.stderr.strip())
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
