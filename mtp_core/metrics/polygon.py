"""The SpaceNet building F1 on polygons, as solaris's ``eval_iou_spacenet_csv`` (SpaceNet 2/4 rules) or the 2016
SpaceNet 1 scorer, so building footprints vectorised from a prediction are scored as the challenges did."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Literal, Sequence

import numpy as np
import shapely

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
