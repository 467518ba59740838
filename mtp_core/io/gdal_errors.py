"""GDAL errors as Python exceptions inside the engine's own calls only.

``gdal.UseExceptions()`` is process-wide (one flag each for gdal, ogr and osr): inside QGIS, turning it on for good
would change how GDAL reports errors to every other plugin. So every engine entry point that calls GDAL runs inside
:func:`gdal_exceptions`, which turns exceptions on when the first such call starts and restores the previous modes
when the last one ends. A counter makes it nest and lets the tile-reader thread share the mode of the job it serves.
"""
from __future__ import annotations

import contextlib
import functools
import threading
from typing import Callable, Iterator, TypeVar

from osgeo import gdal, ogr, osr

_MODULES = (gdal, ogr, osr)
_LOCK = threading.Lock()
_depth = 0
_saved: tuple[int, ...] = ()

F = TypeVar("F", bound=Callable)


@contextlib.contextmanager
def gdal_exceptions() -> Iterator[None]:
    """GDAL/OGR/OSR raise ``RuntimeError`` inside the block; their previous modes come back after the last block."""
    global _depth, _saved
    with _LOCK:
        if _depth == 0:
            _saved = tuple(module.GetUseExceptions() for module in _MODULES)
            for module in _MODULES:
                module.UseExceptions()
        _depth += 1
    try:
        yield
    finally:
        with _LOCK:
            _depth -= 1
            if _depth == 0:
                for module, was_on in reversed(list(zip(_MODULES, _saved))):  # GDAL stacks their error handlers
                    if not was_on:
                        module.DontUseExceptions()


@contextlib.contextmanager
def quiet_gdal() -> Iterator[None]:
    """GDAL prints nothing inside the block (this thread): its message comes back in the exception instead."""
    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        yield
    finally:
        gdal.PopErrorHandler()


def raises_gdal_errors(func: F) -> F:
    """Decorator: ``func`` runs inside :func:`gdal_exceptions`."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with gdal_exceptions():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
