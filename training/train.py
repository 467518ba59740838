"""``python -m training.train CONFIG`` — drop-in for MMSeg's ``tools/train.py`` with MTP's configs.

    srun -N 1 --ntasks-per-node=8 --gres=gpu:8 python -m training.train \\
        training/configs/mtp/spacenetv1/rvsa-b-upernet-384-mae-mtp-spacenetv1.py --work-dir W --launcher slurm
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from training.config import ConfigError, apply_overrides, check_mmseg1, config_text, load_config, merge
from training.dist import START_TIMEOUT_S, DistInfo, LaunchError, broadcast_object, cleanup, init_distributed

log = logging.getLogger("mtp.train")
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtp-train", description="Train an MTP segmentation model or change detector "
                                                                   "from a config.")
    parser.add_argument("config", help="config file (e.g. training/configs/mtp/spacenetv1/...py)")
    parser.add_argument("--work-dir", help="where logs and checkpoints go (default: ./work_dirs/CONFIG_NAME)")
    parser.add_argument("--resume", nargs="?", const=True, default=False, metavar="CKPT",
                        help="resume from CKPT, or from the work dir's last checkpoint when no path is given "
                             "(MMEngine's --cfg-options resume=True load_from=CKPT works too)")
    parser.add_argument("--amp", action="store_true",
                        help="mixed precision: optim_wrapper type AmpOptimWrapper with loss_scale='dynamic', as "
                             "MMSeg's --amp (bf16 where supported, else fp16 with the loss scaler)")
    parser.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override config keys, e.g. load_from=ckpt.pth train_cfg.max_iters=1000")
    parser.add_argument("--launcher", choices=("none", "pytorch", "slurm"), default="none")
    parser.add_argument("--port", type=int, default=None,
                        help="master port (default: MASTER_PORT, else 20000 + SLURM_JOB_ID %% 20000, else 29500)")
    parser.add_argument("--start-timeout", type=float, default=START_TIMEOUT_S, metavar="SECONDS",
                        help="--launcher slurm: how long rank 0 waits for every rank to start before naming the "
                             "missing ones (default %(default)s)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)
    return parser


def resolve_config(args: argparse.Namespace) -> dict:
    from training.loop import DEFAULTS, OPTIONAL_KEYS

    cfg = merge(DEFAULTS, load_config(args.config))  # defaults first, so overrides can reach every key
    cfg = apply_overrides(cfg, args.cfg_options, OPTIONAL_KEYS)
    check_mmseg1(cfg)
    if args.amp:
        wrapper = cfg["optim_wrapper"].get("type", "OptimWrapper")
        if wrapper == "AmpOptimWrapper":
            log.warning("--amp: AMP training is already enabled in the config")
        elif wrapper != "OptimWrapper":
            raise ConfigError(f"--amp needs optim_wrapper type 'OptimWrapper', the config has {wrapper!r}")
        else:
            cfg["optim_wrapper"] = {**cfg["optim_wrapper"], "type": "AmpOptimWrapper", "loss_scale": "dynamic"}
    return cfg


def log_to_work_dir(work_dir: Path) -> logging.Handler:
    """Everything the main process logs also goes to ``WORK_DIR/YYYYmmdd_HHMMSS.log`` (one file per launch)."""
    handler = logging.FileHandler(work_dir / f"{time.strftime('%Y%m%d_%H%M%S')}.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(logging.INFO)
    logging.getLogger().addHandler(handler)
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = resolve_config(args)
    except (ConfigError, ValueError) as exc:
        print(f"mtp-train: error: {exc}", file=sys.stderr)
        return 2

    def trainer(cfg: dict, work_dir: Path, info: DistInfo):  # imported late: the CLI starts fast, errors show early
        from training.loop import Trainer

        if cfg["model"].get("instance_decoder"):  # a segmentor with instances (training.instances)
            from training.instances import InstanceTrainer

            return InstanceTrainer(cfg, work_dir, info)
        return Trainer(cfg, work_dir, info)

    return launch(args, cfg, trainer, "mtp-train")


def launch(args: argparse.Namespace, cfg: dict, build: Callable[[dict, Path, DistInfo], Any], prog: str) -> int:
    """Start the processes' group, prepare the work dir and its log, build the runner and run (or resume) it; user
    errors are one line on stderr and exit code 2 (shared by ``mtp-train`` and ``mtp-pretrain``)."""
    try:
        info = init_distributed(args.launcher, args.port, start_timeout_s=args.start_timeout)
    except (LaunchError, ValueError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=cfg.get("log_level", "INFO") if info.is_main else "WARNING", format=LOG_FORMAT,
                        stream=sys.stdout)
    work_dir = Path(args.work_dir or cfg.get("work_dir") or Path("work_dirs") / Path(args.config).stem)
    file_log = None
    if info.is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
        (work_dir / Path(args.config).name).write_text(config_text(cfg), encoding="utf-8")
        file_log = log_to_work_dir(work_dir)
    work_dir = Path(broadcast_object(str(work_dir), info))

    from mtp_core.device import describe_device

    if info.is_main:
        log.info("device: %s; %d process(es)", describe_device(info.device), info.world_size)
    try:
        return build(cfg, work_dir, info).run(args.resume)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        cleanup()
        if file_log is not None:
            logging.getLogger().removeHandler(file_log)
            file_log.close()


if __name__ == "__main__":
    sys.exit(main())
