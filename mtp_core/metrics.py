"""Segmentation metrics shared by training, the CLI and QGIS (no Qt/QGIS imports).

Two families:

* Pixel metrics equal to MMSegmentation 1.0.0's ``IoUMetric`` (what MTP reports as mIoU on SpaceNet v1):
  per-class areas accumulated over the whole split, then float32 ratios, ``np.nanmean`` and the ×100,
  2-decimal rounding of MMSeg's ``compute_metrics``.
* The SpaceNet building F1 on polygons, as solaris's ``eval_iou_spacenet_csv`` (SpaceNet 2/4 rules) or the 2016
  SpaceNet 1 scorer, so building footprints vectorised from a prediction can be scored as the challenges did.
"""
from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

import numpy as np
import shapely
import torch
import torch.distributed as dist
from torch import Tensor

# ----------------------------------------------------------------------------------------------- pixel metrics

AREA_ROWS = ("intersect", "union", "pred", "label")
SUMMARY_KEYS = ("aAcc", "mIoU", "mAcc", "mDice", "mFscore", "mPrecision", "mRecall")
PER_CLASS_KEYS = ("IoU", "Acc", "Dice", "Fscore", "Precision", "Recall")


def _as_class_map(x: Tensor | np.ndarray, what: str) -> Tensor:
    tensor = torch.as_tensor(x)
    if tensor.is_floating_point() or tensor.is_complex():
        raise TypeError(f"{what} must hold integer class indices, got dtype {tensor.dtype}")
    return tensor.long()


