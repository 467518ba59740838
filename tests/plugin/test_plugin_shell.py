"""The plugin loads and unloads cleanly in real QGIS, with or without torch installed, and says what it needs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import tomllib

import qgis_plugin
from qgis_plugin.dependencies import REQUIREMENTS, check_dependencies, version_tuple
from qgis_plugin.diagnostics import diagnostics_text

REPO = Path(__file__).resolve().parents[2]


def test_load_adds_menu_and_toolbar_entries_and_unload_removes_them(iface) -> None:
    plugin = qgis_plugin.classFactory(iface)
    plugin.initGui()
    assert [a.objectName() for a in iface.toolbar.actions()] == ["mtpDockAction", "mtpEnvironmentAction"]
    assert [m.text() for m in iface.raster_menu.actions()] == ["&MTP for QGIS"]
    dock_icon, environment_icon = (a.icon().pixmap(32, 32).toImage() for a in iface.toolbar.actions())
    assert not dock_icon.isNull() and not environment_icon.isNull() and dock_icon != environment_icon
    plugin.unload()
    assert iface.toolbar.actions() == [] and iface.raster_menu.actions() == []


def test_importing_the_plugin_imports_no_torch() -> None:
    code = "import sys, qgis_plugin, qgis_plugin.plugin; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_without_torch_the_menus_load_and_say_what_is_missing(iface, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # makes find_spec/import fail as if not installed
    monkeypatch.setitem(sys.modules, "timm", None)
    status = check_dependencies()
    assert status.missing == ("torch", "timm") and not status.ok
    assert status.summary() == "MTP cannot run yet: torch is missing; timm is missing."
    plugin = qgis_plugin.classFactory(iface)
    plugin.initGui()
    assert len(iface.toolbar.actions()) == 2
    plugin.unload()


def test_the_minimum_versions_are_those_of_pyproject() -> None:
    ranges = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    lower = {spec.split(">=")[0].strip(): spec.split(">=")[1].split(",")[0].split()[0].strip('"')
             for spec in ranges if ">=" in spec}
    for requirement in REQUIREMENTS:
        if requirement.name in lower:
            assert requirement.minimum == lower[requirement.name], requirement.name
    assert {r.name: r.minimum for r in REQUIREMENTS if r.name in ("torch", "shapely")} == {"torch": "2.6",
                                                                                          "shapely": "2.1"}
    assert version_tuple("2.14.1+cu130") == (2, 14, 1) and version_tuple("1.8.5") < version_tuple("2.1")


FIND_OLD_SHAPELY = """
import json, sys
sys.path.insert(0, sys.argv[1])  # before anything imported shapely, as Debian's dist-packages would be
from qgis_plugin.dependencies import find
found = find("shapely", "2.1")
print(json.dumps({"version": found.version, "ok": found.ok, "problem": found.problem(), "folder": found.folder}))
"""


def test_an_old_shapely_is_reported_with_its_version_and_folder(tmp_path) -> None:
    """Debian 12's python3-shapely (1.8.5, installed as an egg-info beside the package) must not count as present."""
    (tmp_path / "shapely").mkdir()
    (tmp_path / "shapely" / "__init__.py").write_text('__version__ = "1.8.5"\n')
    (tmp_path / "Shapely-1.8.5.egg-info").write_text("Metadata-Version: 2.1\nName: Shapely\nVersion: 1.8.5\n")
    env = dict(os.environ, PYTHONPATH=str(REPO), QT_QPA_PLATFORM="offscreen")
    out = subprocess.run([sys.executable, "-c", FIND_OLD_SHAPELY, str(tmp_path)], capture_output=True, text=True,
                         env=env, timeout=120, check=True)
    found = json.loads(out.stdout.splitlines()[-1])
    assert found["version"] == "1.8.5" and not found["ok"] and found["folder"] == str(tmp_path)
    assert found["problem"].startswith("shapely 1.8.5 (another folder on sys.path (PYTHONPATH?)) is too old: MTP "
                                       "needs shapely 2.1 or newer")


def test_diagnostics_say_what_a_bug_report_needs(iface) -> None:
    from qgis.core import Qgis, QgsMessageLog

    from qgis_plugin.log_book import log_book

    log_book.start()
    QgsMessageLog.logMessage("cannot start: something the user did", "MTP", Qgis.Warning)
    text = diagnostics_text()
    log_book.stop()
    lines = text.splitlines()
    assert lines[0].startswith("MTP for QGIS 0.1.0 diagnostics")
    for start in ("QGIS: 3.", "Python: 3.", "Plugin folder: ", "Engine (mtp_core): ", "Dependency folder: ",
                  "Device: cpu", "CUDA: ", "OpenGL: ", "torch.compile: "):
        assert any(line.startswith(start) for line in lines), start
    assert f"interpreter: {os.path.realpath('/usr/bin/python3')}" in text  # QGIS's own, not this venv's or PATH's
    for name in ("torch", "torchvision", "timm", "shapely", "numpy", "osgeo"):
        assert any(line.strip().startswith(f"{name} ") and " from " in line for line in lines), name
    assert lines[-1].endswith("cannot start: something the user did")
