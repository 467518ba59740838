"""Touching buildings: polygon F1 of the semantic-only path against the instance path of the same model.

Goal: on scenes where at least 40 % of the buildings share a wall with another, instances reach polygon F1 >= 0.90
and at least 0.10 more than semantic-only. Scenes are ``mtp synth --touching`` scenes with seeds the demo model never
saw (its training used 2000-2099 and 3000-3039, its validation 9100-9103); both paths run the main job
(``extract_buildings``) with one checkpoint, with and without its instance decoder, and are scored with SpaceNet's
rules (mtp_tools.touching_compare). Ends with exactly one line:
``touching scenes: polygon F1 semantic-only S, instances I``.

    .venv/bin/python bench/instances.py [--checkpoint CKPT] [--scenes 4] [--size 512] [--touching 0.5] [--device cpu]
        [--tta]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from mtp_core.inference import InstancePredictor, Predictor
from mtp_core.weights import DEMO_INSTANCES_CHECKPOINT
from mtp_tools.touching_compare import compare, summary_line, total

FIRST_SEED = 424200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=DEMO_INSTANCES_CHECKPOINT)
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--touching", type=float, default=0.5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tta", action="store_true", help="both paths with test-time augmentation (8 views)")
    parser.add_argument("--out", type=Path, default=None, help="keep the scenes and both jobs' outputs here")
    args = parser.parse_args()

    instances = InstancePredictor.from_checkpoint(args.checkpoint, device=args.device, tta=args.tta)
    semantic = Predictor.from_checkpoint(args.checkpoint, device=args.device, instances=False, tta=args.tta)
    print(f"model: {instances.card.description or instances.card.architecture} ({args.checkpoint.name})")
    print(f"device: {instances.describe()}")
    start = time.perf_counter()
    scores = compare(semantic, instances, range(FIRST_SEED, FIRST_SEED + args.scenes), args.size, args.touching,
                     args.out)
    print(f"{'seed':>7} {'buildings':>9} {'touching':>8} | {'semantic-only F1 (TP/FP/FN)':>28} | "
          f"{'instances F1 (TP/FP/FN)':>24}")
    for s in scores:
        print(f"{s.seed:>7} {s.buildings:>9} {s.touching:>8.0%} | {s.semantic.f1:>8.3f} "
              f"({s.semantic.tp}/{s.semantic.fp}/{s.semantic.fn}){'':>8} | {s.instances.f1:>8.3f} "
              f"({s.instances.tp}/{s.instances.fp}/{s.instances.fn})")
    sem, ins = total([s.semantic for s in scores]), total([s.instances for s in scores])
    touching = sum(s.touching * s.buildings for s in scores) / max(sum(s.buildings for s in scores), 1)
    print(f"all {len(scores)} scenes ({touching:.0%} of {sum(s.buildings for s in scores)} buildings touching), "
          f"{time.perf_counter() - start:.0f} s: semantic-only P {sem.precision:.3f} R {sem.recall:.3f}; "
          f"instances P {ins.precision:.3f} R {ins.recall:.3f}")
    rows, alone = (np.sum([getattr(s, kind) for s in scores], axis=0) for kind in ("in_rows", "alone"))
    print(f"houses found (some polygon with IoU > 0.5): in rows {rows[1] / max(rows[0], 1):.1%} semantic-only, "
          f"{rows[2] / max(rows[0], 1):.1%} instances (of {rows[0]}); standing alone {alone[1] / max(alone[0], 1):.1%}"
          f" and {alone[2] / max(alone[0], 1):.1%} (of {alone[0]})")
    print(summary_line(scores))


if __name__ == "__main__":
    main()
