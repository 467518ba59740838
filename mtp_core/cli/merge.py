"""``mtp merge``: per-shard building layers -> one layer, buildings cut at raster borders made whole."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("merge", help="per-shard building layers -> one layer, buildings cut at borders made whole",
                            fromfile_prefix_chars="@")
    parser.add_argument("inputs", nargs="+", type=Path, help="building layers (e.g. out/*_buildings.gpkg)")
    parser.add_argument("--out", required=True, type=Path, help="merged .gpkg/.geojson/.shp")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mtp_core.merge import merge_layers

    count = merge_layers(args.inputs, args.out)
    print(f"{count} buildings from {len(args.inputs)} layer(s) -> {args.out}")
    return 0
