"""The plugin's messages in QGIS's message bar: plain text (the bar renders HTML, which ate ``EPSG:<code>``), and one
at a time, since each replaces the plugin's previous one; a run's success does not pile up as "7 more"."""
from __future__ import annotations

from qgis.core import Qgis
from qgis.gui import QgsMessageBar, QgsMessageBarItem
from qgis.PyQt import sip

from .wording import as_html

#: seconds a message stays; errors and warnings stay until closed (0)
DURATIONS = {Qgis.Success: 6, Qgis.Info: 6, Qgis.Warning: 0, Qgis.Critical: 0}


class MessageBarReporter:
    def __init__(self, bar: QgsMessageBar) -> None:
        self.bar = bar
        self.item: QgsMessageBarItem | None = None

    def show(self, title: str, text: str, level: Qgis.MessageLevel) -> QgsMessageBarItem:
        self.clear()
        self.item = QgsMessageBarItem(as_html(title), as_html(text), level, DURATIONS.get(level, 0))
        self.bar.pushItem(self.item)
        return self.item

    def clear(self) -> None:
        """Removes the plugin's last message if it is still shown."""
        if self.item is not None and not sip.isdeleted(self.item):
            self.bar.popWidget(self.item)
        self.item = None
