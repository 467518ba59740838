"""The plugin loads and unloads cleanly in real QGIS, with or without torch installed."""
from __future__ import annotations

import subprocess
import sys

import qgis_plugin
from qgis_plugin.environment import check_dependencies, environment_report


def test_load_adds_menu_and_toolbar_entries_and_unload_removes_them(iface) -> None:
    plugin = qgis_plugin.classFactory(iface)
    plugin.initGui()
    assert [a.objectName() for a in iface.toolbar.actions()] == ["mtpDockAction", "mtpEnvironmentAction"]
    assert [m.text() for m in iface.raster_menu.actions()] == ["&MTP for QGIS"]
    plugin.unload()
    assert iface.toolbar.actions() == [] and iface.raster_menu.actions() == []


def test_importing_the_plugin_imports_no_torch() -> None:
    code = "import sys, qgis_plugin, qgis_plugin.plugin; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_without_torch_the_menus_load_and_say_what_to_install(iface, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # makes find_spec/import fail as if not installed
    monkeypatch.setitem(sys.modules, "timm", None)
    status = check_dependencies()
    assert status.missing == ("torch", "timm")
    import numpy

    assert f'"numpy=={numpy.__version__}"' in status.install_command  # never upgrades QGIS's numpy
    assert '"torch>=2.1" "timm>=0.9"' in status.install_command
    assert "Install with:" in environment_report()
    plugin = qgis_plugin.classFactory(iface)
    plugin.initGui()
    assert len(iface.toolbar.actions()) == 2
    plugin.unload()


def test_with_torch_the_report_shows_the_device() -> None:
    assert check_dependencies().ok
    assert "device: " in environment_report()
