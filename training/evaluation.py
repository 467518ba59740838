"""Validation/test over a dataset: MMSeg's inference (whole or slide, optionally TTA) and IoUMetric, reduced across
ranks, plus SpaceNet's building polygon F1."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mtp_core.metrics import MatchResult, PixelMetrics, polygon_f1
from mtp_core.models import EncoderDecoder
from mtp_core.vectorize import vectorize_array
from training.dist import DistInfo, all_reduce_sum_
from training.tta import TtaView, predict_tta

SampleCallback = Callable[[Mapping[str, Any], Tensor], None]  # (packed sample, predicted class map)


def predict_logits(
    model: EncoderDecoder, img: Tensor, ori_shape: tuple[int, int], mode: str, crop: tuple[int, int],
    stride: tuple[int, int], batch_size: int = 1,
) -> Tensor:
    """Logits at the original image size, as MMSeg's ``predict``: inference, then bilinear resize to ``ori_shape``."""
    logits = model.predict(img, mode=mode, crop_size=crop, stride=stride, batch_size=batch_size)  # type: ignore[arg-type]
    if tuple(logits.shape[-2:]) != tuple(ori_shape):
        logits = F.interpolate(logits, size=tuple(ori_shape), mode="bilinear", align_corners=False)
    return logits


PIXEL_GRID = (0.0, 1.0, 0.0, 0.0, 0.0, 1.0)  # polygons in pixel units: SpaceNet's 20 px² area rule applies as is


def building_counts(pred: np.ndarray, gt: np.ndarray, probs: np.ndarray, building: int) -> tuple[int, int, int]:
    """SpaceNet polygon TP/FP/FN of one image: both masks vectorized, proposals in score order, IoU > 0.5."""
    proposals = vectorize_array((pred == building).astype(np.uint8), PIXEL_GRID, "", prob=probs[building],
                                min_area_m2=0.0, simplify_m=0.0)
    truth = vectorize_array((gt == building).astype(np.uint8), PIXEL_GRID, "", min_area_m2=0.0, simplify_m=0.0)
    result = polygon_f1(proposals.geometries, truth.geometries, confidences=proposals.attributes["score"])
    return result.tp, result.fp, result.fn


@torch.inference_mode()
def evaluate(
    model: EncoderDecoder,
    samples: Iterable[list[Mapping[str, Any]]],
    preprocess: Callable[[list, torch.device], tuple[Tensor, Tensor | None]],
    info: DistInfo,
    class_names: tuple[str, ...],
    mode: str,
    crop: tuple[int, int],
    stride: tuple[int, int],
    amp_dtype: torch.dtype | None = None,
    on_sample: SampleCallback | None = None,
    window_batch: int = 4,
    tta: Sequence[TtaView] = (),
) -> dict[str, Any]:
    """aAcc/mIoU/mAcc/mDice/mFscore summed across ranks (as MMSeg's IoUMetric), plus building polygon F1.

    The polygon F1 (``building_f1``/``_precision``/``_recall``) follows SpaceNet's rules on the vectorized prediction
    and label of each image, counts summed over the split; it is computed when a class is named ``building``. A change
    detector (a class named ``changed``) also gets ``changed_f1``/``_iou``/``_precision``/``_recall``: the per-class
    values of the pixel metric for that class, x100, which is what MTP reports as F1 for LEVIR-CD, WHU-CD, CDD, OSCD.
    With ``tta`` views the prediction is their mean probability (see ``training.tta``).
    """
    was_training = model.training
    model.eval()
    metrics = PixelMetrics(len(class_names), ignore_index=255, class_names=class_names)
    building = class_names.index("building") if "building" in class_names else None
    counts = torch.zeros(3, dtype=torch.float64)  # polygon TP, FP, FN
    for batch in samples:
        for sample in batch:  # images differ in size: one at a time, windows batched
            with torch.autocast(info.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                if tta:
                    probs = predict_tta(
                        sample["img"], lambda img: preprocess([{**sample, "img": img, "gt": None}], info.device)[0],
                        sample["meta"]["ori_shape"], tta,
                        lambda x: model.predict(x, mode=mode, crop_size=crop, stride=stride, batch_size=window_batch),
                        crop)
                else:
                    img, _ = preprocess([sample], info.device)
                    logits = predict_logits(model, img, sample["meta"]["ori_shape"], mode, crop, stride, window_batch)
                    probs = torch.softmax(logits.float(), 1)[0]
            pred = probs.argmax(0)
            if sample.get("gt") is not None:
                metrics.update(pred.cpu(), sample["gt"].long())
                if building is not None:
                    counts += torch.tensor(building_counts(pred.cpu().numpy(), sample["gt"].numpy(),
                                                           probs.cpu().numpy(), building), dtype=torch.float64)
            if on_sample is not None:
                on_sample(sample, pred.cpu())
    if info.distributed:
        metrics.reduce_()
        counts = all_reduce_sum_(counts.to(info.device), info).cpu()
    model.train(was_training)
    result = metrics.compute()
    if "changed" in class_names:
        per_class, i = metrics.per_class(), class_names.index("changed")
        for key, name in (("Fscore", "f1"), ("IoU", "iou"), ("Precision", "precision"), ("Recall", "recall")):
            result[f"changed_{name}"] = 100 * float(per_class[key][i])
    if building is not None:
        polygons = MatchResult.from_counts(*(int(c) for c in counts))
        result.update(building_tp=polygons.tp, building_fp=polygons.fp, building_fn=polygons.fn,
                      building_precision=100 * polygons.precision, building_recall=100 * polygons.recall,
                      building_f1=100 * polygons.f1)
    return result
