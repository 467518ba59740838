"""The latest warnings and errors of the MTP log, for Diagnostics: QgsMessageLog keeps no history a plugin can read."""
from __future__ import annotations

from collections import deque
from datetime import datetime

from qgis.core import Qgis, QgsApplication

TAG = "MTP"
KEPT = 20


class LogBook:
    def __init__(self) -> None:
        self._entries: deque[str] = deque(maxlen=KEPT)
        self._listening = False

    def start(self) -> None:
        if not self._listening:
            QgsApplication.messageLog().messageReceived.connect(self._received)
            self._listening = True

    def stop(self) -> None:
        if self._listening:
            QgsApplication.messageLog().messageReceived.disconnect(self._received)
            self._listening = False

    def _received(self, message: str, tag: str, level: Qgis.MessageLevel) -> None:
        if tag == TAG and level in (Qgis.Warning, Qgis.Critical):
            self._entries.append(f"{datetime.now():%H:%M:%S} {message}")

    def entries(self) -> list[str]:
        return list(self._entries)


log_book = LogBook()
