"""Polygon files for the building metric: SpaceNet CSVs, any OGR vector layer, and ``mtp evaluate``'s comparison
of two files (per AOI for SpaceNet CSVs)."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import shapely
from osgeo import gdal

from mtp_core.errors import GeoError
from mtp_core.io import read_vector, to_metric
from mtp_core.io.gdal_errors import raises_gdal_errors
from mtp_core.metrics.polygon import Match, MatchResult, Rules, polygon_f1


@dataclass(frozen=True)
class PolygonSet:
    """Polygons of one image (or file): geometries, optional confidences, and their source row numbers."""

    geometries: np.ndarray
    confidences: np.ndarray | None
    rows: np.ndarray


def read_spacenet_csv(
    path: str | Path, geometry_column: str = "PolygonWKT_Pix", confidence_column: str = "Confidence",
) -> dict[str, PolygonSet]:
    """A SpaceNet CSV (``ImageId,BuildingId,PolygonWKT_Pix[,PolygonWKT_Geo][,Confidence]``) grouped by ImageId.

    An image whose only row is ``POLYGON EMPTY`` (or SpaceNet 1's ``BuildingId = -1``) has no buildings: it is kept
    with an empty set, so its proposals still count as false positives. ``rows`` are 0-based data-row numbers.
    Z coordinates are dropped. Confidences are read when the column exists.
    """
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        for column in ("ImageId", geometry_column):
            if column not in header:
                raise GeoError(f"{path}: no {column!r} column (header: {header})")
        has_conf = confidence_column in header
        records = list(reader)

    geometries = shapely.force_2d(shapely.from_wkt(np.array([r[geometry_column] for r in records], dtype=object)))
    no_building = shapely.is_empty(geometries) | np.array(
        [r.get("BuildingId", "").strip() == "-1" for r in records], dtype=bool
    )
    confidences = np.array([float(r[confidence_column]) for r in records]) if has_conf else None

    rows_by_image: dict[str, list[int]] = {}
    for row, record in enumerate(records):
        image_rows = rows_by_image.setdefault(record["ImageId"], [])
        if not no_building[row]:
            image_rows.append(row)
    result: dict[str, PolygonSet] = {}
    for image_id, image_rows in rows_by_image.items():
        rows = np.array(image_rows, dtype=np.intp)
        result[image_id] = PolygonSet(geometries[rows], confidences[rows] if confidences is not None else None, rows)
    return result


@raises_gdal_errors
def read_vector_file(
    path: str | Path, layer: str | int | None = None, confidence_field: str | None = None,
) -> PolygonSet:
    """Polygons of a GeoJSON, GeoPackage or any OGR vector layer (coordinates as stored; no reprojection).

    Features without geometry are skipped; ``rows`` are the positions of the kept features in the layer.
    """
    try:
        dataset = gdal.OpenEx(str(path), gdal.OF_VECTOR)
    except RuntimeError as exc:
        raise GeoError(f"cannot open {path} as a vector file ({exc}); check the path and format") from exc
    ogr_layer = dataset.GetLayer() if layer is None else (
        dataset.GetLayerByName(layer) if isinstance(layer, str) else dataset.GetLayer(layer)
    )
    if ogr_layer is None:
        raise GeoError(f"{path}: no layer {layer!r}")
    if confidence_field is not None and ogr_layer.GetLayerDefn().GetFieldIndex(confidence_field) < 0:
        raise GeoError(f"{path}: no field {confidence_field!r}")

    wkbs: list[bytes] = []
    confs: list[float] = []
    rows: list[int] = []
    for position, feature in enumerate(ogr_layer):
        geometry = feature.GetGeometryRef()
        if geometry is None:
            continue
        wkbs.append(bytes(geometry.ExportToIsoWkb()))
        rows.append(position)
        if confidence_field is not None:
            value = feature.GetField(confidence_field)
            if value is None:
                raise GeoError(f"{path}: feature {position} has no {confidence_field!r} value")
            confs.append(float(value))
    geometries = (shapely.force_2d(shapely.from_wkb(np.array(wkbs, dtype=object))) if wkbs
                  else np.array([], dtype=object))
    return PolygonSet(
        geometries, np.array(confs) if confidence_field is not None else None, np.array(rows, dtype=np.intp)
    )


def aoi_from_image_id(image_id: str) -> str:
    """The city/AOI of a SpaceNet ImageId: all before the last ``_`` (``AOI_2_Vegas_img123`` → ``AOI_2_Vegas``)."""
    head, sep, _ = image_id.rpartition("_")
    return head if sep else image_id


@dataclass(frozen=True)
class SpaceNetEvaluation:
    """Per-image results and their per-AOI sums (P/R/F1 recomputed from the summed counts, as solaris does)."""

    per_image: dict[str, MatchResult]
    per_aoi: dict[str, MatchResult]


def evaluate_spacenet_csv(
    pred_csv: str | Path,
    truth_csv: str | Path,
    iou_threshold: float = 0.5,
    min_area: float = 20.0,
    rules: Rules = "spacenet",
) -> SpaceNetEvaluation:
    """Score a SpaceNet proposal CSV against a truth CSV, as solaris's ``spacenet_buildings_2`` (miniou 0.5, 20 px²).

    Every ImageId of either file is scored with ``polygon_f1``; an image missing from one file has no polygons
    there. Match indices are data-row numbers of the two CSVs.
    """
    preds = read_spacenet_csv(pred_csv)
    truths = read_spacenet_csv(truth_csv)
    empty = PolygonSet(np.array([], dtype=object), None, np.array([], dtype=np.intp))
    per_image: dict[str, MatchResult] = {}
    for image_id in sorted(set(preds) | set(truths)):
        pred, truth = preds.get(image_id, empty), truths.get(image_id, empty)
        confidences = pred.confidences if rules == "spacenet" else None
        result = polygon_f1(pred.geometries, truth.geometries, confidences, iou_threshold, min_area, rules)
        matches = tuple(Match(int(pred.rows[m.proposal]), int(truth.rows[m.truth]), m.iou) for m in result.matches)
        per_image[image_id] = MatchResult.from_counts(result.tp, result.fp, result.fn, matches)
    return SpaceNetEvaluation(per_image, sum_by_aoi(per_image))


def sum_by_aoi(per_image: Mapping[str, MatchResult]) -> dict[str, MatchResult]:
    """Counts summed per AOI (``aoi_from_image_id``), with precision/recall/F1 from the sums."""
    grouped: dict[str, list[MatchResult]] = {}
    for image_id, result in per_image.items():
        grouped.setdefault(aoi_from_image_id(image_id), []).append(result)
    return {
        aoi: MatchResult.from_counts(
            sum(r.tp for r in results), sum(r.fp for r in results), sum(r.fn for r in results),
            (m for r in results for m in r.matches),
        )
        for aoi, results in sorted(grouped.items())
    }


def evaluate_files(
    pred: str | Path, truth: str | Path, iou_threshold: float = 0.5, min_area: float | None = None,
    rules: Rules = "spacenet",
) -> dict[str, MatchResult]:
    """Polygon F1 of two files, as ``mtp evaluate`` reports it: per AOI for SpaceNet CSVs, else one ``"all"`` row.

    CSVs are scored in their pixel coordinates (``min_area`` default 20 px², SpaceNet's). Vector files are compared in
    the prediction's CRS (the reference is reprojected), measured in ground metres (:mod:`mtp_core.io.metres`); the
    default
    ``min_area`` 5 m² is SpaceNet's 20 px² at 0.5 m. The ``score`` attribute orders the proposals when present.
    """
    if Path(pred).suffix.lower() == ".csv" or Path(truth).suffix.lower() == ".csv":
        if not (Path(pred).suffix.lower() == Path(truth).suffix.lower() == ".csv"):
            raise GeoError("compare a SpaceNet CSV with another CSV, or two vector files (.gpkg/.geojson/.shp)")
        area = 20.0 if min_area is None else min_area
        return evaluate_spacenet_csv(pred, truth, iou_threshold, area, rules).per_aoi
    proposals, attributes, crs = read_vector(pred)
    reference, _, _ = read_vector(truth, target_crs_wkt=crs or None)
    proposals, reference = np.asarray(proposals, dtype=object), np.asarray(reference, dtype=object)
    both = to_metric(np.concatenate([proposals, reference]), crs) if len(proposals) + len(reference) else proposals
    scores = attributes.get("score")
    confidences = np.asarray(scores, dtype=float) if scores and None not in scores and rules == "spacenet" else None
    result = polygon_f1(both[: len(proposals)], both[len(proposals):], confidences, iou_threshold,
                        5.0 if min_area is None else min_area, rules)
    return {"all": result}
