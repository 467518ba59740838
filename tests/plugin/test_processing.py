"""The ``mtp`` Processing provider in real QGIS: every algorithm gives what its ``mtp`` command gives.

One small synthetic scene (300 x 300 px, 4 tiles of the embedded demo model) and one ``mtp predict`` run serve as the
reference for all tests; ``qgis_process.bin`` runs the built plugin zip, as a user's QGIS would.
"""
from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import shapely
from osgeo import gdal, osr
from qgis.core import (
    QgsApplication,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProject,
    QgsVectorFileWriter,
)

import qgis_plugin
from mtp_core.cli import main as mtp
from mtp_core.io import read_vector
from mtp_core.weights import DEMO_CHECKPOINT
from mtp_tools.synthetic import render_scene, write_scene
from qgis_plugin.model_cache import ModelSpec
from qgis_plugin.processing import MTPProvider
from qgis_plugin.processing.algorithms import PREDICTORS

REPO = Path(__file__).resolve().parents[2]
#: root writes where permissions forbid it: the read-only folder is a read-only mount then
READ_ONLY_REASON = "Read-only file system" if os.geteuid() == 0 else "Permission denied"
QGIS_PROCESS = "/usr/bin/qgis_process.bin"  # Debian's /usr/bin/qgis_process wrapper fails headless
ALGORITHM_IDS = ["mtp:changedetection", "mtp:evaluate", "mtp:extractbuildings", "mtp:segment", "mtp:vectorize"]


@pytest.fixture(scope="module")
def processing_framework(qgis_app):
    import processing
    from processing.core.Processing import Processing

    Processing.initialize()
    return processing


@pytest.fixture
def run(processing_framework):
    """``processing.run`` with the provider registered for one test (unregistered again afterwards)."""
    provider = MTPProvider()
    assert QgsApplication.processingRegistry().addProvider(provider)
    yield processing_framework.run
    QgsApplication.processingRegistry().removeProvider(provider)


