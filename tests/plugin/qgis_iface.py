"""A stand-in for QGIS's ``iface`` over real Qt widgets, for headless tests and the acceptance walk-through."""
from __future__ import annotations

from qgis.gui import QgsMapCanvas, QgsMessageBar
from qgis.PyQt.QtWidgets import QMainWindow, QMenu, QToolBar, QVBoxLayout, QWidget


class MainWindowInterface:
    """The part of ``QgisInterface`` a plugin's initGui/unload uses, over a real main window, menu and toolbar.

    QGIS's own QgisInterface only exists inside the desktop application; this one keeps real Qt widgets so tests can
    count what a plugin leaves behind.
    """

    def __init__(self) -> None:
        self._main = QMainWindow()
        self._main.resize(1000, 700)
        self.raster_menu = QMenu("&Raster", self._main)
        self.toolbar = QToolBar("Plugins", self._main)
        self._plugin_menus: dict[str, QMenu] = {}
        self.active_layer = None
        centre = QWidget(self._main)
        column = QVBoxLayout(centre)
        self._message_bar = QgsMessageBar(centre)
        self._canvas = QgsMapCanvas(centre)
        column.addWidget(self._message_bar)
        column.addWidget(self._canvas)
        self._main.setCentralWidget(centre)

    def mainWindow(self) -> QMainWindow:  # noqa: N802
        return self._main

    def mapCanvas(self) -> QgsMapCanvas:  # noqa: N802
        return self._canvas

    def messageBar(self) -> QgsMessageBar:  # noqa: N802
        return self._message_bar

    def statusBarIface(self):  # noqa: N802  (QGIS's has the same showMessage(text, timeout))
        return self._main.statusBar()

    def setActiveLayer(self, layer) -> bool:  # noqa: N802
        self.active_layer = layer
        return True

    def addDockWidget(self, area, dock) -> None:  # noqa: N802
        self._main.addDockWidget(area, dock)

    def removeDockWidget(self, dock) -> None:  # noqa: N802
        self._main.removeDockWidget(dock)

    def addPluginToRasterMenu(self, name: str, action) -> None:  # noqa: N802
        menu = self._plugin_menus.get(name) or self.raster_menu.addMenu(name)
        self._plugin_menus[name] = menu
        menu.addAction(action)

    def removePluginRasterMenu(self, name: str, action) -> None:  # noqa: N802
        menu = self._plugin_menus.get(name)
        if menu is not None:
            menu.removeAction(action)
            if not menu.actions():
                self.raster_menu.removeAction(menu.menuAction())
                del self._plugin_menus[name]

    def addToolBarIcon(self, action) -> None:  # noqa: N802
        self.toolbar.addAction(action)

    def removeToolBarIcon(self, action) -> None:  # noqa: N802
        self.toolbar.removeAction(action)
