"""The click-to-segment map tool on a real QgsMapCanvas (headless QGIS), driven by real mouse and key events.

A 384 x 384 synthetic scene (4 tiles of the embedded demo model) and its ``mtp predict`` polygons are the reference:
a click must add exactly the job's polygon under it, and undo must take it away again.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import shapely
from qgis.core import (
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsGeometry,
    QgsPointXY,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.gui import QgsMapCanvas, QgsMapMouseEvent
from qgis.PyQt.QtCore import QEvent, QPoint, Qt
from qgis.PyQt.QtTest import QTest

from mtp_core.click import FIELDS, ClickSegmenter
from mtp_core.inference import Predictor
from mtp_core.io import read_vector
from mtp_core.pipeline import extract_buildings
from mtp_core.weights import DEMO_CHECKPOINT
from mtp_tools.synthetic import render_scene, write_scene
from qgis_plugin.layers import raster_source as raster_path
from qgis_plugin.map_tool import ClickSegmentTool, create_building_layer


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.from_checkpoint(DEMO_CHECKPOINT, device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("click_scene")
    return write_scene(render_scene(384, 384, seed=3), folder / "scene.tif")[0]


@pytest.fixture(scope="module")
def job(predictor, scene, tmp_path_factory) -> tuple[list, dict]:
    """The whole-raster job's buildings: what a click must add."""
    result = extract_buildings(predictor, scene, tmp_path_factory.mktemp("click_job"))
    geoms, attrs, _ = read_vector(result.vector_path)
    return geoms, attrs


@pytest.fixture
def raster(qgis_app, scene):
    layer = QgsRasterLayer(str(scene), "scene")
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    yield layer
    QgsProject.instance().removeAllMapLayers()  # the raster and every building layer a tool made
    QgsApplication.processEvents()


@pytest.fixture
def canvas(qgis_app, raster):
    """A real canvas, shown (offscreen) so its pixel <-> map transform is that of a 400 x 400 viewport."""
    canvas = QgsMapCanvas()
    canvas.resize(400, 400)
    canvas.show()
    QgsApplication.processEvents()
    canvas.setDestinationCrs(raster.crs())
    canvas.setLayers([raster])
    canvas.setExtent(raster.extent())
    QgsApplication.processEvents()
    yield canvas
    canvas.close()
    canvas.deleteLater()
    QgsApplication.processEvents()


class Messages(list):
    """The status lines a tool shows (what ``iface.statusBarIface().showMessage`` would get)."""

    def __call__(self, text: str) -> None:
        self.append(text)


def to_raster(canvas: QgsMapCanvas, raster: QgsRasterLayer, point: QgsPointXY) -> QgsPointXY:
    transform = QgsCoordinateTransform(canvas.mapSettings().destinationCrs(), raster.crs(), QgsProject.instance())
    return transform.transform(point)


def pixel_inside(canvas: QgsMapCanvas, raster: QgsRasterLayer, polygon) -> QPoint:
    """A viewport pixel whose map point is well inside ``polygon`` (raster CRS), rounding to pixels included."""
    to_canvas = QgsCoordinateTransform(raster.crs(), canvas.mapSettings().destinationCrs(), QgsProject.instance())
    inner = polygon.buffer(-1.0)
    for point in (inner.representative_point(), polygon.representative_point(), polygon.centroid):
        device = canvas.getCoordinateTransform().transform(to_canvas.transform(QgsPointXY(point.x, point.y)))
        pixel = QPoint(round(device.x()), round(device.y()))
        back = to_raster(canvas, raster, canvas.getCoordinateTransform().toMapCoordinates(pixel))
        if inner.contains(shapely.Point(back.x(), back.y())):
            return pixel
    raise AssertionError("no viewport pixel lies well inside this building")


def click(canvas: QgsMapCanvas, pixel: QPoint) -> None:
    """A real left click on the canvas: press and release through the viewport, as Qt delivers them."""
    QTest.mouseClick(canvas.viewport(), Qt.LeftButton, Qt.NoModifier, pixel)


def features(layer: QgsVectorLayer) -> list[tuple[object, dict]]:
    names = layer.fields().names()
    return [(shapely.from_wkb(bytes(f.geometry().asWkb())), dict(zip(names, f.attributes())))
            for f in layer.getFeatures()]


def buildings(job, minimum_m2: float = 60.0) -> list[int]:
    return [i for i, area in enumerate(job[1]["area_m2"]) if area >= minimum_m2]


def test_a_click_adds_exactly_the_building_under_it_and_undo_removes_it(predictor, scene, job, raster, canvas):
    messages, active = Messages(), []
    tool = ClickSegmentTool(canvas, raster, ClickSegmenter(predictor, raster_path(raster)), message=messages,
                            set_active_layer=active.append, synchronous=True)
    added = []
    tool.buildingAdded.connect(lambda layer, fid: added.append(fid))
    canvas.setMapTool(tool)
    assert tool.isActive() and "Ctrl+Z undoes" in messages[-1]
    target = buildings(job)[0]
    click(canvas, pixel_inside(canvas, raster, job[0][target]))

    layer = tool.layer
    assert layer is not None and QgsProject.instance().mapLayer(layer.id()) is layer
    assert layer.crs() == raster.crs() and layer.isEditable()
    (geometry, attributes), = features(layer)  # exactly one feature
    assert shapely.equals(geometry, job[0][target])
    assert attributes == {name: job[1][name][target] for name in FIELDS}
    assert len(added) == 1 and active == [layer]  # so QGIS's own Ctrl+Z (Edit > Undo) acts on this layer
    assert messages[-1].startswith(f"building added ({job[1]['area_m2'][target]:.0f} m², ")
    assert messages[-1].endswith("tiles predicted)")  # the first click ran the model, synchronously here

    QTest.keyClick(canvas, Qt.Key_Z, Qt.ControlModifier)  # Ctrl+Z on the canvas
    assert layer.featureCount() == 0 and messages[-1].startswith("undone: MTP: add building")
    QTest.keyClick(canvas, Qt.Key_Z, Qt.ControlModifier | Qt.ShiftModifier)  # redo
    assert [shapely.equals(g, job[0][target]) for g, _ in features(layer)] == [True]
    layer.undoStack().undo()  # the layer's own undo stack, as Edit > Undo uses it
    assert layer.featureCount() == 0

    second = buildings(job)[1]
    click(canvas, pixel_inside(canvas, raster, job[0][second]))
    assert messages[-1].endswith("cached)")  # its tiles were predicted by the first click
    click(canvas, pixel_inside(canvas, raster, job[0][second]))  # a second click on it adds nothing
    assert messages[-1] == f"this building is already in {layer.name()}"  # no (negative) feature id
    assert [shapely.equals(g, job[0][second]) for g, _ in features(layer)] == [True]


