"""Engine messages in the words of the place that shows them.

The engine speaks to ``mtp`` command-line users: it names options (``--bands``, ``--pixel-crs``) and the files it
opened, which inside QGIS can be the plugin's own temporary files (a VRT of the chosen area or of the nodata value,
``.../.mtp-xxxx/nodata.vrt``). The dock names its fields and the layer; Processing names its parameters and the layer.
"""
from __future__ import annotations

import html
import re
from collections.abc import Mapping

Rules = tuple[tuple[re.Pattern, str], ...]

DOCK: Rules = (
    (re.compile(r"pass --bands with (\d+) band numbers, e\.g\. --bands ([\d,]+)"),
     r"enter \1 band numbers under 'Bands', e.g. \2"),
    (re.compile(r"with --bands\b"), "under 'Bands'"),
    (re.compile(r"--bands\b"), "'Bands'"),
    (re.compile(r"(?:use|run with) --device cpu\b"), "choose CPU under 'Device'"),
    (re.compile(r"another --out\b"), "another 'Output folder'"),
    (re.compile(r",? or use --pixel-crs to go on in pixel units"),
     "; the dock needs a georeferenced raster (Processing's 'Extract buildings' can go on in pixel units with "
     "'Accept a raster without georeference')"),
    (re.compile(r"\(CLI: --arch\)"), "under 'Architecture' (Model: 'Named architecture + weights file')"),
)

PROCESSING: Rules = (
    (re.compile(r"pass --bands with (\d+) band numbers, e\.g\. --bands ([\d,]+)"),
     r"set BANDS to \1 band numbers, e.g. BANDS=\2"),
    (re.compile(r"--bands (\d[\d,]*)"), r"BANDS=\1"),
    (re.compile(r"(?:with )?--bands\b"), "BANDS"),
    (re.compile(r"use --pixel-crs\b"), "set PIXEL_CRS=true ('Accept a raster without georeference')"),
    (re.compile(r"--nodata\b"), "NODATA"),
    (re.compile(r"(?:use|run with) --device cpu\b"), "set DEVICE=cpu"),
    (re.compile(r"another --out\b"), "another output folder"),
    (re.compile(r"\(CLI: --arch\)"), "(a checkpoint with its model card)"),
)


def translate(message: str, rules: Rules, names: Mapping[str, str] | None = None) -> str:
    """``message`` with CLI options replaced by ``rules`` and every path in ``names`` (a file, or a folder whose
    files are all meant) replaced by its name for the user, longest path first."""
    for path, name in sorted((names or {}).items(), key=lambda item: -len(item[0])):
        if path:
            message = re.sub(re.escape(path) + r"[^\s:;,)'\"]*", name.replace("\\", "\\\\"), message)
    for pattern, replacement in rules:
        message = pattern.sub(replacement, message)
    return message


def for_dock(message: str, names: Mapping[str, str] | None = None) -> str:
    return translate(message, DOCK, names)


def for_processing(message: str, names: Mapping[str, str] | None = None) -> str:
    return translate(message, PROCESSING, names)


def as_html(text: str) -> str:
    """Plain text for a widget that renders HTML (the message bar): shown as typed, line breaks kept."""
    return html.escape(text, quote=False).replace("\n", "<br>")
