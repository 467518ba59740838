"""The MTP dock: segment a raster layer (whole, the visible extent, or polygons) into a class raster and buildings,
or find the changes between two raster layers of one place (the "Changes between two layers" task).

Why it is built this way (DESIGN.md "Plugin"; anchors.md, "What users complain about"):

* Without torch/timm/shapely the dock still opens, says what is missing or too old, and offers "Install
  dependencies" (:mod:`qgis_plugin.installer`); once they are installed it turns on without a restart. Nothing in
  this module imports torch unless it is installed.
* The compute device is always shown, with its name and memory, or why the CPU is used (complaint 2).
* It fits a 300 px wide dock: short list entries (details in tooltips), fields under their labels when a row is too
  narrow, plain-text labels that wrap even file names instead of asking for more width (:mod:`qgis_plugin.labels`).
* A run is a :class:`~qgis_plugin.run_task.SegmentTask` over a :class:`~qgis_plugin.run_task.RunRequest` read from
  the widgets here, on the GUI thread (a :class:`~qgis_plugin.change_task.ChangeTask` for two layers: the same
  engine call as ``mtp change``, its changes styled by kind); the canvas extent and polygons become plain bounds/WKT
  first. Whatever can be checked before starting (a layer, a georeferenced file, numbers in the fields) is checked
  here, and errors name the layer and the field to change.
* Clicked buildings go to a new GeoPackage layer in the output folder, styled as the run's buildings, unless the
  user picks a layer under "Add to": the plugin never writes into a layer nobody chose.
* Messages go to the message bar as plain text, one at a time (:mod:`qgis_plugin.message_bar`).
* Settings live in ``QgsSettings`` (``mtp/dock/...``, :mod:`qgis_plugin.settings`); the Predictor lives in
  :attr:`MTPDock.predictors` between runs.
"""
from __future__ import annotations

import re
import tempfile
from datetime import datetime
from pathlib import Path

from qgis.core import Qgis, QgsApplication, QgsMapLayer, QgsMapLayerProxyModel, QgsMessageLog, QgsProject
from qgis.gui import QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import QStandardPaths, Qt, pyqtSlot
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDockWidget,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .area import polygons_wkt, visible_extent
from .change_task import ChangeRequest, ChangeTask
from .dependencies import check_dependencies
from .install_panel import InstallPanel
from .installer import InstallOutcome
from .labels import WrappingLabel
from .layers import require_georeferenced
from .map_tool import ClickSegmentTool
from .message_bar import MessageBarReporter
from .model_cache import ModelSpec, PredictorCache
from .run_task import LOG_TAG, RunOutcome, RunRequest, SegmentTask
from .settings import DockSettings, load_settings, save_settings
from .wording import for_dock

CHECKPOINT_FILTER = "PyTorch checkpoints (*.pth *.pt *.ckpt);;All files (*)"
MODE_CHOICES = (("Segment a raster", "segment", "Buildings (or the model's classes) of one raster layer"),
                ("Changes between two layers", "change",
                 "New and demolished buildings between two dates of one place (a change-detection model)"))
FIRST_DATE, SECOND_DATE = "'First date'", "'Second date'"
#: (entry, value, tooltip): entries short enough for a 300 px dock, the details in the tooltip
MODEL_CHOICES = (("Demo model", "demo", "The built-in demo model (segmentation, or change detection for two layers), "
                                        "trained on synthetic 0.5 m scenes"),
                 ("Demo instances", "demo-instances", "The built-in demo model with instances: one polygon per "
                                                      "building, also where buildings touch (works at 0.25 m: "
                                                      "coarser layers are resampled)"),
                 ("Checkpoint file", "checkpoint", "An MTP, MAE or MMSeg checkpoint; its model card says the rest"),
                 ("Architecture + weights", "architecture", "A named MTP architecture built with a weights file"))
AREA_CHOICES = (("Whole layer", "layer", "Every pixel of the raster layer"),
                ("Visible extent", "extent", "The part of the layer shown in the map"),
                ("Polygon features", "polygons", "Only the pixels inside the features of a polygon layer"))
DEVICE_CHOICES = (("Auto", "auto", "The first CUDA GPU, else the CPU"), ("CPU", "cpu", "The processor"),
                  ("CUDA GPU", "cuda", "The first NVIDIA GPU"))
