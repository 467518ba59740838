"""Validation and test of a segmentor with instances, on the predictions the main job makes.

Each image is predicted as ``mtp predict`` predicts a raster (:class:`~mtp_core.inference.InstancePredictor`: the
config's tile and overlap, blending, instances merged across tiles and combined with the semantic mask), so the
numbers are those users get. Reported, summed over the split:

* ``aAcc``, ``mIoU``, ``mAcc``, ``mDice``, ``mFscore``: MMSeg's IoUMetric on the semantic mask (255 ignored);
* ``semantic_f1`` / ``instance_f1`` (with precision, recall, TP, FP, FN): SpaceNet's polygon F1 (proposals by score,
  IoU > 0.5, 20 px² minimum, in pixels) of the semantic-only polygons (one per connected region, what the semantic
  job writes) and of the instance polygons (one per building), against one polygon per ground-truth instance;
* ``segm_mAP``, ``segm_mAP_50``, ``segm_mAP_75`` and ``bbox_mAP``, ...: pycocotools' COCOeval of the final buildings
  (each building's pixels after the combination, scored by its instance score) against the instance masks.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from mtp_core.inference import InstancePredictor
from mtp_core.metrics import MatchResult, PixelMetrics, polygon_f1
from mtp_core.models.card import ModelCard
from mtp_core.models.instance_segmentor import InstanceSegmentor
from mtp_core.vectorize import vectorize_array
from mtp_core.vectorize.instances import BITS, NODATA_VALUE, class_of
from training.dist import DistInfo, all_reduce_sum_
from training.evaluation import PIXEL_GRID
from training.multitask_eval import _quiet

IGNORE = 255


def _polygons(mask: np.ndarray, prob: np.ndarray | None, nodata: int | None = None, instances: bool = False) -> Any:
    return vectorize_array(mask, PIXEL_GRID, "", prob=prob, nodata=nodata, min_area_m2=0.0, simplify_m=0.0,
                           class_of=class_of if instances else None)


def _counts(proposals: Any, truth: Any) -> np.ndarray:
    result = polygon_f1(proposals.geometries, truth.geometries, confidences=proposals.attributes["score"])
    return np.array([result.tp, result.fp, result.fn], np.float64)


def coco_records(ids: np.ndarray, scores: Mapping[int, float] | None, image_id: int,
                 categories: Mapping[int, int]) -> list[dict[str, Any]]:
    """COCO annotations (``scores`` None) or results of the instances of an id map (0 = none), masks as RLE."""
    import pycocotools.mask as mask_utils

    out = []
    for value in np.unique(ids):
        if value <= 0:
            continue
        mask = np.asfortranarray((ids == value).astype(np.uint8))
        rle = mask_utils.encode(mask)
        rle["counts"] = rle["counts"].decode("ascii")
        record = {"image_id": image_id, "category_id": categories[int(value)], "segmentation": rle,
                  "bbox": [float(v) for v in mask_utils.toBbox(rle)], "area": float(mask_utils.area(rle))}
        if scores is None:
            record.update(iscrowd=0, id=0)
        else:
            record["score"] = scores[int(value)]
        out.append(record)
    return out


def coco_metrics(truth: list[dict[str, Any]], results: list[dict[str, Any]], images: Sequence[dict[str, Any]],
                 categories: Sequence[str]) -> dict[str, float]:
    """``bbox_mAP``, ``_50``, ``_75`` and the same for ``segm`` (COCOeval, mmdet's ``maxDets`` 100/300/1000)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    for k, record in enumerate(truth, 1):
        record["id"] = k
    gt = COCO()
    gt.dataset = {"images": list(images), "annotations": truth,
                  "categories": [{"id": i, "name": n} for i, n in enumerate(categories)]}
    _quiet(gt.createIndex)
    out = {}
    for kind in ("bbox", "segm"):
        if not results or not truth:
            out.update({f"{kind}_mAP": 0.0, f"{kind}_mAP_50": 0.0, f"{kind}_mAP_75": 0.0})
            continue
        evaluation = COCOeval(gt, _quiet(gt.loadRes, results), kind)
        evaluation.params.maxDets = [100, 300, 1000]
        for step in (evaluation.evaluate, evaluation.accumulate, evaluation.summarize):
            _quiet(step)
        stats = [max(float(v), 0.0) for v in evaluation.stats[:3]]
        out.update({f"{kind}_mAP": stats[0], f"{kind}_mAP_50": stats[1], f"{kind}_mAP_75": stats[2]})
    return out


def buildings_of(values: np.ndarray) -> tuple[np.ndarray, dict[int, int]]:
    """Instance values as one number per building (1..n; every 4-connected region of buildings no instance explains
    its own, as the vectorizer makes them) and each building's 0-based object label."""
    from scipy import ndimage

    found = values > 0
    numbers_in = values & ((1 << BITS) - 1)
    out = np.zeros(values.shape, np.int32)
    labels: dict[int, int] = {}
    for value in np.unique(values[found & (numbers_in > 0)]):
        out[values == value] = len(labels) + 1
        labels[len(labels) + 1] = int(class_of(np.array(value))) - 1
    for value in np.unique(values[found & (numbers_in == 0)]):
        regions, count = ndimage.label(values == value)
        for k in range(1, count + 1):
            out[regions == k] = len(labels) + 1
            labels[len(labels) + 1] = int(class_of(np.array(value))) - 1
    return out, labels


@torch.inference_mode()
def evaluate_instances(model: InstanceSegmentor, card: ModelCard, dataset: Any, info: DistInfo,
                       crop: Sequence[int] = (), stride: Sequence[int] = (), batch_size: int = 4,
                       on_image: Any = None) -> dict[str, Any]:
    """Every metric of the module docstring over ``dataset`` (a pipeline without random steps), this rank's share
    of the images; counts reduced across ranks, COCO AP on rank 0's images. ``crop``/``stride``: the config's test
    tiling (default: the card's tile and overlap). ``on_image(sample, classes, values)`` sees each prediction."""
    was_training = model.training
    if crop:
        card = card.replace(tile=int(crop[0]), overlap=int(crop[0]) - int((stride or crop)[0]))
    predictor = InstancePredictor(model, card, device=info.device, batch_size=batch_size)
    classes = card.classes
    pixels = PixelMetrics(len(classes), ignore_index=IGNORE, class_names=classes)
    counts = np.zeros(6, np.float64)  # semantic TP, FP, FN, instance TP, FP, FN
    truth, results, images = [], [], []
    for index in range(info.rank, len(dataset), info.world_size):
        sample = dataset[index]
        gt = sample["sem_seg"].numpy()
        valid = gt != IGNORE
        image = sample["img"].permute(1, 2, 0).numpy().astype(np.float32)
        pred, probs, values, scores = predictor.predict_instances_array(image, valid)
        pixels.update(torch.from_numpy(pred.astype(np.int64)), sample["sem_seg"].long())
        masks, labels = sample["masks"].numpy(), sample["labels"].numpy()
        ids = np.zeros(gt.shape, np.int32)
        for k, mask in enumerate(masks):
            ids[mask > 0] = k + 1
        gt_polygons = _polygons(ids, None)
        building = (pred > 0) & (pred != IGNORE)
        semantic = _polygons(np.where(building, pred, 0).astype(np.uint8), probs)
        found = _polygons(values, scores, NODATA_VALUE, instances=True)
        counts += np.r_[_counts(semantic, gt_polygons), _counts(found, gt_polygons)]
        images.append({"id": index, "height": int(gt.shape[0]), "width": int(gt.shape[1])})
        truth += coco_records(ids, None, index, {k + 1: int(label) for k, label in enumerate(labels)})
        numbers, labels_of = buildings_of(values)
        instance_scores = {k: float(scores[numbers == k].mean()) / 255.0 for k in labels_of}
        results += coco_records(numbers, instance_scores, index, labels_of)
        if on_image is not None:
            on_image(sample, pred, values)
    if info.distributed:
        pixels.reduce_()
        counts = all_reduce_sum_(torch.from_numpy(counts).to(info.device), info).cpu().numpy()
    model.train(was_training)
    out: dict[str, Any] = pixels.compute()
    for name, (tp, fp, fn) in (("semantic", counts[:3]), ("instance", counts[3:])):
        match = MatchResult.from_counts(int(tp), int(fp), int(fn))
        out.update({f"{name}_f1": match.f1, f"{name}_precision": match.precision, f"{name}_recall": match.recall,
                    f"{name}_tp": match.tp, f"{name}_fp": match.fp, f"{name}_fn": match.fn})
    out.update(coco_metrics(truth, results, images, tuple(classes[1:])))
    return out
