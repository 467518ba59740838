"""Memory of `mtp predict` on a small and a large raster: peak RSS must not grow with raster size.

Goal: the 16k x 16k run peaks at <= 1.15x the 2k x 2k run and under 1.5 GB (demo model, CPU). Each run is a separate
process; the large one takes minutes on 2 CPU cores.

    .venv/bin/python bench/predict_memory.py [--small 2048] [--large 16384] [--workdir /tmp/mtp-bench]
        [--model demo-instances]  (the instance path: detections, merging and instance rows stream too)
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


def peak_rss_mb(raster: Path, out: Path, model: str = "demo") -> tuple[float, float]:
    cmd = [sys.executable, "-m", "mtp_core.cli", "predict", str(raster), "--out", str(out), "--overwrite",
           "--device", "cpu", "--model", model]
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", PEAK, *cmd], capture_output=True, text=True, check=True)
    return int(result.stdout.strip().splitlines()[-1]) / 1024, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=2048)
    parser.add_argument("--large", type=int, default=16384)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mtp-bench"))
    parser.add_argument("--model", default="demo", help="demo, or demo-instances for the instance path")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in (args.small, args.large):
        raster = synthetic_raster(args.workdir / f"synthetic_{size}.tif", size)
        mb, seconds = peak_rss_mb(raster, args.workdir / f"out_{size}", args.model)
        rows.append((size, mb, seconds))
        print(f"{size:>6} x {size:<6} peak RSS {mb:8.1f} MB  ({seconds:.0f} s)", flush=True)
    ratio = rows[1][1] / rows[0][1]
    print(f"large / small peak RSS: {ratio:.3f} (goal <= 1.15); large peak {rows[1][1]:.0f} MB (goal < 1500)")


if __name__ == "__main__":
    main()
