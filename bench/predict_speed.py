"""CPU speed of the main job: end-to-end GeoTIFF -> mask throughput over model-only throughput on the same tiles.

Goal: >= 0.7 (reading, scaling, blending and writing hide behind the model). Also times vectorizing the mask.

    .venv/bin/python bench/predict_speed.py [--size 3072] [--batch-size 8]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rasters import synthetic_raster  # noqa: E402

from mtp_core.inference import Predictor  # noqa: E402
from mtp_core.pipeline import predict_raster  # noqa: E402
from mtp_core.tiling import TileGrid  # noqa: E402
from mtp_core.vectorize import vectorize_raster  # noqa: E402
from mtp_core.weights import DEMO_CHECKPOINT  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=3072)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mtp-bench"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    raster = synthetic_raster(args.workdir / f"synthetic_{args.size}.tif", args.size)
    predictor = Predictor.from_checkpoint(DEMO_CHECKPOINT, device="cpu", batch_size=args.batch_size)
    print(f"device: {predictor.describe()}")
    predictor.infer(np.zeros((args.batch_size, 3, predictor.card.tile, predictor.card.tile), np.float32))  # warm-up

    start = time.perf_counter()
    result = predict_raster(predictor, raster, args.workdir / "speed_mask.tif")
    e2e = time.perf_counter() - start
    tiles = result.stats.tiles_run

    grid = TileGrid(args.size, args.size, predictor.card.tile, predictor.overlap)
    batch = np.random.default_rng(0).normal(size=(args.batch_size, 3, grid.tile, grid.tile)).astype(np.float32)
    start = time.perf_counter()
    for _ in range(0, len(grid), args.batch_size):
        predictor.infer(batch)
    model_only = time.perf_counter() - start
    model_tiles = -(-len(grid) // args.batch_size) * args.batch_size

    start = time.perf_counter()
    vectors = vectorize_raster(str(result.mask_path), simplify_m=0.25)
    vec_s = time.perf_counter() - start
    print(f"{args.size}x{args.size} px = {result.km2:.2f} km², {tiles} tiles")
    print(f"end-to-end GeoTIFF -> mask: {tiles / e2e:.2f} tiles/s, {result.km2 / e2e:.3f} km²/s ({e2e:.1f} s)")
    print(f"model only: {model_tiles / model_only:.2f} tiles/s ({model_only:.1f} s)")
    print(f"ratio end-to-end / model-only: {(tiles / e2e) / (model_tiles / model_only):.3f} (goal >= 0.7)")
    print(f"vectorize: {len(vectors.geometries)} buildings in {vec_s:.2f} s")


if __name__ == "__main__":
    main()
