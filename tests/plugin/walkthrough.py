"""The plugin's acceptance walk-through, as a new user would do it, in a fresh QGIS process with a fresh profile.

Install the built zip into the profile's plugin folder, load and start it the way QGIS does (``qgis.utils``), run
the dock on a synthetic scene and on a real SpaceNet chip (EPSG:4326), click five roofs, run
``mtp:extractbuildings`` on several rasters as the batch dialog does (one run per row), then unload and uninstall.
Prints one JSON line with what it saw; ``test_acceptance.py`` runs it and checks that line.

    python tests/plugin/walkthrough.py ZIP WORKDIR SCENE CHIP [CHIP...]
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("XDG_RUNTIME_DIR", os.path.join(tempfile.gettempdir(), f"runtime-{os.getuid()}"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from qgis.core import (  # noqa: E402
    QgsApplication,
    QgsLayerTreeGroup,
    QgsMapRendererParallelJob,
    QgsMapSettings,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QCoreApplication, QEvent, QSize  # noqa: E402
from qgis.PyQt.QtGui import QColor  # noqa: E402
from qgis.PyQt.QtWidgets import QDockWidget  # noqa: E402
from qgis_iface import MainWindowInterface  # noqa: E402

PLUGIN = "mtp_qgis"


def wait(condition, seconds: float = 300.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the task did not finish")
        QgsApplication.processEvents()
        time.sleep(0.01)


def run_dock(dock, layer: QgsRasterLayer) -> dict:
    """Choose the layer, press Run, wait for the task manager's task; the layers it added."""
    def groups() -> list[QgsLayerTreeGroup]:
        return [n for n in QgsProject.instance().layerTreeRoot().children() if isinstance(n, QgsLayerTreeGroup)]

    before = groups()
    dock.raster_combo.setLayer(layer)
    dock.run_button.click()
    wait(lambda: dock.task is None)
    (group,) = [g for g in groups() if g not in before]
    layers = [node.layer() for node in group.findLayers()]
    buildings = next(x for x in layers if isinstance(x, QgsVectorLayer))
    return {"status": dock.status_label.text(), "group": group.name(),
            "layers": sorted(type(x).__name__ for x in layers), "buildings": buildings.featureCount(),
            "crs": [x.crs().authid() for x in layers], "fields": buildings.fields().names(),
            "source": buildings.source().split("|")[0],
            "largest_m2": max((f["area_m2"] for f in buildings.getFeatures()), default=0.0)}


def click_roofs(dock, canvas, scene: QgsRasterLayer, run: dict, count: int) -> dict:
    """Click ``count`` roofs (the largest buildings of the dock's run) with the dock's map tool."""
    import shapely  # the engine's dependencies come in with the installed plugin

    from mtp_core.io import read_vector

    canvas.setDestinationCrs(scene.crs())
    canvas.setLayers([scene])
    canvas.setExtent(scene.extent())
    dock.raster_combo.setLayer(scene)
    dock.click_button.setChecked(True)
    tool = canvas.mapTool()
    roofs = sorted(read_vector(run["source"])[0], key=lambda g: -g.area)[:count]
    times = []
    for roof in roofs:
        point = roof.representative_point()
        start = time.perf_counter()
        tool.segment(point.x, point.y)
        wait(lambda: not tool.busy)
        times.append(time.perf_counter() - start)
    added = [shapely.from_wkb(bytes(f.geometry().asWkb())) for f in tool.layer.getFeatures()]
    same = sum(any(shapely.equals(a, r) for r in roofs) for a in added)
    tool.layer.undoStack().undo()
    return {"added": len(added), "equal_to_run": same, "after_undo": tool.layer.featureCount(),
            "seconds": [round(t, 3) for t in times], "message": canvas.window().statusBar().currentMessage()}


def batch(chips: list[str], out: Path) -> list[dict]:
    """``mtp:extractbuildings`` once per raster, as the batch dialog runs its rows."""
    import processing
    from processing.core.Processing import Processing

    Processing.initialize()
    results = []
    for chip in chips:
        result = processing.run("mtp:extractbuildings", {"INPUT": chip, "DEVICE": "cpu", "NODATA": 0,
                                                         "OUTPUT": str(out / f"{Path(chip).stem}.gpkg")})
        layer = QgsVectorLayer(result["OUTPUT"], "b", "ogr")
        results.append({"buildings": result["BUILDINGS"], "features": layer.featureCount(),
                        "crs": layer.crs().authid()})
    return results


