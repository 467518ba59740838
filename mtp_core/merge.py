"""``mtp merge``: per-shard building layers into one, with buildings cut at raster/shard borders made whole again.

A building that straddles the border of two rasters of a mosaic is vectorized as two pieces, one per raster. Their
outlines lie on the same pixel edge, so pieces from different inputs that share a stretch of boundary (not just a
corner) are one building: they are unioned and their attributes recomputed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import shapely
from mtp_core.geo import GeoError, read_vector, to_metric, write_vector

TOUCH_TOLERANCE = 1e-9  # shared boundary length that counts as a cut (in CRS units): more than a corner


def _groups(geometries: np.ndarray, origin: np.ndarray) -> list[list[int]]:
    """Union-find over pairs from different inputs whose boundaries share a segment."""
    parent = list(range(len(geometries)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    tree = shapely.STRtree(geometries)
    left, right = tree.query(geometries, predicate="intersects")
    keep = (left < right) & (origin[left] != origin[right])
    left, right = left[keep], right[keep]
    boundaries = shapely.boundary(geometries)
    shared = shapely.length(shapely.intersection(boundaries[left], boundaries[right]))
    overlap = shapely.area(shapely.intersection(geometries[left], geometries[right]))
    joined = (shared > TOUCH_TOLERANCE) | (overlap > 0)
    for a, b in zip(left[joined], right[joined]):
        parent[find(int(a))] = find(int(b))
    groups: dict[int, list[int]] = {}
    for i in range(len(geometries)):
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


def merge_layers(inputs: Sequence[str | Path], output: str | Path) -> int:
    """Merge building layers (any OGR format, reprojected to the first one's CRS); returns the building count."""
    if not inputs:
        raise GeoError("mtp merge needs at least one input layer")
    geoms, first_attrs, crs = read_vector(inputs[0])
    parts = [(np.asarray(geoms, dtype=object), first_attrs)]
    for path in inputs[1:]:
        g, a, _ = read_vector(path, target_crs_wkt=crs)
        parts.append((np.asarray(g, dtype=object), a))
    geometries = np.concatenate([g for g, _ in parts]) if parts else np.array([], dtype=object)
    origin = np.concatenate([np.full(len(g), i) for i, (g, _) in enumerate(parts)])

    def column(name: str, default: object) -> list:
        return [v for g, a in parts for v in (a.get(name) or [default] * len(g))]

    classes, scores = column("class", 1), column("score", None)
    sources, models = column("source", ""), column("model", "")
    merged: list = []
    attrs: dict[str, list] = {k: [] for k in ("class", "score", "area_m2", "perimeter_m", "source", "model")}
    metric = to_metric(geometries, crs) if len(geometries) else geometries
    groups: list[list[int]] = []
    for cls in sorted(set(classes)):  # only pieces of the same class are one building
        idx = np.flatnonzero(np.asarray(classes) == cls)
        groups += [[int(idx[j]) for j in group] for group in _groups(geometries[idx], origin[idx])]
    for members in groups:
        shape = shapely.union_all(geometries[members]) if len(members) > 1 else geometries[members[0]]
        measured = shapely.union_all(metric[members]) if len(members) > 1 else metric[members[0]]
        areas = shapely.area(metric[members])
        valid_scores = [(scores[i], a) for i, a in zip(members, areas)
                        if scores[i] is not None and scores[i] == scores[i]]  # NaN != NaN
        merged.append(shape)
        attrs["class"].append(classes[members[0]])
        attrs["score"].append(sum(s * a for s, a in valid_scores) / sum(a for _, a in valid_scores)
                              if valid_scores and sum(a for _, a in valid_scores) > 0 else None)
        attrs["area_m2"].append(float(shapely.area(measured)))
        attrs["perimeter_m"].append(float(shapely.length(measured)))
        attrs["source"].append(";".join(sorted({str(sources[i]) for i in members})))
        attrs["model"].append(str(models[members[0]]))
    order = sorted(range(len(merged)), key=lambda i: (-merged[i].centroid.y, merged[i].centroid.x))
    merged = [merged[i] for i in order]
    attrs = {k: [v[i] for i in order] for k, v in attrs.items()}
    attrs = {"id": list(range(1, len(merged) + 1)), **attrs}
    write_vector(output, merged, attrs, crs, layer_name="buildings")
    return len(merged)
