"""The plugin object QGIS loads: menu and toolbar entries, the dock, the environment dialog and the Processing
provider, all removed again on unload. The dock is made the first time its action is used, so it never opens by
itself when QGIS starts."""
from __future__ import annotations

import os

from qgis.core import Qgis, QgsApplication, QgsMessageLog
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction

from .dependencies import check_dependencies
from .dock import MTPDock
from .environment_dialog import EnvironmentDialog
from .log_book import log_book
from .processing import MTPProvider

MENU = "&MTP for QGIS"
LOG_TAG = "MTP"
HERE = os.path.dirname(__file__)


class MTPPlugin:
    def __init__(self, iface) -> None:
        self.iface = iface
        self.actions: list[QAction] = []
        self.provider: MTPProvider | None = None
        self.dock: MTPDock | None = None
        self.dock_action: QAction | None = None
        self.environment_dialog: EnvironmentDialog | None = None

    def initProcessing(self) -> None:  # noqa: N802  (QGIS API: qgis_process calls only this one)
        if self.provider is None:
            self.provider = MTPProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802  (QGIS API)
        log_book.start()
        self.initProcessing()
        self.dock_action = QAction(QIcon(os.path.join(HERE, "icon.svg")), "Segment raster (MTP dock)",
                                   self.iface.mainWindow())
        self.dock_action.setObjectName("mtpDockAction")
        self.dock_action.setToolTip("Show or hide the MTP dock: segment a raster layer into buildings")
        self.dock_action.setCheckable(True)
        self.dock_action.toggled.connect(self.show_dock)
        action = QAction(QIcon(os.path.join(HERE, "environment.svg")), "MTP environment…", self.iface.mainWindow())
        action.setObjectName("mtpEnvironmentAction")
        action.setToolTip("Diagnostics (versions, device, folders), Install dependencies, package sources")
        action.triggered.connect(self.show_environment)
        for entry in (self.dock_action, action):
            self.iface.addPluginToRasterMenu(MENU, entry)
            self.iface.addToolBarIcon(entry)
            self.actions.append(entry)
        status = check_dependencies()
        if not status.ok:
            QgsMessageLog.logMessage(f"{status.summary()} Use 'Install dependencies' in the MTP dock.", LOG_TAG,
                                     Qgis.Warning)

    def unload(self) -> None:
        if self.environment_dialog is not None:
            self.environment_dialog.close()
            self.environment_dialog = None
        if self.dock is not None:
            self.dock.shutdown()
            self.iface.removeDockWidget(self.dock)
            self.dock.deleteLater()
            self.dock = None
        for action in self.actions:
            self.iface.removePluginRasterMenu(MENU, action)
            self.iface.removeToolBarIcon(action)
            action.deleteLater()
        self.actions.clear()
        self.dock_action = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)  # the registry deletes it
            self.provider = None
        log_book.stop()

    def show_dock(self, visible: bool) -> None:
        if self.dock is None:
            if not visible:
                return
            self.dock = MTPDock(self.iface, self.iface.mainWindow())
            self.iface.addDockWidget(Qt.RightDockWidgetArea, self.dock)
            self.dock.visibilityChanged.connect(self.dock_action.setChecked)
        self.dock.setVisible(visible)

    def show_environment(self) -> None:
        """The environment dialog (one at a time, not modal: an installation can run while QGIS is used)."""
        if self.environment_dialog is None:
            dialog = EnvironmentDialog(self.iface.mainWindow())
            dialog.setAttribute(Qt.WA_DeleteOnClose)
            dialog.destroyed.connect(lambda: setattr(self, "environment_dialog", None))
            self.environment_dialog = dialog
        self.environment_dialog.show()
        self.environment_dialog.raise_()
        self.environment_dialog.activateWindow()
