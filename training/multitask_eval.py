"""Validation of a multi-task model, per dataset, as MTP's final validation reports it (spec §2.5).

* semantic segmentation: MMSeg's ``IoUMetric`` (mIoU; background is class 0 with ``--background True``), logits
  at the original size against the original label;
* instance segmentation: mmdet's ``CocoMetric`` = pycocotools' COCOeval on boxes and masks (mAP, AP50, AP75,
  ``maxDets`` 100/300/1000 as mmdet sets them), plus a building-style F1: detections scoring at least 0.5 matched
  one to one, best score first, to ground-truth masks at mask IoU >= 0.5.
"""
from __future__ import annotations

import contextlib
import io
from typing import Any, Sequence

import numpy as np
import torch

from mtp_core.metrics.pixel import PixelMetrics
from mtp_core.models.multitask import InstanceResult, MultiTaskModel
from training.data.multitask_preprocess import MultiTaskDataPreprocessor
from training.data.samrs import SAMRSDataset


def _quiet(fn: Any, *args: Any) -> Any:
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        return fn(*args)


def coco_detections(result: InstanceResult, image_id: Any, cat_ids: Sequence[Any]) -> list[dict[str, Any]]:
    """One image's detections as COCO results (xywh boxes, compressed RLE masks)."""
    import pycocotools.mask as mask_utils

    out = []
    masks = result.masks.cpu().numpy().astype(np.uint8)
    for box, score, label, mask in zip(result.bboxes.tolist(), result.scores.tolist(), result.labels.tolist(), masks):
        rle = mask_utils.encode(np.asfortranarray(mask))
        rle["counts"] = rle["counts"].decode("ascii")
        out.append({"image_id": image_id, "category_id": cat_ids[label], "score": float(score),
                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "segmentation": rle})
    return out


def coco_ap(ann_file: str, detections: list[dict[str, Any]], image_ids: Sequence[Any]) -> dict[str, float]:
    """``bbox_mAP``, ``bbox_mAP_50``, ``bbox_mAP_75`` and the same for ``segm`` (0 without detections)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    out = {}
    truth = _quiet(COCO, ann_file)
    for kind in ("bbox", "segm"):
        if not detections:
            out.update({f"{kind}_mAP": 0.0, f"{kind}_mAP_50": 0.0, f"{kind}_mAP_75": 0.0})
            continue
        evaluation = COCOeval(truth, _quiet(truth.loadRes, detections), kind)
        evaluation.params.imgIds = list(image_ids)
        evaluation.params.maxDets = [100, 300, 1000]
        _quiet(evaluation.evaluate)
        _quiet(evaluation.accumulate)
        _quiet(evaluation.summarize)
        stats = [max(float(v), 0.0) for v in evaluation.stats[:3]]  # -1 (no ground truth) reads as 0
        out.update({f"{kind}_mAP": stats[0], f"{kind}_mAP_50": stats[1], f"{kind}_mAP_75": stats[2]})
    return out


def mask_matches(result: InstanceResult, truth: torch.Tensor, score_thr: float = 0.5,
                 iou_thr: float = 0.5) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) of one image: detections scoring ``>= score_thr`` matched
    greedily by score to unmatched ground-truth masks (``truth`` (n, H, W)) at mask IoU ``>= iou_thr``."""
    keep = result.scores >= score_thr
    pred = result.masks[keep].flatten(1).float()
    gt = truth.to(pred.device).flatten(1).float()
    if pred.shape[0] == 0 or gt.shape[0] == 0:
        return 0, int(pred.shape[0]), int(gt.shape[0])
    inter = pred @ gt.T
    union = pred.sum(1, keepdim=True) + gt.sum(1)[None] - inter
    iou = inter / union.clamp(min=1)
    taken = torch.zeros(gt.shape[0], dtype=torch.bool)
    tp = 0
    for row in iou:  # detections come sorted by score
        row = row.masked_fill(taken, -1)
        best = int(row.argmax())
        if row[best] >= iou_thr:
            taken[best] = True
            tp += 1
    return tp, int(pred.shape[0]) - tp, int(gt.shape[0]) - tp


@torch.no_grad()
def evaluate_dataset(model: MultiTaskModel, index: int, dataset: SAMRSDataset, preprocess: MultiTaskDataPreprocessor,
                     device: torch.device) -> dict[str, Any]:
    """Every metric of dataset ``index`` of the model on ``dataset`` (a validation pipeline), one image at a time."""
    was_training = model.training
    model.eval()
    spec = model.datasets[index]
    metrics: dict[str, Any] = {}
    classes = (("background",) if model.background else ()) + tuple(dataset.classes)
    pixels = PixelMetrics(len(classes), class_names=classes) if "ss" in model.tasks else None
    detections: list[dict[str, Any]] = []
    counts = np.zeros(3, np.int64)
    cat_ids = {label: cat for cat, label in dataset.cat2label.items()}
    image_ids = []
    for i in range(len(dataset)):
        sample = dataset[i]
        batch = preprocess([sample], device, training=False)
        feats = list(model.encoder(batch.inputs))
        image_ids.append(sample["meta"]["img_id"])
        if pixels is not None:
            logits = model.decoder("ss").predict([feats], [batch], [model.dataset_heads("ss", index)])[0][0]
            pixels.update(logits.argmax(0).cpu(), sample["sem_seg"].long())
        if "is" in model.tasks:
            result = model.decoder("is").predict([feats], [batch], [model.dataset_heads("is", index)])[0][0]
            detections += coco_detections(result, sample["meta"]["img_id"], cat_ids)
            counts += mask_matches(result, sample["masks"].bool())
    if pixels is not None:
        ss = pixels.compute()
        metrics.update(mIoU=ss["mIoU"], IoU=dict(zip(classes, [float(v) for v in ss["per_class"]["IoU"]])))
    if "is" in model.tasks:
        metrics.update(coco_ap(dataset.ann_file, detections, image_ids))
        tp, fp, fn = (int(v) for v in counts)
        precision, recall = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
        metrics.update(mask_tp=tp, mask_fp=fp, mask_fn=fn, mask_f1=2 * precision * recall / max(precision + recall,
                                                                                                  1e-12))
    metrics["dataset"] = spec.name
    model.train(was_training)
    return metrics
