"""What a new user does in the real QGIS desktop, run by ``qgis --code`` inside it (``test_desktop.py`` starts QGIS).

With the plugin installed from its zip and enabled in a fresh profile: optionally press "Install dependencies" and
wait for it (``install``), open the dock through its action, run the demo model on a SpaceNet chip with the Run
button, click a roof with the map tool (a real mouse click on the map), run ``mtp:extractbuildings`` through
Processing, save a screenshot of the whole window, save the clicked building, and quit QGIS. With ``pair`` and
``touching`` instead: changes between two layers with their kinds, then the demo instance model on a scene where
buildings share walls and a click on a house in a row. Everything it sees goes to a JSON file; a failure is written
there too, and QGIS still quits.

    MTP_DESKTOP='{"chip": ..., "work": ..., "report": ..., "screenshot": ..., "install": false}' qgis --code THIS
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

from qgis.core import QgsApplication, QgsPointXY, QgsProject, QgsRasterLayer
from qgis.PyQt.QtCore import QPoint, Qt, QTimer
from qgis.PyQt.QtGui import QGuiApplication
from qgis.PyQt.QtTest import QTest
from qgis.PyQt.QtWidgets import QAction, QScrollBar, QWidget
from qgis.utils import iface, plugins

SPEC = json.loads(os.environ["MTP_DESKTOP"])
WINDOW = (1600, 1000)


def wait(condition, seconds: float, what: str) -> float:
    """Pumps QGIS's event loop until ``condition()``; the seconds it took."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > seconds:
            raise TimeoutError(f"{what} took more than {seconds:.0f} s")
        QgsApplication.processEvents()
        time.sleep(0.02)
    return time.monotonic() - start


def clipped_widgets(dock) -> list[str]:
    """The dock's visible widgets that reach past its scroll area's viewport (what a user would see cut off)."""
    viewport = dock.scroll_area.viewport()
    return [widget.objectName() or type(widget).__name__ for widget in dock.scroll_area.widget().findChildren(QWidget)
            if widget.isVisible() and not isinstance(widget, QScrollBar)
            and widget.mapTo(viewport, QPoint(widget.width(), 0)).x() > viewport.width()]


def screenshot(window: QWidget, suffix: str = "") -> bool:
    """The screen's pixels of ``window`` (OpenGL included) saved beside the session's main screenshot."""
    path = Path(SPEC["screenshot"])
    if suffix:
        path = path.with_name(f"{path.stem}_{suffix}.png")
    return QGuiApplication.primaryScreen().grabWindow(window.winId()).save(str(path))


def environment_dialog(seen: dict) -> None:
    """MTP environment…: its Diagnostics, as a user would copy them into a bug report."""
    iface.mainWindow().findChild(QAction, "mtpEnvironmentAction").trigger()
    dialog = plugins["mtp_qgis"].environment_dialog
    wait(lambda: dialog.isVisible(), 30, "the environment dialog")
    QgsApplication.processEvents()
    seen["diagnostics"] = dialog.text.toPlainText()
    seen["environment_screenshot"] = screenshot(dialog, "environment")
    dialog.close()


def install(dock, seen: dict) -> None:
    """Press "Install dependencies" in the dock and wait for the installation to finish."""
    from mtp_qgis.installer import installs  # the plugin as QGIS loaded it

    panel = dock.install_panel
    seen["before_install"] = {"panel_visible": panel.isVisible(), "summary": panel.summary_label.text(),
                              "run_enabled": dock.run_button.isEnabled()}
    outcomes = []
    installs.done.connect(outcomes.append)
    QTest.mouseClick(panel.install_button, Qt.LeftButton)
    started = time.monotonic()
    wait(lambda: panel.step_label.text().startswith("installing PyTorch") or outcomes, 300, "the PyTorch step")
    QTest.mouseClick(panel.log_button, Qt.LeftButton)  # Show the installation log
    wait(lambda: panel.log_view.document().blockCount() > 5 or outcomes, 60, "the pip log")
    seen["while_installing"] = {"button": panel.install_button.text(), "step": panel.step_label.text(),
                                "progress": panel.progress_bar.value(), "clipped": clipped_widgets(dock),
                                "saved": screenshot(iface.mainWindow(), "installing")}
    wait(lambda: outcomes, 900, "the installation")
    seen["install_seconds"] = round(time.monotonic() - started, 1)
    outcome = outcomes[0]
    seen["install"] = {"state": outcome.state, "message": outcome.message, "installed": outcome.installed,
                       "panel_visible": panel.isVisible(), "run_enabled": dock.run_button.isEnabled(),
                       "log_lines": panel.log_view.document().blockCount()}


