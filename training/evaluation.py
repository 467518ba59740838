"""Validation/test over a dataset: MMSeg's inference (whole or slide) and IoUMetric, reduced across ranks."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from mtp_core.metrics import PixelMetrics
from mtp_core.models import EncoderDecoder
from training.dist import DistInfo

SampleCallback = Callable[[Mapping[str, Any], Tensor, Tensor], None]


def predict_logits(
    model: EncoderDecoder, img: Tensor, ori_shape: tuple[int, int], mode: str, crop: tuple[int, int],
    stride: tuple[int, int], batch_size: int = 1,
) -> Tensor:
    """Logits at the original image size, as MMSeg's ``predict``: inference, then bilinear resize to ``ori_shape``."""
    logits = model.predict(img, mode=mode, crop_size=crop, stride=stride, batch_size=batch_size)  # type: ignore[arg-type]
    if tuple(logits.shape[-2:]) != tuple(ori_shape):
        logits = F.interpolate(logits, size=tuple(ori_shape), mode="bilinear", align_corners=False)
    return logits


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
) -> dict[str, Any]:
    """aAcc/mIoU/mAcc/mDice/mFscore over this rank's samples, summed across ranks (as MMSeg's IoUMetric)."""
    was_training = model.training
    model.eval()
    metrics = PixelMetrics(len(class_names), ignore_index=255, class_names=class_names)
    for batch in samples:
        for sample in batch:  # images differ in size: one at a time, windows batched
            img, _ = preprocess([sample], info.device)
            with torch.autocast(info.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = predict_logits(model, img, sample["meta"]["ori_shape"], mode, crop, stride, window_batch)
            pred = logits.float().argmax(1)[0]
            if sample.get("gt") is not None:
                metrics.update(pred.cpu(), sample["gt"].long())
            if on_sample is not None:
                on_sample(sample, logits[0].float().cpu(), pred.cpu())
    if info.distributed:
        metrics.reduce_()
    model.train(was_training)
    return metrics.compute()
