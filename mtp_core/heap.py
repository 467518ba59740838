"""Giving freed heap memory back to the operating system.

The instance path frees tensors of a different size for every tile (proposals, RoIs, masks: as many as the tile has
buildings). glibc keeps the holes this leaves and the process's resident memory grows with the number of tiles run,
although what it holds stays flat (measured on the demo instance model: 1,468 MB resident after a 4k x 4k raster,
859 MB after ``malloc_trim``; 1,066 and 852 MB after a 1k x 1k one). Trimming after every batch of tiles keeps the
peak flat in raster size (``bench/predict_memory.py --model demo-instances``: peak 1,217 MB at 1k x 1k, 1,279 MB at
4k x 4k, where it was 1,216 and 1,527 MB).
"""
from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache
from typing import Callable


@lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None elsewhere (musl, macOS, Windows), where there is nothing to do."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def trim_heap() -> None:
    """Returns the free memory at the top and inside glibc's heaps to the system (a few milliseconds)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
