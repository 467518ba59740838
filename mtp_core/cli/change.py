"""``mtp change``: pairs of rasters (before, after) in, ``NAME_change_mask.tif`` and ``NAME_changes.gpkg`` per pair out.

Pairs come as positional arguments taken two by two, or from ``--pairs FILE`` (one pair per line, the two paths
separated by a comma, a tab or spaces; ``#`` starts a comment). As ``mtp predict``: ``--shard K/N`` (or the Slurm
array / torchrun environment) takes every N-th pair, pairs whose outputs exist are skipped, and a pair that fails is
reported and the batch goes on: the failures are listed in ``failures.csv`` in ``--out`` and the exit status is 1.
"""
from __future__ import annotations

import argparse
import csv
import re
import sys
import traceback
from pathlib import Path

from mtp_core.cli.predict import Failure, _bound_gdal_cache, progress_printer
from mtp_core.errors import UserError
from mtp_core.weights import DEMO_CD_CHECKPOINT, DEMO_CHECKPOINT


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "change", help="before/after rasters -> NAME_change_mask.tif + NAME_changes.gpkg", fromfile_prefix_chars="@",
        description="Detect changes between two dates: the second raster is warped onto the first's grid at the "
                    "model's ground resolution, both are read tile by tile, and the change mask and change polygons "
                    "(with their ground area, score and, with --buildings, whether each is a new, demolished or "
                    "modified building) are written per pair. A pair that fails is reported and the batch goes on "
                    "(exit status 1 when any failed; see failures.csv in --out).")
    parser.add_argument("rasters", nargs="*", type=Path, metavar="BEFORE AFTER",
                        help="pairs of rasters, first date then second date (any GDAL raster)")
    parser.add_argument("--pairs", type=Path, help="a file of pairs: one 'before,after' per line")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--checkpoint", help="a change-detection checkpoint (ours, or an Open-CD file with MTP's "
                                            "UNet head)")
    model.add_argument("--model", default="demo", help="'demo' (the embedded demo change detector, default) or a "
                                                        "registered change detector (random weights: speed tests)")
    parser.add_argument("--buildings", default=None, metavar="CKPT",
                        help="a segmentation checkpoint ('demo' for the embedded one): each change gets its kind "
                             "(new / demolished / modified / other) from the buildings of both dates")
    parser.add_argument("--name", default=None, help="output name of a single pair (default: the shared file name, "
                                                      "x_before/x_after -> x)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--overlap", type=int, default=None, help="tile overlap in pixels (default: the card's)")
    parser.add_argument("--tta", action="store_true", help="every tile also flipped and rotated (8x the time)")
    parser.add_argument("--bands", default=None, help="bands of both rasters fed as R,G,B, e.g. 3,2,1")
    parser.add_argument("--threshold", type=float, default=None, help="change probability threshold (default: argmax)")
    parser.add_argument("--min-area", type=float, default=4.0, help="drop changes under this many m² (default 4)")
    parser.add_argument("--simplify", type=float, default=0.25, help="simplify tolerance in metres (0=off)")
    parser.add_argument("--regularize", action="store_true", help="right-angled outlines")
    parser.add_argument("--probabilities", action="store_true", help="also write NAME_change_prob.tif (P x 255)")
    parser.add_argument("--pixel-crs", action="store_true",
                        help="accept rasters without georeference (then both must have the same size)")
    parser.add_argument("--nodata", type=float, default=None, help="band value to treat as nodata in both rasters")
    parser.add_argument("--format", choices=("gpkg", "geojson", "shp"), default="gpkg", help="polygon file format")
    parser.add_argument("--shard", default=None, help="K/N: every N-th pair from K (default: Slurm array / torchrun)")
    parser.add_argument("--overwrite", action="store_true", help="redo pairs whose outputs already exist")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first pair that fails")
    parser.set_defaults(func=run)


