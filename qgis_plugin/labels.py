"""Labels for text the plugin does not control (engine messages, file names, device names) in a narrow dock.

They show plain text, never HTML (``EPSG:<code>`` stays as written), and wrap to the width they get: a
:class:`WrappingLabel` never asks the dock for more width, and it may also break long words such as file names
(``3band_013022223130_Public_img10_20261204-165055``), which plain word wrap would leave cut off at the edge.
"""
from __future__ import annotations

import re

from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import QLabel, QSizePolicy

ZERO_WIDTH_SPACE = "\u200b"
LONG_WORD = re.compile(r"\S{20,}")
BREAK_AFTER = re.compile(r"([_/\\.\-+:,)])")


def plain_label(text: str = "") -> QLabel:
    """A word-wrapped, selectable label that never interprets its text as HTML."""
    label = QLabel(text)
    label.setTextFormat(Qt.PlainText)
    label.setWordWrap(True)
    label.setTextInteractionFlags(Qt.TextSelectableByMouse)
    return label


def breakable(text: str) -> str:
    """``text`` with invisible break opportunities after the separators inside long words."""
    return LONG_WORD.sub(lambda word: BREAK_AFTER.sub(r"\1" + ZERO_WIDTH_SPACE, word.group(0)), text)


class WrappingLabel(QLabel):
    """A plain-text label that wraps any text to the width the layout gives it (see the module docstring)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.setObjectName(name)
        self.setTextFormat(Qt.PlainText)
        self.setWordWrap(True)
        self.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        self.setMinimumWidth(40)

    def setText(self, text: str) -> None:  # noqa: N802  (Qt API)
        super().setText(breakable(text))

    def text(self) -> str:
        """The text as given (without the break opportunities)."""
        return super().text().replace(ZERO_WIDTH_SPACE, "")
