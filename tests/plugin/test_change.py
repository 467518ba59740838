"""Changes between two dates in real QGIS: ``mtp:changedetection`` and the dock's "Changes between two layers" give
the polygons and mask of ``mtp change``, styled by kind.

One synthetic before/after pair (256 x 256 px at 0.5 m: one tile of the embedded demo change detector and of the
demo building model) and one ``mtp change --buildings demo`` run are the reference.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from qgis.core import (
    Qgis,
    QgsApplication,
    QgsCategorizedSymbolRenderer,
    QgsLayerTreeGroup,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProject,
    QgsRasterLayer,
    QgsSettings,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import Qt

from mtp_core.cli import main as mtp
from mtp_tools.synthetic.pair import render_pair, write_pair
from qgis_plugin.change_task import ChangeTask
from qgis_plugin.dock import MTPDock
from qgis_plugin.processing import MTPProvider
from qgis_plugin.results import KIND_STYLES

from .test_dock import fit_to_width
from .test_processing import assert_same_polygons, assert_same_raster

FIELDS = ["id", "class", "score", "area_m2", "perimeter_m", "source", "model", "kind"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path, Path]:
    return write_pair(render_pair(256, 256, seed=77), tmp_path_factory.mktemp("pair"), "town")


@pytest.fixture(scope="module")
def cli(pair, tmp_path_factory) -> Path:
    """``mtp change --buildings demo`` with default options: town_change_mask.tif and town_changes.gpkg."""
    out = tmp_path_factory.mktemp("cli")
    assert mtp(["change", str(pair[0]), str(pair[1]), "--out", str(out), "--buildings", "demo", "--device",
                "cpu"]) == 0
    return out


@pytest.fixture(scope="module")
def processing_framework(qgis_app):
    import processing
    from processing.core.Processing import Processing

    Processing.initialize()
    return processing


@pytest.fixture
def provider(processing_framework):
    registered = MTPProvider()
    assert QgsApplication.processingRegistry().addProvider(registered)
    yield processing_framework
    QgsApplication.processingRegistry().removeProvider(registered)


@pytest.fixture
def project(qgis_app):
    QgsProject.instance().clear()
    QgsSettings().remove("mtp/dock")
    yield QgsProject.instance()
    QgsProject.instance().clear()
    QgsSettings().remove("mtp/dock")


def test_changedetection_gives_the_changes_and_mask_of_mtp_change(provider, pair, cli, tmp_path) -> None:
    result = provider.run("mtp:changedetection", {
        "BEFORE": str(pair[0]), "AFTER": str(pair[1]), "KINDS": True, "DEVICE": "cpu",
        "OUTPUT": str(tmp_path / "changes.gpkg"), "MASK": str(tmp_path / "mask.tif")})
    assert result["CHANGES"] > 0
    assert_same_polygons(Path(result["OUTPUT"]), cli / "town_changes.gpkg")
    assert_same_raster(Path(result["MASK"]), cli / "town_change_mask.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["changes.gpkg", "mask.tif"]  # no temporary folder left


def test_loaded_changes_are_styled_by_kind(provider, pair, project) -> None:
    context = QgsProcessingContext()
    context.setProject(project)
    result = provider.runAndLoadResults("mtp:changedetection", {
        "BEFORE": str(pair[0]), "AFTER": str(pair[1]), "KINDS": True, "DEVICE": "cpu",
        "OUTPUT": "TEMPORARY_OUTPUT"}, context=context, feedback=QgsProcessingFeedback())
    layer = project.mapLayer(result["OUTPUT"]) if isinstance(result["OUTPUT"], str) else result["OUTPUT"]
    assert layer is not None and layer.featureCount() == result["CHANGES"] > 0
    renderer = layer.renderer()
    assert isinstance(renderer, QgsCategorizedSymbolRenderer) and renderer.classAttribute() == "kind"
    assert [c.value() for c in renderer.categories()] == [kind for kind, _, _ in KIND_STYLES]


def test_changedetection_without_kinds_and_its_errors(provider, pair, tmp_path) -> None:
    from qgis.core import QgsProcessingException

    result = provider.run("mtp:changedetection", {"BEFORE": str(pair[0]), "AFTER": str(pair[1]), "DEVICE": "cpu",
                                                  "OUTPUT": str(tmp_path / "c.gpkg")})
    layer = QgsVectorLayer(result["OUTPUT"], "c", "ogr")
    assert layer.fields().indexOf("kind") < 0 and layer.featureCount() == result["CHANGES"]
    with pytest.raises(QgsProcessingException, match="is a segmentation model, not a change detector"):
        from mtp_core.weights import DEMO_CHECKPOINT

        provider.run("mtp:changedetection", {"BEFORE": str(pair[0]), "AFTER": str(pair[1]), "DEVICE": "cpu",
                                             "CHECKPOINT": str(DEMO_CHECKPOINT), "OUTPUT": str(tmp_path / "d.gpkg")})


@pytest.fixture
def dock(iface, project, pair, tmp_path):
    """The dock in its change task on the pair's two layers, on the CPU, writing to tmp_path/out."""
    before, after = (QgsRasterLayer(str(p), name, "gdal") for p, name in zip(pair, ("before", "after")))
    for layer in (before, after):
        assert layer.isValid()
        project.addMapLayer(layer)
    widget = MTPDock(iface, iface.mainWindow())
    iface.addDockWidget(Qt.RightDockWidgetArea, widget)
    widget.mode_combo.setCurrentIndex(widget.mode_combo.findData("change"))
    widget.raster_combo.setLayer(before)
    widget.after_combo.setLayer(after)
    widget.device_combo.setCurrentIndex(widget.device_combo.findData("cpu"))
    widget.output_widget.setFilePath(str(tmp_path / "out"))
    yield widget
    widget.shutdown()
    iface.removeDockWidget(widget)
    widget.deleteLater()