def run_dock(dock, chip: QgsRasterLayer, seen: dict) -> None:
    dock.raster_combo.setLayer(chip)
    dock.nodata_edit.setText("0")  # SpaceNet chips declare no nodata; their black fill is not imagery
    dock.device_combo.setCurrentIndex(dock.device_combo.findData("cpu"))
    dock.output_widget.setFilePath(str(Path(SPEC["work"]) / "dock_out"))
    QTest.mouseClick(dock.run_button, Qt.LeftButton)
    seconds = wait(lambda: dock.task is None, 300, "the dock's run")
    groups = QgsProject.instance().layerTreeRoot().findGroups()
    layers = [node.layer() for node in groups[0].findLayers()] if groups else []
    seen["run"] = {"seconds": round(seconds, 1), "status": dock.status_label.text(),
                   "layers": [layer.name() for layer in layers],
                   "buildings": layers[0].featureCount() if layers else 0,
                   "source": layers[0].source().split("|")[0] if layers else ""}


def click_roof(dock, seen: dict) -> None:
    """A real left click on the map, inside the largest building of the run, with the dock's map tool."""
    from mtp_core.io import read_vector

    canvas = iface.mapCanvas()
    roof = max(read_vector(seen["run"]["source"])[0], key=lambda polygon: polygon.area)
    inside = roof.representative_point()
    QTest.mouseClick(dock.click_button, Qt.LeftButton)
    tool = canvas.mapTool()
    pixel = canvas.getCoordinateTransform().transform(QgsPointXY(inside.x, inside.y))
    QTest.mouseClick(canvas.viewport(), Qt.LeftButton, Qt.NoModifier, QPoint(round(pixel.x()), round(pixel.y())))
    seconds = wait(lambda: not tool.busy, 120, "the click")
    layer = tool.layer
    features = list(layer.getFeatures()) if layer is not None else []
    import shapely

    added = shapely.from_wkb(bytes(features[0].geometry().asWkb())) if features else shapely.Polygon()
    seen["click"] = {"tool_active": tool is dock.click_tool, "seconds": round(seconds, 2),
                     "message": iface.statusBarIface().currentMessage(),
                     "layer": layer.name() if layer is not None else None,
                     "file": layer.source().split("|")[0] if layer is not None else None,
                     "features": len(features), "equals_run": bool(shapely.equals(added, roof)),
                     "iou_with_run": float(shapely.area(shapely.intersection(added, roof))
                                           / shapely.area(shapely.union(added, roof)))}


def run_processing(seen: dict) -> None:
    import processing

    result = processing.run("mtp:extractbuildings", {"INPUT": SPEC["chip"], "DEVICE": "cpu", "NODATA": 0,
                                                     "OUTPUT": "TEMPORARY_OUTPUT"})
    seen["processing"] = {"buildings": result["BUILDINGS"], "features": result["OUTPUT"].featureCount()}


def press_run(dock, what: str) -> tuple[float, list]:
    """Run with the dock's button; the seconds it took and the layers of the group it added."""
    QTest.mouseClick(dock.run_button, Qt.LeftButton)
    seconds = wait(lambda: dock.task is None, 300, what)
    group = QgsProject.instance().layerTreeRoot().findGroups()[0]  # the newest group is on top
    return seconds, [node.layer() for node in group.findLayers()]


