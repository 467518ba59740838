"""Instances in real QGIS: the dock and Processing run the embedded demo instance model as ``mtp predict`` does (one
polygon per building, touching ones apart) and say so; a click in a terrace adds the one house under it."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import shapely
from qgis.core import QgsApplication, QgsProcessingFeedback, QgsProject, QgsRasterLayer
from qgis.PyQt.QtCore import Qt

from mtp_core.cli import main as mtp
from mtp_core.io import read_vector
from mtp_core.weights import DEMO_INSTANCES_CHECKPOINT
from mtp_tools.synthetic import write_scene
from mtp_tools.synthetic.touching import render_touching_scene, touching_fraction
from qgis_plugin.dock import MTPDock
from qgis_plugin.processing import MTPProvider

from .test_processing import assert_same_polygons


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("touching_scene")
    scene = render_touching_scene(256, 256, seed=31, fraction=0.6)
    assert touching_fraction(scene.buildings) >= 0.4
    return write_scene(scene, folder / "row.tif", folder / "row.geojson")[0]


@pytest.fixture(scope="module")
def cli(scene, tmp_path_factory) -> Path:
    """``mtp predict --model demo-instances``: the polygons the dock and Processing must give."""
    out = tmp_path_factory.mktemp("cli")
    assert mtp(["predict", str(scene), "--model", "demo-instances", "--out", str(out), "--device", "cpu"]) == 0
    return out / "row_buildings.gpkg"


@pytest.fixture
def dock(iface, scene, tmp_path):
    QgsProject.instance().clear()
    layer = QgsRasterLayer(str(scene), "row", "gdal")
    QgsProject.instance().addMapLayer(layer)
    widget = MTPDock(iface, iface.mainWindow())
    iface.addDockWidget(Qt.RightDockWidgetArea, widget)
    widget.raster_combo.setLayer(layer)
    widget.model_combo.setCurrentIndex(widget.model_combo.findData("demo-instances"))
    widget.device_combo.setCurrentIndex(widget.device_combo.findData("cpu"))
    widget.output_widget.setFilePath(str(tmp_path / "out"))
    yield widget, layer
    widget.shutdown()
    iface.removeDockWidget(widget)
    widget.deleteLater()
    QgsProject.instance().clear()


def test_the_dock_runs_the_instance_model_and_says_so(dock, cli):
    widget, _ = dock
    task = widget.create_task()
    task.finished(task.run())
    outcome = task.outcome
    assert outcome.state == "done", outcome.message
    assert "one per building: the model separates touching buildings" in outcome.message
    assert "instances (one polygon per building)" in widget.device_label.text()
    assert_same_polygons(outcome.vector_path, cli)


def test_a_click_in_a_terrace_adds_the_house_under_it(dock, cli, iface):
    widget, layer = dock
    canvas = iface.mapCanvas()
    canvas.setDestinationCrs(layer.crs())
    canvas.setLayers([layer])
    canvas.setExtent(layer.extent())
    houses, _, _ = read_vector(cli)
    touching = [g for g in houses if any(shapely.relate_pattern(g, h, "F***1****") for h in houses if h is not g)]
    assert touching, "the job found no houses sharing a wall"
    house = max(touching, key=lambda g: g.area)
    widget.click_button.setChecked(True)
    tool = canvas.mapTool()
    inside = house.representative_point()
    tool.segment(inside.x, inside.y)
    deadline = time.monotonic() + 120
    while tool.busy and time.monotonic() < deadline:
        QgsApplication.processEvents()
    (feature,) = list(tool.layer.getFeatures())
    added = shapely.from_wkb(bytes(feature.geometry().asWkb()))
    assert shapely.equals(added, house)  # that house alone, exactly the job's polygon, not its row
    assert "(instance, score" in iface.statusBarIface().currentMessage()
    tool.layer.rollBack()
    widget.click_button.setChecked(False)


def _extract_buildings(scene: Path, out: Path, **options: object) -> tuple[dict, list[str]]:
    """``mtp:extractbuildings`` with the demo instance model through QGIS Processing: its result and its messages."""
    import processing
    from processing.core.Processing import Processing

    Processing.initialize()
    provider = MTPProvider()
    assert QgsApplication.processingRegistry().addProvider(provider)
    try:
        feedback = _Feedback()
        result = processing.run("mtp:extractbuildings", {
            "INPUT": str(scene), "CHECKPOINT": str(DEMO_INSTANCES_CHECKPOINT), "DEVICE": "cpu", **options,
            "OUTPUT": str(out)}, feedback=feedback)
    finally:
        QgsApplication.processingRegistry().removeProvider(provider)
    return result, feedback.lines


def test_processing_extract_buildings_uses_the_instances_and_says_so(qgis_app, scene, cli, tmp_path):
    result, lines = _extract_buildings(scene, tmp_path / "buildings.gpkg")
    assert any(line.startswith("instances: the model has an instance decoder") for line in lines)
    assert result["BUILDINGS"] == len(read_vector(cli)[0])
    assert_same_polygons(Path(result["OUTPUT"]), cli)


def test_processing_tta_gives_what_mtp_predict_tta_gives(qgis_app, scene, tmp_path):
    """The advanced TTA switch reaches the model: the polygons of ``mtp predict --tta``, exactly."""
    assert mtp(["predict", str(scene), "--model", "demo-instances", "--out", str(tmp_path / "cli"), "--device", "cpu",
                "--tta"]) == 0
    result, lines = _extract_buildings(scene, tmp_path / "buildings.gpkg", TTA=True)
    assert any("8x test-time augmentation" in line for line in lines if line.startswith("device:"))
    assert_same_polygons(Path(result["OUTPUT"]), tmp_path / "cli" / "row_buildings.gpkg")


class _Feedback(QgsProcessingFeedback):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def pushInfo(self, info: str) -> None:  # noqa: N802
        self.lines.append(info)
