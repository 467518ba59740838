"""Polygon rings as flat vertex arrays (open rings: no closing vertex), for vectorized edits of many outlines."""
from __future__ import annotations

import numpy as np
import shapely


def open_rings(polys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vertices of every ring without the closing one, the ring of each vertex, the polygon of each ring."""
    rings, ring_poly = shapely.get_rings(polys, return_index=True)
    xy, ring_of = shapely.get_coordinates(rings, return_index=True)
    closing = np.r_[ring_of[1:] != ring_of[:-1], True]
    return xy[~closing], ring_of[~closing], ring_poly


def from_open_rings(xy: np.ndarray, ring_of: np.ndarray, ring_poly: np.ndarray) -> np.ndarray:
    """Polygons from open rings (``ring_of`` sorted, every ring of ``ring_poly`` present; shells first)."""
    starts = np.flatnonzero(np.r_[True, ring_of[1:] != ring_of[:-1]])
    closed = np.insert(xy, np.r_[starts[1:], len(xy)], xy[starts], axis=0)
    ring_offsets = np.r_[starts + np.arange(len(starts)), len(closed)]
    poly_offsets = np.r_[0, np.cumsum(np.bincount(ring_poly))]
    return shapely.from_ragged_array(shapely.GeometryType.POLYGON, closed, (ring_offsets, poly_offsets))


def cyclic(ring_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the previous and the next vertex of each vertex in its (open) ring."""
    starts = np.flatnonzero(np.r_[True, ring_of[1:] != ring_of[:-1]])
    sizes = np.diff(np.r_[starts, len(ring_of)])
    first, size = np.repeat(starts, sizes), np.repeat(sizes, sizes)
    pos = np.arange(len(ring_of)) - first
    return first + (pos - 1) % size, first + (pos + 1) % size
