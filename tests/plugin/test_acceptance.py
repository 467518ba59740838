"""The acceptance walk-through (``walkthrough.py``) in its own QGIS process: the built zip installed into a fresh
profile, the dock on a synthetic scene and a real SpaceNet chip, five roofs clicked, ``mtp:extractbuildings`` over
several rasters, then unload and uninstall. The SpaceNet map is saved under ``tests/artifacts/`` for a person to see."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from mtp_tools.synthetic import render_scene, write_scene

from .test_plugin_zip import build

HERE = Path(__file__).resolve().parent
CHIPS = Path(__file__).resolve().parents[3] / "shared" / "realdata" / "spacenet1_AOI_0_TEST" / "AOI_0_TEST" / "3band"
ARTIFACTS = HERE.parent / "artifacts"


def test_a_new_user_installs_runs_clicks_batches_and_uninstalls(tmp_path) -> None:
    chips = [str(CHIPS / f"3band_013022223130_Public_img{i}.tif") for i in (10, 2, 3)]  # img10 has the most imagery
    assert all(Path(c).exists() for c in chips), f"the SpaceNet chips are missing from {CHIPS}"
    scene, _ = write_scene(render_scene(384, 384, seed=5), tmp_path / "scene.tif")
    plugin_zip = build(tmp_path / "mtp_qgis.zip")
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    done = subprocess.run([sys.executable, str(HERE / "walkthrough.py"), str(plugin_zip), str(tmp_path / "work"),
                           str(scene), *chips], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])

    assert seen["found"] and seen["started"] and seen["engine_from_zip"] and seen["docks_at_start"] == 0
    for run, crs in ((seen["dock_scene"], "EPSG:32633"), (seen["dock_chip"], "EPSG:4326")):
        assert run["layers"] == ["QgsRasterLayer", "QgsVectorLayer"] and run["crs"] == [crs, crs]
        assert {"id", "class", "score", "area_m2", "perimeter_m", "source", "model"} <= set(run["fields"])
        assert "buildings in" in run["status"]
    assert seen["dock_scene"]["buildings"] >= 20 and seen["dock_chip"]["buildings"] >= 5
    assert seen["dock_chip"]["largest_m2"] < 2000  # with Nodata 0 the black fill is not taken for a building
    clicks = seen["clicks"]
    assert clicks["added"] == clicks["equal_to_run"] == 5 and clicks["after_undo"] == 4
    assert clicks["message"].startswith("building added")
    assert [b["crs"] for b in seen["batch"]] == ["EPSG:4326"] * 3
    assert all(b["buildings"] == b["features"] for b in seen["batch"])
    assert seen["unloaded"]
    assert seen["left_after_unload"] == {"docks": 0, "toolbar": 0, "menu": 0, "provider": False, "modules": [],
                                         "installed": False}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp_path / "work" / "artifacts" / "spacenet_chip_buildings.png", ARTIFACTS)
