"""Vectorization speed on a large building mask: buildings/s and seconds for raw, simplified and regularized output.

The mask (default 6000 x 6000 px at 0.5 m, about 14,000 buildings) is a 4 x 4 mosaic of synthetic suburbs
(``mtp_tools.synthetic.render_scene``, so rotated houses, L-shapes and courtyards), written as a tiled GeoTIFF and
vectorized from the file block by block, as ``mtp vectorize`` does. Goal: 10,000 buildings in at most 5 s.

    .venv/bin/python bench/vectorize_speed.py
    .venv/bin/python bench/vectorize_speed.py --tile 500 --grid 2     # quick run
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from osgeo import gdal, osr

from mtp_core.vectorize import vectorize_raster
from mtp_tools.synthetic import render_scene

MODES = {
    "raw": {"min_area_m2": 0.0, "simplify_m": 0.0},
    "simplify": {"simplify_m": 0.25},
    "simplify+regularize": {"simplify_m": 0.25, "regularize": True},
}


def mosaic(tile: int, grid: int, gsd_m: float) -> np.ndarray:
    """``grid`` x ``grid`` synthetic suburbs of ``tile`` px; four distinct scenes, flipped for variety."""
    scenes = [render_scene(tile, tile, seed, gsd_m).mask for seed in range(min(4, grid * grid))]
    rows = []
    for i in range(grid):
        row = []
        for j in range(grid):
            m = scenes[(i * grid + j) % len(scenes)]
            row.append(m[::-1] if (i + j) % 2 else m[:, ::-1] if i % 2 else m)
        rows.append(np.concatenate(row, axis=1))
    return np.concatenate(rows, axis=0)


def write_mask(mask: np.ndarray, path: Path, gsd_m: float) -> None:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    ds = gdal.GetDriverByName("GTiff").Create(str(path), mask.shape[1], mask.shape[0], 1, gdal.GDT_Byte,
                                              ["TILED=YES", "COMPRESS=DEFLATE"])
    ds.SetGeoTransform((500000.0, gsd_m, 0.0, 4500000.0, 0.0, -gsd_m))
    ds.SetProjection(srs.ExportToWkt())
    ds.GetRasterBand(1).WriteArray(mask)
    ds = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile", type=int, default=1500, help="side of one synthetic scene in pixels")
    parser.add_argument("--grid", type=int, default=4, help="scenes per side of the mosaic")
    parser.add_argument("--gsd", type=float, default=0.5, help="metres per pixel")
    parser.add_argument("--block-rows", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3, help="runs per mode; the best is reported")
    args = parser.parse_args()
    gdal.UseExceptions()

    mask = mosaic(args.tile, args.grid, args.gsd)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mask.tif"
        write_mask(mask, path, args.gsd)
        print(f"mask {mask.shape[1]} x {mask.shape[0]} px at {args.gsd} m, {mask.mean():.1%} building cover, "
              f"block_rows {args.block_rows}")
        for name, options in MODES.items():
            seconds = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                result = vectorize_raster(str(path), block_rows=args.block_rows, **options)
                seconds.append(time.perf_counter() - start)
            best = min(seconds)
            n = len(result)
            extra = f", {result.counts['regularized']} regularized / {result.counts['reverted']} reverted" \
                if options.get("regularize") else ""
            print(f"{name:<20} {n:6d} buildings  {best:6.2f} s  {n / best:8.0f} buildings/s  "
                  f"({n and 10000 * best / n:.2f} s per 10,000; {result.counts['stitched']} stitched{extra})")


if __name__ == "__main__":
    main()
