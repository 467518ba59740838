"""``python -m training.train CONFIG`` — drop-in for MMSeg's ``tools/train.py`` with MTP's configs.

    srun -N 1 --ntasks-per-node=8 --gres=gpu:8 python -m training.train \\
        training/configs/mtp/spacenetv1/rvsa-b-upernet-384-mae-mtp-spacenetv1.py --work-dir W --launcher slurm
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from training.config import ConfigError, apply_overrides, config_text, load_config, merge
from training.dist import LaunchError, broadcast_object, cleanup, init_distributed


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtp-train", description="Train an MTP segmentation model from a config.")
    parser.add_argument("config", help="config file (e.g. training/configs/mtp/spacenetv1/...py)")
    parser.add_argument("--work-dir", help="where logs and checkpoints go (default: ./work_dirs/CONFIG_NAME)")
    parser.add_argument("--resume", nargs="?", const=True, default=False, metavar="CKPT",
                        help="resume from CKPT, or from the work dir's last checkpoint when no path is given")
    parser.add_argument("--amp", action="store_true", help="mixed precision (bf16 where supported, else fp16)")
    parser.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override config keys, e.g. load_from=ckpt.pth train_cfg.max_iters=1000")
    parser.add_argument("--launcher", choices=("none", "pytorch", "slurm"), default="none")
    parser.add_argument("--port", type=int, default=None, help="master port for distributed runs (default 29500)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)
    return parser


def resolve_config(args: argparse.Namespace) -> dict:
    from training.loop import DEFAULTS

    cfg = merge(DEFAULTS, load_config(args.config))  # defaults first, so overrides can reach every key
    cfg = apply_overrides(cfg, args.cfg_options)
    if args.amp:
        cfg["optim_wrapper"] = {**cfg["optim_wrapper"], "type": "AmpOptimWrapper"}
    if args.resume and isinstance(args.resume, str):
        cfg["resume"] = True
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = resolve_config(args)
        info = init_distributed(args.launcher, args.port)
    except (ConfigError, LaunchError, ValueError) as exc:
        print(f"mtp-train: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=cfg.get("log_level", "INFO") if info.is_main else "WARNING",
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stdout)
    work_dir = Path(args.work_dir or cfg.get("work_dir") or Path("work_dirs") / Path(args.config).stem)
    if info.is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
        (work_dir / Path(args.config).name).write_text(config_text(cfg), encoding="utf-8")
    work_dir = Path(broadcast_object(str(work_dir), info))

    from mtp_core.device import describe_device
    from training.loop import Trainer

    if info.is_main:
        logging.getLogger("mtp.train").info("device: %s; %d process(es)", describe_device(info.device),
                                            info.world_size)
    try:
        trainer = Trainer(cfg, work_dir, info)
        return trainer.run(args.resume or cfg.get("resume"))
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"mtp-train: error: {exc}", file=sys.stderr)
        return 2
    finally:
        cleanup()


if __name__ == "__main__":
    sys.exit(main())