def intersect_and_union(
    pred: Tensor | np.ndarray, label: Tensor | np.ndarray, num_classes: int, ignore_index: int = 255,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-class pixel counts of one prediction/label pair (or a batch), as MMSeg's ``IoUMetric.intersect_and_union``.

    Pixels whose label is ``ignore_index`` are dropped first. MMSeg bins with ``torch.histc(bins=K, min=0,
    max=K-1)``, which for integer maps counts exactly the values ``0..K-1``; ``bincount`` over those values gives
    the same counts as int64, exact beyond float32's 2**24 pixels. Returns ``(area_intersect, area_union,
    area_pred, area_label)``, each an int64 tensor of shape ``(num_classes,)`` on the inputs' device.
    """
    pred_t, label_t = _as_class_map(pred, "pred"), _as_class_map(label, "label")
    if pred_t.shape != label_t.shape:
        raise ValueError(f"pred and label shapes differ: pred {tuple(pred_t.shape)}, label {tuple(label_t.shape)}")
    keep = label_t != ignore_index
    pred_t, label_t = pred_t[keep], label_t[keep]
    area_intersect = _class_counts(pred_t[pred_t == label_t], num_classes)
    area_pred = _class_counts(pred_t, num_classes)
    area_label = _class_counts(label_t, num_classes)
    return area_intersect, area_pred + area_label - area_intersect, area_pred, area_label


def _class_counts(values: Tensor, num_classes: int) -> Tensor:
    """Counts of ``0..num_classes-1``; other values are not counted (as ``histc`` ignores out-of-range values)."""
    in_range = values[(values >= 0) & (values < num_classes)]
    return torch.bincount(in_range, minlength=num_classes)


def _round_like_mmseg(value: np.floating) -> float:
    """MMSeg's ``np.round(v * 100, 2)`` in float32, returned as the plain float of that 2-decimal number.

    MMSeg returns a float32 (logged as e.g. ``84.2``); its nearest float64 prints the same and is JSON-safe.
    """
    rounded = np.round(np.float32(value) * np.float32(100), 2)
    return round(float(rounded), 2)


def _nanmean_f32(values: np.ndarray) -> np.float32:
    with warnings.catch_warnings():  # all-NaN (e.g. no labelled pixel at all) is NaN, as in MMSeg
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.float32(np.nanmean(values))


class PixelMetrics:
    """Accumulator equal to MMSeg 1.0.0 ``IoUMetric(iou_metrics=['mIoU', 'mDice', 'mFscore'], beta=1)``.

    ``update()`` adds each pair's counts to ``total_areas``, an int64 tensor of shape ``(4, num_classes)`` with
    rows ``AREA_ROWS`` (intersect, union, pred, label). Ranks of a distributed evaluation each accumulate their own
    samples, then ``reduce_()`` sums the counts (the only state), and ``compute()`` gives the dataset-level metrics.
    MTP's "mF1" is ``mFscore``; with beta = 1 it equals mDice except where a class has no prediction or no label
    (Fscore NaN and skipped, Dice 0).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, class_names: Sequence[str] | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class_names given for num_classes={num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = tuple(class_names) if class_names is not None else tuple(str(i) for i in range(num_classes))
        self.total_areas = torch.zeros(len(AREA_ROWS), num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.total_areas.zero_()

    def update(self, pred: Tensor | np.ndarray, label: Tensor | np.ndarray) -> None:
        """Add one prediction/label pair (class maps of the same shape; a batch is summed)."""
        areas = intersect_and_union(pred, label, self.num_classes, self.ignore_index)
        self.total_areas += torch.stack(areas).cpu()

    def reduce_(self, process_group: Any = None) -> "PixelMetrics":
        """Sum ``total_areas`` over the ranks of ``process_group`` (in place); a no-op without torch.distributed.

        NCCL reduces CUDA tensors only, so the counts travel through the current CUDA device there.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return self
        device = torch.device("cpu")
        if dist.get_backend(process_group) == dist.Backend.NCCL:
            device = torch.device("cuda", torch.cuda.current_device())
        areas = self.total_areas.to(device)
        dist.all_reduce(areas, op=dist.ReduceOp.SUM, group=process_group)
        self.total_areas.copy_(areas.cpu())
        return self

    def per_class(self, nan_to_num: float | None = None) -> dict[str, np.ndarray]:
        """Unrounded float32 fractions as MMSeg's ``total_area_to_metrics``: ``aAcc`` (0-d) and one value per class.

        Ratios are float32 divisions of the counts (0/0 is NaN); ``Fscore = (1+b²)·P·R / (b²·P + R)`` per class,
        so it is NaN where P or R is, and can differ from ``Dice`` in the last bit.
        """
        intersect, union, pred, label = self.total_areas.to(torch.float32)
        precision = intersect / pred
        recall = intersect / label
        beta2 = 1
        values = {
            "aAcc": intersect.sum() / label.sum(),
            "IoU": intersect / union,
            "Acc": recall,
            "Dice": 2 * intersect / (pred + label),
            "Fscore": (1 + beta2) * (precision * recall) / (beta2 * precision + recall),
            "Precision": precision,
            "Recall": recall,
        }
        arrays = {key: value.numpy() for key, value in values.items()}
        if nan_to_num is not None:
            arrays = {key: np.nan_to_num(value, nan=nan_to_num) for key, value in arrays.items()}
        return arrays

    def compute(self, nan_to_num: float | None = None) -> dict[str, Any]:
        """Dataset-level metrics: MMSeg's returned dict plus the per-class values.

        * ``aAcc, mIoU, mAcc, mDice, mFscore, mPrecision, mRecall``: ``round(nanmean(v) * 100, 2)`` as MMSeg returns
          them (classes whose value is NaN, i.e. absent from both prediction and label, are skipped by the mean;
          with ``nan_to_num`` they count as that value).
        * ``per_class``: the unrounded float32 fractions per class (``IoU, Acc, Dice, Fscore, Precision, Recall``).
        * ``per_class_table``: MMSeg's logged table, ``round(v * 100, 2)`` per class, plus ``Class`` (the names).
        """
        arrays = self.per_class(nan_to_num)
        result: dict[str, Any] = {"aAcc": _round_like_mmseg(_nanmean_f32(arrays["aAcc"]))}
        for key in PER_CLASS_KEYS:
            result["m" + key] = _round_like_mmseg(_nanmean_f32(arrays[key]))
        result["per_class"] = {key: arrays[key] for key in PER_CLASS_KEYS}
        table: dict[str, list] = {"Class": list(self.class_names)}
        for key in PER_CLASS_KEYS:
            table[key] = [_round_like_mmseg(v) for v in arrays[key]]
        result["per_class_table"] = table
        return result


# ----------------------------------------------------------------------------------------------- polygon F1

Rules = Literal["spacenet", "spacenet1"]
_POLYGONAL_TYPE_IDS = (3, 6)  # shapely type ids of Polygon and MultiPolygon


@dataclass(frozen=True)
class Match:
    """A true positive: ``proposal`` and ``truth`` index the inputs (rows of the CSVs for file evaluations)."""

    proposal: int
    truth: int
    iou: float


@dataclass(frozen=True)
class MatchResult:
    """Counts and scores; precision, recall and F1 are 0 where undefined, as solaris reports them."""

    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    matches: tuple[Match, ...]

    @classmethod
    def from_counts(cls, tp: int, fp: int, fn: int, matches: Iterable[Match] = ()) -> "MatchResult":
        precision = tp / (tp + fp) if tp + fp > 0 else 0.0
        recall = tp / (tp + fn) if tp + fn > 0 else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision * recall > 0 else 0.0
        return cls(tp, fp, fn, precision, recall, f1, tuple(matches))


def _geometry_array(geometries: Iterable[Any], what: str) -> np.ndarray:
    array = np.asarray(geometries if isinstance(geometries, np.ndarray) else list(geometries), dtype=object)
    if array.ndim != 1:
        raise ValueError(f"{what} must be a flat sequence of shapely geometries, got an array of shape {array.shape}")
    if not all(isinstance(g, shapely.Geometry) for g in array):
        bad = next(type(g).__name__ for g in array if not isinstance(g, shapely.Geometry))
        raise TypeError(f"{what} must hold shapely geometries, found a {bad}")
    return array


def _pair_ious(proposals: np.ndarray, truth: np.ndarray, rules: Rules) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every intersecting (proposal, truth) pair, found with an STRtree and computed vectorised.

    Invalid proposals were repaired before; a pair with a geometry that is still invalid scores 0 (solaris). The
    2016 scorer counted the intersection only when it was a (Multi)Polygon, so touching parts that make a
    GeometryCollection score 0 there.
    """
    if len(proposals) == 0 or len(truth) == 0:
        empty = np.zeros(0, dtype=np.intp)
        return empty, empty, np.zeros(0)
    prop_idx, truth_idx = shapely.STRtree(truth).query(proposals, predicate="intersects")
    order = np.lexsort((truth_idx, prop_idx))
    prop_idx, truth_idx = prop_idx[order], truth_idx[order]
    a, b = proposals[prop_idx], truth[truth_idx]
    valid = shapely.is_valid(a) & shapely.is_valid(b)
    ious = np.zeros(len(prop_idx))
    if valid.any():
        inter = shapely.intersection(a[valid], b[valid])
        inter_area = shapely.area(inter)
        if rules == "spacenet1":
            inter_area = np.where(np.isin(shapely.get_type_id(inter), _POLYGONAL_TYPE_IDS), inter_area, 0.0)
        union_area = shapely.area(shapely.union(a[valid], b[valid]))
        with np.errstate(invalid="ignore", divide="ignore"):
            ious[valid] = np.where(union_area > 0, inter_area / union_area, 0.0)
    return prop_idx, truth_idx, ious


def polygon_f1(
    proposals: Sequence[Any] | np.ndarray,
    ground_truth: Sequence[Any] | np.ndarray,
    confidences: Sequence[float] | np.ndarray | None = None,
    iou_threshold: float = 0.5,
    min_area: float = 20.0,
    rules: Rules = "spacenet",
) -> MatchResult:
    """Building-footprint precision/recall/F1 of one image, by greedy IoU matching as the SpaceNet scorers do.

    ``rules="spacenet"`` (solaris ``eval_iou_spacenet_csv``, SpaceNet 2/4): ground truth with area >= ``min_area``
    and proposals with area > ``min_area`` (in the geometries' units: pixel² for pixel coordinates) take part;
    proposals go by descending confidence (stable, so file order when there is none); each takes, among the
    remaining ground truth it intersects, the one of highest IoU (the first on ties) and is a true positive when
    IoU > ``iou_threshold`` strictly, removing that ground truth; otherwise it is a false positive. Remaining ground
    truth are false negatives. Invalid proposals are repaired with ``buffer(0)`` first.

    ``rules="spacenet1"`` (the 2016 SpaceNet 1 scorer): no area filter, proposals in the given order (confidences
    are not used), true positive when IoU >= ``iou_threshold``, false negatives = ground truth count - TP.
    """
    if rules not in ("spacenet", "spacenet1"):
        raise ValueError(f"rules must be 'spacenet' or 'spacenet1', got {rules!r}")
    if min_area < 0:
        raise ValueError(f"min_area must be >= 0, got {min_area}")
    props = _geometry_array(proposals, "proposals")
    truth = _geometry_array(ground_truth, "ground_truth")

    if rules == "spacenet":
        truth_area = shapely.area(truth)
        truth_keep = np.flatnonzero((truth_area >= min_area) & (truth_area > 0))  # zero-area truth is never an FN
        order = np.flatnonzero(shapely.area(props) > min_area)
        if confidences is not None:
            conf = np.asarray(confidences, dtype=np.float64)
            if conf.shape != (len(props),):
                raise ValueError(f"{len(conf)} confidences given for {len(props)} proposals")
            if np.isnan(conf).any():
                raise ValueError("confidences contain NaN")
            order = order[np.argsort(-conf[order], kind="stable")]
    else:
        if confidences is not None:
            raise ValueError("rules='spacenet1' scores proposals in the given order: confidences are not used")
        truth_keep = np.arange(len(truth))
        order = np.arange(len(props))

    ordered = props[order]
    invalid = ~shapely.is_valid(ordered)
    ordered[invalid] = shapely.buffer(ordered[invalid], 0.0)
    prop_idx, truth_idx, ious = _pair_ious(ordered, truth[truth_keep], rules)

    starts = np.searchsorted(prop_idx, np.arange(len(order) + 1))
    taken = np.zeros(len(truth_keep), dtype=bool)
    matches: list[Match] = []
    for j in range(len(order)):
        cand = truth_idx[starts[j]:starts[j + 1]]
        cand_iou = ious[starts[j]:starts[j + 1]]
        free = ~taken[cand]
        if not free.any():
            continue
        best = int(np.argmax(cand_iou[free]))
        best_truth, best_iou = int(cand[free][best]), float(cand_iou[free][best])
        if best_iou > iou_threshold or (rules == "spacenet1" and best_iou >= iou_threshold):
            taken[best_truth] = True
            matches.append(Match(int(order[j]), int(truth_keep[best_truth]), best_iou))
    tp = len(matches)
    return MatchResult.from_counts(tp, len(order) - tp, len(truth_keep) - tp, matches)


# ----------------------------------------------------------------------------------------------- files


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
                raise ValueError(f"{path}: no {column!r} column (header: {header})")
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


def read_vector_file(
    path: str | Path, layer: str | int | None = None, confidence_field: str | None = None,
) -> PolygonSet:
    """Polygons of a GeoJSON, GeoPackage or any OGR vector layer (coordinates as stored; no reprojection).

    Features without geometry are skipped; ``rows`` are the positions of the kept features in the layer.
    """
    from osgeo import gdal  # GDAL is optional for the pixel metrics; only the file readers need it

    dataset = gdal.OpenEx(str(path), gdal.OF_VECTOR)
    if dataset is None:
        raise FileNotFoundError(f"cannot open {path} as a vector file")
    ogr_layer = dataset.GetLayer() if layer is None else (
        dataset.GetLayerByName(layer) if isinstance(layer, str) else dataset.GetLayer(layer)
    )
    if ogr_layer is None:
        raise ValueError(f"{path}: no layer {layer!r}")
    if confidence_field is not None and ogr_layer.GetLayerDefn().GetFieldIndex(confidence_field) < 0:
        raise ValueError(f"{path}: no field {confidence_field!r}")

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
                raise ValueError(f"{path}: feature {position} has no {confidence_field!r} value")
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
    the prediction's CRS (the reference is reprojected), measured in metres (local UTM for degree CRSs); the default
    ``min_area`` 5 m² is SpaceNet's 20 px² at 0.5 m. The ``score`` attribute orders the proposals when present.
    """
    if Path(pred).suffix.lower() == ".csv" or Path(truth).suffix.lower() == ".csv":
        if not (Path(pred).suffix.lower() == Path(truth).suffix.lower() == ".csv"):
            raise ValueError("compare a SpaceNet CSV with another CSV, or two vector files (.gpkg/.geojson/.shp)")
        area = 20.0 if min_area is None else min_area
        return evaluate_spacenet_csv(pred, truth, iou_threshold, area, rules).per_aoi
    from mtp_core.geo import read_vector, to_metric

    proposals, attributes, crs = read_vector(pred)
    reference, _, _ = read_vector(truth, target_crs_wkt=crs or None)
    proposals, reference = np.asarray(proposals, dtype=object), np.asarray(reference, dtype=object)
    both = to_metric(np.concatenate([proposals, reference]), crs) if len(proposals) + len(reference) else proposals
    scores = attributes.get("score")
    confidences = np.asarray(scores, dtype=float) if scores and None not in scores and rules == "spacenet" else None
    result = polygon_f1(both[: len(proposals)], both[len(proposals):], confidences, iou_threshold,
                        5.0 if min_area is None else min_area, rules)
    return {"all": result}
