"""`mtp demo` (what `make demo` runs), end to end in its own process as a user runs it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from osgeo import gdal


def test_demo_runs_the_main_job_and_scores_it(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "mtp_core.cli", "demo", "--out", str(tmp_path), "--size", "512",
                          "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr  # a crash (e.g. a segfault at the preview) fails here
    out = run.stdout
    assert "device: cpu" in out and "tiles/s" in out and "km²/s" in out and "buildings ->" in out
    f1 = float(out.split("polygon F1 against the labels: ")[1].split()[0])
    assert f1 >= 0.8
    for name in ("demo_scene_mask.tif", "demo_scene_buildings.gpkg", "demo_preview.png"):
        assert (tmp_path / name).stat().st_size > 0
    preview = gdal.Open(str(tmp_path / "demo_preview.png"))
    assert (preview.RasterXSize, preview.RasterYSize, preview.RasterCount) == (512, 512, 3)
