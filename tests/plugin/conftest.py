"""Real QGIS, headless: one QgsApplication for the plugin tests (QT_QPA_PLATFORM=offscreen, no display)."""
from __future__ import annotations

import os
import sys
import tempfile

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before any Qt import
os.environ.setdefault("XDG_RUNTIME_DIR", os.path.join(tempfile.gettempdir(), f"runtime-{os.getuid()}"))

import pytest  # noqa: E402
from qgis.core import QgsApplication  # noqa: E402
from qgis.PyQt.QtWidgets import QMainWindow, QMenu, QToolBar  # noqa: E402

QgsApplication.setPrefixPath("/usr", True)
_APP = QgsApplication([], True)
_APP.initQgis()
sys.path.append(os.path.join(QgsApplication.pkgDataPath(), "python", "plugins"))


class MainWindowInterface:
    """The part of ``QgisInterface`` a plugin's initGui/unload uses, over a real main window, menu and toolbar.

    QGIS's own QgisInterface only exists inside the desktop application; this one keeps real Qt widgets so tests can
    count what a plugin leaves behind.
    """

    def __init__(self) -> None:
        self._main = QMainWindow()
        self.raster_menu = QMenu("&Raster", self._main)
        self.toolbar = QToolBar("Plugins", self._main)
        self._plugin_menus: dict[str, QMenu] = {}

    def mainWindow(self) -> QMainWindow:  # noqa: N802
        return self._main

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


@pytest.fixture(scope="session")
def qgis_app() -> QgsApplication:
    return _APP


@pytest.fixture
def iface(qgis_app) -> MainWindowInterface:
    return MainWindowInterface()