@pytest.fixture
def read_only_folder(tmp_path) -> Path:
    """A folder nothing can be written to, root included."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    if os.geteuid() == 0:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], check=True)
        yield folder
        subprocess.run(["umount", str(folder)], check=True)
    else:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("scene")
    tif, geojson = write_scene(render_scene(300, 300, seed=7), folder / "scene.tif", folder / "scene.geojson")
    return tif, geojson


@pytest.fixture(scope="module")
def cli(scene, tmp_path_factory) -> Path:
    """``mtp predict`` (default options, probabilities kept): scene_mask.tif, scene_buildings.gpkg, scene_prob.tif."""
    out = tmp_path_factory.mktemp("cli")
    assert mtp(["predict", str(scene[0]), "--out", str(out), "--probabilities", "--device", "cpu"]) == 0
    return out


def layer_rows(path: Path) -> tuple[list, list[dict], str]:
    """Geometries and attribute rows, sorted by normalized geometry (an order that does not depend on the writer)."""
    geoms, columns, crs = read_vector(path)
    rows = [dict(zip(columns, values)) for values in zip(*columns.values())] or [{} for _ in geoms]
    order = sorted(range(len(geoms)), key=lambda i: shapely.to_wkb(shapely.normalize(geoms[i])))
    return [geoms[i] for i in order], [rows[i] for i in order], crs


def assert_same_polygons(path: Path, expected: Path) -> None:
    geoms, rows, crs = layer_rows(path)
    want_geoms, want_rows, want_crs = layer_rows(expected)
    assert len(geoms) == len(want_geoms) > 0
    assert all(shapely.equals(a, b) for a, b in zip(geoms, want_geoms))
    assert rows == want_rows
    assert osr.SpatialReference(crs).IsSame(osr.SpatialReference(want_crs))


def assert_same_raster(path: Path, expected: Path) -> None:
    got, want = gdal.Open(str(path)), gdal.Open(str(expected))
    assert got.GetGeoTransform() == want.GetGeoTransform()
    assert osr.SpatialReference(got.GetProjection()).IsSame(osr.SpatialReference(want.GetProjection()))
    assert got.RasterCount == want.RasterCount
    for band in range(1, got.RasterCount + 1):
        assert got.GetRasterBand(band).GetNoDataValue() == want.GetRasterBand(band).GetNoDataValue()
        np.testing.assert_array_equal(got.GetRasterBand(band).ReadAsArray(), want.GetRasterBand(band).ReadAsArray())


def test_the_plugin_registers_the_provider_and_unload_removes_it(qgis_app, iface) -> None:
    registry = QgsApplication.processingRegistry()
    plugin = qgis_plugin.classFactory(iface)
    plugin.initGui()
    provider = registry.providerById("mtp")
    assert provider is not None and provider.name() == "MTP (building extraction)"
    assert sorted(a.id() for a in provider.algorithms()) == ALGORITHM_IDS
    assert not provider.icon().isNull()
    plugin.unload()
    assert registry.providerById("mtp") is None
    assert all(registry.algorithmById(i) is None for i in ALGORITHM_IDS)


def test_extractbuildings_gives_the_polygons_and_mask_of_mtp_predict(run, scene, cli, tmp_path) -> None:
    result = run("mtp:extractbuildings", {"INPUT": str(scene[0]), "DEVICE": "cpu", "OUTPUT": str(tmp_path / "b.gpkg"),
                                          "MASK": str(tmp_path / "m.tif")})
    assert result["BUILDINGS"] == len(read_vector(cli / "scene_buildings.gpkg")[0])
    assert_same_polygons(Path(result["OUTPUT"]), cli / "scene_buildings.gpkg")
    assert_same_raster(Path(result["MASK"]), cli / "scene_mask.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.gpkg", "m.tif"]  # no temporary folder left


def test_extractbuildings_writes_any_format_qgis_writes_with_the_same_polygons(run, scene, cli, tmp_path) -> None:
    result = run("mtp:extractbuildings", {"INPUT": str(scene[0]), "DEVICE": "cpu",
                                          "OUTPUT": str(tmp_path / "b.geojson")})
    assert result["MASK"] is None
    assert_same_polygons(Path(result["OUTPUT"]), cli / "scene_buildings.gpkg")
    result = run("mtp:extractbuildings", {"INPUT": str(scene[0]), "DEVICE": "cpu", "OUTPUT": str(tmp_path / "b.shp")})
    shapes, expected = layer_rows(Path(result["OUTPUT"]))[0], layer_rows(cli / "scene_buildings.gpkg")[0]
    assert len(shapes) == len(expected) and all(shapely.equals(a, b) for a, b in zip(shapes, expected))  # Shapefile
    # field names and numbers have its own limits (10 characters, 15 digits)
    assert {"b.geojson", "b.shp"} <= {p.name for p in tmp_path.iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_outputs_can_be_temporary_layers_as_in_the_modeler(run, scene, cli, tmp_path) -> None:
    result = run("mtp:extractbuildings", {"INPUT": str(scene[0]), "DEVICE": "cpu", "OUTPUT": "TEMPORARY_OUTPUT"})
    layer = result["OUTPUT"]
    assert layer.providerType() == "memory" and layer.featureCount() == result["BUILDINGS"] > 0
    written = tmp_path / "from_memory.gpkg"
    QgsVectorFileWriter.writeAsVectorFormatV3(layer, str(written), QgsProject.instance().transformContext(),
                                              QgsVectorFileWriter.SaveVectorOptions())
    assert_same_polygons(written, cli / "scene_buildings.gpkg")
    polygons = run("mtp:vectorize", {"INPUT": str(cli / "scene_mask.tif"), "OUTPUT": "TEMPORARY_OUTPUT"})
    assert polygons["OUTPUT"].featureCount() == polygons["POLYGONS"] > 0


def test_a_batch_loads_the_model_once(run, scene, tmp_path) -> None:
    """The batch dialog runs one algorithm instance per row: the same checkpoint and device load once."""
    second = tmp_path / "scene_copy.tif"
    shutil.copy(scene[0], second)
    PREDICTORS.clear()
    models, messages = [], []
    for raster in (scene[0], second, scene[0]):
        feedback = QgsProcessingFeedback()
        feedback.pushInfo = messages.append  # what the batch dialog's log shows
        run("mtp:extractbuildings", {"INPUT": str(raster), "DEVICE": "cpu", "OUTPUT": str(tmp_path / "b.gpkg")},
            feedback=feedback)
        models.append(PREDICTORS.get(ModelSpec(str(DEMO_CHECKPOINT), device="cpu", batch_size=8)))
    assert models[0] is models[1] is models[2]
    loads = [m for m in messages if m.startswith("model: ")]
    assert len(loads) == 3 and ["already loaded" in m for m in loads] == [False, True, True]


def test_an_output_folder_that_cannot_be_written_is_named_before_the_model_runs(run, scene, read_only_folder) -> None:
    for algorithm, parameter in (("mtp:extractbuildings", "OUTPUT"), ("mtp:extractbuildings", "MASK"),
                                 ("mtp:segment", "OUTPUT")):
        parameters = {"INPUT": str(scene[0]), "DEVICE": "cpu", "OUTPUT": "TEMPORARY_OUTPUT"}
        parameters[parameter] = str(read_only_folder / "out.tif" if parameter == "MASK" or algorithm == "mtp:segment"
                                    else read_only_folder / "out.gpkg")
        feedback = QgsProcessingFeedback()
        infos = []
        feedback.pushInfo = infos.append
        with pytest.raises(QgsProcessingException) as error:
            run(algorithm, parameters, feedback=feedback)
        assert str(error.value) == (f"{parameter}: cannot write to the folder {read_only_folder} "
                                    f"({READ_ONLY_REASON}); choose another folder")
        assert not any(i.startswith("device:") for i in infos)  # before the model was loaded


def test_segment_gives_the_class_raster_and_probabilities_of_mtp_predict(run, scene, cli, tmp_path) -> None:
    result = run("mtp:segment", {"INPUT": str(scene[0]), "DEVICE": "cpu", "OUTPUT": str(tmp_path / "classes.tif"),
                                 "PROBABILITIES": str(tmp_path / "prob.tif")})
    assert_same_raster(Path(result["OUTPUT"]), cli / "scene_mask.tif")
    assert_same_raster(Path(result["PROBABILITIES"]), cli / "scene_prob.tif")


def test_vectorize_gives_the_polygons_of_mtp_vectorize(run, cli, tmp_path) -> None:
    mask, prob = cli / "scene_mask.tif", cli / "scene_prob.tif"
    options = ["--min-area", "10", "--simplify", "0.5", "--regularize"]
    assert mtp(["vectorize", str(mask), str(tmp_path / "cli.gpkg"), "--probabilities", str(prob), *options]) == 0
    result = run("mtp:vectorize", {"INPUT": str(mask), "PROBABILITIES": str(prob), "MIN_AREA": 10, "SIMPLIFY": 0.5,
                                   "REGULARIZE": True, "OUTPUT": str(tmp_path / "alg.gpkg")})
    assert result["POLYGONS"] == len(read_vector(tmp_path / "cli.gpkg")[0])
    assert_same_polygons(Path(result["OUTPUT"]), tmp_path / "cli.gpkg")


def test_evaluate_gives_the_scores_of_mtp_evaluate(run, scene, cli, capsys) -> None:
    pred, truth = cli / "scene_buildings.gpkg", scene[1]
    capsys.readouterr()
    assert mtp(["evaluate", str(pred), str(truth), "--iou", "0.6", "--min-area", "10"]) == 0
    area, tp, fp, fn, precision, recall, f1 = capsys.readouterr().out.splitlines()[-1].split()
    result = run("mtp:evaluate", {"PREDICTION": f"{pred}|layername=buildings", "REFERENCE": str(truth), "IOU": 0.6,
                                  "MIN_AREA": 10, "OUTPUT": "memory:"})  # a GeoPackage layer as QGIS names it
    assert (area, result["TP"], result["FP"], result["FN"]) == ("all", int(tp), int(fp), int(fn))
    assert int(tp) > 0
    for key, printed in (("PRECISION", precision), ("RECALL", recall), ("F1", f1)):
        assert f"{result[key]:.4f}" == printed
    table = [f.attributes() for f in result["OUTPUT"].getFeatures()]
    assert table == [["all", result["TP"], result["FP"], result["FN"], result["PRECISION"], result["RECALL"],
                      result["F1"]]]


def test_evaluate_refuses_a_layer_the_engine_would_not_read(run, scene, cli, tmp_path) -> None:
    two = tmp_path / "two.gpkg"
    shutil.copy(cli / "scene_buildings.gpkg", two)
    dataset = gdal.OpenEx(str(two), gdal.OF_VECTOR | gdal.OF_UPDATE)
    dataset.CopyLayer(dataset.GetLayer(0), "other")
    dataset = None  # closes the file
    with pytest.raises(QgsProcessingException, match=r"holds several layers and MTP reads the first \(buildings\); "
                                                     r"export layer other to its own file"):
        run("mtp:evaluate", {"PREDICTION": f"{two}|layername=other", "REFERENCE": str(scene[1]), "OUTPUT": "memory:"})


def test_cancel_after_the_first_progress_report_stops_and_writes_nothing(run, scene, tmp_path) -> None:
    feedback = QgsProcessingFeedback()
    reports: list[float] = []
    feedback.progressChanged.connect(reports.append)
    feedback.progressChanged.connect(lambda _: feedback.cancel())
    with pytest.raises(QgsProcessingException, match="Cancelled"):
        run("mtp:extractbuildings", {"INPUT": str(scene[0]), "DEVICE": "cpu", "BATCH_SIZE": 1,
                                     "OUTPUT": str(tmp_path / "b.gpkg"), "MASK": str(tmp_path / "m.tif")},
            feedback=feedback)
    assert len(reports) == 1 and 0 < reports[0] < 100
    assert list(tmp_path.iterdir()) == []


def ungeoreferenced_raster(folder: Path) -> Path:
    path = folder / "plain.tif"
    ds = gdal.GetDriverByName("GTiff").Create(str(path), 64, 64, 3, gdal.GDT_Byte)
    ds.WriteRaster(0, 0, 64, 64, bytes(64 * 64 * 3))
    ds = None
    return path


@pytest.mark.parametrize("case, message", [
    ("no georeference", r"has no georeference.*PIXEL_CRS=true"),
    ("missing checkpoint", r"checkpoint file not found: .*missing\.pth"),
    ("two bands", r"the model takes 3 bands but 2 were chosen .*BANDS=1,2,3"),
    ("bad bands", r"BANDS '1,x': give band numbers separated by commas"),
])
def test_bad_input_gives_a_clear_message(run, scene, tmp_path, case, message) -> None:
    parameters = {"INPUT": str(scene[0]), "DEVICE": "cpu", "OUTPUT": str(tmp_path / "classes.tif")}
    parameters.update({
        "no georeference": {"INPUT": str(ungeoreferenced_raster(tmp_path))},
        "missing checkpoint": {"CHECKPOINT": str(tmp_path / "missing.pth")},
        "two bands": {"BANDS": "1,2"},
        "bad bands": {"BANDS": "1,x"},
    }[case])
    with pytest.raises(QgsProcessingException, match=message) as error:
        run("mtp:segment", parameters)
    assert "--" not in str(error.value)  # the CLI's option names are translated to parameters
    assert not (tmp_path / "classes.tif").exists()


WITHOUT_TORCH = """
import sys
sys.modules["torch"] = sys.modules["timm"] = None  # as if not installed
from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingException, QgsProcessingFeedback
app = QgsApplication([], False)
app.initQgis()
from qgis_plugin.model_cache import ModelSpec
from qgis_plugin.processing import MTPProvider
from qgis_plugin.processing.algorithms import PREDICTORS
provider = MTPProvider()
QgsApplication.processingRegistry().addProvider(provider)
print(sorted(a.id() for a in provider.algorithms()))
algorithm = provider.algorithm("segment")
try:
    algorithm.processAlgorithm({}, QgsProcessingContext(), QgsProcessingFeedback())
