"""Tile grid and blending weights for seam-free prediction of rasters larger than the model input.

Tiles are model-input sized and overlap; the last tile of a row/column is shifted back inside the raster (as MMSeg's
slide inference), so every tile is full size and sees real pixels. Each tile's probabilities are weighted by a
window that falls smoothly towards the tile border, so pixels near a tile edge — where the model sees the least
context — count least, and the weighted average has no visible seams.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator

import numpy as np

MIN_WEIGHT = 1e-3  # border pixels of the raster are covered by one tile only: they need a non-zero weight


@dataclass(frozen=True)
class Tile:
    """A window of the model grid: columns x..x+size, rows y..y+size (may extend past a small raster)."""

    x: int
    y: int
    size: int
    row: int  # index of the tile row, for streaming flushes


def _origins(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


@dataclass(frozen=True)
class TileGrid:
    """Row-major grid of ``tile``-sized windows with at least ``overlap`` pixels shared by neighbours."""

    height: int
    width: int
    tile: int
    overlap: int

    def __post_init__(self) -> None:
        if self.tile <= 0 or not 0 <= self.overlap < self.tile:
            raise ValueError(f"need tile > 0 and 0 <= overlap < tile, got tile {self.tile}, overlap {self.overlap}")
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"empty raster: {self.width}x{self.height} pixels")

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    @property
    def row_origins(self) -> list[int]:
        return _origins(self.height, self.tile, self.stride)

    @property
    def col_origins(self) -> list[int]:
        return _origins(self.width, self.tile, self.stride)

    def __len__(self) -> int:
        return len(self.row_origins) * len(self.col_origins)

    def __iter__(self) -> Iterator[Tile]:
        cols = self.col_origins
        for r, y in enumerate(self.row_origins):
            for x in cols:
                yield Tile(x, y, self.tile, r)

    def final_row(self, row: int) -> int:
        """Raster rows above this one are complete once tile row ``row`` is done (no later tile touches them)."""
        origins = self.row_origins
        return origins[row + 1] if row + 1 < len(origins) else self.height


@lru_cache(maxsize=8)
def blend_weights(tile: int, overlap: int) -> np.ndarray:
    """(tile, tile) float32 weights: a raised-cosine ramp over ``overlap`` pixels at each border, 1 in between.

    Neighbouring ramps cross-fade (a tile's falling edge meets the next tile's rising one). With an overlap of half
    the tile or more the ramps would cross, so they become one Hann window over the whole tile: every pixel still
    weighs more the further it is from the tile's borders, for any overlap below the tile. The weights never reach
    zero, so a pixel that only one tile covers (at the raster border) still gets that tile's prediction.
    """
    if not 0 <= overlap < tile:
        raise ValueError(f"need 0 <= overlap < tile, got tile {tile}, overlap {overlap}")
    ramp = np.ones(tile, dtype=np.float64)
    length = min(overlap, tile // 2)
    if length > 0:
        t = (np.arange(length) + 0.5) / length
        rise = 0.5 - 0.5 * np.cos(np.pi * t)
        ramp[:length] = rise
        ramp[tile - length:] = rise[::-1]
    weights = np.maximum(np.outer(ramp, ramp), MIN_WEIGHT).astype(np.float32)
    weights.setflags(write=False)
    return weights
