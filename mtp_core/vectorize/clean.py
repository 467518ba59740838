"""Cleaning closed regions, and which polygons can interact (the groups that are finished together).

* **Small things.** Polygons and holes smaller than ``min_area_m2`` are dropped / filled (a 1-pixel hole in a roof is
  noise, not a courtyard; an island dropped in one class leaves its surrounding polygon's hole filled, so no gap).
"""
from __future__ import annotations

import numpy as np
import shapely
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from mtp_core.io.metres import PixelMeasure


def components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected components of ``n`` nodes linked by ``pairs``: each node's label is the smallest node of its group
    (so labels, and everything ordered by them, do not depend on how the graph was traversed)."""
    if n == 0:
        return np.empty(0, np.int64)
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    smallest = np.full(label.max() + 1, n, np.int64)
    np.minimum.at(smallest, label, np.arange(n))
    return smallest[label]


def fill_small_holes(polys: np.ndarray, measure: PixelMeasure, min_area_m2: float) -> tuple[np.ndarray, int]:
    """Polygons without their holes smaller than ``min_area_m2`` (noise, not courtyards)."""
    if not len(polys) or min_area_m2 <= 0 or not shapely.get_num_interior_rings(polys).any():
        return polys, 0
    rings, owner = shapely.get_rings(polys, return_index=True)
    is_hole = np.r_[False, owner[1:] == owner[:-1]]
    small = np.zeros(len(rings), bool)
    small[is_hole] = measure.area_m2(shapely.polygons(rings[is_hole])) < min_area_m2
    return shapely.polygons(rings[~small], indices=owner[~small]), int(small.sum())


def meeting_pairs(boxes: np.ndarray, reach: float) -> np.ndarray:
    """Pairs (i < j) of bounding boxes (n, 4) that meet once grown by ``reach``: the only polygons that can touch or
    interact when simplified (removing vertices keeps an outline inside its box) or regularized (an outline stays
    within half the reach of its box)."""
    if not len(boxes):
        return np.empty((0, 2), np.int64)
    grown = boxes + np.array([-reach, -reach, reach, reach])
    i, j = shapely.STRtree(shapely.box(*boxes.T)).query(shapely.box(*grown.T))
    keep = i < j
    return np.stack([i[keep], j[keep]], axis=1)


def shares_edge(polys: np.ndarray, near: np.ndarray) -> np.ndarray:
    """Whether each polygon shares a boundary segment (not just a corner) with another polygon."""
    out = np.zeros(len(polys), bool)
    i, j = near[:, 0], near[:, 1]
    edge = shapely.relate_pattern(polys[i], polys[j], "F***1****")
    out[i[edge]] = out[j[edge]] = True
    return out
