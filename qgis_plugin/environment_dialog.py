"""The "MTP environment…" dialog: Diagnostics to read and copy, "Install dependencies", and where packages come from."""
from __future__ import annotations

from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QFontDatabase
from qgis.PyQt.QtWidgets import (
    QApplication,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QGroupBox,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .diagnostics import diagnostics_text
from .install_panel import InstallPanel
from .installer import InstallOptions
from .labels import plain_label
from .torch_build import UnsupportedPlatform, torch_build_for_this_machine

TORCH_SOURCES = (("The build for this machine", "auto"), ("pip's own configured index", "pip"),
                 ("This index URL:", "url"))


class EnvironmentDialog(QDialog):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("mtpEnvironmentDialog")
        self.setWindowTitle("MTP environment")
        self.resize(760, 640)
        layout = QVBoxLayout(self)
        self.text = QPlainTextEdit()
        self.text.setObjectName("mtpDiagnostics")
        self.text.setReadOnly(True)
        self.text.setFont(QFontDatabase.systemFont(QFontDatabase.FixedFont))
        self.text.setLineWrapMode(QPlainTextEdit.WidgetWidth)  # long paths stay readable; copies keep lines whole
        layout.addWidget(self.text, 1)
        self.install_panel = InstallPanel(self, show_when_ready=True)
        self.install_panel.installed.connect(lambda _: self.refresh())
        layout.addWidget(self.install_panel)
        layout.addWidget(self._sources())
        buttons = QDialogButtonBox(QDialogButtonBox.Close)
        self.copy_button = QPushButton("Copy diagnostics")
        self.copy_button.setObjectName("mtpCopyDiagnostics")
        self.copy_button.clicked.connect(lambda: QApplication.clipboard().setText(self.text.toPlainText()))
        buttons.addButton(self.copy_button, QDialogButtonBox.ActionRole)
        refresh = QPushButton("Refresh")
        refresh.clicked.connect(self.refresh)
        buttons.addButton(refresh, QDialogButtonBox.ActionRole)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.refresh()

    def _sources(self) -> QGroupBox:
        """Where "Install dependencies" takes packages from (kept in the QGIS settings, mtp/install/...)."""
        box = QGroupBox("Package sources (for company mirrors or offline wheel folders)")
        form = QFormLayout(box)
        form.setRowWrapPolicy(QFormLayout.WrapLongRows)
        options = InstallOptions.load()
        self.torch_source = QComboBox()
        for text, value in TORCH_SOURCES:
            self.torch_source.addItem(text, value)
        self.torch_url = QLineEdit()
        self.torch_url.setPlaceholderText("https://download.pytorch.org/whl/cu128")
        kind = options.torch_index if options.torch_index in ("auto", "pip") else "url"
        self.torch_source.setCurrentIndex(self.torch_source.findData(kind))
        self.torch_url.setText(options.torch_index if kind == "url" else "")
        form.addRow("PyTorch from", self.torch_source)
        form.addRow("", self.torch_url)
        self.build_label = plain_label(self._automatic_build())
        form.addRow("", self.build_label)
        self.pip_options = QLineEdit(options.pip_options)
        self.pip_options.setPlaceholderText("e.g. --find-links /path/to/wheels  or  --proxy http://host:port")
        form.addRow("More pip options", self.pip_options)
        for signal in (self.torch_source.currentIndexChanged, self.torch_url.editingFinished,
                       self.pip_options.editingFinished):
            signal.connect(self.save_sources)
        self.torch_url.setEnabled(kind == "url")
        return box

    @staticmethod
    def _automatic_build() -> str:
        try:
            return f"For this machine: {torch_build_for_this_machine().describe()}"
        except UnsupportedPlatform as exc:
            return f"For this machine: {exc}"

    def save_sources(self) -> None:
        kind = self.torch_source.currentData()
        self.torch_url.setEnabled(kind == "url")
        index = self.torch_url.text().strip() if kind == "url" else kind
        InstallOptions(index or "auto", self.pip_options.text().strip()).save()

    def refresh(self) -> None:
        QApplication.setOverrideCursor(Qt.WaitCursor)  # importing torch for the device line takes a moment
        try:
            self.text.setPlainText(diagnostics_text())
        finally:
            QApplication.restoreOverrideCursor()
        self.install_panel.refresh()

    def done(self, result: int) -> None:  # noqa: D401  (QDialog API: closing)
        self.install_panel.detach()
        super().done(result)