def show(layers: list, name: str) -> bool:
    """Only the newest group and the rasters under it shown, the map zoomed to its layers and drawn, and the whole
    window saved."""
    groups = QgsProject.instance().layerTreeRoot().findGroups()
    for group in groups:
        group.setItemVisibilityChecked(group is groups[0])
    canvas = iface.mapCanvas()
    drawn = []
    canvas.mapCanvasRefreshed.connect(lambda: drawn.append(True))
    canvas.setExtent(layers[0].extent())
    canvas.refresh()
    wait(lambda: drawn and not canvas.isDrawing(), 60, "the map")
    QgsApplication.processEvents()
    return screenshot(iface.mainWindow(), name)


def changes_and_instances() -> dict:
    """Changes between two layers (demo change detector, kinds from the demo building model), then the demo instance
    model on a terrace scene and a real click on a house that shares a wall."""
    import shapely

    from mtp_core.io import read_vector

    seen: dict = {"python_errors": []}
    QgsApplication.messageLog().messageReceived.connect(
        lambda message, tag, level: seen["python_errors"].append(message) if tag == "Python error" else None)
    iface.mainWindow().setGeometry(0, 0, *WINDOW)
    before, after = (iface.addRasterLayer(path, Path(path).stem) for path in SPEC["pair"])
    iface.mainWindow().findChild(QAction, "mtpDockAction").trigger()
    dock = plugins["mtp_qgis"].dock
    wait(lambda: dock.isVisible(), 10, "the dock")
    dock.mode_combo.setCurrentIndex(dock.mode_combo.findData("change"))
    dock.raster_combo.setLayer(before)
    dock.after_combo.setLayer(after)
    dock.kinds_check.setChecked(True)
    dock.device_combo.setCurrentIndex(dock.device_combo.findData("cpu"))
    dock.output_widget.setFilePath(str(Path(SPEC["work"]) / "changes_out"))
    seconds, layers = press_run(dock, "the change run")
    kinds = [feature["kind"] for feature in layers[0].getFeatures()]
    seen["changes"] = {"seconds": round(seconds, 1), "status": dock.status_label.text(),
                       "layers": [layer.name() for layer in layers], "renderer": layers[0].renderer().type(),
                       "kinds": {kind: kinds.count(kind) for kind in set(kinds)},
                       "saved": show(layers, "changes")}

    scene = iface.addRasterLayer(SPEC["touching"], Path(SPEC["touching"]).stem)
    dock.mode_combo.setCurrentIndex(dock.mode_combo.findData("segment"))
    dock.raster_combo.setLayer(scene)
    dock.model_combo.setCurrentIndex(dock.model_combo.findData("demo-instances"))
    dock.output_widget.setFilePath(str(Path(SPEC["work"]) / "instances_out"))
    seconds, layers = press_run(dock, "the instance run")
    seen["instances"] = {"seconds": round(seconds, 1), "status": dock.status_label.text(),
                         "layers": [layer.name() for layer in layers], "buildings": layers[0].featureCount()}
    labels, _, _ = read_vector(SPEC["touching_labels"], target_crs_wkt=scene.crs().toWkt())
    tree = shapely.STRtree(labels)
    in_rows = [house for house in labels if len(tree.query(house.buffer(0.3), predicate="intersects")) > 1]
    house = max(in_rows, key=lambda polygon: polygon.area)  # the largest house that shares a wall
    canvas = iface.mapCanvas()
    canvas.setExtent(scene.extent())
    canvas.refresh()
    wait(lambda: not canvas.isDrawing(), 60, "the map")
    QTest.mouseClick(dock.click_button, Qt.LeftButton)
    tool = canvas.mapTool()
    inside = house.representative_point()
    pixel = canvas.getCoordinateTransform().transform(QgsPointXY(inside.x, inside.y))
    QTest.mouseClick(canvas.viewport(), Qt.LeftButton, Qt.NoModifier, QPoint(round(pixel.x()), round(pixel.y())))
    wait(lambda: not tool.busy, 120, "the click")
    features = list(tool.layer.getFeatures()) if tool.layer is not None else []
    added = shapely.from_wkb(bytes(features[0].geometry().asWkb())) if features else shapely.Polygon()
    row = shapely.union_all([labels[i] for i in tree.query(house.buffer(0.3), predicate="intersects")])
    seen["click"] = {"message": iface.statusBarIface().currentMessage(), "features": len(features),
                     "iou_with_house": float(shapely.area(added & house) / shapely.area(added | house)),
                     "area_of_row": float(row.area / house.area), "area_added": float(added.area / house.area)}
    seen["instances"]["saved"] = show(layers, "instances")
    QTest.mouseClick(dock.click_button, Qt.LeftButton)
    if tool.layer is not None:
        tool.layer.commitChanges()
    return seen


