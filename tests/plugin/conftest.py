"""Real QGIS, headless: one QgsApplication for the plugin tests (QT_QPA_PLATFORM=offscreen, no display).

QGIS settings go to a temporary folder for the whole session, so no test reads or writes the user's QGIS profile.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before any Qt import
os.environ.setdefault("XDG_RUNTIME_DIR", os.path.join(tempfile.gettempdir(), f"runtime-{os.getuid()}"))

import pytest  # noqa: E402
from qgis.core import QgsApplication  # noqa: E402
from qgis.PyQt.QtCore import QSettings  # noqa: E402

from .qgis_iface import MainWindowInterface  # noqa: E402

QgsApplication.setPrefixPath("/usr", True)
_APP = QgsApplication([], True)
_APP.initQgis()
sys.path.append(os.path.join(QgsApplication.pkgDataPath(), "python", "plugins"))
SETTINGS_DIR = tempfile.mkdtemp(prefix="mtp-qgis-settings-")
for _format in (QSettings.NativeFormat, QSettings.IniFormat):  # after initQgis, which points them at the profile
    QSettings.setPath(_format, QSettings.UserScope, SETTINGS_DIR)


@pytest.fixture(scope="session")
def qgis_app() -> QgsApplication:
    yield _APP
    shutil.rmtree(SETTINGS_DIR, ignore_errors=True)


@pytest.fixture
def iface(qgis_app) -> MainWindowInterface:
    interface = MainWindowInterface()
    yield interface
    interface.mapCanvas().stopRendering()
    interface.mainWindow().close()
