"""``python -m training.test CONFIG CKPT`` — MMSeg's (and Open-CD's) ``tools/test.py`` for MTP configs: metrics and
prediction maps; change detectors report F1/IoU/precision/recall of the class "changed".

Checkpoints in any layout load (ours, MMSeg's ``iter_80000.pth``, ...). Metrics equal MMSeg's IoUMetric (aAcc, mIoU,
mAcc, mDice, mFscore = mF1, per class) with the config's test mode (MTP: slide 384/256) and go to a JSON file, with
SpaceNet's building polygon F1. ``--out`` writes MMSeg 1.x's raw prediction maps (``NAME.png``, class ids);
``--show-dir`` an overlay PNG per image and, for georeferenced inputs, the class mask as a GeoTIFF; ``--tta`` averages
the probabilities of the config's ``tta_pipeline`` views (MMSeg's multi-scale + flip views when it has none).
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
from osgeo import gdal
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from mtp_core.checkpoint import load_weights, safe_load
from mtp_core.inference import CLASS_NODATA
from mtp_core.io import GeoTiffWriter, atomic_path, describe_raster, write_rgb_png
from training.builder import build_segmentor
from training.config import ConfigError, apply_overrides, load_config, merge
from training.data import SegDataPreProcessor, build_dataset, collate
from training.dist import DistInfo, LaunchError, cleanup, init_distributed
from training.evaluation import SampleCallback, evaluate
from training.loop import DEFAULTS, OPTIONAL_KEYS
from training.tta import MMSEG_RATIOS, TtaView, tta_views

log = logging.getLogger("mtp.test")
PALETTE = np.array([[0, 0, 0], [255, 60, 60], [60, 200, 255], [255, 220, 0], [120, 255, 120]], dtype=np.uint8)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtp-test", description="Evaluate an MTP segmentation or change-detection "
                                                                  "checkpoint.")
    parser.add_argument("config")
    parser.add_argument("checkpoint")
    parser.add_argument("--work-dir", help="where results.json goes (default: ./work_dirs/CONFIG_NAME)")
    parser.add_argument("--out", help="write raw prediction maps here, as MMSeg 1.x: NAME.png with the class ids "
                                      "(+1 with reduce_zero_label), for offline evaluation")
    parser.add_argument("--show-dir", help="write overlay PNGs (and GeoTIFF masks for georeferenced inputs) here")
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation: the config's tta_pipeline, else MMSeg's ratios "
                             f"{list(MMSEG_RATIOS)} x horizontal flip")
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


def write_label_png(labels: np.ndarray, path: Path) -> None:
    """A one-band uint8 PNG of class ids, atomically and without a .aux.xml."""
    mem = gdal.GetDriverByName("MEM").Create("", labels.shape[1], labels.shape[0], 1, gdal.GDT_Byte)
    mem.GetRasterBand(1).WriteArray(labels)
    with atomic_path(path) as tmp:
        gdal.GetDriverByName("PNG").CreateCopy(str(tmp), mem, options=["WORLDFILE=NO"])
        Path(str(tmp) + ".aux.xml").unlink(missing_ok=True)


def prediction_writer(show_dir: Path | None, out_dir: Path | None, reduce_zero_label: bool) -> SampleCallback:
    """Per-sample callback: ``OUT/NAME.png`` (MMSeg's raw map), ``SHOW/NAME_overlay.png`` (prediction blended over
    the image) and ``SHOW/NAME_mask.tif`` (georeferenced inputs)."""
    for folder in (show_dir, out_dir):
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    def write(sample: Mapping[str, Any], pred: Tensor) -> None:
        name = Path(sample["meta"]["path"]).stem
        pred_np = pred.numpy().astype(np.uint8)
        if out_dir is not None:
            write_label_png(pred_np + 1 if reduce_zero_label else pred_np, out_dir / f"{name}.png")
        if show_dir is None:
            return
        img = sample["img"][-3:].permute(1, 2, 0).numpy()  # a change detector's sample: date B under its changes
        if img.shape[:2] == pred_np.shape:
            colour = PALETTE[pred_np % len(PALETTE)]
            blend = np.where(pred_np[..., None] > 0, (0.55 * img + 0.45 * colour), img).astype(np.uint8)
            write_rgb_png(blend, show_dir / f"{name}_overlay.png")
        _write_geotiff_mask(pred_np, sample["meta"]["path"], show_dir / f"{name}_mask.tif")

    return write


def metric_notes(metrics: Mapping[str, Any], classes: Sequence[str]) -> list[str]:
    """Why mFscore and mDice can disagree: MMSeg's NaN averaging, kept as is but said."""
    per_class = metrics["per_class"]
    notes = []
    for name, fscore, dice in zip(classes, per_class["Fscore"], per_class["Dice"]):
        if np.isnan(fscore) and not np.isnan(dice):
            notes.append(f"note: class {name!r} is never predicted or absent from the labels: its F-score is NaN and "
                         f"left out of mFscore (MMSeg's nanmean), while its Dice {100 * dice:.2f} counts in mDice")
        elif np.isnan(dice):
            notes.append(f"note: class {name!r} is neither predicted nor in the labels: no metric counts it")
    return notes


