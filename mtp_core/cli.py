"""The ``mtp`` command line: predict, vectorize, evaluate, merge, convert-ckpt, synth, info.

Errors a user can fix (a missing file, a raster without georeference, a wrong band count, ...) are printed as one
line saying what to do, never as a traceback.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

import mtp_core
from mtp_core.device import describe_device, resolve_device


def _version(module_name: str) -> str:
    try:
        module = __import__(module_name)
    except ImportError as exc:
        return f"not installed ({exc})"
    return getattr(module, "__version__", "unknown")


def _gdal_version() -> str:
    try:
        from osgeo import gdal
    except ImportError as exc:
        return f"not installed ({exc}); Debian: apt-get install python3-gdal"
    return gdal.__version__


def _param_count(name: str) -> int:
    """Parameters of a registered model, counted on the meta device (no memory, no init cost)."""
    from mtp_core.models import create_model

    with torch.device("meta"):
        model = create_model(name)
    return sum(p.numel() for p in model.parameters())


def cmd_info(args: argparse.Namespace) -> int:
    from mtp_core.models import list_models, model_entry

    print(f"mtp_core {mtp_core.__version__} (Python {platform.python_version()}, {platform.platform()})")
    print(f"torch {torch.__version__}, timm {_version('timm')}, numpy {_version('numpy')}, "
          f"shapely {_version('shapely')}, GDAL {_gdal_version()}")
    device = resolve_device(args.device)
    print(f"device: {describe_device(device)}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            print(f"  visible: {describe_device(torch.device('cuda', i))}")
    print("models:")
    for name in list_models():
        entry = model_entry(name)
        print(f"  {name:<28} {entry.kind:<9} {_param_count(name) / 1e6:8.2f} M params  {entry.description}")
    return 0


def cmd_convert_ckpt(args: argparse.Namespace) -> int:
    from mtp_core.checkpoint import convert_checkpoint

    report = convert_checkpoint(
        args.src, args.dst, reuse_decoder=args.reuse_decoder, architecture=args.arch, num_classes=args.num_classes
    )
    print(report.summary())
    print(f"wrote {args.dst}")
    return 0


DEMO_CHECKPOINT = Path(__file__).resolve().parent / "weights" / "mtp_demo_synthetic.pth"
#: GDAL's default block cache (5 % of RAM) grows with the raster. Tiles are read row by row, so the cache only needs
#: one row of tiles of the input (384 x 16384 px x 3 bands = 19 MB) and of each output: 64 MB is plenty.
GDAL_CACHE_BYTES = 64 * 2**20


def _bound_gdal_cache() -> None:
    """Our own process only (never inside QGIS): a fixed block cache unless the user set GDAL_CACHEMAX."""
    import os

    from osgeo import gdal

    if "GDAL_CACHEMAX" not in os.environ:
        gdal.SetCacheMax(GDAL_CACHE_BYTES)


def _load_predictor(args: argparse.Namespace):
    from mtp_core.inference import Predictor
    from mtp_core.models import create_model, default_card

    device = args.device
    if device == "auto" and torch.cuda.is_available() and "LOCAL_RANK" in __import__("os").environ:
        device = f"cuda:{__import__('os').environ['LOCAL_RANK']}"  # one GPU per torchrun process
    options = dict(device=device, batch_size=args.batch_size, compile=args.compile, overlap=args.overlap,
                   threshold=args.threshold)
    if args.checkpoint:
        predictor = Predictor.from_checkpoint(args.checkpoint, **options)
    elif args.model == "demo":
        if not DEMO_CHECKPOINT.is_file():
            raise FileNotFoundError(f"the embedded demo model is missing ({DEMO_CHECKPOINT}): reinstall the package")
        predictor = Predictor.from_checkpoint(DEMO_CHECKPOINT, **options)
    else:
        print(f"warning: --model {args.model} without --checkpoint runs RANDOM weights (for speed tests only)",
              file=sys.stderr)
        predictor = Predictor(create_model(args.model), default_card(args.model), **options)
    if args.tile and args.tile != predictor.card.tile:
        raise ValueError(f"this model takes {predictor.card.tile} px tiles (its full-attention blocks are built for "
                         f"that size); --tile {args.tile} is not possible with it")
    return predictor


def _print_progress(name: str):
    from mtp_core.pipeline import progress_line

    last = [0.0, -1]  # time and count of the last line shown

    def show(p) -> None:
        now = time.monotonic()
        if p.done != last[1] and (now - last[0] >= 0.5 or p.done == p.total):
            last[0], last[1] = now, p.done
            end = "\n" if p.done == p.total else ""
            print(f"\r{name}: {progress_line(p)}", end=end, file=sys.stderr, flush=True)

    return show


def cmd_predict(args: argparse.Namespace) -> int:
    from mtp_core.pipeline import extract_buildings, parse_bands
    from mtp_core.shard import parse_shard, select_shard

    _bound_gdal_cache()
    index, count = parse_shard(args.shard)
    rasters = select_shard(args.rasters, index, count)
    missing = [str(r) for r in rasters if not r.exists()]
    if missing:
        raise FileNotFoundError(f"input raster(s) not found: {', '.join(missing)}")
    predictor = _load_predictor(args)
    print(f"device: {predictor.describe()}")
    print(f"model: {predictor.card.description or predictor.card.architecture} "
          f"({predictor.card.tile} px tiles, overlap {predictor.overlap}, {predictor.card.gsd_m} m/px)")
    if count > 1:
        print(f"shard {index}/{count}: {len(rasters)} raster(s)")
    total_buildings = 0
    for raster in rasters:
        result = extract_buildings(
            predictor, raster, args.out, bands=parse_bands(args.bands), probabilities=args.probabilities,
            min_area_m2=args.min_area, simplify_m=args.simplify, regularize=args.regularize,
            pixel_crs=args.pixel_crs, nodata=args.nodata, skip_existing=not args.overwrite,
            vector_ext=f".{args.format}",
            progress=_print_progress(raster.name),
        )
        if result.prediction is None:
            print(f"{raster.name}: outputs exist, skipped ({result.vector_path}); --overwrite to redo")
            continue
        stats = result.prediction.stats
        km2 = result.prediction.km2
        rate = f", {km2 / stats.seconds:.3f} km²/s" if km2 else ""
        print(f"{raster.name}: {stats.tiles_run} tiles ({stats.tiles_skipped} nodata skipped) in {stats.seconds:.1f} s "
              f"({stats.tiles_per_s:.1f} tiles/s{rate}); {result.buildings} buildings -> {result.vector_path}, "
              f"{result.mask_path}")
        total_buildings += result.buildings
    if len(rasters) > 1:
        print(f"{len(rasters)} rasters, {total_buildings} buildings")
    return 0


def cmd_vectorize(args: argparse.Namespace) -> int:
    from mtp_core.vectorize import vectorize_raster_to_file

    counts = vectorize_raster_to_file(args.mask, args.out, prob_raster_path=args.probabilities,
                                      min_area_m2=args.min_area, simplify_m=args.simplify, regularize=args.regularize,
                                      source=Path(args.mask).name)
    print(f"{counts['polygons']} polygons -> {args.out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mtp_core.metrics import evaluate_files

    results = evaluate_files(args.pred, args.truth, iou_threshold=args.iou, min_area=args.min_area, rules=args.rules)
    print(f"{'area':<24}{'TP':>7}{'FP':>7}{'FN':>7}{'precision':>11}{'recall':>9}{'F1':>9}")
    for name, r in results.items():
        print(f"{name:<24}{r.tp:>7}{r.fp:>7}{r.fn:>7}{r.precision:>11.4f}{r.recall:>9.4f}{r.f1:>9.4f}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from mtp_core.merge import merge_layers

    count = merge_layers(args.inputs, args.out)
    print(f"{count} buildings from {len(args.inputs)} layer(s) -> {args.out}")
    return 0


def cmd_synth(argv: list[str]) -> int:
    from mtp_core.synthetic import main as synth_main

    return synth_main(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtp", description="MTP remote-sensing models: inspect, convert, run.")
    parser.add_argument("--version", action="version", version=f"mtp_core {mtp_core.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pred = sub.add_parser("predict", help="rasters -> NAME_mask.tif + NAME_buildings.gpkg (the main job)",
                          fromfile_prefix_chars="@",
                          description="Segment georeferenced rasters tile by tile and write the class mask and the "
                                      "building polygons per raster. @FILE reads raster paths from a file.")
    pred.add_argument("rasters", nargs="+", type=Path, help="GeoTIFF/VRT/any GDAL raster (a lone VRT + --shard is "
                                                             "split into its tiles)")
    model = pred.add_mutually_exclusive_group()
    model.add_argument("--checkpoint", help="a checkpoint file (ours, MMSeg, MTP: any layout)")
    model.add_argument("--model", default="demo", help="'demo' (the embedded demo model, default) or a registered "
                                                        "segmentor name (random weights: for speed tests)")
    pred.add_argument("--out", required=True, type=Path, help="output folder")
    pred.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    pred.add_argument("--batch-size", type=int, default=8)
    pred.add_argument("--tile", type=int, default=None, help="tile size (must equal the model's input size)")
    pred.add_argument("--overlap", type=int, default=None, help="tile overlap in pixels (default: the model card's)")
    pred.add_argument("--compile", action="store_true", help="torch.compile the model (GPU; slow start, fast run)")
    pred.add_argument("--bands", default=None, help="raster bands fed as the model's R,G,B, e.g. 3,2,1")
    pred.add_argument("--threshold", type=float, default=None, help="building probability threshold (default: argmax)")
    pred.add_argument("--min-area", type=float, default=4.0, help="drop polygons under this many m² (default 4)")
    pred.add_argument("--simplify", type=float, default=0.25, help="simplify tolerance in metres (default 0.25; 0=off)")
    pred.add_argument("--regularize", action="store_true", help="right-angled building outlines")
    pred.add_argument("--probabilities", action="store_true", help="also write NAME_prob.tif (uint8, P x 255)")
    pred.add_argument("--pixel-crs", action="store_true", help="accept rasters without georeference (pixel units)")
    pred.add_argument("--nodata", type=float, default=None,
                      help="band value to treat as nodata where the raster declares none, e.g. 0 for the black fill "
                           "around imagery (not segmented, nodata in the outputs)")
    pred.add_argument("--format", choices=("gpkg", "geojson", "shp"), default="gpkg", help="polygon file format")
    pred.add_argument("--shard", default=None, help="K/N: process every N-th raster from K (default: Slurm array / "
                                                    "torchrun environment)")
    pred.add_argument("--overwrite", action="store_true", help="redo rasters whose outputs already exist")
    pred.set_defaults(func=cmd_predict)

    vec = sub.add_parser("vectorize", help="class raster -> building polygons")
    vec.add_argument("mask", help="class GeoTIFF (e.g. NAME_mask.tif)")
    vec.add_argument("out", type=Path, help="output .gpkg/.geojson/.shp")
    vec.add_argument("--probabilities", default=None, help="probability GeoTIFF for the score attribute")
    vec.add_argument("--min-area", type=float, default=4.0)
    vec.add_argument("--simplify", type=float, default=0.25)
    vec.add_argument("--regularize", action="store_true")
    vec.set_defaults(func=cmd_vectorize)

    ev = sub.add_parser("evaluate", help="building polygons vs reference: TP/FP/FN, precision, recall, F1")
    ev.add_argument("pred", help="predicted polygons (.gpkg/.geojson/SpaceNet .csv)")
    ev.add_argument("truth", help="reference polygons (.gpkg/.geojson/SpaceNet .csv)")
    ev.add_argument("--iou", type=float, default=0.5)
    ev.add_argument("--min-area", type=float, default=None,
                    help="SpaceNet's area filter: default 20 px² for CSVs, 5 m² (20 px² at 0.5 m) for vector files")
    ev.add_argument("--rules", choices=("spacenet", "spacenet1"), default="spacenet")
    ev.set_defaults(func=cmd_evaluate)

    mer = sub.add_parser("merge", help="per-shard building layers -> one layer, buildings cut at borders made whole",
                         fromfile_prefix_chars="@")
    mer.add_argument("inputs", nargs="+", type=Path, help="building layers (e.g. out/*_buildings.gpkg)")
    mer.add_argument("--out", required=True, type=Path, help="merged .gpkg/.geojson/.shp")
    mer.set_defaults(func=cmd_merge)

    info = sub.add_parser("info", help="versions, the compute device found, registered models")
    info.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    info.set_defaults(func=cmd_info)

    conv = sub.add_parser(
        "convert-ckpt",
        help="turn a released MTP/MAE/MMSeg checkpoint into a complete fine-tuning checkpoint (with model card)",
        description="Reads any MTP, MAE or MMSeg checkpoint layout safely (weights_only) and writes it atomically. "
        "none: backbone weights, resized to the fine-tuning size; semseg: also the pretrained UperNet decoder "
        "(256 channels); rotdet: the key renaming of MTP's scripts/change_ckpt.py, for MMRotate.",
    )
    conv.add_argument("src", help="input checkpoint (.pth)")
    conv.add_argument("dst", help="output checkpoint (.pth); written atomically")
    conv.add_argument("--reuse-decoder", choices=("none", "semseg", "rotdet"), default="none")
    conv.add_argument("--arch", default=None, help="target segmentor name (default: inferred from the weights)")
    conv.add_argument("--num-classes", type=int, default=None,
                      help="classes of the target head (default: the file's class count, else 2)")
    conv.set_defaults(func=cmd_convert_ckpt)

    sub.add_parser("synth", help="write synthetic 0.5 m scenes (GeoTIFF + building GeoJSON); see `mtp synth -h`",
                   add_help=False)
    sub.add_parser("demo", help="the main job on a synthetic scene with the embedded model (what `make demo` runs)",
                   add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["synth"]:  # its own parser (mtp_core.synthetic.main), shared with `python -m mtp_core.synthetic`
        return cmd_synth(argv[1:])
    if argv[:1] == ["demo"]:
        from mtp_core.demo import main as demo_main

        return demo_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as exc:  # bad input or an I/O problem: one line that says what, no traceback
        print(f"\nmtp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nmtp {args.command}: interrupted; no partial output was left", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
