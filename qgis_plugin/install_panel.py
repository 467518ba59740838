"""The "Install dependencies" panel, in the dock and in the environment dialog: what MTP still needs, one button,
then progress, the current step, Cancel and the pip log. Both panels follow the one installation of the session
(:data:`qgis_plugin.installer.installs`), whichever started it."""
from __future__ import annotations

from qgis.PyQt.QtCore import pyqtSignal
from qgis.PyQt.QtGui import QFontDatabase
from qgis.PyQt.QtWidgets import QGroupBox, QPlainTextEdit, QProgressBar, QPushButton, QVBoxLayout, QWidget

from .dependencies import DependencyStatus, check_dependencies, dependency_root
from .installer import InstallOptions, InstallOutcome, InstallTask, installs
from .labels import WrappingLabel
from .torch_build import UnsupportedPlatform

LOG_LINES = 2000  # the log view keeps this many lines; the full log is in the file beside the folder


class InstallPanel(QGroupBox):
    """``installed`` is emitted with the outcome once an installation succeeded."""

    installed = pyqtSignal(object)

    def __init__(self, parent: QWidget | None = None, *, show_when_ready: bool = False) -> None:
        super().__init__("Dependencies", parent)
        self.setObjectName("mtpInstallPanel")
        self.show_when_ready = show_when_ready
        layout = QVBoxLayout(self)
        self.summary_label = WrappingLabel("mtpInstallSummary")
        layout.addWidget(self.summary_label)
        self.install_button = QPushButton("Install dependencies")
        self.install_button.setObjectName("mtpInstallButton")
        self.install_button.setToolTip("Installs torch, torchvision, timm and shapely with QGIS's own Python into "
                                       f"{dependency_root()}; QGIS's numpy and GDAL stay as they are")
        self.install_button.clicked.connect(self._clicked)
        layout.addWidget(self.install_button)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 100)
        layout.addWidget(self.progress_bar)
        self.step_label = WrappingLabel("mtpInstallStep")
        layout.addWidget(self.step_label)
        self.log_button = QPushButton("Show the installation log")
        self.log_button.setCheckable(True)
        self.log_button.setVisible(False)  # until an installation has a log
        layout.addWidget(self.log_button)
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(LOG_LINES)
        self.log_view.setFont(QFontDatabase.systemFont(QFontDatabase.FixedFont))
        self.log_view.setLineWrapMode(QPlainTextEdit.WidgetWidth)
        self.log_view.setMinimumHeight(120)
        self.log_view.setVisible(False)
        self.log_button.toggled.connect(self.log_view.setVisible)
        layout.addWidget(self.log_view)
        installs.started.connect(self._follow)
        installs.done.connect(self._done)
        if installs.task is not None:
            self._follow(installs.task)
        self.refresh()

    def detach(self) -> None:
        """Stops following installations (before the panel is deleted)."""
        installs.started.disconnect(self._follow)
        installs.done.disconnect(self._done)

    def refresh(self, status: DependencyStatus | None = None) -> None:
        """Shows what is missing (or that all is installed) and whether an installation runs."""
        status = status or check_dependencies()
        running = installs.running
        if status.ok:
            self.summary_label.setText(status.summary())
        else:
            try:
                build = InstallOptions.load().torch_build()
                what = f"PyTorch's {build.label}" + (f", {build.size}" if build.size else "")
            except UnsupportedPlatform as exc:
                what = str(exc)
            self.summary_label.setText(
                f"{status.summary()} The button installs them with QGIS's own Python into a folder of the plugin "
                f"(QGIS's numpy and GDAL stay as they are): {what}.")
        self.install_button.setText("Cancel installation" if running else "Install dependencies")
        self.progress_bar.setVisible(running)
        self.step_label.setVisible(bool(self.step_label.text()))
        self.setVisible(self.show_when_ready or running or not status.ok)

    def _clicked(self) -> None:
        if installs.running:
            installs.cancel()
            self.step_label.setText("cancelling…")
        else:
            self.log_view.clear()
            installs.start()

    def _follow(self, task: InstallTask) -> None:
        task.progressChanged.connect(lambda value: self.progress_bar.setValue(int(value)))
        task.stage_changed.connect(self.step_label.setText)
        task.line_logged.connect(self.log_view.appendPlainText)
        self.log_button.setVisible(True)
        self.progress_bar.setValue(0)
        self.step_label.setText("starting…")
        self.refresh()

    def _done(self, outcome: InstallOutcome) -> None:
        self.step_label.setText(outcome.message)
        self.refresh(outcome.status)
        if outcome.state == "done":
            self.installed.emit(outcome)
