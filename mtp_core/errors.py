"""The one exception type for what a user can fix, so front ends can tell bad input from bugs.

Front ends (``mtp``, the QGIS dock, Processing) show a :class:`UserError` as one line that says what was wrong and
what to do. Every other exception is a bug in this project: it keeps its traceback, and the CLI adds a line saying so.
"""
from __future__ import annotations


class UserError(ValueError):
    """Bad input, settings or environment (a missing file, a raster without CRS, a wrong band count, a checkpoint
    without a decoder, ...); the message says what is wrong and what to do about it."""


class GeoError(UserError):
    """Bad geodata input or output (a raster without CRS, an unreadable block, an unwritable folder, ...)."""
