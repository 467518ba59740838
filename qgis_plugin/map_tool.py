"""Click-to-segment map tool: click a building on the canvas, get its polygon in a layer; Ctrl+Z takes it back.

Why it is built this way:

* **A thin shell.** :class:`mtp_core.click.ClickSegmenter` finds the building (the whole-raster job's polygon, from
  a cache of predicted tiles); this tool only turns canvas events into points in the raster's CRS and results into
  features, previews and status-bar messages.
* **Never freezes QGIS.** A click whose tiles are cached is answered at once on the main thread (milliseconds). One
  that needs the model runs in a :class:`QgsTask` over plain values (the segmenter, or the function that makes it,
  and two floats); its feature is added in ``finished()``, on the main thread. Meanwhile the status bar says
  "segmenting…", hover previews pause and further clicks are refused with a message. ``synchronous=True`` runs
  every click in the caller's thread (tests, scripts).
* **Undo is QGIS's own.** Each building is one edit command on the target layer, so the layer's undo stack removes
  it and redo brings it back. In QGIS, Ctrl+Z is first Edit ▸ Undo's shortcut, which acts on the *active* layer:
  the tool makes the target layer active (``set_active_layer``) each time it adds a building, so Ctrl+Z undoes the
  building, never another layer's edit; where no such shortcut takes the key, the tool undoes it itself. The tool
  never commits: edits stay in the layer's edit buffer until the user saves them, as with QGIS's digitizing tools.
* **Previews never run the model.** Hovering (debounced) draws the polygon a click would add when its tiles are
  cached, so after the first click nearby buildings light up under the cursor for free.
* **No duplicates.** A building already in the layer (IoU > 0.95 with a feature there, e.g. after a double click)
  is reported, not added again.
* **Light to import.** Nothing here imports torch or shapely at import time; the engine comes in with the segmenter.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Union

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsCsException,
    QgsFeature,
    QgsFeatureRequest,
    QgsField,
    QgsFields,
    QgsGeometry,
    QgsMapLayer,
    QgsMemoryProviderUtils,
    QgsMessageLog,
    QgsPointXY,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsTask,
    QgsVectorFileWriter,
    QgsVectorLayer,
    QgsWkbTypes,
)
from qgis.gui import QgsMapCanvas, QgsMapMouseEvent, QgsMapTool, QgsRubberBand
from qgis.PyQt import sip
from qgis.PyQt.QtCore import Qt, QTimer, QVariant, pyqtSignal
from qgis.PyQt.QtGui import QColor, QCursor, QKeyEvent, QKeySequence

from .results import style_buildings

if TYPE_CHECKING:  # the engine imports torch: it comes with the segmenter
    from mtp_core.click import ClickResult, ClickSegmenter

LOG_TAG = "MTP"
PREVIEW_DELAY_MS = 40  # hover previews wait until the pointer rests this long
DUPLICATE_IOU = 0.95
_FIELD_TYPES = {int: QVariant.Int, float: QVariant.Double, str: QVariant.String}

SegmenterSource = Union["ClickSegmenter", Callable[[], "ClickSegmenter"]]


def create_building_layer(crs: QgsCoordinateReferenceSystem, name: str = "buildings",
                          path: str | None = None) -> QgsVectorLayer:
    """A polygon layer with the engine's building attributes in ``crs``, styled as the dock's results: in memory, or in
    a GeoPackage at ``path`` (a layer ``name`` added to the file when it exists)."""
    from mtp_core.click import FIELDS

    fields = QgsFields()
    for field_name, kind in FIELDS.items():
        fields.append(QgsField(field_name, _FIELD_TYPES[kind]))
    if path is None:
        layer = QgsMemoryProviderUtils.createMemoryLayer(name, fields, QgsWkbTypes.Polygon, crs)
    else:
        options = QgsVectorFileWriter.SaveVectorOptions()
        options.driverName, options.layerName = "GPKG", name
        if QgsVectorLayer(path, "", "ogr").isValid():
            options.actionOnExistingFile = QgsVectorFileWriter.CreateOrOverwriteLayer
        writer = QgsVectorFileWriter.create(path, fields, QgsWkbTypes.Polygon, crs,
                                            QgsProject.instance().transformContext(), options)
        if writer.hasError() != QgsVectorFileWriter.NoError:
            raise OSError(f"cannot create {path}: {writer.errorMessage()}")
        del writer  # closes the file
        layer = QgsVectorLayer(f"{path}|layername={name}", name, "ogr")
    if not layer.isValid():
        raise OSError(f"cannot create the building layer {name}" + (f" in {path}" if path else ""))
    style_buildings(layer)
    return layer


class _SegmentTask(QgsTask):
    """One click that needs the model, in a worker thread; only plain Python objects cross the thread."""

    def __init__(self, make_segmenter: Callable[[], ClickSegmenter], x: float, y: float, started: float,
                 done: Callable[[_SegmentTask], None]) -> None:
        super().__init__("MTP: segmenting the building under the click", QgsTask.CanCancel)
        self.make_segmenter, self.x, self.y, self.started, self.done = make_segmenter, x, y, started, done
        self.segmenter: ClickSegmenter | None = None
        self.result: ClickResult | None = None
        self.error: Exception | None = None

    def run(self) -> bool:
        try:
            self.segmenter = self.make_segmenter()
            self.result = self.segmenter.segment_at(self.x, self.y, cancel=self.isCanceled)
        except Exception as exc:  # noqa: BLE001  (reported on the main thread, in finished())
            self.error = exc
            return False
        return True

    def finished(self, ok: bool) -> None:  # main thread
        self.done(self)


class ClickSegmentTool(QgsMapTool):
    """Adds the building under a left click on ``canvas`` to a polygon layer (Esc leaves, Ctrl+Z undoes).

    ``raster_layer``: the image segmented (its CRS and extent are copied; the segmenter opens the file).
    ``segmenter``: a :class:`mtp_core.click.ClickSegmenter` on that raster, or a function making one (called on the
    first click, in the worker thread: loading a model takes seconds). ``layer``: the polygon layer buildings go to;
    when None, one is made on the first building (:func:`create_building_layer`: in memory, or a GeoPackage at
    ``new_layer_path``) and added to the project. ``message(text)`` shows status lines, e.g.
    ``iface.statusBarIface().showMessage``. ``set_active_layer(layer)``: makes the target layer the active one
    (``iface.setActiveLayer``), so QGIS's Ctrl+Z acts on it. ``explain(error)``: a failure in the user's words (the
    dock names its fields and the layer, not its temporary files). ``synchronous``: every click in the calling thread
    (no task). ``preview``: draw the building under the pointer when its tiles are cached.
    """

    buildingAdded = pyqtSignal(object, int)  # noqa: N815  (Qt naming) target layer, feature id in its edit buffer

    def __init__(self, canvas: QgsMapCanvas, raster_layer: QgsRasterLayer, segmenter: SegmenterSource,
                 layer: QgsVectorLayer | None = None, *, new_layer_path: str | None = None,
                 message: Callable[[str], None] | None = None,
                 set_active_layer: Callable[[QgsMapLayer], object] | None = None,
                 explain: Callable[[Exception], str] = str, synchronous: bool = False, preview: bool = True) -> None:
        super().__init__(canvas)
        if layer is not None and layer.geometryType() != QgsWkbTypes.PolygonGeometry:
            raise ValueError(f"{layer.name()} is not a polygon layer; buildings are polygons")
        self.raster_crs = QgsCoordinateReferenceSystem(raster_layer.crs())
        self.raster_extent = QgsRectangle(raster_layer.extent())
        self.raster_name = raster_layer.name()
        self.layer = layer
        self.new_layer_path = new_layer_path
        self.synchronous, self.preview = synchronous, preview
        self.last_result: ClickResult | None = None
        self._say = message if message is not None else (lambda text: None)
        self._set_active_layer = set_active_layer
        self._explain = explain
        if callable(segmenter):
            self._segmenter: ClickSegmenter | None = None
            self._make_segmenter = segmenter
        else:
            self._segmenter, self._make_segmenter = segmenter, None
        self._task: _SegmentTask | None = None
        self._band: QgsRubberBand | None = None
        self._preview_geometry: QgsGeometry | None = None  # raster CRS
        self._hover: QgsPointXY | None = None
        self._hover_timer = QTimer(self)
        self._hover_timer.setSingleShot(True)
        self._hover_timer.setInterval(PREVIEW_DELAY_MS)
        self._hover_timer.timeout.connect(self._update_preview)
        self.setCursor(QCursor(Qt.CrossCursor))

    @property
    def busy(self) -> bool:
        """A click is being segmented in a task."""
        return self._task is not None

    @property
    def preview_geometry(self) -> QgsGeometry | None:
        """The polygon drawn under the pointer (raster CRS), if any."""
        return None if self._preview_geometry is None else QgsGeometry(self._preview_geometry)

    # ---------------------------------------------------------------------------------------------------- events
    def activate(self) -> None:
        super().activate()
        self._band = QgsRubberBand(self.canvas(), QgsWkbTypes.PolygonGeometry)
        self._band.setStrokeColor(QColor(255, 140, 0))
        self._band.setFillColor(QColor(255, 140, 0, 60))
        self._band.setWidth(2)
        self._make_target_active()
        self._say("click a building to add it; Ctrl+Z undoes, Esc leaves")

    def deactivate(self) -> None:
        self._hover_timer.stop()
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._band is not None:
            self.canvas().scene().removeItem(self._band)
            self._band = None
        self._preview_geometry = None
        super().deactivate()

    def canvasMoveEvent(self, event: QgsMapMouseEvent) -> None:  # noqa: N802  (QGIS API)
        if self.preview and self._segmenter is not None and self._task is None:
            self._hover = QgsPointXY(event.mapPoint())  # a copy: the event's point is a temporary
            self._hover_timer.start()

    def canvasReleaseEvent(self, event: QgsMapMouseEvent) -> None:  # noqa: N802  (QGIS API)
        if event.button() != Qt.LeftButton:
            return
        point = self._raster_point(event.mapPoint())
        if point is None:
            self._say("outside the raster")
            return
        self.segment(point.x(), point.y())

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802  (QGIS API)
        if event.key() == Qt.Key_Escape:
            self.canvas().unsetMapTool(self)
        elif event.matches(QKeySequence.Undo):
            self.undo()
        elif event.matches(QKeySequence.Redo):
            self.redo()
        else:
            event.ignore()
            return
        event.accept()

    # ---------------------------------------------------------------------------------------------------- actions
    def segment(self, x: float, y: float) -> None:
        """Segments the building at (x, y) in the raster's CRS and adds it: what a click does."""
        if self._task is not None:
            self._say("still segmenting the previous click…")
            return
        if not self.raster_extent.contains(QgsPointXY(x, y)):
            self._say("outside the raster")
            return
        started = time.perf_counter()
        try:
            if self._segmenter is not None:
                result = self._segmenter.segment_at(x, y, run_model=False)
                if result.status != "uncached":
                    self._handle(result, started)
                    return
            if self.synchronous:
                self._segmenter = self._segmenter or self._make_segmenter()
                self._handle(self._segmenter.segment_at(x, y), started)
                return
        except Exception as exc:  # noqa: BLE001  (any engine error becomes a message, never a stack in QGIS's face)
            self._fail(exc)
            return
        ready = self._segmenter
        make = self._make_segmenter if ready is None else (lambda: ready)
        self._task = _SegmentTask(make, x, y, started, self._task_finished)
        self._say("segmenting… (the model runs once for this area; clicks nearby are then instant)")
        QgsApplication.taskManager().addTask(self._task)

    def undo(self) -> None:
        stack = self._stack()
        if stack is None or not stack.canUndo():
            self._say("nothing to undo")
            return
        text = stack.undoText()
        stack.undo()
        self.layer.triggerRepaint()
        self._say(f"undone: {text}")

    def redo(self) -> None:
        stack = self._stack()
        if stack is None or not stack.canRedo():
            self._say("nothing to redo")
            return
        text = stack.redoText()
        stack.redo()
        self.layer.triggerRepaint()
        self._say(f"redone: {text}")

    # ---------------------------------------------------------------------------------------------------- inside
    def _raster_point(self, map_point: QgsPointXY) -> QgsPointXY | None:
        transform = QgsCoordinateTransform(self.canvas().mapSettings().destinationCrs(), self.raster_crs,
                                           QgsProject.instance())
        try:
            return transform.transform(QgsPointXY(map_point))
        except QgsCsException:  # beyond what the raster's CRS can represent
            return None

    def _task_finished(self, task: _SegmentTask) -> None:
        if task is not self._task:  # cancelled: the tool was left while it ran
            return
        self._task = None
        if task.error is not None:
            self._fail(task.error)
            return
        self._segmenter = task.segmenter
        self._handle(task.result, task.started)

    def _fail(self, error: Exception) -> None:
        QgsMessageLog.logMessage(f"click-to-segment failed: {error!r}", LOG_TAG, Qgis.Warning)
        self._say(f"segmenting failed: {self._explain(error)}")

    def _handle(self, result: ClickResult, started: float) -> None:
        self.last_result = result
        if not result.found:
            self._clear_preview()
            self._say(result.message(self._segmenter.min_area_m2 if self._segmenter else None))
            return
        self._show_preview(result)
        self._add(result, started)

    def _add(self, result: ClickResult, started: float) -> None:
        try:
            layer = self._target_layer()
        except OSError as exc:  # e.g. the new layer's GeoPackage cannot be written
            self._fail(exc)
            return
        geometry = _geometry(result)
        if layer.crs() != self.raster_crs:
            geometry.transform(QgsCoordinateTransform(self.raster_crs, layer.crs(), QgsProject.instance()))
        if QgsWkbTypes.isMultiType(layer.wkbType()):
            geometry.convertToMultiType()
        if _holds_same_polygon(layer, geometry):
            self._say(f"this {result.class_name} is already in {layer.name()}")
            return
        feature = QgsFeature(layer.fields())
        feature.setGeometry(geometry)
        for name, value in result.attributes.items():
            index = layer.fields().indexOf(name)
            if index >= 0:
                feature.setAttribute(index, value)
        if not layer.isEditable() and not layer.startEditing():
            self._say(f"{layer.name()} cannot be edited; choose another layer for the buildings")
            return
        area = result.attributes["area_m2"]
        layer.beginEditCommand(f"MTP: add {result.class_name} ({area:.0f} m²)")
        if not layer.addFeature(feature):
            layer.destroyEditCommand()
            self._say(f"{layer.name()} refused the {result.class_name}")
            return
        layer.endEditCommand()
        layer.triggerRepaint()
        self._make_target_active()
        took = result.timing(time.perf_counter() - started)
        self._say(f"{result.class_name} added ({area:.0f} m², {took})")
        self.buildingAdded.emit(layer, feature.id())

    def _target_layer(self) -> QgsVectorLayer:
        if self.layer is None or sip.isdeleted(self.layer):
            self.layer = create_building_layer(self.raster_crs, f"{self.raster_name} buildings", self.new_layer_path)
            QgsProject.instance().addMapLayer(self.layer)
        return self.layer

    def _make_target_active(self) -> None:
        if self._set_active_layer is not None and self.layer is not None and not sip.isdeleted(self.layer):
            self._set_active_layer(self.layer)

    def _stack(self):
        if self.layer is None or sip.isdeleted(self.layer):
            return None
        return self.layer.undoStack()

    # ---------------------------------------------------------------------------------------------------- preview
    def _update_preview(self) -> None:
        if self._hover is None or self._segmenter is None or self._task is not None or self._band is None:
            return
        point = self._raster_point(self._hover)
        if point is None or not self.raster_extent.contains(point):
            self._clear_preview()
            return
        if self._preview_geometry is not None and self._preview_geometry.contains(point):
            return  # still over the building drawn
        try:
            result = self._segmenter.segment_at(point.x(), point.y(), run_model=False)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)
            return
        if result.found:
            self._show_preview(result)
        else:
            self._clear_preview()

    def _show_preview(self, result: ClickResult) -> None:
        self._preview_geometry = _geometry(result)
        if self._band is not None:
            self._band.setToGeometry(self._preview_geometry, self.raster_crs)

    def _clear_preview(self) -> None:
        self._preview_geometry = None
        if self._band is not None:
            self._band.reset(QgsWkbTypes.PolygonGeometry)


def _geometry(result: ClickResult) -> QgsGeometry:
    geometry = QgsGeometry()
    geometry.fromWkb(result.geometry.wkb)
    return geometry


def _holds_same_polygon(layer: QgsMapLayer, geometry: QgsGeometry) -> bool:
    """Whether a feature of ``layer`` is this polygon already (IoU above DUPLICATE_IOU)."""
    request = QgsFeatureRequest().setFilterRect(geometry.boundingBox()).setNoAttributes()
    area = geometry.area()
    for feature in layer.getFeatures(request):
        other = feature.geometry()
        shared = geometry.intersection(other).area()
        union = area + other.area() - shared
        if union > 0 and shared / union > DUPLICATE_IOU:
            return True
    return False
