"""The tiled pipeline's cost on any device, without GDAL: ``Predictor.run`` over an in-memory raster (prefetch,
normalization, batching, blending, classification) against the model alone on the same number of tiles.

On a GPU machine without GDAL/shapely this is the end-to-end ratio of the main job minus file I/O (reads and writes
overlap the model in their own thread on a real run). Goal on an H100 with ViT-B + RVSA + UperNet: >= 0.85.

    python bench/pipeline_speed.py --model mtp_vit_b_rvsa_upernet --size 8192 --device cuda --batch-size 64 [--compile]
    .venv/bin/python bench/pipeline_speed.py --model mtp_vit_tiny_rvsa_upernet --size 1024 --device cpu --batch-size 8
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mtp_core.inference import ArraySink, ArraySource, Predictor
from mtp_core.models import create_model, default_card
from mtp_core.tiling import TileGrid
from mtp_tools.testing import det_init_


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mtp_vit_b_rvsa_upernet")
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    model = create_model(args.model)
    det_init_(model)
    card = default_card(args.model)
    predictor = Predictor(model, card, device=args.device, batch_size=args.batch_size, compile=args.compile)
    print(f"device: {predictor.describe()}; {args.model}, {card.tile} px tiles, overlap {predictor.overlap}"
          f"{', compiled' if args.compile else ''}", flush=True)
    rng = np.random.default_rng(0)
    warm = rng.integers(0, 256, (card.tile, card.tile * 2, 3)).astype(np.float32)
    predictor.predict_array(warm)  # warm-up (and compilation) outside the timings
    synchronize(predictor.device)

    image = rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8).astype(np.float32)
    source, sink = ArraySource(image), ArraySink(args.size, args.size, card.num_classes)
    start = time.perf_counter()
    stats = predictor.run(source, sink)
    synchronize(predictor.device)
    e2e = time.perf_counter() - start

    grid = TileGrid(args.size, args.size, card.tile, predictor.overlap)
    batch = rng.normal(size=(args.batch_size, 3, card.tile, card.tile)).astype(np.float32)
    steps = -(-len(grid) // args.batch_size)
    start = time.perf_counter()
    for _ in range(steps):
        predictor.infer(batch)
    synchronize(predictor.device)
    model_only = time.perf_counter() - start
    e2e_rate, model_rate = stats.tiles_run / e2e, steps * args.batch_size / model_only
    print(f"{args.size}x{args.size} px, {stats.tiles_run} tiles, batch {predictor.batch_size}")
    print(f"pipeline (in memory): {e2e_rate:.1f} tiles/s ({e2e:.1f} s)")
    print(f"model only:           {model_rate:.1f} tiles/s ({model_only:.1f} s)")
    print(f"ratio pipeline / model-only: {e2e_rate / model_rate:.3f} (goal >= 0.85 on the GPU)")


if __name__ == "__main__":
    main()
