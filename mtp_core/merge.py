"""``mtp merge``: per-shard building layers into one, with buildings cut at raster/shard borders made whole again.

A building that straddles the border of two rasters of a mosaic is vectorized as two pieces, one per raster. Their
outlines lie on the same pixel edge, so pieces from different inputs that share a stretch of boundary (not just a
corner) are one building: they are unioned and their attributes recomputed.

Streamed: only a piece that reaches another layer's extent can be such a piece, so every other feature is written as
it is read (in batches) and only those border pieces are held until the end. Memory follows the border pieces, not
the mosaic. Areas and lengths are ground metres (:mod:`mtp_core.io.metres`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import shapely
from osgeo import ogr

from mtp_core.errors import GeoError
from mtp_core.io import GroundFrame, VectorReader, VectorWriter
from mtp_core.io.gdal_errors import raises_gdal_errors
from mtp_core.vectorize.clean import components

TOUCH_TOLERANCE = 1e-9  # shared boundary length that counts as a cut (in CRS units): more than a corner
FIELDS = {"id": ogr.OFTInteger, "class": ogr.OFTInteger, "score": ogr.OFTReal, "area_m2": ogr.OFTReal,
          "perimeter_m": ogr.OFTReal, "source": ogr.OFTString, "model": ogr.OFTString}


def _groups(geometries: np.ndarray, origin: np.ndarray) -> list[list[int]]:
    """Groups of pieces from different inputs whose boundaries share a segment (or that overlap)."""
    left, right = shapely.STRtree(geometries).query(geometries, predicate="intersects")
    keep = (left < right) & (origin[left] != origin[right])
    left, right = left[keep], right[keep]
    boundaries = shapely.boundary(geometries)
    shared = shapely.length(shapely.intersection(boundaries[left], boundaries[right]))
    overlap = shapely.area(shapely.intersection(geometries[left], geometries[right]))
    joined = (shared > TOUCH_TOLERANCE) | (overlap > 0)
    label = components(len(geometries), np.stack([left[joined], right[joined]], axis=1))
    order = np.argsort(label, kind="stable")
    return [group.tolist() for group in np.split(order, np.flatnonzero(np.diff(label[order])) + 1)]


class _Pieces:
    """Border pieces held until every layer is read: geometry, input index and attributes."""

    def __init__(self) -> None:
        self.geometries: list[Any] = []
        self.origin: list[int] = []
        self.rows: dict[str, list[Any]] = {k: [] for k in ("class", "score", "source", "model")}

    def add(self, geometries: np.ndarray, origin: int, rows: dict[str, list[Any]]) -> None:
        self.geometries.extend(geometries)
        self.origin.extend([origin] * len(geometries))
        for key, values in rows.items():
            self.rows[key].extend(values)


def _attributes(values: dict[str, list[Any]], count: int) -> dict[str, list[Any]]:
    """The merge's own columns of one batch (defaults where an input lacks a column)."""
    def column(name: str, default: object) -> list[Any]:
        return list(values.get(name) or [default] * count)

    return {"class": column("class", 1), "score": column("score", None), "source": column("source", ""),
            "model": column("model", "")}


def _near_others(geometries: np.ndarray, own: int, extents: list[tuple[float, ...] | None]) -> np.ndarray:
    """Which pieces reach the extent of another input (only those can be halves of a cut building)."""
    near = np.zeros(len(geometries), bool)
    boxes = shapely.bounds(geometries).reshape(-1, 4)
    for j, extent in enumerate(extents):
        if j == own or extent is None:
            continue
        xmin, ymin, xmax, ymax = extent
        near |= (boxes[:, 0] <= xmax) & (boxes[:, 2] >= xmin) & (boxes[:, 1] <= ymax) & (boxes[:, 3] >= ymin)
    return near


@raises_gdal_errors
def merge_layers(inputs: Sequence[str | Path], output: str | Path) -> int:
    """Merge building layers (any OGR format, reprojected to the first one's CRS); returns the building count."""
    if not inputs:
        raise GeoError("mtp merge needs at least one input layer")
    first = VectorReader(inputs[0])
    readers = [first] + [VectorReader(p, target_crs_wkt=first.crs_wkt or None) for p in inputs[1:]]
    extents = [r.extent() for r in readers]
    known = np.array([e for e in extents if e is not None]).reshape(-1, 4)
    centre = ((known[:, 0].min() + known[:, 2].max()) / 2, (known[:, 1].min() + known[:, 3].max()) / 2) \
        if len(known) else (0.0, 0.0)
    frame = GroundFrame(first.crs_wkt, centre)
    multi = first.geometry_type in (ogr.wkbMultiPolygon, ogr.wkbMultiPolygon25D)
    written = 0
    held = _Pieces()
    with VectorWriter(output, FIELDS, first.crs_wkt, ogr.wkbMultiPolygon if multi else ogr.wkbPolygon,
                      "buildings") as writer:

        def write(geometries: np.ndarray, rows: dict[str, list[Any]]) -> None:
            nonlocal written
            metric = frame.project(geometries)
            writer.write(geometries, {"id": list(range(written + 1, written + len(geometries) + 1)), **rows,
                                      "area_m2": [float(a) for a in shapely.area(metric)],
                                      "perimeter_m": [float(p) for p in shapely.length(metric)]})
            written += len(geometries)

        for index, reader in enumerate(readers):
            for geometries, values in reader.batches():
                rows = _attributes(values, len(geometries))
                near = _near_others(geometries, index, extents)
                held.add(geometries[near], index, {k: [v for v, n in zip(col, near) if n] for k, col in rows.items()})
                if (~near).any():
                    write(geometries[~near], {k: [v for v, n in zip(col, near) if not n] for k, col in rows.items()})
        if held.geometries:
            geometries, rows = _merged(held, frame)
            write(geometries, rows)
    return written


def _merged(held: _Pieces, frame: GroundFrame) -> tuple[np.ndarray, dict[str, list[Any]]]:
    """Border pieces of the same class from different inputs joined into whole buildings (area-weighted score)."""
    geometries = np.array(held.geometries, dtype=object)
    origin, classes = np.array(held.origin), np.array(held.rows["class"])
    areas = shapely.area(frame.project(geometries))
    out: list[Any] = []
    rows: dict[str, list[Any]] = {k: [] for k in ("class", "score", "source", "model")}
    for cls in sorted(set(classes.tolist())):  # only pieces of the same class are one building
        idx = np.flatnonzero(classes == cls)
        for group in _groups(geometries[idx], origin[idx]):
            members = idx[group]
            out.append(shapely.union_all(geometries[members]) if len(members) > 1 else geometries[members[0]])
            scored = [(held.rows["score"][i], areas[i]) for i in members
                      if held.rows["score"][i] is not None and held.rows["score"][i] == held.rows["score"][i]]
            weight = sum(a for _, a in scored)
            rows["class"].append(int(cls))
            rows["score"].append(sum(s * a for s, a in scored) / weight if scored and weight > 0 else None)
            rows["source"].append(";".join(sorted({str(held.rows["source"][i]) for i in members})))
            rows["model"].append(str(held.rows["model"][members[0]]))
    return np.array(out, dtype=object), rows
