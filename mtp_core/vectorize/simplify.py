"""Coverage simplification of polygons in metres.

* **No gaps between classes.** Simplification is *coverage* simplification (Visvalingam-Whyatt on the shared-edge
  graph of all polygons, ``shapely.coverage_simplify``): an edge shared by two polygons is simplified once, for both,
  so adjacent classes keep sharing their boundary exactly and never overlap. It only removes vertices, so simplified
  outlines still have their vertices on pixel corners. ``simplify_m`` is the VW tolerance: triangles smaller than
  ``simplify_m**2`` m² are removed.
"""
from __future__ import annotations

import numpy as np
import shapely

from mtp_core.vectorize.clean import components

_SIMPLIFY_BATCH = 256  # polygons per coverage-simplification call


def simplify(polys: np.ndarray, near: np.ndarray, shares_edge: np.ndarray, px_m: tuple[float, float],
              tolerance_m: float) -> np.ndarray:
    """Coverage simplification in metres; vertices stay on the pixel corners they came from.

    Polygons that share edges get a vertex at every pixel corner first, because the coverage simplifier needs the
    vertices of a shared edge to be the same on both sides (GDAL writes only the corners of each outline). Groups of
    polygons whose bounding boxes meet cannot affect other groups, so they are simplified in batches of whole groups:
    GEOS's time grows faster than linearly with the size of one coverage.
    """
    if not len(polys):
        return polys
    dense = polys.copy()
    dense[shares_edge] = shapely.segmentize(polys[shares_edge], 1.0)
    scale = np.asarray(px_m)
    metric = shapely.transform(dense, lambda xy: xy * scale)
    simple = np.empty(len(polys), object)
    for batch in _batches(components(len(polys), near), _SIMPLIFY_BATCH):
        simple[batch] = shapely.coverage_simplify(metric[batch], tolerance_m)
    return shapely.normalize(shapely.transform(simple, lambda xy: np.rint(xy / scale)))


def _batches(group: np.ndarray, size: int) -> list[np.ndarray]:
    """Indices split into batches of about ``size``, never splitting a group (groups in order of their label)."""
    order = np.argsort(group, kind="stable")
    starts = np.flatnonzero(np.r_[True, group[order][1:] != group[order][:-1]])
    cuts, filled = [], 0
    for start in starts[1:].tolist():
        if start - filled >= size:
            cuts.append(start)
            filled = start
    return np.split(order, cuts)