def test_the_change_task_shows_its_rows_and_hides_the_click_tool(dock) -> None:
    form = dock.form_layout
    assert form.labelForField(dock.raster_combo).text() == "First date"
    assert dock.after_combo.isVisibleTo(dock) and dock.kinds_check.isVisibleTo(dock)
    assert not dock.buildings_widget.isVisibleTo(dock) and not dock.click_panel.isVisibleTo(dock)
    dock.kinds_check.setChecked(True)
    assert dock.buildings_widget.isVisibleTo(dock)
    assert "mtp_vit_b_rvsa_unet_cd" in [dock.architecture_combo.itemText(i)
                                        for i in range(dock.architecture_combo.count())]
    dock.mode_combo.setCurrentIndex(dock.mode_combo.findData("segment"))
    assert form.labelForField(dock.raster_combo).text() == "Raster layer" and dock.click_panel.isVisibleTo(dock)
    assert not dock.after_combo.isVisibleTo(dock)


def test_a_change_run_adds_the_changes_of_mtp_change_styled_by_kind(dock, project, cli, iface, tmp_path) -> None:
    dock.kinds_check.setChecked(True)
    task = dock.create_task()
    assert isinstance(task, ChangeTask)
    lines: list[str] = []
    task.progress_text.connect(lines.append)
    task.finished(task.run())
    outcome = task.outcome
    assert outcome.state == "done", outcome.message
    groups = [n for n in project.layerTreeRoot().children() if isinstance(n, QgsLayerTreeGroup)]
    assert len(groups) == 1 and groups[0].name().startswith("MTP changes before → after ")
    changes, mask = [node.layer() for node in groups[0].findLayers()]
    assert isinstance(changes, QgsVectorLayer) and isinstance(mask, QgsRasterLayer)
    assert [f.name() for f in changes.fields() if f.name() != "fid"] == FIELDS
    assert isinstance(changes.renderer(), QgsCategorizedSymbolRenderer)
    assert_same_polygons(outcome.vector_path, cli / "town_changes.gpkg")
    assert_same_raster(outcome.mask_path, cli / "town_change_mask.tif")
    assert outcome.vector_path.name == "town_changes.gpkg" and "changes (" in outcome.message
    assert [p.name for p in (tmp_path / "out").iterdir()] == [outcome.vector_path.parent.name]
    assert any("tiles" in line for line in lines) and task.progress() == 100
    assert dock.current_settings().mode == "change"


def test_change_choices_are_checked_before_a_run(dock, project, iface) -> None:
    dock.after_combo.setLayer(dock.raster_combo.currentLayer())
    dock.start()
    assert dock.task is None
    text = iface.messageBar().currentItem().text()
    assert "choose two different layers under 'First date' and 'Second date'" in text
    assert iface.messageBar().currentItem().level() == Qgis.Critical


def test_the_change_task_fits_a_300_px_column(dock, iface) -> None:
    dock.kinds_check.setChecked(True)
    fit_to_width(iface.mainWindow(), dock, 300, "dock_changes_300px.png")


def test_cancel_during_a_change_run_leaves_no_files_and_no_layers(dock, project) -> None:
    """Cancelled at the first progress report (the change model's first batch of the building model's three runs)."""
    dock.kinds_check.setChecked(True)
    dock.batch_spin.setValue(1)
    task = dock.create_task()
    reports: list[float] = []
    task.progressChanged.connect(reports.append)
    task.progressChanged.connect(lambda _: task.cancel())
    result = task.run()
    task.finished(result)
    assert not result and task.outcome.state == "cancelled"
    assert len(reports) == 1 and 0 < reports[0] < 100
    assert list(Path(dock.output_folder()).iterdir()) == []
    assert len(project.mapLayers()) == 2 and project.layerTreeRoot().findGroups() == []
    assert dock.status_label.text().startswith("Cancelled")