except QgsProcessingException as exc:
    print(exc)
"""


def test_without_torch_the_provider_loads_and_a_run_says_what_to_install(tmp_path) -> None:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", WITHOUT_TORCH], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == str(ALGORITHM_IDS)
    assert lines[1].startswith("MTP cannot run yet: torch is missing; timm is missing. Install them with 'Install "
                               "dependencies' in the MTP dock")


def site_dirs_of(*modules: str) -> list[str]:
    """The folders that hold these packages: QGIS's Python finds torch & co. through PYTHONPATH, as a user sets it."""
    dirs = []
    for name in modules:
        folder = str(Path(importlib.import_module(name).__file__).parent.parent)
        if folder not in dirs:
            dirs.append(folder)
    return dirs


@pytest.fixture(scope="module")
def qgis_process(tmp_path_factory) -> tuple[dict[str, str], Path]:
    """The built plugin installed and enabled for ``qgis_process.bin`` in a throw-away profile; its environment and
    plugin folder. QGIS's Python finds torch & co. through PYTHONPATH, as a user may set it."""
    assert Path(QGIS_PROCESS).exists(), "qgis_process comes with the Debian package qgis: run `make setup`"
    folder = tmp_path_factory.mktemp("qgis_process")
    subprocess.run(["bash", str(REPO / "scripts" / "build_plugin.sh"), str(folder / "mtp_qgis.zip")], check=True,
                   capture_output=True)
    plugins = folder / "plugins"
    zipfile.ZipFile(folder / "mtp_qgis.zip").extractall(plugins)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QGIS_PLUGINPATH=str(plugins),
               QGIS_CUSTOM_CONFIG_PATH=str(folder / "profile"),  # the user's own profile stays untouched
               PYTHONPATH=os.pathsep.join(site_dirs_of("torch", "timm", "shapely")))
    enable = subprocess.run([QGIS_PROCESS, "plugins", "enable", "mtp_qgis"], capture_output=True, text=True, env=env,
                            timeout=120)
    assert enable.returncode == 0, enable.stdout + enable.stderr
    return env, plugins


