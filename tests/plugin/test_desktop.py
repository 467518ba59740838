"""The real QGIS desktop (the ``qgis`` binary) on an X server with OpenGL, as users run it.

Every other plugin test runs offscreen or in ``qgis_process``, which load no OpenGL: they never saw QGIS die with
SIGSEGV when the dock imported timm (triton's LLVM against Mesa's, see ``qgis_plugin/bootstrap.py``). Here Xvfb
provides GLX through Mesa, QGIS starts with a fresh profile holding the built zip, and ``desktop_session.py`` does in
it what a user does. The screenshots of the whole window land in ``tests/artifacts/`` for a person to look at.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .test_plugin_zip import build
from .test_processing import site_dirs_of

HERE = Path(__file__).resolve().parent
ARTIFACTS = HERE.parent / "artifacts"
CHIP = (HERE.parents[2] / "shared" / "realdata" / "spacenet1_AOI_0_TEST" / "AOI_0_TEST" / "3band"
        / "3band_013022223130_Public_img10.tif")


@pytest.fixture(scope="module")
def display(tmp_path_factory) -> str:
    """An Xvfb screen with GLX (Mesa's llvmpipe, as on Intel/AMD/VM desktops), on a free display number."""
    assert shutil.which("Xvfb") and shutil.which("qgis"), "Xvfb and QGIS come with `make setup` (scripts/setup.sh)"
    read, write = os.pipe()
    server = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1600x1000x24", "-nolisten", "tcp",
                               "+extension", "GLX"], pass_fds=[write], stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as answer:
        number = answer.readline().strip()  # written once the server accepts clients
    assert number, "Xvfb did not start"
    extensions = subprocess.run(["xdpyinfo", "-display", f":{number}"], capture_output=True, text=True, timeout=30)
    assert "GLX" in extensions.stdout, "the X server offers no OpenGL (GLX): the test would prove nothing"
    yield f":{number}"
    server.terminate()
    server.wait(timeout=30)


GRAB_SCREEN = """
import sys
from qgis.PyQt.QtWidgets import QApplication
app = QApplication([])
app.primaryScreen().grabWindow(0).save(sys.argv[1])
"""


