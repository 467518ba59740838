"""``mtp vectorize``: a class raster -> building polygons."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("vectorize", help="class raster -> building polygons")
    parser.add_argument("mask", help="class GeoTIFF (e.g. NAME_mask.tif)")
    parser.add_argument("out", type=Path, help="output .gpkg/.geojson/.shp")
    parser.add_argument("--probabilities", default=None, help="probability GeoTIFF for the score attribute")
    parser.add_argument("--min-area", type=float, default=4.0, help="drop polygons under this many m² (default 4)")
    parser.add_argument("--simplify", type=float, default=0.25, help="simplify tolerance in metres (default 0.25)")
    parser.add_argument("--regularize", action="store_true", help="right-angled building outlines")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mtp_core.vectorize import vectorize_raster_to_file

    counts = vectorize_raster_to_file(args.mask, args.out, prob_raster_path=args.probabilities,
                                      min_area_m2=args.min_area, simplify_m=args.simplify, regularize=args.regularize,
                                      source=Path(args.mask).name)
    print(f"{counts['polygons']} polygons -> {args.out}")
    return 0
