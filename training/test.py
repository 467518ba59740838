"""``python -m training.test CONFIG CKPT`` — MMSeg's ``tools/test.py`` for MTP configs: metrics and prediction maps.

Checkpoints in any layout load (ours, MMSeg's ``iter_80000.pth``, ...). Metrics equal MMSeg's IoUMetric (aAcc, mIoU,
mAcc, mDice, mFscore = mF1, per class) with the config's test mode (MTP: slide 384/256) and go to a JSON file;
``--show-dir`` writes an overlay PNG per image and, for georeferenced inputs, the class mask as a GeoTIFF.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from mtp_core.checkpoint import load_weights
from mtp_core.inference import CLASS_NODATA
from mtp_core.io import GeoTiffWriter, atomic_path, describe_raster, write_rgb_png
from training.builder import build_segmentor
from training.config import ConfigError, apply_overrides, load_config, merge
from training.data import SegDataPreProcessor, build_dataset, collate
from training.dist import DistInfo, LaunchError, cleanup, init_distributed
from training.evaluation import evaluate
from training.loop import DEFAULTS

log = logging.getLogger("mtp.test")
PALETTE = np.array([[0, 0, 0], [255, 60, 60], [60, 200, 255], [255, 220, 0], [120, 255, 120]], dtype=np.uint8)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtp-test", description="Evaluate an MTP segmentation checkpoint.")
    parser.add_argument("config")
    parser.add_argument("checkpoint")
    parser.add_argument("--work-dir", help="where results.json goes (default: ./work_dirs/CONFIG_NAME)")
    parser.add_argument("--show-dir", help="write overlay PNGs (and GeoTIFF masks for georeferenced inputs) here")
    parser.add_argument("--amp", action="store_true", help="bf16/fp16 autocast inference")
    parser.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE")
    parser.add_argument("--launcher", choices=("none", "pytorch", "slurm"), default="none")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)
    return parser


def _write_geotiff_mask(pred: np.ndarray, source: str, path: Path) -> bool:
    """The class mask on the source's grid; False when the source has no georeference (plain PNG datasets)."""
    info = describe_raster(source, allow_pixel_crs=True)
    if not info.has_georeference or (info.height, info.width) != pred.shape:
        return False
    with GeoTiffWriter(path, info.width, info.height, 1, "uint8", info.geotransform, info.crs_wkt,
                       nodata=CLASS_NODATA) as out:
        out.write(pred, 0, 0)
    return True


def prediction_writer(show_dir: Path):
    """Per-sample callback writing ``NAME_overlay.png`` (prediction blended over the image) and ``NAME_mask.tif``."""
    show_dir.mkdir(parents=True, exist_ok=True)

    def write(sample: Mapping[str, Any], _logits: Tensor, pred: Tensor) -> None:
        name = Path(sample["meta"]["path"]).stem
        pred_np = pred.numpy().astype(np.uint8)
        img = sample["img"].permute(1, 2, 0).numpy()
        if img.shape[:2] == pred_np.shape:
            colour = PALETTE[pred_np % len(PALETTE)]
            blend = np.where(pred_np[..., None] > 0, (0.55 * img + 0.45 * colour), img).astype(np.uint8)
            write_rgb_png(blend, show_dir / f"{name}_overlay.png")
        _write_geotiff_mask(pred_np, sample["meta"]["path"], show_dir / f"{name}_mask.tif")

    return write


def run_test(cfg: dict[str, Any], checkpoint: str, info: DistInfo, show_dir: Path | None, amp: bool) -> dict:
    spec = build_segmentor(cfg["model"])  # the backbone's `pretrained` is not loaded: the checkpoint has it all
    report = load_weights(spec.model, checkpoint)
    if info.is_main:
        log.info("%s", report.summary())
    model = spec.model.to(info.device).eval()
    pre_cfg = cfg.get("data_preprocessor") or cfg["model"].get("data_preprocessor") or {}
    preprocess = SegDataPreProcessor(mean=pre_cfg.get("mean", (123.675, 116.28, 103.53)),
                                     std=pre_cfg.get("std", (58.395, 57.12, 57.375)))
    dataset = build_dataset(cfg["test_dataloader"]["dataset"])
    shard = Subset(dataset, list(range(info.rank, len(dataset), info.world_size)))
    loader = DataLoader(shard, batch_size=1, collate_fn=collate,
                        num_workers=int(cfg["test_dataloader"].get("num_workers", 0)))
    classes = tuple(getattr(dataset, "classes", ("background", "building")))
    bf16_ok = info.device.type == "cpu" or torch.cuda.is_bf16_supported()
    amp_dtype = (torch.bfloat16 if bf16_ok else torch.float16) if amp else None
    start = time.perf_counter()
    metrics = evaluate(model, loader, preprocess, info, classes, spec.test_mode, spec.crop_size, spec.stride,
                       amp_dtype, prediction_writer(show_dir) if show_dir else None)
    metrics["seconds"] = time.perf_counter() - start
    metrics["images"] = len(dataset)
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = apply_overrides(merge(DEFAULTS, load_config(args.config)), args.cfg_options)
        info = init_distributed(args.launcher, args.port)
    except (ConfigError, LaunchError, ValueError) as exc:
        print(f"mtp-test: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level="INFO" if info.is_main else "WARNING", stream=sys.stdout,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    work_dir = Path(args.work_dir or cfg.get("work_dir") or Path("work_dirs") / Path(args.config).stem)
    try:
        if not cfg.get("test_dataloader"):
            raise ValueError("the config has no test_dataloader")
        metrics = run_test(cfg, args.checkpoint, info, Path(args.show_dir) if args.show_dir else None, args.amp)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"mtp-test: error: {exc}", file=sys.stderr)
        return 2
    finally:
        cleanup()
    if info.is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
        out = work_dir / f"results_{time.strftime('%Y%m%d_%H%M%S')}.json"
        payload = {"config": args.config, "checkpoint": args.checkpoint, **_jsonable(metrics)}
        with atomic_path(out) as tmp:
            tmp.write_text(json.dumps(payload, indent=2), encoding="utf-8")
        keys = ("aAcc", "mIoU", "mAcc", "mDice", "mFscore", "building_f1")
        summary = " ".join(f"{k} {metrics[k]:.2f}" for k in keys if k in metrics)
        print(f"{summary}\nresults: {out}")
    return 0


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.ndarray, Tensor)):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        return None if np.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


if __name__ == "__main__":
    sys.exit(main())
