"""The plugin object QGIS loads: menu and toolbar entries and the Processing provider, removed again on unload."""
from __future__ import annotations

import os

from qgis.core import Qgis, QgsApplication, QgsMessageLog
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction, QMessageBox

from .environment import check_dependencies, environment_report
from .processing import MTPProvider

MENU = "&MTP for QGIS"
LOG_TAG = "MTP"


class MTPPlugin:
    def __init__(self, iface) -> None:
        self.iface = iface
        self.actions: list[QAction] = []
        self.provider: MTPProvider | None = None

    def initProcessing(self) -> None:  # noqa: N802  (QGIS API: qgis_process calls only this one)
        if self.provider is None:
            self.provider = MTPProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802  (QGIS API)
        self.initProcessing()
        icon = QIcon(os.path.join(os.path.dirname(__file__), "icon.svg"))
        action = QAction(icon, "MTP environment…", self.iface.mainWindow())
        action.setObjectName("mtpEnvironmentAction")
        action.setToolTip("Versions, the compute device used by MTP, or what to install")
        action.triggered.connect(self.show_environment)
        self.iface.addPluginToRasterMenu(MENU, action)
        self.iface.addToolBarIcon(action)
        self.actions.append(action)
        status = check_dependencies()
        if not status.ok:
            QgsMessageLog.logMessage(environment_report(), LOG_TAG, Qgis.Warning)

    def unload(self) -> None:
        for action in self.actions:
            self.iface.removePluginRasterMenu(MENU, action)
            self.iface.removeToolBarIcon(action)
            action.deleteLater()
        self.actions.clear()
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)  # the registry deletes it
            self.provider = None

    def show_environment(self) -> None:
        report = environment_report()
        QgsMessageLog.logMessage(report, LOG_TAG, Qgis.Info)
        box = QMessageBox(QMessageBox.Information, "MTP environment", report, QMessageBox.Ok, self.iface.mainWindow())
        box.setTextInteractionFlags(Qt.TextSelectableByMouse)  # so the install command can be copied
        box.exec_()