def run_test(cfg: dict[str, Any], checkpoint: str, info: DistInfo, show_dir: Path | None, amp: bool,
             out_dir: Path | None = None, tta: Sequence[TtaView] = ()) -> dict:
    spec = build_segmentor(cfg["model"])  # the backbone's `pretrained` is not loaded: the checkpoint has it all
    loaded = safe_load(checkpoint)
    report = load_weights(spec.model, loaded)
    if info.is_main:
        log.info("%s", report.summary())
    model = spec.model.to(info.device).eval()
    pre_cfg = cfg.get("data_preprocessor") or cfg["model"].get("data_preprocessor") or {}
    preprocess = SegDataPreProcessor(mean=pre_cfg.get("mean", (123.675, 116.28, 103.53)),
                                     std=pre_cfg.get("std", (58.395, 57.12, 57.375)))
    dataset = build_dataset(cfg["test_dataloader"]["dataset"])
    card = (loaded.get("meta") or {}).get("model_card") or {} if isinstance(loaded, dict) else {}
    if card.get("band_ranges") and "band_ranges" not in cfg["test_dataloader"]["dataset"]:
        dataset.use_band_ranges(card["band_ranges"])  # the model's training data scaling, not a new fit
    shard = Subset(dataset, list(range(info.rank, len(dataset), info.world_size)))
    loader = DataLoader(shard, batch_size=1, collate_fn=collate,
                        num_workers=int(cfg["test_dataloader"].get("num_workers", 0)))
    classes = tuple(getattr(dataset, "classes", ("background", "building")))
    bf16_ok = info.device.type == "cpu" or torch.cuda.is_bf16_supported()
    amp_dtype = (torch.bfloat16 if bf16_ok else torch.float16) if amp else None
    start = time.perf_counter()
    writer = (prediction_writer(show_dir, out_dir, bool(getattr(dataset, "reduce_zero_label", False)))
              if show_dir or out_dir else None)
    metrics = evaluate(model, loader, preprocess, info, classes, spec.test_mode, spec.crop_size, spec.stride,
                       amp_dtype, writer, tta=tta)
    metrics["classes"] = classes
    metrics["seconds"] = time.perf_counter() - start
    metrics["images"] = len(dataset)
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = apply_overrides(merge(DEFAULTS, load_config(args.config)), args.cfg_options, OPTIONAL_KEYS)
        info = init_distributed(args.launcher, args.port)
    except (ConfigError, LaunchError, ValueError) as exc:
        print(f"mtp-test: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level="INFO" if info.is_main else "WARNING", stream=sys.stdout,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    work_dir = Path(args.work_dir or cfg.get("work_dir") or Path("work_dirs") / Path(args.config).stem)
    if cfg["model"].get("instance_decoder"):  # a segmentor with instances (training.instances)
        from training.instances import run_instance_test

        try:
            return run_instance_test(args, cfg, info, work_dir)
        except (ConfigError, ValueError, FileNotFoundError) as exc:
            print(f"mtp-test: error: {exc}", file=sys.stderr)
            return 2
        finally:
            cleanup()
    try:
        if not cfg.get("test_dataloader"):
            raise ValueError("the config has no test_dataloader")
        views = tta_views(cfg.get("tta_pipeline")) if args.tta else []
        if args.tta and info.is_main:
            log.info("TTA: %d views (%s)", len(views), "tta_pipeline" if cfg.get("tta_pipeline") else
                     f"no tta_pipeline in the config: MMSeg's ratios {list(MMSEG_RATIOS)} x horizontal flip")
        metrics = run_test(cfg, args.checkpoint, info, Path(args.show_dir) if args.show_dir else None, args.amp,
                           Path(args.out) if args.out else None, views)
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
        keys = ("aAcc", "mIoU", "mAcc", "mDice", "mFscore")
        summary = " ".join(f"{k} {metrics[k]:.2f}" for k in keys)
        if "changed_f1" in metrics:
            summary += (f" | changed: F1 {metrics['changed_f1']:.2f}, IoU {metrics['changed_iou']:.2f}, precision "
                        f"{metrics['changed_precision']:.2f}, recall {metrics['changed_recall']:.2f}")
        elif "building_f1" in metrics:
            summary += (f" | building F1 {metrics['building_f1']:.2f} (precision {metrics['building_precision']:.2f}, "
                        f"recall {metrics['building_recall']:.2f}; {metrics['building_tp']} TP, "
                        f"{metrics['building_fp']} FP, {metrics['building_fn']} FN polygons)")
        else:
            summary += " | building F1: n/a (no class is named 'building')"
        print("\n".join([summary, *metric_notes(metrics, metrics["classes"]), f"results: {out}"]))
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
