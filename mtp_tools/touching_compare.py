"""Semantic-only against instances on scenes with touching buildings: the comparison of ``bench/instances.py`` and
``make demo``.

Each scene (``mtp synth --touching``: one label per house) goes through the main job twice with the same checkpoint,
once with its semantic decoder alone (one polygon per connected region, as every segmentation tool gives) and once
with its instances (one polygon per building). Both polygon sets are scored against the labels with SpaceNet's rules
(proposals by score, IoU > 0.5, 20 px² minimum); the counts are summed over the scenes.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import shapely

from mtp_core.inference import Predictor
from mtp_core.io import read_vector
from mtp_core.metrics import MatchResult, polygon_f1
from mtp_core.pipeline import extract_buildings
from mtp_tools.synthetic import write_scene
from mtp_tools.synthetic.touching import render_touching_scene, touching_mask


@dataclass
class SceneScore:
    seed: int
    buildings: int
    touching: float  # share of the labelled buildings that share a wall
    semantic: MatchResult
    instances: MatchResult
    in_rows: tuple[int, int, int] = (0, 0, 0)  # houses sharing a wall: count, found semantic-only, found instances
    alone: tuple[int, int, int] = (0, 0, 0)  # houses standing alone: the same


def found(vector: Path, truth: Sequence, crs: str) -> np.ndarray:
    """Which of the labelled buildings ``truth`` (in ``crs``) some polygon of a job overlaps with IoU > 0.5, each on
    its own (unlike F1's one-to-one matching): where a path fails, whatever else it does."""
    predicted = np.asarray(read_vector(vector, target_crs_wkt=crs)[0], dtype=object)
    truth = np.asarray(truth, dtype=object)
    hit = np.zeros(len(truth), bool)
    if len(predicted) and len(truth):
        t, p = shapely.STRtree(predicted).query(truth, predicate="intersects")
        iou = shapely.area(shapely.intersection(truth[t], predicted[p])) / shapely.area(
            shapely.union(truth[t], predicted[p]))
        hit[t[iou > 0.5]] = True
    return hit


def score(vector: Path, labels: Path, gsd_m: float, metric_crs: str | None = None) -> MatchResult:
    """SpaceNet's polygon F1 of a job's polygons against a scene's labels (20 px² minimum area), in the polygons'
    CRS, or in ``metric_crs`` (e.g. the UTM zone of a raster in degrees) when given."""
    predicted, attributes, crs = read_vector(vector, target_crs_wkt=metric_crs)
    truth, _, _ = read_vector(labels, target_crs_wkt=crs)
    return polygon_f1(predicted, truth, confidences=attributes.get("score"), min_area=20 * gsd_m**2)


def compare(semantic: Predictor, instances: Predictor, seeds: Sequence[int], size: int = 512,
            touching: float = 0.5, out: Path | None = None, regularize: bool = False) -> list[SceneScore]:
    """Every scene through both predictors (module docstring); files go to ``out`` (a temporary folder if None)."""
    with tempfile.TemporaryDirectory(prefix="mtp-touching-") as tmp:
        root = Path(out or tmp)
        scores = []
        for seed in seeds:
            scene = render_touching_scene(size, size, seed, touching)
            tif, labels = write_scene(scene, root / f"touching_{seed}.tif", root / f"touching_{seed}.geojson")
            truth, _, crs = read_vector(labels)
            results, hits = [], []
            for name, predictor in (("semantic", semantic), ("instances", instances)):
                job = extract_buildings(predictor, tif, root / name, regularize=regularize, skip_existing=False)
                results.append(score(job.vector_path, labels, scene.gsd_m))
                hits.append(found(job.vector_path, truth, crs))
            rows = touching_mask(truth)
            in_rows, alone = ((int(m.sum()), *(int((h & m).sum()) for h in hits)) for m in (rows, ~rows))
            scores.append(SceneScore(seed, len(truth), float(rows.mean()) if len(truth) else 0.0, *results,
                                     in_rows, alone))
        return scores


def total(results: Sequence[MatchResult]) -> MatchResult:
    return MatchResult.from_counts(sum(r.tp for r in results), sum(r.fp for r in results), sum(r.fn for r in results))


def summary_line(scores: Sequence[SceneScore]) -> str:
    """The one line both ``bench/instances.py`` and ``make demo`` end with."""
    semantic, instances = total([s.semantic for s in scores]), total([s.instances for s in scores])
    return f"touching scenes: polygon F1 semantic-only {semantic.f1:.3f}, instances {instances.f1:.3f}"