def screenshot(chip: QgsRasterLayer, buildings: str, path: Path) -> None:
    """The chip with the dock's buildings (orange) and, where SpaceNet has them, its labels (cyan outlines)."""
    layer = QgsVectorLayer(buildings, "buildings", "ogr")
    layer.renderer().symbol().setColor(QColor(255, 60, 0, 90))
    layers = [layer]
    source = Path(chip.source())
    labels = source.parents[1] / "vectorData" / "geoJson" / f"{source.stem.removeprefix('3band_')}_Geo.geojson"
    if labels.exists():
        truth = QgsVectorLayer(str(labels), "labels", "ogr")
        symbol = truth.renderer().symbol()
        symbol.setColor(QColor(0, 0, 0, 0))
        symbol.symbolLayer(0).setStrokeColor(QColor(0, 230, 255))
        symbol.symbolLayer(0).setStrokeWidth(0.6)
        layers.insert(0, truth)
    settings = QgsMapSettings()
    settings.setOutputSize(QSize(600, 600))
    settings.setDestinationCrs(chip.crs())
    settings.setExtent(chip.extent())
    settings.setLayers([*layers, chip])
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    path.parent.mkdir(parents=True, exist_ok=True)
    job.renderedImage().save(str(path))


def main() -> None:
    zip_path, work, scene_path, *chips = sys.argv[1:]
    work = Path(work)
    profile = work / "profile"
    app = QgsApplication([], True, str(profile))
    QgsApplication.setPrefixPath("/usr", True)
    app.initQgis()
    sys.path.append(os.path.join(QgsApplication.pkgDataPath(), "python", "plugins"))  # QGIS's processing
    plugins = Path(QgsApplication.qgisSettingsDirPath()) / "python" / "plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    zipfile.ZipFile(zip_path).extractall(plugins)  # Plugins > Install from ZIP
    sys.path.insert(0, str(plugins))

    import qgis.utils

    iface = MainWindowInterface()
    qgis.utils.iface = iface
    qgis.utils.plugin_paths = [str(plugins)]
    qgis.utils.updateAvailablePlugins()
    report: dict = {"found": PLUGIN in qgis.utils.available_plugins}
    report["started"] = qgis.utils.loadPlugin(PLUGIN) and qgis.utils.startPlugin(PLUGIN)
    import mtp_core

    report["engine_from_zip"] = Path(mtp_core.__file__).is_relative_to(plugins / PLUGIN)
    plugin = qgis.utils.plugins[PLUGIN]
    window = iface.mainWindow()
    report["docks_at_start"] = len(window.findChildren(QDockWidget))
    plugin.dock_action.trigger()
    dock = plugin.dock
    dock.device_combo.setCurrentIndex(dock.device_combo.findData("cpu"))
    dock.output_widget.setFilePath(str(work / "dock_out"))
    project = QgsProject.instance()
    scene = QgsRasterLayer(scene_path, "scene", "gdal")
    chip = QgsRasterLayer(chips[0], Path(chips[0]).stem, "gdal")
    project.addMapLayers([scene, chip])
    report["dock_scene"] = run_dock(dock, scene)
    dock.nodata_edit.setText("0")  # SpaceNet chips declare no nodata; their black fill is not imagery
    report["dock_chip"] = run_dock(dock, chip)
    dock.nodata_edit.clear()
    report["clicks"] = click_roofs(dock, iface.mapCanvas(), scene, report["dock_scene"], 5)
    report["batch"] = batch(chips, work / "batch")
    screenshot(chip, report["dock_chip"]["source"], work / "artifacts" / "spacenet_chip_buildings.png")

    report["unloaded"] = qgis.utils.unloadPlugin(PLUGIN)
    QCoreApplication.sendPostedEvents(None, QEvent.DeferredDelete)
    shutil.rmtree(plugins / PLUGIN)  # Plugins > Uninstall
    report["left_after_unload"] = {
        "docks": len(window.findChildren(QDockWidget)),
        "toolbar": len(iface.toolbar.actions()), "menu": len(iface.raster_menu.actions()),
        "provider": QgsApplication.processingRegistry().providerById("mtp") is not None,
        "modules": sorted(m for m in sys.modules if m == PLUGIN or m.startswith(f"{PLUGIN}.")),
        "installed": (plugins / PLUGIN).exists()}
    print(json.dumps(report), flush=True)
    project.clear()
    iface.mapCanvas().stopRendering()
    window.close()
    window.deleteLater()
    QCoreApplication.sendPostedEvents(None, QEvent.DeferredDelete)
    app.exitQgis()


if __name__ == "__main__":
    main()