def session() -> dict:
    seen: dict = {"plugin_loaded": "mtp_qgis" in plugins, "triton": repr(sys.modules.get("triton", "absent")),
                  "python_errors": []}
    QgsApplication.messageLog().messageReceived.connect(
        lambda message, tag, level: seen["python_errors"].append(message) if tag == "Python error" else None)
    window = iface.mainWindow()
    window.setGeometry(0, 0, *WINDOW)
    chip = iface.addRasterLayer(SPEC["chip"], Path(SPEC["chip"]).stem)
    action = window.findChild(QAction, "mtpDockAction")
    action.trigger()  # the toolbar button / Raster menu entry
    dock = plugins["mtp_qgis"].dock
    wait(lambda: dock.isVisible(), 10, "the dock")
    seen["dock_opened"] = {"visible": dock.isVisible(), "width": dock.width(),
                           "minimum_width": dock.minimumSizeHint().width()}
    if SPEC["install"]:
        install(dock, seen)
    run_dock(dock, chip, seen)
    click_roof(dock, seen)
    run_processing(seen)
    environment_dialog(seen)
    seen["triton_after"] = repr(sys.modules.get("triton", "absent"))
    seen["timm_loaded"] = "timm" in sys.modules
    seen["modules_from"] = {name: sys.modules[name].__file__ for name in ("torch", "timm", "shapely", "numpy")}
    from mtp_qgis.diagnostics import opengl_renderer

    seen["opengl"] = opengl_renderer()
    iface.mapCanvas().setExtent(chip.extent())
    iface.mapCanvas().refresh()
    wait(lambda: not iface.mapCanvas().isDrawing(), 60, "the map")
    QgsApplication.processEvents()
    seen["message_bar"] = [[item.title(), item.text()] for item in iface.messageBar().items()]
    seen["dock"] = {"width": dock.width(), "clipped": clipped_widgets(dock),
                    "horizontal_scroll_bar": dock.scroll_area.horizontalScrollBar().isVisible()}
    seen["screenshot"] = {"saved": screenshot(window), "size": [window.width(), window.height()]}
    target = dock.click_tool.layer if dock.click_tool else None
    QTest.mouseClick(dock.click_button, Qt.LeftButton)  # leaves the map tool
    if target is not None:
        seen["click"]["saved"] = target.commitChanges()  # Save Layer Edits, so quitting asks nothing
    return seen


def main() -> None:
    try:
        seen = changes_and_instances() if SPEC.get("pair") else session()
    except Exception:  # noqa: BLE001  (the test reads the failure from the report)
        seen = {"error": traceback.format_exc()}
    Path(SPEC["report"]).write_text(json.dumps(seen, indent=1), encoding="utf-8")
    QgsProject.instance().setDirty(False)  # the layers added are not worth a "save the project?" question
    QTimer.singleShot(0, iface.actionExit().trigger)


main()