def test_qgis_process_extractbuildings_gives_the_polygons_of_mtp_predict(qgis_process, scene, cli, tmp_path) -> None:
    env, plugins = qgis_process
    output = tmp_path / "buildings.gpkg"
    done = subprocess.run([QGIS_PROCESS, "--json", "run", "mtp:extractbuildings", "--", f"INPUT={scene[0]}",
                           f"OUTPUT={output}", "DEVICE=cpu"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout[done.stdout.index("{"):])
    assert report["results"]["OUTPUT"] == str(output)
    assert report["log"]["info"][0].startswith("device: cpu")
    assert str(plugins / "mtp_qgis" / "vendor" / "mtp_core") in report["log"]["info"][1]  # the vendored engine ran
    assert_same_polygons(output, cli / "scene_buildings.gpkg")


def test_qgis_process_says_each_error_once_in_the_words_of_its_parameters(qgis_process, scene, tmp_path,
                                                                          read_only_folder) -> None:
    env, _ = qgis_process
    plain = ungeoreferenced_raster(tmp_path)
    cases = [([], [f"INPUT={plain}", f"OUTPUT={tmp_path / 'b.gpkg'}", "NODATA=0"],
              "INPUT (plain) has no georeference (no geotransform or CRS); assign its CRS (QGIS: Raster > "
              "Projections > Assign Projection, or gdal_edit.py -a_srs EPSG:<code>), or set PIXEL_CRS=true ('Accept "
              "a raster without georeference') to go on in pixel units"),
             (["--json"], [f"INPUT={scene[0]}", f"OUTPUT={read_only_folder / 'b.gpkg'}"],
              f"OUTPUT: cannot write to the folder {read_only_folder} ({READ_ONLY_REASON}); choose another folder")]
    for json_mode, arguments, expected in cases:  # --json prints no log of its own: the message goes to stderr
        done = subprocess.run([QGIS_PROCESS, *json_mode, "run", "mtp:extractbuildings", "--", "DEVICE=cpu",
                               *arguments], capture_output=True, text=True, env=env, timeout=300)
        output = done.stdout + done.stderr
        assert done.returncode == 1, output
        assert output.count(expected) == 1, output  # once, not three times
        assert "Errno" not in output and "--pixel-crs" not in output and ".mtp-" not in output, output