def desktop(display: str, work: Path, name: str, pythonpath: list[str], install: bool = False, settings: str = "",
            timeout: float = 240, **extra: str | list[str]) -> dict:
    """Installs the built zip in a fresh profile, runs ``desktop_session.py`` in the ``qgis`` binary, and returns
    what it saw; QGIS must quit by itself with exit code 0."""
    profile = work / "profiles" / "profiles" / "default"
    zipfile.ZipFile(build(work / "mtp_qgis.zip")).extractall(profile / "python" / "plugins")  # Install from ZIP
    (profile / "QGIS").mkdir(parents=True)
    (profile / "QGIS" / "QGIS3.ini").write_text(f"[PythonPlugins]\nmtp_qgis=true\n{settings}", encoding="utf-8")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    spec = {"chip": str(CHIP), "work": str(work), "report": str(work / "report.json"),
            "screenshot": str(ARTIFACTS / f"{name}.png"), "install": install, **extra}
    env = {k: v for k, v in os.environ.items() if k not in ("QT_QPA_PLATFORM", "QT_XCB_GL_INTEGRATION", "PYTHONPATH")}
    # QGIS takes files under the temporary folder for temporary layers and asks about them on quitting: the
    # session's outputs are in this test's folder, so the temporary folder goes elsewhere
    env.update(DISPLAY=display, MTP_DESKTOP=json.dumps(spec), XDG_RUNTIME_DIR=str(work / "runtime"),
               TMPDIR=str(work / "tmp"), PYTHONPATH=os.pathsep.join(pythonpath))
    for folder in ("runtime", "tmp"):
        (work / folder).mkdir(mode=0o700)
    qgis = subprocess.Popen(["qgis", "--profiles-path", str(work / "profiles"), "--noversioncheck", "--nologo",
                             "--code", str(HERE / "desktop_session.py")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=work)
    try:
        log = qgis.communicate(timeout=timeout)[0][-4000:]
    except subprocess.TimeoutExpired:
        stuck = ARTIFACTS / f"{name}_stuck.png"
        subprocess.run([sys.executable, "-c", GRAB_SCREEN, str(stuck)], env=dict(env, QT_QPA_PLATFORM="xcb"),
                       timeout=60)
        qgis.kill()
        pytest.fail(f"QGIS did not finish within {timeout} s; the screen at that moment: {stuck}")
    assert qgis.returncode == 0 and "QGIS died" not in log, f"QGIS exited with {qgis.returncode}:\n{log}"
    seen = json.loads((work / "report.json").read_text(encoding="utf-8"))
    assert "error" not in seen, seen.get("error")
    return seen


def check_a_users_session(seen: dict) -> None:
    assert seen["plugin_loaded"] and seen["dock_opened"]["visible"] and seen["python_errors"] == []
    assert seen["triton"] == "None" and seen["triton_after"] == "None" and seen["timm_loaded"]  # timm, no triton
    assert "llvmpipe" in seen["opengl"] or "Mesa" in seen["opengl"], seen["opengl"]  # OpenGL was on, via Mesa
    run = seen["run"]
    assert "buildings in" in run["status"] and run["buildings"] >= 5
    assert run["layers"] == ["3band_013022223130_Public_img10 buildings", "3band_013022223130_Public_img10 classes"]
    click = seen["click"]
    assert click["tool_active"] and click["message"].startswith("building added") and click["features"] == 1
    assert click["iou_with_run"] > 0.9999 and click["saved"]  # the run's polygon (to rounding), saved in a new
    assert click["file"].endswith("dock_out/3band_013022223130_Public_img10_buildings.gpkg")  # GeoPackage
    assert seen["processing"]["buildings"] == seen["processing"]["features"] == run["buildings"]
    assert seen["dock"]["clipped"] == [] and not seen["dock"]["horizontal_scroll_bar"]
    assert seen["screenshot"]["saved"] and seen["screenshot"]["size"] == [1600, 1000]
    diagnostics = seen["diagnostics"].splitlines()
    assert seen["environment_screenshot"] and diagnostics[0].startswith("MTP for QGIS")
    assert ("torch.compile: off inside QGIS (triton is kept out of QGIS: its LLVM crashes the OpenGL driver's)"
            in diagnostics)
    assert any(line.startswith("OpenGL: llvmpipe") for line in diagnostics)
    # the plugin's messages replace each other (QGIS adds its own "Task complete" when a task took over 5 s and the
    # desktop shows no notifications, as under Xvfb)
    ours = [text for title, text in seen["message_bar"] if title.startswith("MTP")]
    assert len(ours) == 1 and "buildings in" in ours[0], seen["message_bar"]


def test_the_desktop_with_opengl_opens_the_dock_runs_and_clicks_without_crashing(display, tmp_path) -> None:
    assert CHIP.exists(), f"the SpaceNet chip is missing: {CHIP}"
    seen = desktop(display, tmp_path, "desktop_dock_run_click", site_dirs_of("torch", "timm", "shapely"))
    check_a_users_session(seen)
    assert seen["dock_opened"]["minimum_width"] <= 300, seen["dock_opened"]


def test_a_new_user_installs_the_dependencies_with_one_button_then_runs(display, tmp_path) -> None:
    """QGIS's Python without torch, timm or shapely (Debian 12, PEP 668): "Install dependencies" in the dock, then
    the same session runs from the plugin's folder. pip takes its packages where this machine's pip configuration
    says (local wheels and mirrors: "pip's own configured index" in the package sources), not from PyTorch's index."""
    assert CHIP.exists(), f"the SpaceNet chip is missing: {CHIP}"
    folder = tmp_path / "profiles" / "profiles" / "default" / "mtp_qgis"
    try:
        seen = desktop(display, tmp_path, "desktop_after_install", [], install=True,
                       settings="[mtp]\ninstall\\torch_index=pip\n", timeout=1200)
        before, install = seen["before_install"], seen["install"]
        assert before["panel_visible"] and not before["run_enabled"]
        assert "torch is missing; torchvision is missing; timm is missing; shapely is missing" in before["summary"]
        assert install["state"] == "done" and install["message"].endswith("MTP is ready."), install["message"]
        assert not install["panel_visible"] and install["run_enabled"] and install["log_lines"] > 10
        during = seen["while_installing"]
        assert during["button"] == "Cancel installation" and during["step"].startswith("installing PyTorch")
        assert 10 <= during["progress"] < 100 and during["clipped"] == [] and during["saved"]
        check_a_users_session(seen)
        environment = folder / "python3.11"
        site_packages = environment / "lib" / "python3.11" / "site-packages"
        for name in ("torch", "timm", "shapely"):
            assert Path(seen["modules_from"][name]).is_relative_to(site_packages), seen["modules_from"]
        assert seen["modules_from"]["numpy"].startswith("/usr/lib/python3/dist-packages/")  # QGIS's own numpy
        assert not list(site_packages.glob("numpy*"))  # never installed for the plugin
        assert (folder / "python3.11-install.log").read_text().count("Successfully installed") == 2
        print(f"installation: {seen['install_seconds']} s")
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # several GB: not left for pytest's kept temporary folders


def test_the_desktop_shows_changes_between_two_layers_and_the_house_under_a_click_in_a_row(display, tmp_path) -> None:
    """Two user paths of the dock in the real desktop: "Changes between two layers" (demo change detector, kinds from
    the demo building model) on a synthetic pair, then "Demo instances" on a scene of terraces and a click on a
    house that shares a wall: the click adds that house, not its row."""
    from mtp_tools.synthetic import write_scene
    from mtp_tools.synthetic.pair import render_pair, write_pair
    from mtp_tools.synthetic.touching import render_touching_scene

    before, after, _ = write_pair(render_pair(384, 384, 515100), tmp_path / "data", "town")
    tif, labels = write_scene(render_touching_scene(384, 384, 424298, 0.6), tmp_path / "data" / "terraces.tif",
                              tmp_path / "data" / "terraces.geojson")
    seen = desktop(display, tmp_path, "desktop", site_dirs_of("torch", "timm", "shapely"),
                   pair=[str(before), str(after)], touching=str(tif), touching_labels=str(labels))
    assert seen["python_errors"] == []
    changes = seen["changes"]
    assert changes["layers"] == ["town_before → town_after changes", "town_before → town_after change mask"], changes
    assert changes["renderer"] == "categorizedSymbol" and changes["saved"]
    assert sum(changes["kinds"].values()) >= 3 and {"new", "demolished"} <= set(changes["kinds"]), changes
    instances = seen["instances"]
    assert "one per building" in instances["status"] and instances["buildings"] >= 20 and instances["saved"], instances
    click = seen["click"]
    assert click["features"] == 1 and click["message"].startswith("building (instance, score"), click
    assert click["area_of_row"] > 1.5 and click["iou_with_house"] > 0.6, click  # the house, not its whole row
