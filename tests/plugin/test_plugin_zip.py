"""``make plugin``'s zip is what plugins.qgis.org accepts and what QGIS can run on its own, with mtp_core vendored."""
from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOP = "mtp_qgis"


def build(path: Path) -> Path:
    subprocess.run(["bash", str(REPO / "scripts" / "build_plugin.sh"), str(path)], check=True, capture_output=True)
    return path


@pytest.fixture(scope="module")
def plugin_zip(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("dist") / "mtp_qgis.zip")


def sources(folder: str) -> set[str]:
    """The files of a source folder that belong in the zip (caches excluded), relative to it."""
    root = REPO / folder
    return {p.relative_to(root).as_posix() for p in root.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
            and not any(part.startswith(".") for part in p.relative_to(root).parts)}


def test_the_zip_is_what_plugins_qgis_org_accepts(plugin_zip) -> None:
    assert plugin_zip.stat().st_size < 25 * 1024 * 1024
    names = zipfile.ZipFile(plugin_zip).namelist()
    assert TOP.isidentifier() and all(n.startswith(f"{TOP}/") for n in names)
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".pyo"))]
    # QGIS's installer names the plugin after the folder of the first metadata.txt it finds
    assert [n for n in names if n.endswith("metadata.txt")] == [f"{TOP}/metadata.txt"]
    metadata = configparser.ConfigParser(interpolation=None)
    metadata.read_string(zipfile.ZipFile(plugin_zip).read(f"{TOP}/metadata.txt").decode("utf-8"))
    assert metadata["general"]["hasProcessingProvider"] == "yes"
    assert f"{TOP}/{metadata['general']['icon']}" in names
    for required in ("LICENSE", "__init__.py", "processing/provider.py", "vendor/mtp_core/__init__.py",
                     "vendor/mtp_core/weights/mtp_demo_synthetic.pth"):
        assert f"{TOP}/{required}" in names


def test_the_zip_holds_the_whole_plugin_and_engine(plugin_zip) -> None:
    names = set(zipfile.ZipFile(plugin_zip).namelist())
    assert {f"{TOP}/{n}" for n in sources("qgis_plugin")} <= names
    assert {f"{TOP}/vendor/mtp_core/{n}" for n in sources("mtp_core")} <= names


def test_the_same_sources_build_the_same_zip(plugin_zip, tmp_path) -> None:
    assert build(tmp_path / "again.zip").read_bytes() == plugin_zip.read_bytes()


LOAD = """
import json, sys
from importlib.util import find_spec
plugins, path = sys.argv[1], json.loads(sys.argv[2])
sys.path[:] = path + [plugins]
assert find_spec("qgis_plugin") is None and find_spec("mtp_core") is None, "the repository is on sys.path"
from qgis.core import QgsApplication
app = QgsApplication([], False)
app.initQgis()
import mtp_qgis
plugin = mtp_qgis.classFactory(None)
plugin.initProcessing()
algorithms = sorted(a.id() for a in QgsApplication.processingRegistry().providerById("mtp").algorithms())
torch_before_run = "torch" in sys.modules
import mtp_core
plugin.unload()
print(json.dumps({"algorithms": algorithms, "torch_before_run": torch_before_run, "mtp_core": mtp_core.__file__,
                  "provider_left": QgsApplication.processingRegistry().providerById("mtp") is not None}))
"""


def test_class_factory_loads_from_the_unzipped_folder_with_its_vendored_engine(plugin_zip, tmp_path) -> None:
    plugins = tmp_path / "plugins"
    zipfile.ZipFile(plugin_zip).extractall(plugins)
    # the test's own sys.path (torch, QGIS) without the repository; -S keeps out the editable install's import hook
    path = [p for p in sys.path if p and Path(p).resolve() != REPO and "__editable__" not in p]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"QT_QPA_PLATFORM": "offscreen"}
    out = subprocess.run([sys.executable, "-S", "-c", LOAD, str(plugins), json.dumps(path)], capture_output=True,
                         text=True, env=env, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.splitlines()[-1])
    assert report["algorithms"] == ["mtp:changedetection", "mtp:evaluate", "mtp:extractbuildings", "mtp:segment",
                                    "mtp:vectorize"]
    assert not report["torch_before_run"]
    assert report["mtp_core"] == str(plugins / TOP / "vendor" / "mtp_core" / "__init__.py")
    assert not report["provider_left"]
