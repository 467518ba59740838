"""Where tiles come from: raster windows read with GDAL, or an in-memory image, two dates of one place on one grid
(for change detection), and a reader thread that works ahead of the model (reads overlap the model's work)."""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any, Iterator, Protocol

import numpy as np
from osgeo import gdal

from mtp_core.io import BandScaler, ReadPlan, read_window
from mtp_core.tiling import Tile


class TileSource(Protocol):
    """Where tiles come from: scaled band values (C, t, t) float32 on the 0–255 scale and a validity mask (t, t)."""

    height: int
    width: int

    def read(self, tile: Tile) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class ArraySource:
    """An in-memory image (H, W, C) already on the 0–255 scale, e.g. a window around a click."""

    image: np.ndarray
    valid: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.image.ndim != 3:
            raise ValueError(f"image must be (height, width, bands), got shape {self.image.shape}")
        self.height, self.width = self.image.shape[:2]
        if self.valid is None:
            self.valid = np.ones((self.height, self.width), dtype=bool)

    def read(self, tile: Tile) -> tuple[np.ndarray, np.ndarray]:
        t = tile.size
        data = np.zeros((self.image.shape[2], t, t), dtype=np.float32)
        valid = np.zeros((t, t), dtype=bool)
        window = self.image[tile.y : tile.y + t, tile.x : tile.x + t]
        h, w = window.shape[:2]
        data[:, :h, :w] = np.moveaxis(window, -1, 0)
        valid[:h, :w] = self.valid[tile.y : tile.y + h, tile.x : tile.x + w]
        return data, valid


@dataclass
class RasterSource:
    """Tiles of the model grid read with GDAL (in the prefetch thread, through its own dataset handle)."""

    plan: ReadPlan
    bands: tuple[int, ...]
    scaler: BandScaler

    def __post_init__(self) -> None:
        self.height, self.width = self.plan.height, self.plan.width
        self._dataset: gdal.Dataset | None = None

    def read(self, tile: Tile) -> tuple[np.ndarray, np.ndarray]:
        if self._dataset is None:  # opened lazily, in the thread that reads
            self._dataset = self.plan.reopen()
        data, valid = read_window(self._dataset, tile.x, tile.y, tile.size, tile.size, self.bands)
        return self.scaler(data), valid


@dataclass
class TwoDateSource:
    """Both dates of a place, tile by tile: the first date's bands then the second's (what a change detector takes,
    ``(2C, t, t)``); a pixel is valid where both dates are. The sources must share one grid (the second raster warped
    onto the first's: :func:`mtp_core.io.pair.warp_onto`)."""

    before: TileSource
    after: TileSource

    def __post_init__(self) -> None:
        if (self.before.height, self.before.width) != (self.after.height, self.after.width):
            raise ValueError(f"the two dates are on different grids ({self.before.width}x{self.before.height} and "
                             f"{self.after.width}x{self.after.height} px): warp the second onto the first's grid")
        self.height, self.width = self.before.height, self.before.width

    def read(self, tile: Tile) -> tuple[np.ndarray, np.ndarray]:
        data_b, valid_b = self.before.read(tile)
        data_a, valid_a = self.after.read(tile)
        return np.concatenate([data_b, data_a], axis=0), valid_b & valid_a


class Prefetched:
    """Runs an iterator in a background thread, ``depth`` items ahead (reads overlap the model's work)."""

    _END = object()

    def __init__(self, items: Iterator[Any], depth: int) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(items,), daemon=True, name="mtp-tile-reader")
        self._thread.start()

    def _fill(self, items: Iterator[Any]) -> None:
        try:
            for item in items:
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._queue.put(self._END)
        except BaseException as exc:  # noqa: BLE001  (re-raised in the consumer thread)
            self._queue.put(exc)

    def __iter__(self) -> "Prefetched":
        return self

    def __next__(self) -> Any:
        item = self._queue.get()
        if item is self._END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
