"""The MTP dock: segment a raster layer (whole, the visible extent, or polygons) into a class raster and buildings.

Why it is built this way (DESIGN.md "Plugin"; anchors.md, "What users complain about"):

* Without torch/timm the dock still opens, says what is missing and shows the one install command (copyable) that
  keeps QGIS's own numpy; nothing in this module imports torch unless it is installed.
* The compute device is always shown, with its name and memory, or why the CPU is used (complaint 2).
* A run is a :class:`~qgis_plugin.run_task.SegmentTask` over a :class:`~qgis_plugin.run_task.RunRequest` read from
  the widgets here, on the GUI thread; the canvas extent and polygons become plain bounds/WKT first.
* Settings live in ``QgsSettings`` (``mtp/dock/...``, :mod:`qgis_plugin.settings`); the Predictor lives in
  :attr:`MTPDock.predictors` between runs.
"""
from __future__ import annotations

import tempfile
from datetime import datetime
from pathlib import Path

from qgis.core import Qgis, QgsApplication, QgsMapLayer, QgsMapLayerProxyModel, QgsMessageLog, QgsProject
from qgis.gui import QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import Qt, pyqtSlot
from qgis.PyQt.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QDockWidget,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .area import polygons_wkt, visible_extent
from .environment import check_dependencies, python_executable
from .map_tool import ClickSegmentTool
from .model_cache import ModelSpec, PredictorCache
from .run_task import LOG_TAG, RunOutcome, RunRequest, SegmentTask, dock_words
from .settings import DockSettings, load_settings, save_settings

CHECKPOINT_FILTER = "PyTorch checkpoints (*.pth *.pt *.ckpt);;All files (*)"
MODEL_CHOICES = (("Demo model (built in, synthetic 0.5 m scenes)", "demo"), ("Checkpoint file", "checkpoint"),
                 ("Named architecture + weights file", "architecture"))
AREA_CHOICES = (("Whole layer", "layer"), ("Visible map extent", "extent"), ("Features of a polygon layer", "polygons"))
DEVICE_CHOICES = (("Auto (the first CUDA GPU, else CPU)", "auto"), ("CPU", "cpu"), ("CUDA GPU", "cuda"))


def default_output_folder() -> Path:
    """``mtp_output`` beside the saved project, else in the temporary folder."""
    project_folder = QgsProject.instance().absolutePath()
    return Path(project_folder or tempfile.gettempdir()) / "mtp_output"


def parse_nodata(text: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"Nodata value {text!r}: give a number, e.g. 0, or leave it empty") from None


def raster_source(layer: QgsMapLayer) -> str:
    """The GDAL dataset name the engine reads for a raster layer."""
    if layer.providerType() != "gdal":
        raise ValueError(f"{layer.name()} is a '{layer.providerType()}' layer, but MTP reads raster files through "
                         "GDAL; save it as a GeoTIFF first (right-click the layer > Export > Save As…)")
    return layer.source()


