"""The MTP dock in real QGIS: its runs give the layers and polygons of ``mtp predict``, limited to the chosen area.

Runs are made synchronously (``task.run()`` then ``task.finished(result)``, as the task manager does) except one that
goes through the task manager's worker thread. One small synthetic scene (300 x 300 px, 4 tiles of the embedded demo
model) and one ``mtp predict`` run are the reference.
"""
from __future__ import annotations

import html
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import shapely
from osgeo import gdal
from qgis.core import (
    Qgis,
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsFeature,
    QgsGeometry,
    QgsLayerTreeGroup,
    QgsMapRendererParallelJob,
    QgsMapSettings,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsSettings,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QCoreApplication, QEvent, QPoint, QSize, Qt
from qgis.PyQt.QtGui import QColor, QImage, QKeyEvent
from qgis.PyQt.QtWidgets import QDockWidget, QScrollBar, QTextBrowser, QWidget

import qgis_plugin
from mtp_core.cli import main as mtp
from mtp_core.io import read_vector
from mtp_core.weights import DEMO_CHECKPOINT
from mtp_tools.synthetic import render_scene, write_scene
from qgis_plugin.dependencies import check_dependencies
from qgis_plugin.dock import MTPDock
from qgis_plugin.model_cache import ModelSpec, PredictorCache
from qgis_plugin.results import BUILDING_COLOUR
from qgis_plugin.run_task import RunOutcome, SegmentTask
from qgis_plugin.settings import DockSettings, load_settings

from .conftest import SETTINGS_DIR
from .test_processing import assert_same_polygons, assert_same_raster

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
FIELDS = ["id", "class", "score", "area_m2", "perimeter_m", "source", "model"]
PIXEL = 0.5  # metres: the synthetic scene's pixel size


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scene")
    tif, _ = write_scene(render_scene(300, 300, seed=7), folder / "scene.tif", folder / "scene.geojson")
    return tif


@pytest.fixture(scope="module")
def cli(scene, tmp_path_factory) -> Path:
    """``mtp predict`` with default options: scene_mask.tif and scene_buildings.gpkg."""
    out = tmp_path_factory.mktemp("cli")
    assert mtp(["predict", str(scene), "--out", str(out), "--device", "cpu"]) == 0
    return out


@pytest.fixture
def project(qgis_app):
    """An empty project and no remembered dock settings, before and after each test."""
    QgsProject.instance().clear()
    QgsSettings().remove("mtp/dock")
    yield QgsProject.instance()
    QgsProject.instance().clear()
    QgsSettings().remove("mtp/dock")


@pytest.fixture
def raster_layer(scene, project) -> QgsRasterLayer:
    layer = QgsRasterLayer(str(scene), "scene", "gdal")
    assert layer.isValid()
    project.addMapLayer(layer)
    return layer


@pytest.fixture
def dock(iface, raster_layer, tmp_path):
    """The dock on the scene layer, on the CPU, writing to tmp_path/out."""
    widget = MTPDock(iface, iface.mainWindow())
    iface.addDockWidget(Qt.RightDockWidgetArea, widget)
    widget.raster_combo.setLayer(raster_layer)
    widget.device_combo.setCurrentIndex(widget.device_combo.findData("cpu"))
    widget.output_widget.setFilePath(str(tmp_path / "out"))
    yield widget
    widget.shutdown()
    iface.removeDockWidget(widget)
    widget.deleteLater()


def fit_to_width(window, dock: MTPDock, width: int, png: str) -> None:
    """Docks ``dock`` at ``width`` px in a shown main window, saves its picture, and checks that it is that wide,
    scrolls only vertically, and shows every visible widget whole, within the scroll area's viewport."""
    window.resize(1100, 900)
    window.show()
    window.resizeDocks([dock], [width], Qt.Horizontal)
    for _ in range(3):
        QgsApplication.processEvents()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert dock.grab().save(str(ARTIFACTS / png))
    assert dock.width() == width, f"the dock needs {dock.minimumSizeHint().width()} px"
    scroll = dock.scroll_area
    assert not scroll.horizontalScrollBar().isVisible()
    viewport = scroll.viewport()
    for widget in scroll.widget().findChildren(QWidget):
        if widget.isVisibleTo(dock) and not isinstance(widget, QScrollBar) and widget.window() is window:
            right = widget.mapTo(viewport, QPoint(widget.width(), 0)).x()
            assert right <= viewport.width(), f"{widget.objectName() or type(widget).__name__} is clipped"


def run_now(dock: MTPDock) -> tuple[SegmentTask, RunOutcome]:
    """One run of the dock's current choices, synchronously, as the task manager would make it."""
    task = dock.create_task()
    task.finished(task.run())
    assert dock.task is None  # the dock took the outcome and is ready for the next run
    return task, task.outcome


def result_group(project: QgsProject) -> QgsLayerTreeGroup:
    groups = [node for node in project.layerTreeRoot().children() if isinstance(node, QgsLayerTreeGroup)]
    assert len(groups) == 1
    return groups[0]


def message_bar_texts(iface, level: Qgis.MessageLevel) -> list[str]:
    """The texts of the bar's items as the user reads them (items hold HTML)."""
    return [html.unescape(item.text()) for item in iface.messageBar().items() if item.level() == level]


def last_message(iface) -> tuple[str, Qgis.MessageLevel]:
    item = iface.messageBar().currentItem()
    return html.unescape(item.text()), item.level()


def buildings_of(outcome: RunOutcome) -> list:
    geoms, columns, _ = read_vector(outcome.vector_path)
    assert geoms and set(columns["source"]) == {"scene.tif"}  # the raster's name, also when an area was cut out
    return geoms


def test_a_run_adds_the_mask_and_the_buildings_of_mtp_predict(dock, raster_layer, project, cli, iface,
                                                             tmp_path) -> None:
    task = dock.create_task()
    lines: list[str] = []
    task.progress_text.connect(lines.append)
    result = task.run()
    task.finished(result)
    outcome = task.outcome
    assert result and outcome.state == "done", outcome.message
    group = result_group(project)
    assert group.name().startswith("MTP scene ")
    buildings, mask = [node.layer() for node in group.findLayers()]
    assert isinstance(buildings, QgsVectorLayer) and isinstance(mask, QgsRasterLayer)
    assert buildings.crs() == raster_layer.crs() and mask.crs() == raster_layer.crs()
    assert [f.name() for f in buildings.fields() if f.name() != "fid"] == FIELDS
    assert buildings.featureCount() == outcome.buildings == len(read_vector(cli / "scene_buildings.gpkg")[0])
    assert_same_polygons(outcome.vector_path, cli / "scene_buildings.gpkg")
    assert_same_raster(outcome.mask_path, cli / "scene_mask.tif")
    run_folder = outcome.vector_path.parent
    assert [p.name for p in (tmp_path / "out").iterdir()] == [run_folder.name]  # no temporary folder left
    assert sorted(p.name for p in run_folder.iterdir()) == ["scene_buildings.gpkg", "scene_mask.tif"]
    assert any("4/4 tiles" in line and "ETA" in line for line in lines)  # the engine's progress_line
    assert task.progress() == 100
    assert dock.device_label.text().startswith("cpu, ")
    assert f"{outcome.buildings} buildings" in dock.status_label.text()
    assert message_bar_texts(iface, Qgis.Success) == [outcome.message]


def test_a_run_through_the_task_manager_adds_its_layers(dock, project) -> None:
    dock.start()
    assert dock.run_button.text() == "Cancel"
    deadline = time.monotonic() + 300
    while dock.task is not None and time.monotonic() < deadline:  # finished() comes through the event loop
        QgsApplication.processEvents()
        time.sleep(0.01)
    assert dock.task is None, "the run did not finish"
    assert dock.run_button.text() == "Run"
    assert "buildings in" in dock.status_label.text()
    assert len(result_group(project).findLayers()) == 2
    assert load_settings().device == "cpu"  # a run remembers its settings


def test_cancel_after_the_first_batch_leaves_no_files_and_no_layers(dock, raster_layer, project, iface,
                                                                   tmp_path) -> None:
    dock.batch_spin.setValue(1)  # 4 batches
    task = dock.create_task()
    reports: list[float] = []
    task.progressChanged.connect(reports.append)
    task.progressChanged.connect(lambda _: task.cancel())
    result = task.run()
    task.finished(result)
    assert not result and task.outcome.state == "cancelled"
    assert len(reports) == 1 and 0 < reports[0] < 100  # stopped within one batch
    assert list((tmp_path / "out").iterdir()) == []
    assert list(project.mapLayers()) == [raster_layer.id()]
    assert project.layerTreeRoot().findGroups() == []
    assert dock.status_label.text().startswith("Cancelled")
    assert message_bar_texts(iface, Qgis.Critical) == []


def test_the_visible_extent_limits_the_outputs(dock, raster_layer, iface) -> None:
    iface.mainWindow().show()  # the canvas's size (and so its extent) is right only once shown
    QgsApplication.processEvents()
    canvas = iface.mapCanvas()
    canvas.setDestinationCrs(raster_layer.crs())
    full = raster_layer.extent()
    canvas.setExtent(QgsRectangle(full.xMinimum() + 20, full.yMinimum() + 30, full.xMinimum() + 70,
                                  full.yMinimum() + 80))  # widened to the canvas's shape by QGIS
    visible = canvas.extent().intersect(full)
    assert 0 < visible.area() < full.area() / 2
    dock.area_combo.setCurrentIndex(dock.area_combo.findData("extent"))
    _, outcome = run_now(dock)
    assert outcome.state == "done", outcome.message
    mask = QgsRasterLayer(str(outcome.mask_path), "mask")
    outer = visible.buffered(PIXEL)  # whole pixels: at most one pixel more than the visible part
    assert outer.contains(mask.extent()) and mask.extent().contains(visible)
    area = shapely.box(visible.xMinimum(), visible.yMinimum(), visible.xMaximum(), visible.yMaximum())
    assert all(shapely.within(g, area.buffer(PIXEL)) for g in buildings_of(outcome))


def test_polygon_features_limit_the_outputs(dock, raster_layer, project) -> None:
    full = raster_layer.extent()
    x0, y0 = full.xMinimum(), full.yMinimum()
    triangle = QgsGeometry.fromWkt(f"POLYGON(({x0 + 20} {y0 + 20}, {x0 + 140} {y0 + 20}, {x0 + 20} {y0 + 130}, "
                                   f"{x0 + 20} {y0 + 20}))")
    wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")  # another CRS than the raster's: the dock reprojects
    in_wgs84 = QgsGeometry(triangle)
    in_wgs84.transform(QgsCoordinateTransform(raster_layer.crs(), wgs84, project))
    polygons = QgsVectorLayer("Polygon?crs=EPSG:4326", "area", "memory")
    feature = QgsFeature()
    feature.setGeometry(in_wgs84)
    polygons.dataProvider().addFeatures([feature])
    project.addMapLayer(polygons)
    dock.area_combo.setCurrentIndex(dock.area_combo.findData("polygons"))
    dock.polygon_combo.setLayer(polygons)
    _, outcome = run_now(dock)
    assert outcome.state == "done", outcome.message
    area = shapely.from_wkt(triangle.asWkt())
    assert all(shapely.within(g, area.buffer(PIXEL * 2)) for g in buildings_of(outcome))
    mask = gdal.Open(str(outcome.mask_path))
    gt, classes = mask.GetGeoTransform(), mask.ReadAsArray()
    rows, cols = np.indices(classes.shape)
    x, y = gt[0] + (cols + 0.5) * gt[1], gt[3] + (rows + 0.5) * gt[5]
    outside = ~shapely.contains_xy(area.buffer(PIXEL), x, y)
    inside = shapely.contains_xy(area.buffer(-PIXEL), x, y)
    assert outside.any() and (classes[outside] == 255).all()  # nodata: not segmented
    assert (classes[inside] != 255).all()


def test_bad_choices_and_engine_errors_say_what_to_do(dock, raster_layer, project, iface, tmp_path) -> None:
    logged: list[tuple[str, str]] = []
    QgsApplication.messageLog().messageReceived.connect(lambda message, tag, level: logged.append((tag, message)))
    dock.area_combo.setCurrentIndex(dock.area_combo.findData("polygons"))
    dock.start()  # no polygon layer in the project
    assert dock.task is None
    assert message_bar_texts(iface, Qgis.Critical) == ["choose a polygon layer for the area, or choose 'Whole layer'"]
    assert ("MTP", "cannot start: choose a polygon layer for the area, or choose 'Whole layer'") in logged

    dock.area_combo.setCurrentIndex(dock.area_combo.findData("layer"))
    dock.bands_edit.setText("1,2")
    _, outcome = run_now(dock)
    assert outcome.state == "failed" and "the model takes 3 bands but 2 were chosen" in outcome.message
    assert "under 'Bands', e.g. 1,2,3" in outcome.message and "--" not in outcome.message  # the dock's words
    assert last_message(iface) == (outcome.message, Qgis.Critical)
    assert ("MTP", f"scene: {outcome.message}") in logged

    broken = tmp_path / "broken.tif"  # a header that reads, tiles that don't: a truncated download
    broken.write_bytes(Path(raster_layer.source()).read_bytes()[:120_000])
    layer = QgsRasterLayer(str(broken), "broken", "gdal")
    project.addMapLayer(layer)
    dock.raster_combo.setLayer(layer)
    dock.bands_edit.clear()
    _, outcome = run_now(dock)
    assert outcome.state == "failed" and "'broken'" in outcome.message and "damaged or missing" in outcome.message
    assert "Traceback" not in outcome.message and last_message(iface) == (outcome.message, Qgis.Critical)
    assert list((tmp_path / "out").iterdir()) == [] and project.layerTreeRoot().findGroups() == []


def test_settings_are_remembered_in_qgis_settings(dock, iface) -> None:
    chosen = DockSettings(model_kind="architecture", checkpoint="/data/a.pth", architecture="mtp_vit_b_rvsa_upernet",
                          weights="/data/b.pth", area="polygons", selected_only=True, device="cpu", batch_size=3,
                          overlap=32, threshold=0.4, bands="3,2,1", min_area_m2=9.5, simplify_m=0.5, regularize=True,
                          output_folder="/data/out")
    dock.apply_settings(chosen)
    assert dock.current_settings() == chosen
    dock.save_settings()
    settings = QgsSettings()
    assert Path(settings.fileName()).parent == Path(SETTINGS_DIR)  # never the user's own profile
    assert settings.value("mtp/dock/batch_size", type=int) == 3
    assert settings.value("mtp/dock/area") == "polygons"
    again = MTPDock(iface)  # as after a restart of QGIS
    assert again.current_settings() == chosen
    again.deleteLater()


def test_the_model_is_built_once_and_replaced_when_its_key_changes(tmp_path) -> None:
    cache = PredictorCache()
    spec = ModelSpec(str(DEMO_CHECKPOINT), device="cpu", batch_size=4)
    first = cache.get(spec)
    assert cache.get(replace(spec)) is first
    other = cache.get(replace(spec, batch_size=2))
    assert other is not first and other.batch_size == 2
    augmented = cache.get(replace(spec, tta=True))
    assert augmented is not other and augmented.tta
    copy = tmp_path / "model.pth"
    copy.write_bytes(DEMO_CHECKPOINT.read_bytes())
    from_copy = cache.get(ModelSpec(str(copy), device="cpu"))
    assert cache.get(ModelSpec(str(copy), device="cpu")) is from_copy
    os.utime(copy, ns=(0, 0))  # the file was rewritten: a new model
    assert cache.get(ModelSpec(str(copy), device="cpu")) is not from_copy
    named = cache.get(ModelSpec(str(copy), "mtp_rvsa_upernet", device="cpu"))  # a named architecture + weights
    assert named.card.architecture == "mtp_rvsa_upernet"
    with pytest.raises(ValueError, match="saved for mtp_rvsa_upernet, not mtp_vit_b_rvsa_upernet"):
        cache.get(ModelSpec(str(copy), "mtp_vit_b_rvsa_upernet", device="cpu"))


def test_without_torch_the_dock_offers_to_install_it_and_the_plugin_loads(iface, project, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # as if not installed: importing it now fails
    monkeypatch.setitem(sys.modules, "timm", None)
    iface.mainWindow().show()
    plugin = qgis_plugin.classFactory(iface)
    plugin.initGui()
    plugin.dock_action.trigger()
    dock = plugin.dock
    assert dock is not None and dock.isVisible()
    assert check_dependencies().missing == ("torch", "timm")
    panel = dock.install_panel
    assert panel.isVisible() and panel.install_button.isVisible() and panel.install_button.isEnabled()
    assert panel.install_button.text() == "Install dependencies"
    assert "torch is missing; timm is missing" in panel.summary_label.text()
    assert "numpy and GDAL stay as they are" in panel.summary_label.text()
    assert not dock.run_button.isEnabled() and not dock.form.isEnabled() and not dock.click_button.isEnabled()
    assert dock.device_label.text() == "unknown until the dependencies are installed"
    fit_to_width(iface.mainWindow(), dock, 300, "dock_300px_without_torch.png")
    plugin.unload()
    assert iface.toolbar.actions() == []


def test_click_a_roof_adds_the_buildings_polygon_of_mtp_predict_and_undo_removes_it(dock, raster_layer, project, cli,
                                                                                   iface, tmp_path) -> None:
    labels = QgsVectorLayer(str(cli / "scene_buildings.gpkg"), "labels", "ogr")  # a polygon layer nobody chose
    project.addMapLayer(labels)
    before = labels.featureCount()
    assert dock.target_combo.currentLayer() is None and dock.target_combo.currentText() == "New GeoPackage layer"
    canvas = iface.mapCanvas()
    canvas.setDestinationCrs(raster_layer.crs())
    canvas.setLayers([raster_layer])
    canvas.setExtent(raster_layer.extent())
    dock.click_button.setChecked(True)
    tool = canvas.mapTool()
    assert tool is dock.click_tool and tool is not None
    expected, _, _ = read_vector(cli / "scene_buildings.gpkg")
    building = max(expected, key=lambda g: g.area)
    inside = building.representative_point()
    tool.segment(inside.x, inside.y)  # the first click: the model is built and run in a task
    deadline = time.monotonic() + 120
    while tool.busy and time.monotonic() < deadline:
        QgsApplication.processEvents()
    target = tool.layer
    assert target is not None and dock.target_combo.currentLayer() is target and iface.active_layer is target
    assert target is not labels and labels.featureCount() == before and not labels.isEditable()
    assert target.name() == "scene buildings" and target.storageType() == "GPKG"
    assert Path(target.source().split("|")[0]) == tmp_path / "out" / "scene_buildings.gpkg"  # in the output folder
    assert target.renderer().symbol().symbolLayer(0).strokeColor() == BUILDING_COLOUR  # the run's style
    (feature,) = list(target.getFeatures())
    added = shapely.from_wkb(bytes(feature.geometry().asWkb()))
    assert shapely.equals(added, building)  # exactly the polygon `mtp predict` writes for it
    assert "building added" in iface.statusBarIface().currentMessage()
    tool.segment(inside.x, inside.y)  # the same roof again
    assert iface.statusBarIface().currentMessage() == "this building is already in scene buildings"
    target.undoStack().undo()
    assert target.featureCount() == 0
    dock.click_button.setChecked(False)  # the button leaves the tool ...
    assert canvas.mapTool() is None
    dock.click_button.setChecked(True)  # ... and Esc unticks the button
    canvas.mapTool().keyPressEvent(QKeyEvent(QEvent.KeyPress, Qt.Key_Escape, Qt.NoModifier))
    assert canvas.mapTool() is None and not dock.click_button.isChecked()
    target.rollBack()


def ungeoreferenced(folder: Path) -> Path:
    path = folder / "plain.tif"
    dataset = gdal.GetDriverByName("GTiff").Create(str(path), 64, 64, 3, gdal.GDT_Byte)
    dataset.WriteRaster(0, 0, 64, 64, bytes(64 * 64 * 3))
    dataset = None  # closes the file
    return path


def test_a_raster_without_georeference_is_refused_before_anything_starts(dock, project, iface, tmp_path) -> None:
    layer = QgsRasterLayer(str(ungeoreferenced(tmp_path)), "plain", "gdal")
    project.addMapLayer(layer)
    dock.raster_combo.setLayer(layer)
    dock.nodata_edit.setText("0")  # with Nodata the engine would read a VRT of the layer: its path must not show
    expected = ("plain has no georeference (its file places no pixel on the ground): georeference it (Layer > "
                "Georeferencer) and choose the result under 'Raster layer'")
    dock.start()
    assert dock.task is None and last_message(iface) == (expected, Qgis.Critical)
    dock.click_button.setChecked(True)
    assert not dock.click_button.isChecked() and iface.mapCanvas().mapTool() is None
    assert last_message(iface) == (expected, Qgis.Critical)
    assert len(iface.messageBar().items()) == 1  # the second message replaced the first


def test_engine_errors_name_the_layer_and_field_not_temporary_files(dock, raster_layer, project, iface) -> None:
    raster_layer.setName("my scene")
    dock.nodata_edit.setText("0")  # the engine reads a VRT of the layer in a temporary folder
    dock.bands_edit.setText("1,2,4")
    _, outcome = run_now(dock)
    assert outcome.state == "failed"
    assert outcome.message.startswith("'my scene' has 3 band(s); band(s) [4] do not exist: choose bands 1..3 "
                                      "under 'Bands'"), outcome.message
    assert ".mtp-" not in outcome.message and ".vrt" not in outcome.message and "--" not in outcome.message


def test_messages_are_plain_text_and_one_at_a_time(dock, iface) -> None:
    iface.mainWindow().show()
    dock.report("MTP", "assign EPSG:<code> & retry", Qgis.Warning)
    item = iface.messageBar().currentItem()
    shown = item.findChildren(QTextBrowser)[0].toPlainText()
    assert "EPSG:<code> & retry" in shown  # not eaten as an HTML tag
    for n in range(3):  # three successful runs
        dock.report("MTP", f"{n} buildings", Qgis.Success)
    assert message_bar_texts(iface, Qgis.Success) == ["2 buildings"] and len(iface.messageBar().items()) == 1


def test_click_a_roof_says_what_is_missing(dock, project, iface) -> None:
    dock.raster_combo.setLayer(None)
    dock.click_button.setChecked(True)
    assert not dock.click_button.isChecked() and iface.mapCanvas().mapTool() is None
    assert "raster layer" in last_message(iface)[0]


def test_loading_and_unloading_leaves_no_actions_docks_or_providers(iface, project) -> None:
    plugin = qgis_plugin.classFactory(iface)
    plugin.initGui()
    window = iface.mainWindow()
    window.show()
    assert window.findChildren(QDockWidget) == []  # it does not open by itself
    plugin.dock_action.trigger()
    assert window.findChildren(QDockWidget) == [plugin.dock] and plugin.dock.isVisible()
    assert not plugin.dock.install_panel.isVisible() and plugin.dock.run_button.isEnabled()
    plugin.dock.close()  # the dock's own close button unticks the action
    assert not plugin.dock_action.isChecked()
    plugin.dock_action.trigger()
    assert plugin.dock.isVisible() and window.findChildren(QDockWidget) == [plugin.dock]
    plugin.unload()
    QCoreApplication.sendPostedEvents(None, QEvent.DeferredDelete)
    assert window.findChildren(QDockWidget) == []
    assert iface.toolbar.actions() == [] and iface.raster_menu.actions() == []
    assert QgsApplication.processingRegistry().providerById("mtp") is None


def render(settings: QgsMapSettings, layers: list) -> QImage:
    settings.setLayers(layers)
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    return job.renderedImage()


def test_screenshots_of_the_dock_and_of_the_buildings_over_the_raster(dock, raster_layer, project, iface) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    iface.mainWindow().resize(1200, 1000)  # room for the whole dock, status line included
    iface.mainWindow().show()
    dock.regularize_check.setChecked(True)
    _, outcome = run_now(dock)
    assert outcome.state == "done", outcome.message
    QgsApplication.processEvents()
    dock_png = ARTIFACTS / "dock_after_run.png"
    assert dock.grab().save(str(dock_png))
    buildings = result_group(project).findLayers()[0].layer()
    settings = QgsMapSettings()
    settings.setDestinationCrs(raster_layer.crs())
    settings.setExtent(raster_layer.extent())
    settings.setOutputSize(QSize(600, 600))
    settings.setBackgroundColor(QColor(255, 255, 255))
    over = render(settings, [buildings, raster_layer])
    plain = render(settings, [raster_layer])
    map_png = ARTIFACTS / "map_buildings_over_raster.png"
    assert over.save(str(map_png))
    assert dock_png.stat().st_size > 10_000 and map_png.stat().st_size > 10_000
    extent, scale = raster_layer.extent(), 600 / raster_layer.extent().width()

    def pixel(x: float, y: float) -> tuple[int, int]:
        return int((x - extent.xMinimum()) * scale), int((extent.yMaximum() - y) * scale)

    geoms = buildings_of(outcome)
    inside = [pixel(*shapely.get_coordinates(shapely.point_on_surface(g))[0]) for g in geoms]
    assert all(over.pixel(*p) != plain.pixel(*p) for p in inside)  # each building is drawn where it is
    away = shapely.union_all(geoms).buffer(3.0)  # more than 3 m from any building: the raster alone
    background = [(col, row) for col in range(5, 600, 20) for row in range(5, 600, 20)
                  if not shapely.contains_xy(away, extent.xMinimum() + col / scale, extent.yMaximum() - row / scale)]
    assert len(background) > 100 and all(over.pixel(*p) == plain.pixel(*p) for p in background)
    assert len({over.pixel(*p) for p in background}) > 50  # not blank: the imagery is there


def test_the_dock_fits_a_300_px_column_and_nothing_is_clipped(dock, raster_layer, project, iface) -> None:
    raster_layer.setName("3band_013022223130_Public_img10_a_long_layer_name")
    dock.raster_combo.setLayer(raster_layer)
    _, outcome = run_now(dock)  # the status line holds a run's result, the device line the model's device
    assert outcome.state == "done", outcome.message
    dock.area_combo.setCurrentIndex(dock.area_combo.findData("polygons"))  # every optional row shown
    dock.model_combo.setCurrentIndex(dock.model_combo.findData("architecture"))
    dock.output_widget.setFilePath("/a/long/output/folder/for/the/runs/of/the/mtp/plugin/in/a/project/folder")
    fit_to_width(iface.mainWindow(), dock, 300, "dock_300px.png")
