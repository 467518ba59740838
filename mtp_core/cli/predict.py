"""``mtp predict``: rasters in, ``NAME_mask.tif`` and ``NAME_buildings.gpkg`` per raster out (the main job).

A batch goes on past a raster that fails: each failure is reported as it happens, again in a summary at the end and
in ``failures.csv`` in the output folder (``failures_shardK-of-N.csv`` for a shard), and the exit status is 1 when
any raster failed (``--fail-fast`` stops at the first). Rasters whose outputs exist are skipped, so a rerun redoes only
the failed ones.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from mtp_core.errors import UserError
from mtp_core.progress import Progress
from mtp_core.weights import DEMO_CHECKPOINT, DEMO_INSTANCES_CHECKPOINT

#: GDAL's default block cache (5 % of RAM) grows with the raster. Tiles are read row by row, so the cache only needs
#: one row of tiles of the input (384 x 16384 px x 3 bands = 19 MB) and of each output: 64 MB is plenty.
GDAL_CACHE_BYTES = 64 * 2**20


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "predict", help="rasters -> NAME_mask.tif + NAME_buildings.gpkg (the main job)", fromfile_prefix_chars="@",
        description="Segment georeferenced rasters tile by tile and write the class mask and the building polygons "
                    "per raster. @FILE reads raster paths from a file. A raster that fails is reported and the batch "
                    "goes on (exit status 1 when any failed; see failures.csv in --out).")
    parser.add_argument("rasters", nargs="+", type=Path,
                        help="GeoTIFF/VRT/any GDAL raster (a lone VRT + --shard is split into its tiles)")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--checkpoint", help="a checkpoint file (ours, MMSeg, MTP: any layout with a trained decoder)")
    model.add_argument("--model", default="demo", help="'demo' (the embedded demo model, default), 'demo-instances' "
                                                        "(the embedded demo instance model: one polygon per building) "
                                                        "or a registered segmentor name (random weights: for speed "
                                                        "tests)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tile", type=int, default=None, help="tile size (must equal the model's input size)")
    parser.add_argument("--overlap", type=int, default=None,
                        help="tile overlap in pixels, 0 to tile-1 (default: the model card's)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (GPU; slow start, fast run)")
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation: every tile also flipped and rotated (the 8 symmetries of the "
                             "square), probabilities averaged (with instances: scores, boxes and masks averaged over "
                             "the views); costs 8x the model's time")
    parser.add_argument("--bands", default=None, help="raster bands fed as the model's R,G,B, e.g. 3,2,1")
    parser.add_argument("--threshold", type=float, default=None,
                        help="building probability threshold (default: argmax)")
    parser.add_argument("--min-area", type=float, default=4.0, help="drop polygons under this many m² (default 4)")
    parser.add_argument("--simplify", type=float, default=0.25,
                        help="simplify tolerance in metres (default 0.25; 0=off)")
    parser.add_argument("--regularize", action="store_true", help="right-angled building outlines")
    parser.add_argument("--semantic-only", action="store_true",
                        help="with a model that finds instances, use its semantic decoder alone (buildings that touch "
                             "then come out as one polygon)")
    parser.add_argument("--probabilities", action="store_true", help="also write NAME_prob.tif (uint8, P x 255)")
    parser.add_argument("--pixel-crs", action="store_true", help="accept rasters without georeference (pixel units)")
    parser.add_argument("--nodata", type=float, default=None,
                        help="band value to treat as nodata where the raster declares none, e.g. 0 for the black fill "
                             "around imagery (not segmented, nodata in the outputs)")
    parser.add_argument("--format", choices=("gpkg", "geojson", "shp"), default="gpkg", help="polygon file format")
    parser.add_argument("--shard", default=None, help="K/N: process every N-th raster from K (default: Slurm array / "
                                                      "torchrun environment)")
    parser.add_argument("--overwrite", action="store_true", help="redo rasters whose outputs already exist")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first raster that fails")
    parser.set_defaults(func=run)


@dataclass(frozen=True)
class Failure:
    raster: Path
    kind: str  # "input" (a user error: the message says what to do) or "bug" (the traceback was printed)
    message: str


def _bound_gdal_cache() -> None:
    """Our own process only (never inside QGIS): a fixed block cache unless the user set GDAL_CACHEMAX."""
    from osgeo import gdal

    if "GDAL_CACHEMAX" not in os.environ:
        gdal.SetCacheMax(GDAL_CACHE_BYTES)


def load_predictor(args: argparse.Namespace):
    from mtp_core.inference import Predictor
    from mtp_core.models import create_model, default_card

    device = args.device
    if device == "auto" and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        device = f"cuda:{os.environ['LOCAL_RANK']}"  # one GPU per torchrun process
    options = dict(device=device, batch_size=args.batch_size, compile=args.compile, overlap=args.overlap,
                   threshold=args.threshold, tta=args.tta)
    instances = not args.semantic_only
    embedded = {"demo": DEMO_CHECKPOINT, "demo-instances": DEMO_INSTANCES_CHECKPOINT}
    if args.checkpoint:
        predictor = Predictor.from_checkpoint(args.checkpoint, instances=instances, **options)
    elif args.model in embedded:
        if not embedded[args.model].is_file():
            raise UserError(f"the embedded model is missing ({embedded[args.model]}): reinstall the package")
        predictor = Predictor.from_checkpoint(embedded[args.model], instances=instances, **options)
    else:
        print(f"warning: --model {args.model} without --checkpoint runs RANDOM weights (for speed tests only)",
              file=sys.stderr)
        predictor = Predictor(create_model(args.model), default_card(args.model), **options)
    if args.tile and args.tile != predictor.card.tile:
        raise UserError(f"this model takes {predictor.card.tile} px tiles (its full-attention blocks are built for "
                        f"that size); --tile {args.tile} is not possible with it")
    return predictor


def progress_printer(name: str, stream=sys.stderr) -> Callable[[Progress], None]:
    """Progress on one rewritten line in a terminal; plain lines every 10 % in logs (Slurm's .out files)."""
    from mtp_core.pipeline import progress_line

    terminal = stream.isatty()
    last = [0.0, -1, -1.0]  # time, count and fraction of the last line shown

    def show(p: Progress) -> None:
        now = time.monotonic()
        if terminal:
            if p.done != last[1] and (now - last[0] >= 0.5 or p.done == p.total):
                last[0], last[1] = now, p.done
                print(f"\r{name}: {progress_line(p)}", end="\n" if p.done == p.total else "", file=stream, flush=True)
        elif p.fraction - last[2] >= 0.1 or (p.done == p.total and last[2] < 1.0):
            last[2] = p.fraction
            print(f"{name}: {progress_line(p)}", file=stream, flush=True)

    return show


def run(args: argparse.Namespace) -> int:
    from mtp_core.pipeline import extract_buildings, job_scaler, parse_bands
    from mtp_core.shard import parse_shard, select_shard

    _bound_gdal_cache()
    index, count = parse_shard(args.shard)
    rasters = select_shard(args.rasters, index, count)
    bands = parse_bands(args.bands)
    predictor = load_predictor(args)
    scaler = job_scaler(predictor.card, args.rasters, bands, args.nodata)  # every raster and shard scaled alike
    print(f"device: {predictor.describe()}")
    print(f"model: {predictor.card.description or predictor.card.architecture} "
          f"({predictor.card.tile} px tiles, overlap {predictor.overlap}, {predictor.card.gsd_m} m/px)")
    for line in predictor.weights_summary():
        print(f"  {line}")
    if count > 1:
        print(f"shard {index}/{count}: {len(rasters)} raster(s)")
    failures: list[Failure] = []
    total_buildings = 0
    for raster in rasters:
        try:
            result = extract_buildings(
                predictor, raster, args.out, bands=bands, probabilities=args.probabilities,
                min_area_m2=args.min_area, simplify_m=args.simplify, regularize=args.regularize,
                pixel_crs=args.pixel_crs, nodata=args.nodata, scaler=scaler, skip_existing=not args.overwrite,
                vector_ext=f".{args.format}", progress=progress_printer(raster.name),
            )
        except (UserError, OSError) as exc:
            failures.append(Failure(raster, "input", str(exc)))
            print(f"{raster.name}: FAILED: {exc}", file=sys.stderr)
        except Exception as exc:  # noqa: BLE001  (a bug: reported with its traceback, the batch goes on)
            traceback.print_exc()
            failures.append(Failure(raster, "bug", f"{type(exc).__name__}: {exc}"))
            print(f"{raster.name}: FAILED (a bug in mtp_core: please report it with the traceback above)",
                  file=sys.stderr)
        else:
            total_buildings += _print_result(raster, result)
            continue
        if args.fail_fast:
            break
    _write_failures(failures, args.out, index, count)
    if len(rasters) > 1 or failures:
        print(f"{len(rasters)} raster(s): {len(rasters) - len(failures)} done, {len(failures)} failed; "
              f"{total_buildings} buildings")
    if failures:
        print("failed:\n" + "\n".join(f"  {f.raster}: {f.message}" for f in failures), file=sys.stderr)
        return 1
    return 0


def _print_result(raster: Path, result) -> int:
    if result.prediction is None:
        print(f"{raster.name}: outputs exist, skipped ({result.vector_path}); --overwrite to redo")
        return 0
    stats, km2 = result.prediction.stats, result.prediction.km2
    rate = f", {km2 / stats.seconds:.3f} km²/s" if km2 and stats.seconds > 0 else ""
    print(f"{raster.name}: {stats.tiles_run} tiles ({stats.tiles_skipped} nodata skipped) in {stats.seconds:.1f} s "
          f"({stats.tiles_per_s:.1f} tiles/s{rate}); {result.buildings} buildings -> {result.vector_path}, "
          f"{result.mask_path}")
    return result.buildings


def _write_failures(failures: list[Failure], out: Path, index: int, count: int) -> None:
    """``failures.csv`` (per shard when sharded) listing this run's failed rasters; removed when none failed, so a
    file there always describes the latest run."""
    from mtp_core.io import atomic_path

    path = out / ("failures.csv" if count == 1 else f"failures_shard{index}-of-{count}.csv")
    if not failures:
        path.unlink(missing_ok=True)
        return
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["raster", "kind", "message"])
        writer.writerows([str(f.raster), f.kind, f.message] for f in failures)