class MTPDock(QDockWidget):
    """The dock. For other tools (e.g. click-to-segment): :meth:`raster_layer`, :meth:`bands`, :meth:`model_spec`
    and :attr:`predictors` (``predictors.get(model_spec())`` in a task: the Predictor the dock's runs use)."""

    def __init__(self, iface, parent: QWidget | None = None) -> None:
        super().__init__("MTP: segment a raster", parent)
        self.setObjectName("MTPDock")  # QGIS saves docks' places by object name
        self.iface = iface
        self.predictors = PredictorCache()
        self._scratch = tempfile.TemporaryDirectory(prefix="mtp-dock-")  # the click tool's nodata VRTs
        self.task: SegmentTask | None = None
        self.dependencies = check_dependencies()
        self._build()
        if self.dependencies.ok:
            from mtp_core.models import list_models

            self.architecture_combo.addItems(list_models("segmentor"))
        else:
            self.form.setEnabled(False)
            self.run_button.setEnabled(False)
            self.click_button.setEnabled(False)
        self.apply_settings(load_settings())
        self.describe_device()

    # ------------------------------------------------------------------------------------------ widgets
    def _build(self) -> None:
        body = QWidget()
        column = QVBoxLayout(body)
        column.addWidget(self._install_panel())
        self.form = QWidget()
        form = QFormLayout(self.form)
        self.form_layout = form

        self.raster_combo = QgsMapLayerComboBox()
        self.raster_combo.setFilters(QgsMapLayerProxyModel.RasterLayer)
        form.addRow("Raster layer", self.raster_combo)
        self.bands_edit = QLineEdit()
        self.bands_edit.setPlaceholderText("the model's own, or e.g. 3,2,1")
        form.addRow("Bands (as R,G,B)", self.bands_edit)
        self.nodata_edit = QLineEdit()
        self.nodata_edit.setPlaceholderText("the raster's own, or e.g. 0 for black fill")
        self.nodata_edit.setToolTip("pixels with this value in every band are not segmented and stay nodata")
        form.addRow("Nodata value", self.nodata_edit)

        self.model_combo = self._choices(MODEL_CHOICES)
        form.addRow("Model", self.model_combo)
        self.checkpoint_widget = self._file_widget(CHECKPOINT_FILTER)
        form.addRow("Checkpoint", self.checkpoint_widget)
        self.architecture_combo = QComboBox()
        form.addRow("Architecture", self.architecture_combo)
        self.weights_widget = self._file_widget(CHECKPOINT_FILTER)
        form.addRow("Weights", self.weights_widget)

        self.area_combo = self._choices(AREA_CHOICES)
        form.addRow("Area", self.area_combo)
        self.polygon_combo = QgsMapLayerComboBox()
        self.polygon_combo.setFilters(QgsMapLayerProxyModel.PolygonLayer)
        form.addRow("Polygons", self.polygon_combo)
        self.selected_only_check = QCheckBox("Selected features only")
        form.addRow("", self.selected_only_check)

        self.device_combo = self._choices(DEVICE_CHOICES)
        form.addRow("Device", self.device_combo)
        self.device_label = QLabel()
        self.device_label.setWordWrap(True)
        self.device_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.device_label.setObjectName("mtpDeviceLabel")
        form.addRow("", self.device_label)
        self.batch_spin = self._int_spin(1, 1024, "", "tiles per step; halved on CUDA out-of-memory")
        form.addRow("Batch size", self.batch_spin)
        self.overlap_spin = self._int_spin(-1, 4096, "the model's", "pixels shared by neighbouring tiles")
        form.addRow("Tile overlap (px)", self.overlap_spin)
        self.threshold_spin = self._float_spin(0.0, 1.0, 0.05, "the model's", 2)
        self.threshold_spin.setToolTip("building probability threshold; the model's own: the most probable class")
        form.addRow("Threshold", self.threshold_spin)
        self.min_area_spin = self._float_spin(0.0, 1e6, 1.0, "", 2)
        form.addRow("Min area (m²)", self.min_area_spin)
        self.simplify_spin = self._float_spin(0.0, 100.0, 0.05, "off", 2)
        form.addRow("Simplify (m)", self.simplify_spin)
        self.regularize_check = QCheckBox("Right-angled building outlines")
        form.addRow("Regularize", self.regularize_check)
        self.output_widget = QgsFileWidget()
        self.output_widget.setStorageMode(QgsFileWidget.GetDirectory)
        form.addRow("Output folder", self.output_widget)
        column.addWidget(self.form)

        self.run_button = QPushButton("Run")
        self.run_button.setObjectName("mtpRunButton")
        self.run_button.clicked.connect(self.start)
        column.addWidget(self.run_button)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 100)
        column.addWidget(self.progress_bar)
        self.status_label = QLabel("Ready.")
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        column.addWidget(self.status_label)
        column.addWidget(self._click_panel())
        column.addStretch(1)

        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(body)
        self.setWidget(scroll)
        self.model_combo.currentIndexChanged.connect(self._show_model_rows)
        self.area_combo.currentIndexChanged.connect(self._show_area_rows)
        self.device_combo.currentIndexChanged.connect(self.describe_device)

    def _click_panel(self) -> QGroupBox:
        """Click a roof: the map tool that adds the building under a click to a polygon layer."""
        panel = QGroupBox("Click to segment")
        form = QFormLayout(panel)
        self.target_combo = QgsMapLayerComboBox()
        self.target_combo.setFilters(QgsMapLayerProxyModel.PolygonLayer)
        self.target_combo.setAllowEmptyLayer(True)
        self.target_combo.setToolTip("the polygon layer clicked buildings go to; empty: a new layer on the first one")
        form.addRow("Add to layer", self.target_combo)
        self.click_button = QPushButton("Click a roof…")
        self.click_button.setObjectName("mtpClickButton")
        self.click_button.setCheckable(True)
        self.click_button.setToolTip("Click buildings on the map with the model, area options and outline options "
                                     "above; Ctrl+Z undoes the last one, Esc leaves")
        self.click_button.toggled.connect(self.toggle_click_tool)
        form.addRow(self.click_button)
        self.click_tool: ClickSegmentTool | None = None
        return panel

    def _install_panel(self) -> QGroupBox:
        """What to install when torch/timm are missing: the command, selectable and with a Copy button."""
        panel = QGroupBox("PyTorch is needed")
        layout = QVBoxLayout(panel)
        missing = ", ".join(self.dependencies.missing)
        self.install_label = QLabel(
            f"MTP needs {missing} in the Python that QGIS runs ({python_executable()}). Run this command in a "
            "terminal, then restart QGIS (it leaves QGIS's own numpy as it is):")
        self.install_label.setWordWrap(True)
        layout.addWidget(self.install_label)
        row = QHBoxLayout()
        self.install_command = QLineEdit(self.dependencies.install_command)
        self.install_command.setReadOnly(True)
        self.install_command.setObjectName("mtpInstallCommand")
        row.addWidget(self.install_command)
        self.copy_button = QPushButton("Copy")
        self.copy_button.clicked.connect(lambda: QApplication.clipboard().setText(self.install_command.text()))
        row.addWidget(self.copy_button)
        layout.addLayout(row)
        panel.setVisible(not self.dependencies.ok)
        self.install_panel = panel
        return panel

    @staticmethod
    def _choices(choices: tuple[tuple[str, str], ...]) -> QComboBox:
        combo = QComboBox()
        for text, value in choices:
            combo.addItem(text, value)
        return combo

    @staticmethod
    def _file_widget(file_filter: str) -> QgsFileWidget:
        widget = QgsFileWidget()
        widget.setFilter(file_filter)
        return widget

    @staticmethod
    def _int_spin(low: int, high: int, special: str, tip: str) -> QSpinBox:
        spin = QSpinBox()
        spin.setRange(low, high)
        spin.setSpecialValueText(special)  # shown at the minimum: "use the model's value"
        spin.setToolTip(tip)
        return spin

    @staticmethod
    def _float_spin(low: float, high: float, step: float, special: str, decimals: int) -> QDoubleSpinBox:
        spin = QDoubleSpinBox()
        spin.setDecimals(decimals)
        spin.setRange(low, high)
        spin.setSingleStep(step)
        spin.setSpecialValueText(special)
        return spin

    def _show_row(self, field: QWidget, visible: bool) -> None:
        field.setVisible(visible)
        label = self.form_layout.labelForField(field)
        if label is not None:
            label.setVisible(visible)

    @pyqtSlot()
    def _show_model_rows(self) -> None:
        kind = self.model_combo.currentData()
        self._show_row(self.checkpoint_widget, kind == "checkpoint")
        self._show_row(self.architecture_combo, kind == "architecture")
        self._show_row(self.weights_widget, kind == "architecture")

    @pyqtSlot()
    def _show_area_rows(self) -> None:
        polygons = self.area_combo.currentData() == "polygons"
        self._show_row(self.polygon_combo, polygons)
        self._show_row(self.selected_only_check, polygons)

    @pyqtSlot()
    def describe_device(self) -> None:
        """The chosen device in words: CUDA name and memory, or CPU and why no GPU is used."""
        if not self.dependencies.ok:
            self.device_label.setText("no PyTorch: install it first (see above)")
            return
        from mtp_core.device import describe_device, resolve_device

        try:
            self.device_label.setText(describe_device(resolve_device(self.device_combo.currentData())))
        except ValueError as exc:
            self.device_label.setText(f"not usable: {dock_words(str(exc))}")

    @pyqtSlot(str)
    def _show_predictor_device(self, text: str) -> None:
        self.device_label.setText(text)

    # ------------------------------------------------------------------------------------------ settings
    def apply_settings(self, values: DockSettings) -> None:
        self.model_combo.setCurrentIndex(self.model_combo.findData(values.model_kind))
        self.checkpoint_widget.setFilePath(values.checkpoint)
        self.architecture_combo.setCurrentText(values.architecture)
        self.weights_widget.setFilePath(values.weights)
        self.area_combo.setCurrentIndex(self.area_combo.findData(values.area))
        self.selected_only_check.setChecked(values.selected_only)
        self.device_combo.setCurrentIndex(self.device_combo.findData(values.device))
        self.batch_spin.setValue(values.batch_size)
        self.overlap_spin.setValue(values.overlap)
        self.threshold_spin.setValue(values.threshold)
        self.bands_edit.setText(values.bands)
        self.nodata_edit.setText(values.nodata)
        self.min_area_spin.setValue(values.min_area_m2)
        self.simplify_spin.setValue(values.simplify_m)
        self.regularize_check.setChecked(values.regularize)
        self.output_widget.setFilePath(values.output_folder)
        self.output_widget.lineEdit().setPlaceholderText(str(default_output_folder()))
        self._show_model_rows()
        self._show_area_rows()

    def current_settings(self) -> DockSettings:
        return DockSettings(
            model_kind=self.model_combo.currentData(), checkpoint=self.checkpoint_widget.filePath(),
            architecture=self.architecture_combo.currentText(), weights=self.weights_widget.filePath(),
            area=self.area_combo.currentData(), selected_only=self.selected_only_check.isChecked(),
            device=self.device_combo.currentData(), batch_size=self.batch_spin.value(),
            overlap=self.overlap_spin.value(), threshold=self.threshold_spin.value(), bands=self.bands_edit.text(),
            nodata=self.nodata_edit.text(),
            min_area_m2=self.min_area_spin.value(), simplify_m=self.simplify_spin.value(),
            regularize=self.regularize_check.isChecked(), output_folder=self.output_widget.filePath())

    def save_settings(self) -> None:
        save_settings(self.current_settings())

    # ------------------------------------------------------------------------------------------ a run's inputs
    def raster_layer(self) -> QgsMapLayer:
        layer = self.raster_combo.currentLayer()
        if layer is None:
            raise ValueError("add a raster layer to the project and choose it under 'Raster layer'")
        return layer

    def bands(self) -> tuple[int, ...] | None:
        """The raster bands fed as the model's R, G, B (None: the model card's own)."""
        from mtp_core.pipeline import parse_bands

        return parse_bands(self.bands_edit.text(), "Bands")

    def nodata(self) -> float | None:
        """The band value treated as nodata (None: the raster's own nodata)."""
        return parse_nodata(self.nodata_edit.text())

    def model_spec(self) -> ModelSpec:
        """The chosen model and device as plain data (a :class:`PredictorCache` key)."""
        values = self.current_settings()
        options = {"device": values.device, "batch_size": values.batch_size,
                   "overlap": None if values.overlap < 0 else values.overlap, "threshold": values.threshold or None}
        if values.model_kind == "checkpoint":
            if not values.checkpoint:
                raise ValueError("choose a checkpoint file under 'Checkpoint', or the demo model under 'Model'")
            return ModelSpec(values.checkpoint, **options)
        if values.model_kind == "architecture":
            if not values.architecture or not values.weights:
                raise ValueError("choose an architecture and its weights file, or the demo model under 'Model'")
            return ModelSpec(values.weights, values.architecture, **options)
        from mtp_core.weights import DEMO_CHECKPOINT

        return ModelSpec(str(DEMO_CHECKPOINT), **options)

    def make_request(self) -> RunRequest:
        """The run's inputs as plain values (raises ValueError with what to fix)."""
        layer = self.raster_layer()
        raster = raster_source(layer)
        values = self.current_settings()
        bounds = polygons = None
        if values.area == "extent":
            bounds = visible_extent(layer, self.iface.mapCanvas())
        elif values.area == "polygons":
            polygons = polygons_wkt(layer, self.polygon_combo.currentLayer(), values.selected_only)
        now = datetime.now()
        return RunRequest(
            raster=raster, layer_name=layer.name(), model=self.model_spec(),
            out_folder=values.output_folder or str(default_output_folder()),
            run_name=f"{Path(raster).stem}_{now:%Y%m%d-%H%M%S}", group_name=f"MTP {layer.name()} {now:%H:%M:%S}",
            bands=self.bands(), nodata=self.nodata(), bounds=bounds, polygons=polygons, min_area_m2=values.min_area_m2,
            simplify_m=values.simplify_m, regularize=values.regularize)

    # ------------------------------------------------------------------------------------------ click a roof
    @pyqtSlot(bool)
    def toggle_click_tool(self, on: bool) -> None:
        """Activate the click-to-segment tool on the map with the dock's current choices (or leave it)."""
        canvas = self.iface.mapCanvas()
        if not on:
            if self.click_tool is not None and canvas.mapTool() is self.click_tool:
                canvas.unsetMapTool(self.click_tool)
            self.click_tool = None
            return
        try:
            tool = self.create_click_tool()
        except ValueError as exc:
            self.click_button.setChecked(False)
            self.report("MTP cannot start", str(exc), Qgis.Critical)
            return
        tool.deactivated.connect(lambda: self.click_button.setChecked(False))
        tool.buildingAdded.connect(lambda layer, _fid: self.target_combo.setLayer(layer))
        self.click_tool = tool
        canvas.setMapTool(tool)

    def create_click_tool(self) -> ClickSegmentTool:
        """The map tool for the dock's raster, model, bands and outline options; the model is the one the dock's runs
        use (built in the tool's first task when it is not cached yet). Raises ValueError with what to fix."""
        if not self.dependencies.ok:
            raise ValueError("install PyTorch first: the command is at the top of the dock")
        layer = self.raster_layer()
        raster = raster_source(layer)
        spec, bands, nodata, values = self.model_spec(), self.bands(), self.nodata(), self.current_settings()
        predictors = self.predictors
        nodata_vrt = Path(self._scratch.name) / f"{Path(raster).stem}_nodata.vrt"
        self.save_settings()

        def make_segmenter():
            from mtp_core.click import ClickSegmenter
            from mtp_core.pipeline import with_nodata

            source = raster if nodata is None else str(with_nodata(raster, nodata, nodata_vrt))
            segmenter = ClickSegmenter(predictors.get(spec), source, bands=bands, min_area_m2=values.min_area_m2,
                                       simplify_m=values.simplify_m, regularize=values.regularize)
            segmenter.source_name = Path(raster).name  # the layer's file, not the VRT
            return segmenter

        status = self.iface.statusBarIface()
        return ClickSegmentTool(self.iface.mapCanvas(), layer, make_segmenter, self.target_combo.currentLayer(),
                                message=lambda text: status.showMessage(text, 10000),
                                set_active_layer=self.iface.setActiveLayer)

    # ------------------------------------------------------------------------------------------ running
    def create_task(self) -> SegmentTask:
        """The task of a run with the current choices, wired to this dock (raises ValueError with what to fix)."""
        task = SegmentTask(self.make_request(), self.predictors, self._finished)
        self.save_settings()
        task.progress_text.connect(self.status_label.setText)
        task.device_text.connect(self._show_predictor_device)
        task.progressChanged.connect(self._show_progress)
        self.task = task
        self._set_running(True)
        return task

    @pyqtSlot()
    def start(self) -> None:
        """Run (the button reads Cancel while a run is going on)."""
        if self.task is not None:
            self.task.cancel()
            self.status_label.setText("Cancelling after the current batch…")
            return
        try:
            task = self.create_task()
        except ValueError as exc:
            QgsMessageLog.logMessage(f"cannot start: {exc}", LOG_TAG, Qgis.Warning)
            self.report("MTP cannot start", str(exc), Qgis.Critical)
            return
        QgsApplication.taskManager().addTask(task)

    @pyqtSlot(float)
    def _show_progress(self, percent: float) -> None:
        self.progress_bar.setValue(int(percent))

    def _set_running(self, running: bool) -> None:
        self.form.setEnabled(not running)
        self.click_button.setEnabled(not running)
        self.run_button.setText("Cancel" if running else "Run")
        self.progress_bar.setValue(0)
        if running:
            self.status_label.setText("Starting…")

    def _finished(self, outcome: RunOutcome) -> None:
        self.task = None
        self._set_running(False)
        self.progress_bar.setValue(100 if outcome.state == "done" else 0)
        self.status_label.setText(outcome.message)
        if outcome.state == "done":
            self.report("MTP", outcome.message, Qgis.Success)
        elif outcome.state == "cancelled":
            self.report("MTP", outcome.message, Qgis.Info)
        else:
            self.report("MTP failed", outcome.message, Qgis.Critical)

    def report(self, title: str, message: str, level: Qgis.MessageLevel) -> None:
        self.iface.messageBar().pushMessage(title, message, level)

    def shutdown(self) -> None:
        """Before the plugin unloads: keep the settings, stop a run (it leaves nothing), free the model."""
        if self.dependencies.ok:
            self.save_settings()
        if self.task is not None:
            self.task.on_done = None
            self.task.cancel()
            self.task = None
        self.click_button.setChecked(False)  # leaves the map tool
        self.predictors.clear()
        self._scratch.cleanup()