def read_pairs(rasters: list[Path], pairs_file: Path | None) -> list[tuple[Path, Path]]:
    """The pairs of the command line and of ``--pairs``, in the order given."""
    if len(rasters) % 2:
        raise UserError(f"{len(rasters)} rasters were given: pairs need an even number (BEFORE AFTER BEFORE AFTER "
                        "...), or list them with --pairs FILE")
    pairs = [(rasters[i], rasters[i + 1]) for i in range(0, len(rasters), 2)]
    if pairs_file is not None:
        try:
            lines = pairs_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise UserError(f"cannot read the pairs file {pairs_file}: {exc.strerror}") from exc
        for number, line in enumerate(lines, 1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            parts = [p for p in re.split(r"\s*,\s*|\t|\s+", text) if p]
            if len(parts) != 2:
                raise UserError(f"{pairs_file}, line {number}: expected two paths (before, after), got {len(parts)}")
            pairs.append((Path(parts[0]), Path(parts[1])))
    if not pairs:
        raise UserError("no pairs given: mtp change BEFORE AFTER --out DIR (or --pairs FILE)")
    return pairs


def load_predictors(args: argparse.Namespace):
    """The change detector (and the building model of ``--buildings``) with the command's device and batching."""
    from mtp_core.inference import Predictor
    from mtp_core.models import create_model, default_card

    options = dict(device=args.device, batch_size=args.batch_size, overlap=args.overlap, threshold=args.threshold,
                   tta=args.tta)
    if args.checkpoint:
        predictor = Predictor.from_checkpoint(args.checkpoint, **options)
    elif args.model == "demo":
        if not DEMO_CD_CHECKPOINT.is_file():
            raise UserError(f"the embedded demo change detector is missing ({DEMO_CD_CHECKPOINT}): reinstall the "
                            "package")
        predictor = Predictor.from_checkpoint(DEMO_CD_CHECKPOINT, **options)
    else:
        print(f"warning: --model {args.model} without --checkpoint runs RANDOM weights (for speed tests only)",
              file=sys.stderr)
        predictor = Predictor(create_model(args.model), default_card(args.model), **options)
    buildings = None
    if args.buildings:
        path = DEMO_CHECKPOINT if args.buildings == "demo" else args.buildings
        buildings = Predictor.from_checkpoint(path, device=args.device, batch_size=args.batch_size, tta=args.tta)
    return predictor, buildings


def run(args: argparse.Namespace) -> int:
    from mtp_core.change import describe_kinds, detect_changes
    from mtp_core.pipeline import parse_bands
    from mtp_core.shard import parse_shard

    _bound_gdal_cache()
    pairs = read_pairs(list(args.rasters), args.pairs)
    if args.name and len(pairs) > 1:
        raise UserError(f"--name names one pair's outputs; {len(pairs)} pairs were given")
    index, count = parse_shard(args.shard)
    mine = sorted(dict.fromkeys(pairs))[index::count]
    bands = parse_bands(args.bands)
    predictor, buildings = load_predictors(args)
    print(f"device: {predictor.describe()}")
    print(f"model: {predictor.card.description or predictor.card.architecture} ({predictor.card.tile} px tiles, "
          f"overlap {predictor.overlap}, {predictor.card.gsd_m} m/px)")
    for line in predictor.weights_summary():
        print(f"  {line}")
    if buildings is not None:
        print(f"buildings: {buildings.card.description or buildings.card.architecture}")
    if count > 1:
        print(f"shard {index}/{count}: {len(mine)} pair(s)")
    failures: list[tuple[Failure, Path]] = []
    total = 0
    for before, after in mine:
        label = f"{before.name} -> {after.name}"
        try:
            result = detect_changes(
                predictor, before, after, args.out, name=args.name, buildings=buildings, bands=bands,
                probabilities=args.probabilities, min_area_m2=args.min_area, simplify_m=args.simplify,
                regularize=args.regularize, pixel_crs=args.pixel_crs, nodata=args.nodata,
                skip_existing=not args.overwrite, vector_ext=f".{args.format}", progress=progress_printer(label))
        except (UserError, OSError) as exc:
            failures.append((Failure(before, "input", str(exc)), after))
            print(f"{label}: FAILED: {exc}", file=sys.stderr)
        except Exception as exc:  # noqa: BLE001  (a bug: reported with its traceback, the batch goes on)
            traceback.print_exc()
            failures.append((Failure(before, "bug", f"{type(exc).__name__}: {exc}"), after))
            print(f"{label}: FAILED (a bug in mtp_core: please report it with the traceback above)", file=sys.stderr)
        else:
            if result.stats is None:
                print(f"{label}: outputs exist, skipped ({result.vector_path}); --overwrite to redo")
                continue
            kinds = describe_kinds(result.kinds)
            stats = result.stats
            print(f"{label}: {stats.tiles_run} tiles in {stats.seconds:.1f} s ({stats.tiles_per_s:.1f} tiles/s), "
                  f"{result.overlap:.0%} overlap; {result.changes} changes{f' ({kinds})' if kinds else ''} -> "
                  f"{result.vector_path}, {result.mask_path}")
            total += result.changes
            continue
        if args.fail_fast:
            break
    _write_failures(failures, args.out, index, count)
    if len(mine) > 1 or failures:
        print(f"{len(mine)} pair(s): {len(mine) - len(failures)} done, {len(failures)} failed; {total} changes")
    if failures:
        print("failed:\n" + "\n".join(f"  {f.raster} -> {after}: {f.message}" for f, after in failures),
              file=sys.stderr)
        return 1
    return 0


def _write_failures(failures: list[tuple[Failure, Path]], out: Path, index: int, count: int) -> None:
    """``failures.csv`` (per shard when sharded) of this run's failed pairs; removed when none failed."""
    from mtp_core.io import atomic_path

    path = out / ("failures.csv" if count == 1 else f"failures_shard{index}-of-{count}.csv")
    if not failures:
        path.unlink(missing_ok=True)
        return
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["before", "after", "kind", "message"])
        writer.writerows([str(f.raster), str(after), f.kind, f.message] for f, after in failures)