def test_a_click_on_no_building_adds_nothing_and_says_so(predictor, job, raster, canvas):
    messages = Messages()
    tool = ClickSegmentTool(canvas, raster, ClickSegmenter(predictor, raster_path(raster)), message=messages,
                            synchronous=True)
    canvas.setMapTool(tool)
    occupied = shapely.union_all(job[0]).buffer(3.0)
    extent = raster.extent()
    ground = next(QgsPointXY(x, y) for x in range(int(extent.xMinimum()) + 5, int(extent.xMaximum()) - 5, 4)
                  for y in range(int(extent.yMinimum()) + 5, int(extent.yMaximum()) - 5, 4)
                  if not occupied.contains(shapely.Point(x, y)))
    device = canvas.getCoordinateTransform().transform(ground)
    click(canvas, QPoint(round(device.x()), round(device.y())))
    assert messages[-1].startswith("no building at this point")
    assert tool.layer is None and tool.last_result.status == "background"  # no empty layer was made

    tool.segment(extent.xMaximum() + 50.0, extent.yMaximum())
    assert messages[-1] == "outside the raster" and tool.layer is None


def test_esc_leaves_the_tool(predictor, raster, canvas):
    tool = ClickSegmentTool(canvas, raster, ClickSegmenter(predictor, raster_path(raster)), synchronous=True)
    canvas.setMapTool(tool)
    assert canvas.mapTool() is tool
    QTest.keyClick(canvas, Qt.Key_Escape)
    assert canvas.mapTool() is None and not tool.isActive()


def test_the_first_click_runs_in_a_task_and_hovering_previews_cached_buildings(predictor, job, raster, canvas,
                                                                               tmp_path):
    """Canvas in web Mercator, buildings into a GeoPackage in WGS 84, the raster in UTM: every CRS differs."""
    canvas.setDestinationCrs(QgsCoordinateReferenceSystem("EPSG:3857"))
    canvas.setExtent(canvas.mapSettings().layerExtentToOutputExtent(raster, raster.extent()))
    QgsApplication.processEvents()
    target = create_building_layer(QgsCoordinateReferenceSystem("EPSG:4326"), "mine", str(tmp_path / "b.gpkg"))
    assert target.fields().names()[-len(FIELDS):] == list(FIELDS)
    QgsProject.instance().addMapLayer(target)
    made = []
    messages = Messages()

    def make_segmenter() -> ClickSegmenter:  # loading a model is slow: the tool calls this in its task
        made.append(time.perf_counter())
        return ClickSegmenter(predictor, raster_path(raster))

    tool = ClickSegmentTool(canvas, raster, make_segmenter, target, message=messages)
    canvas.setMapTool(tool)
    first, second = buildings(job)[:2]
    click(canvas, pixel_inside(canvas, raster, job[0][first]))
    assert tool.busy and messages[-1].startswith("segmenting…") and target.featureCount() == 0
    click(canvas, pixel_inside(canvas, raster, job[0][second]))
    assert messages[-1].startswith("still segmenting")
    deadline = time.monotonic() + 300
    while tool.busy and time.monotonic() < deadline:
        QgsApplication.processEvents()
        time.sleep(0.01)
    assert not tool.busy and len(made) == 1 and messages[-1].startswith("building added")

    to_utm = QgsCoordinateTransform(target.crs(), raster.crs(), QgsProject.instance())
    (feature,) = target.getFeatures()
    geometry = QgsGeometry(feature.geometry())
    geometry.transform(to_utm)
    in_utm = shapely.from_wkb(bytes(geometry.asWkb()))
    assert iou(in_utm, job[0][first]) > 0.999  # the job's polygon, through two reprojections

    pixel = pixel_inside(canvas, raster, job[0][second])
    tool.canvasMoveEvent(QgsMapMouseEvent(canvas, QEvent.MouseMove, pixel, Qt.NoButton, Qt.NoButton,
                                          Qt.NoModifier))
    over = to_raster(canvas, raster, canvas.getCoordinateTransform().toMapCoordinates(pixel))
    deadline = time.monotonic() + 5  # the preview follows the pointer once it rests (debounced)
    while not (tool.preview_geometry and tool.preview_geometry.contains(over)) and time.monotonic() < deadline:
        QgsApplication.processEvents()
        time.sleep(0.01)
    preview = shapely.from_wkb(bytes(tool.preview_geometry.asWkb()))
    assert shapely.equals(preview, job[0][second]) and target.featureCount() == 1  # hovering adds nothing
    canvas.unsetMapTool(tool)
    assert tool.preview_geometry is None


def iou(a, b) -> float:
    return shapely.area(shapely.intersection(a, b)) / shapely.area(shapely.union(a, b))