NEW_LAYER = "New GeoPackage layer"
COMBO_CHARACTERS = 10  # a combo box asks for this many characters, not for its longest entry


def default_output_folder() -> Path:
    """``mtp_output`` beside the saved project, else in the user's documents: never in the temporary folder, whose
    files QGIS treats as temporary layers (and the system may delete)."""
    folder = QgsProject.instance().absolutePath() or QStandardPaths.writableLocation(QStandardPaths.DocumentsLocation)
    return Path(folder or Path.home()) / "mtp_output"


def parse_nodata(text: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"'Nodata' {text!r}: give a number, e.g. 0, or leave it empty") from None


def file_name(text: str) -> str:
    """A layer name made safe for a file name."""
    return re.sub(r"[^\w.-]+", "_", text).strip("._") or "layer"


def narrow(widget: QWidget) -> QWidget:
    """A combo box (also QGIS's layer combo) that fits a narrow dock whatever its entries."""
    if isinstance(widget, QComboBox):
        widget.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        widget.setMinimumContentsLength(COMBO_CHARACTERS)
    return widget


class MTPDock(QDockWidget):
    """The dock. For other tools (e.g. click-to-segment): :meth:`raster_layer`, :meth:`bands`, :meth:`model_spec`
    and :attr:`predictors` (``predictors.get(model_spec())`` in a task: the Predictor the dock's runs use)."""

    def __init__(self, iface, parent: QWidget | None = None) -> None:
        super().__init__("MTP: segment a raster", parent)
        self.setObjectName("MTPDock")  # QGIS saves docks' places by object name
        self.iface = iface
        self.predictors = PredictorCache()
        self.building_predictors = PredictorCache()  # the change task's building model
        self.messages = MessageBarReporter(iface.messageBar())
        self._scratch = tempfile.TemporaryDirectory(prefix="mtp-dock-")  # the click tool's nodata VRTs
        self.task: SegmentTask | ChangeTask | None = None
        self.dependencies = check_dependencies()
        self._build()
        self.apply_settings(load_settings())
        self._engine_ready()

    # ------------------------------------------------------------------------------------------ widgets
    def _build(self) -> None:
        body = QWidget()
        body.setObjectName("mtpDockBody")
        column = QVBoxLayout(body)
        self.install_panel = InstallPanel(body)
        self.install_panel.installed.connect(self._installed)
        column.addWidget(self.install_panel)
        self.form = QWidget()
        form = QFormLayout(self.form)
        form.setContentsMargins(0, 0, 0, 0)
        form.setRowWrapPolicy(QFormLayout.WrapLongRows)  # a field too wide for its row goes under its label
        form.setFieldGrowthPolicy(QFormLayout.AllNonFixedFieldsGrow)
        self.form_layout = form

        self.mode_combo = self._choices(MODE_CHOICES)
        form.addRow("Task", self.mode_combo)
        self.raster_combo = narrow(QgsMapLayerComboBox())
        self.raster_combo.setFilters(QgsMapLayerProxyModel.RasterLayer)
        form.addRow("Raster layer", self.raster_combo)
        self.after_combo = narrow(QgsMapLayerComboBox())
        self.after_combo.setFilters(QgsMapLayerProxyModel.RasterLayer)
        self.after_combo.setToolTip("the later image of the same place; it is warped onto the first date's grid")
        form.addRow("Second date", self.after_combo)
        self.bands_edit = QLineEdit()
        self.bands_edit.setPlaceholderText("the model's, or 3,2,1")
        self.bands_edit.setToolTip("the raster bands fed to the model as red, green, blue")
        form.addRow("Bands", self.bands_edit)
        self.nodata_edit = QLineEdit()
        self.nodata_edit.setPlaceholderText("the raster's, or e.g. 0")
        self.nodata_edit.setToolTip("pixels with this value in every band are not segmented and stay nodata "
                                    "(e.g. 0 for the black fill around imagery)")
        form.addRow("Nodata", self.nodata_edit)

        self.model_combo = self._choices(MODEL_CHOICES)
        form.addRow("Model", self.model_combo)
        self.checkpoint_widget = self._file_widget(CHECKPOINT_FILTER)
        form.addRow("Checkpoint", self.checkpoint_widget)
        self.architecture_combo = narrow(QComboBox())
        form.addRow("Architecture", self.architecture_combo)
        self.weights_widget = self._file_widget(CHECKPOINT_FILTER)
        form.addRow("Weights", self.weights_widget)
        self.kinds_check = QCheckBox("Kind of each change")
        self.kinds_check.setToolTip("new, demolished or modified building: a building model runs on both dates")
        form.addRow("", self.kinds_check)
        self.buildings_widget = self._file_widget(CHECKPOINT_FILTER)
        self.buildings_widget.lineEdit().setPlaceholderText("the demo building model")
        self.buildings_widget.setToolTip("a segmentation checkpoint of the change model's ground resolution")
        form.addRow("Building model", self.buildings_widget)

        self.area_combo = self._choices(AREA_CHOICES)
        form.addRow("Area", self.area_combo)
        self.polygon_combo = narrow(QgsMapLayerComboBox())
        self.polygon_combo.setFilters(QgsMapLayerProxyModel.PolygonLayer)
        form.addRow("Polygons", self.polygon_combo)
        self.selected_only_check = QCheckBox("Selected features only")
        form.addRow("", self.selected_only_check)

        self.device_combo = self._choices(DEVICE_CHOICES)
        form.addRow("Device", self.device_combo)
        self.device_label = WrappingLabel("mtpDeviceLabel")
        form.addRow(self.device_label)
        self.batch_spin = self._int_spin(1, 1024, "", "tiles per step; halved on CUDA out-of-memory")
        form.addRow("Batch size", self.batch_spin)
        self.overlap_spin = self._int_spin(-1, 4096, "model's", "pixels shared by neighbouring tiles")
        form.addRow("Overlap (px)", self.overlap_spin)
        self.threshold_spin = self._float_spin(0.0, 1.0, 0.05, "model's", 2)
        self.threshold_spin.setToolTip("building probability threshold; the model's own: the most probable class")
        form.addRow("Threshold", self.threshold_spin)
        self.min_area_spin = self._float_spin(0.0, 1e6, 1.0, "", 2)
        self.min_area_spin.setToolTip("smaller polygons are dropped")
        form.addRow("Min area (m²)", self.min_area_spin)
        self.simplify_spin = self._float_spin(0.0, 100.0, 0.05, "off", 2)
        self.simplify_spin.setToolTip("outline simplification tolerance")
        form.addRow("Simplify (m)", self.simplify_spin)
        self.regularize_check = QCheckBox("Right-angled outlines")
        self.regularize_check.setToolTip("regularize building outlines to right angles")
        form.addRow("", self.regularize_check)
        self.output_widget = QgsFileWidget()
        self.output_widget.setStorageMode(QgsFileWidget.GetDirectory)
        self.output_widget.setToolTip("the run folders and new click layers go here")
        form.addRow("Output folder", self.output_widget)
        column.addWidget(self.form)

        self.run_button = QPushButton("Run")
        self.run_button.setObjectName("mtpRunButton")
        self.run_button.clicked.connect(self.start)
        column.addWidget(self.run_button)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 100)
        column.addWidget(self.progress_bar)
        self.status_label = WrappingLabel("mtpStatusLabel")
        self.status_label.setText("Ready.")
        column.addWidget(self.status_label)
        self.click_panel = self._click_panel()
        column.addWidget(self.click_panel)
        column.addStretch(1)

        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(body)
        self.scroll_area = scroll
        self.setWidget(scroll)
        self.model_combo.currentIndexChanged.connect(self._show_model_rows)
        self.mode_combo.currentIndexChanged.connect(self._show_mode_rows)
        self.kinds_check.toggled.connect(self._show_mode_rows)
        self.area_combo.currentIndexChanged.connect(self._show_area_rows)
        self.device_combo.currentIndexChanged.connect(self.describe_device)

    def _click_panel(self) -> QGroupBox:
        """Click a roof: the map tool that adds the building under a click to a polygon layer."""
        panel = QGroupBox("Click to segment")
        form = QFormLayout(panel)
        form.setRowWrapPolicy(QFormLayout.WrapLongRows)
        self.target_combo = narrow(QgsMapLayerComboBox())
        self.target_combo.setFilters(QgsMapLayerProxyModel.PolygonLayer)
        self.target_combo.setAllowEmptyLayer(True, NEW_LAYER)
        self.target_combo.setCurrentIndex(0)  # the new layer, never the project's first polygon layer
        self.target_combo.setToolTip("the polygon layer clicked buildings go to; by default a new GeoPackage layer "
                                     "in the output folder, styled as the run's buildings")
        form.addRow("Add to", self.target_combo)
        self.click_button = QPushButton("Click a roof…")
        self.click_button.setObjectName("mtpClickButton")
        self.click_button.setCheckable(True)
        self.click_button.setToolTip("Click buildings on the map with the model, area options and outline options "
                                     "above; Ctrl+Z undoes the last one, Esc leaves")
        self.click_button.toggled.connect(self.toggle_click_tool)
        form.addRow(self.click_button)
        self.click_tool: ClickSegmentTool | None = None
        return panel

    @staticmethod
    def _choices(choices: tuple[tuple[str, str, str], ...]) -> QComboBox:
        combo = narrow(QComboBox())
        for text, value, tip in choices:
            combo.addItem(text, value)
            combo.setItemData(combo.count() - 1, tip, Qt.ToolTipRole)
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

    def mode(self) -> str:
        return self.mode_combo.currentData()

    @pyqtSlot()
    def _show_mode_rows(self) -> None:
        """The second date, the kind of changes and their building model in the change task; the click tool (one
        raster) in segmentation; the architectures of the task's models."""
        change = self.mode() == "change"
        self.setWindowTitle("MTP: changes between two layers" if change else "MTP: segment a raster")
        self.form_layout.labelForField(self.raster_combo).setText("First date" if change else "Raster layer")
        self._show_row(self.after_combo, change)
        self._show_row(self.kinds_check, change)
        self._show_row(self.buildings_widget, change and self.kinds_check.isChecked())
        self.click_panel.setVisible(not change)
        self._fill_architectures()

    def _fill_architectures(self) -> None:
        if not self.dependencies.ok:
            return
        from mtp_core.models import list_models

        names = list_models("change" if self.mode() == "change" else "segmentor")
        if [self.architecture_combo.itemText(i) for i in range(self.architecture_combo.count())] != names:
            current = self.architecture_combo.currentText()
            self.architecture_combo.clear()
            self.architecture_combo.addItems(names)
            self.architecture_combo.setCurrentText(current)

    @pyqtSlot()
    def _show_area_rows(self) -> None:
        polygons = self.area_combo.currentData() == "polygons"
        self._show_row(self.polygon_combo, polygons)
        self._show_row(self.selected_only_check, polygons)

    # ------------------------------------------------------------------------------------------ dependencies
    def _engine_ready(self) -> bool:
        """Turns the dock on when torch, timm and shapely are usable (at start, or after an installation)."""
        self.dependencies = check_dependencies()
        ready = self.dependencies.ok
        if ready and self.architecture_combo.count() == 0:
            self._fill_architectures()
            self.architecture_combo.setCurrentText(load_settings().architecture)
        self.form.setEnabled(ready)
        self.run_button.setEnabled(ready)
        self.click_button.setEnabled(ready)
        self.install_panel.refresh(self.dependencies)
        self.describe_device()
        return ready

    def _installed(self, outcome: InstallOutcome) -> None:
        if self._engine_ready():
            self.report("MTP", outcome.message, Qgis.Success)
        else:
            self.report("MTP", outcome.message, Qgis.Warning)

    @pyqtSlot()
    def describe_device(self) -> None:
        """The chosen device in words: CUDA name and memory, or CPU and why no GPU is used."""
        if not self.dependencies.ok:
            self.device_label.setText("unknown until the dependencies are installed")
            return
        from mtp_core.device import describe_device, resolve_device

        try:
            self.device_label.setText(describe_device(resolve_device(self.device_combo.currentData())))
        except ValueError as exc:
            self.device_label.setText(f"not usable: {for_dock(str(exc))}")

    @pyqtSlot(str)
    def _show_predictor_device(self, text: str) -> None:
        self.device_label.setText(text)

    # ------------------------------------------------------------------------------------------ settings
    def apply_settings(self, values: DockSettings) -> None:
        self.mode_combo.setCurrentIndex(self.mode_combo.findData(values.mode))
        self.kinds_check.setChecked(values.kinds)
        self.buildings_widget.setFilePath(values.building_checkpoint)
        self._fill_architectures()  # the mode's list, before its remembered entry is chosen
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
        self._show_mode_rows()

    def current_settings(self) -> DockSettings:
        return DockSettings(
            mode=self.mode(), kinds=self.kinds_check.isChecked(), building_checkpoint=self.buildings_widget.filePath(),
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
            field = FIRST_DATE if self.mode() == "change" else "'Raster layer'"
            raise ValueError(f"add a raster layer to the project and choose it under {field}")
        return layer

    def bands(self) -> tuple[int, ...] | None:
        """The raster bands fed as the model's R, G, B (None: the model card's own)."""
        from mtp_core.pipeline import parse_bands

        return parse_bands(self.bands_edit.text(), "'Bands'")

    def nodata(self) -> float | None:
        """The band value treated as nodata (None: the raster's own nodata)."""
        return parse_nodata(self.nodata_edit.text())

    def output_folder(self) -> Path:
        return Path(self.output_widget.filePath() or default_output_folder())

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
        from mtp_core.weights import DEMO_CD_CHECKPOINT, DEMO_CHECKPOINT, DEMO_INSTANCES_CHECKPOINT

        if values.mode == "change":
            if values.model_kind == "demo-instances":
                raise ValueError("'Demo instances' segments one layer; for changes between two layers choose 'Demo "
                                 "model' (the demo change detector) or a change-detection checkpoint")
            return ModelSpec(str(DEMO_CD_CHECKPOINT), **options)
        demo = DEMO_INSTANCES_CHECKPOINT if values.model_kind == "demo-instances" else DEMO_CHECKPOINT
        return ModelSpec(str(demo), **options)

    def make_request(self) -> RunRequest:
        """The run's inputs as plain values (raises ValueError with what to fix)."""
        layer = self.raster_layer()
        if self.mode() == "change":
            return self.make_change_request(layer)
        raster = require_georeferenced(layer)
        values = self.current_settings()
        bounds = polygons = None
        if values.area == "extent":
            bounds = visible_extent(layer, self.iface.mapCanvas())
        elif values.area == "polygons":
            polygons = polygons_wkt(layer, self.polygon_combo.currentLayer(), values.selected_only)
        now = datetime.now()
        return RunRequest(
            raster=raster, layer_name=layer.name(), model=self.model_spec(), out_folder=str(self.output_folder()),
            run_name=f"{Path(raster).stem}_{now:%Y%m%d-%H%M%S}", group_name=f"MTP {layer.name()} {now:%H:%M:%S}",
            bands=self.bands(), nodata=self.nodata(), bounds=bounds, polygons=polygons, min_area_m2=values.min_area_m2,
            simplify_m=values.simplify_m, regularize=values.regularize)

    def make_change_request(self, layer: QgsMapLayer) -> ChangeRequest:
        """The change task's inputs: both dates (checked here), the change model and the building model."""
        from mtp_core.change import pair_name
        from mtp_core.weights import DEMO_CHECKPOINT

        after_layer = self.after_combo.currentLayer()
        if after_layer is None:
            raise ValueError(f"add the second date's raster layer to the project and choose it under {SECOND_DATE}")
        if after_layer.id() == layer.id():
            raise ValueError(f"choose two different layers under {FIRST_DATE} and {SECOND_DATE}: the changes are "
                             "between two dates of one place")
        before, after = require_georeferenced(layer, FIRST_DATE), require_georeferenced(after_layer, SECOND_DATE)
        values = self.current_settings()
        bounds = polygons = None
        if values.area == "extent":
            bounds = visible_extent(layer, self.iface.mapCanvas())
        elif values.area == "polygons":
            polygons = polygons_wkt(layer, self.polygon_combo.currentLayer(), values.selected_only)
        buildings = None
        if values.kinds:
            buildings = ModelSpec(values.building_checkpoint or str(DEMO_CHECKPOINT), device=values.device,
                                  batch_size=values.batch_size)
        now = datetime.now()
        return ChangeRequest(
            raster=before, layer_name=layer.name(), model=self.model_spec(), out_folder=str(self.output_folder()),
            run_name=f"{file_name(pair_name(before, after))}_changes_{now:%Y%m%d-%H%M%S}",
            group_name=f"MTP changes {layer.name()} → {after_layer.name()} {now:%H:%M:%S}", bands=self.bands(),
            nodata=self.nodata(), bounds=bounds, polygons=polygons, min_area_m2=values.min_area_m2,
            simplify_m=values.simplify_m, regularize=values.regularize, after=after, after_name=after_layer.name(),
            buildings=buildings)

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
            raise ValueError("install the dependencies first: 'Install dependencies' at the top of the dock")
        layer = self.raster_layer()
        raster = require_georeferenced(layer)  # refused now, not after the first click
        spec, bands, nodata, values = self.model_spec(), self.bands(), self.nodata(), self.current_settings()
        target = self.target_combo.currentLayer()
        new_layer_path = None if target is not None else str(self._new_layer_file(layer))
        predictors = self.predictors
        nodata_vrt = Path(self._scratch.name) / f"{Path(raster).stem}_nodata.vrt"
        names = {raster: f"'{layer.name()}'", str(nodata_vrt): f"'{layer.name()}'"}
        self.save_settings()

        def make_segmenter():
            from mtp_core.click_instances import segmenter_for
            from mtp_core.pipeline import with_nodata

            source = raster if nodata is None else str(with_nodata(raster, nodata, nodata_vrt))
            segmenter = segmenter_for(predictors.get(spec), source, bands=bands, min_area_m2=values.min_area_m2,
                                      simplify_m=values.simplify_m, regularize=values.regularize)
            segmenter.source_name = Path(raster).name  # the layer's file, not the VRT
            return segmenter

        status = self.iface.statusBarIface()
        return ClickSegmentTool(self.iface.mapCanvas(), layer, make_segmenter, target, new_layer_path=new_layer_path,
                                message=lambda text: status.showMessage(text, 10000),
                                set_active_layer=self.iface.setActiveLayer,
                                explain=lambda error: for_dock(str(error), names))

    def _new_layer_file(self, layer: QgsMapLayer) -> Path:
        """A GeoPackage not yet written in the output folder, named after the layer, for the clicked buildings."""
        folder = self.output_folder()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"cannot write to the output folder {folder} ({exc.strerror}): choose another "
                             "'Output folder', or a layer under 'Add to'") from None
        stem, n = f"{file_name(layer.name())}_buildings", 1
        while (folder / f"{stem}.gpkg").exists():
            n += 1
            stem = f"{file_name(layer.name())}_buildings_{n}"
        return folder / f"{stem}.gpkg"

    # ------------------------------------------------------------------------------------------ running
    def create_task(self) -> SegmentTask:
        """The task of a run with the current choices, wired to this dock (raises ValueError with what to fix)."""
        request = self.make_request()
        if isinstance(request, ChangeRequest):
            task: SegmentTask = ChangeTask(request, self.predictors, self.building_predictors, self._finished)
        else:
            task = SegmentTask(request, self.predictors, self._finished)
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
        self.messages.clear()  # the previous run's message is stale now
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
        if outcome.vector_path is not None:
            self.status_label.setToolTip(str(outcome.vector_path.parent))
        if outcome.state == "done":
            self.report("MTP", outcome.message, Qgis.Success)
        elif outcome.state == "cancelled":
            self.report("MTP", outcome.message, Qgis.Info)
        else:
            self.report("MTP failed", outcome.message, Qgis.Critical)

    def report(self, title: str, message: str, level: Qgis.MessageLevel) -> None:
        self.messages.show(title, message, level)

    def shutdown(self) -> None:
        """Before the plugin unloads: keep the settings, stop a run (it leaves nothing), free the model."""
        if self.dependencies.ok:
            self.save_settings()
        if self.task is not None:
            self.task.on_done = None
            self.task.cancel()
            self.task = None
        self.click_button.setChecked(False)  # leaves the map tool
        self.install_panel.detach()
        self.messages.clear()
        self.predictors.clear()
        self.building_predictors.clear()
        self._scratch.cleanup()
