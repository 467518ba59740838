"""``mtp evaluate``: building polygons against a reference, SpaceNet's rules."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("evaluate", help="building polygons vs reference: TP/FP/FN, precision, recall, F1")
    parser.add_argument("pred", help="predicted polygons (.gpkg/.geojson/SpaceNet .csv)")
    parser.add_argument("truth", help="reference polygons (.gpkg/.geojson/SpaceNet .csv)")
    parser.add_argument("--iou", type=float, default=0.5)
    parser.add_argument("--min-area", type=float, default=None,
                        help="SpaceNet's area filter: default 20 px² for CSVs, 5 m² (20 px² at 0.5 m) for vector files")
    parser.add_argument("--rules", choices=("spacenet", "spacenet1"), default="spacenet")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mtp_core.metrics import evaluate_files

    results = evaluate_files(args.pred, args.truth, iou_threshold=args.iou, min_area=args.min_area, rules=args.rules)
    print(f"{'area':<24}{'TP':>7}{'FP':>7}{'FN':>7}{'precision':>11}{'recall':>9}{'F1':>9}")
    for name, r in results.items():
        print(f"{name:<24}{r.tp:>7}{r.fp:>7}{r.fn:>7}{r.precision:>11.4f}{r.recall:>9.4f}{r.f1:>9.4f}")
    return 0
