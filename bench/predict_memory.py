"""Memory of `mtp predict` on a small and a large raster: peak RSS must not grow with raster size.

Goal: the 16k x 16k run peaks at <= 1.15x the 2k x 2k run and under 1.5 GB (demo model, CPU). Each run is a separate
process; the large one takes minutes on 2 CPU cores. ``--change`` measures `mtp change` instead (demo change
detector; the second date is the raster shifted by half a pixel, so it is read through a warped VRT).

    .venv/bin/python bench/predict_memory.py [--small 2048] [--large 16384] [--workdir /tmp/mtp-bench]
    .venv/bin/python bench/predict_memory.py --change --small 1024 --large 4096
    .venv/bin/python bench/predict_memory.py --model demo-instances  (detections, merging and instance rows stream too)
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rasters import synthetic_raster  # noqa: E402

PEAK = "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; " \
       "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)"


def shifted_copy(raster: Path) -> Path:
    """A VRT of ``raster`` moved by half a pixel east: another grid, the same pixels."""
    from osgeo import gdal

    path = raster.with_name(raster.stem + "_after.vrt")
    vrt = gdal.Translate(str(path), str(raster), format="VRT")
    gt = list(vrt.GetGeoTransform())
    gt[0] += gt[1] / 2
    vrt.SetGeoTransform(gt)
    vrt = None  # written when closed
    return path


def peak_rss_mb(raster: Path, out: Path, change: bool = False, model: str = "demo") -> tuple[float, float]:
    if change:
        job = ["change", str(raster), str(shifted_copy(raster))]
    else:
        job = ["predict", str(raster), "--model", model]
    cmd = [sys.executable, "-m", "mtp_core.cli", *job, "--out", str(out), "--overwrite", "--device", "cpu"]
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", PEAK, *cmd], capture_output=True, text=True, check=True)
    return int(result.stdout.strip().splitlines()[-1]) / 1024, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=2048)
    parser.add_argument("--large", type=int, default=16384)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mtp-bench"))
    parser.add_argument("--change", action="store_true", help="measure mtp change (two dates) instead")
    parser.add_argument("--model", default="demo", help="mtp predict's model: demo, or demo-instances for the instance "
                                                        "path")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in (args.small, args.large):
        raster = synthetic_raster(args.workdir / f"synthetic_{size}.tif", size)
        mb, seconds = peak_rss_mb(raster, args.workdir / f"out_{size}", args.change, args.model)
        rows.append((size, mb, seconds))
        print(f"{size:>6} x {size:<6} peak RSS {mb:8.1f} MB  ({seconds:.0f} s)", flush=True)
    ratio = rows[1][1] / rows[0][1]
    print(f"large / small peak RSS: {ratio:.3f} (goal <= 1.15); large peak {rows[1][1]:.0f} MB (goal < 1500)")


if __name__ == "__main__":
    main()
