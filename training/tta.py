"""Test-time augmentation as MMSeg's ``--tta``: ``TestTimeAug`` views, ``SegTTAModel``'s mean of probabilities.

Each view rescales the image (``Resize(scale_factor=r, keep_ratio=True)``, mmcv's rounding) and maybe flips it; its
logits are flipped back, resized to the original size (bilinear), turned into probabilities, and the views' mean is
the prediction. A view smaller than the model's crop is padded to it (0 after normalisation, MMSeg's ``pad_val``)
and the padding cut from the logits: MTP's backbones take only their own crop size.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from training.data.transforms import rescale_size, resize_image

MMSEG_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # MMSeg's img_ratios of its dataset configs' tta_pipeline
_FLIP_DIMS = {"horizontal": (-1,), "vertical": (-2,), "diagonal": (-2, -1)}
_PASSIVE = {"LoadImageFromFile", "LoadAnnotations", "PackSegInputs"}  # done by the test pipeline already


@dataclass(frozen=True)
class TtaView:
    scale: float = 1.0
    flip: str | None = None  # 'horizontal', 'vertical' or 'diagonal'


def default_views() -> list[TtaView]:
    return [TtaView(r, f) for r in MMSEG_RATIOS for f in (None, "horizontal")]


def _view_options(transform: Mapping[str, Any]) -> dict[str, Any] | None:
    kind = transform.get("type")
    if kind in _PASSIVE:
        return None
    if kind == "Resize" and "scale_factor" in transform and transform.get("keep_ratio", False):
        return {"scale": float(transform["scale_factor"])}
    if kind == "RandomFlip" and float(transform.get("prob", 0)) in (0.0, 1.0):
        direction = transform.get("direction", "horizontal")
        if direction in _FLIP_DIMS:
            return {"flip": direction if float(transform["prob"]) == 1.0 else None}
    raise ValueError(f"tta_pipeline: {dict(transform)} is not supported; TestTimeAug takes Resize(scale_factor=r, "
                     "keep_ratio=True) and RandomFlip(prob=0. or 1., direction=...) lists")


def tta_views(tta_pipeline: Sequence[Mapping[str, Any]] | None) -> list[TtaView]:
    """The views of an MMSeg ``tta_pipeline`` (every combination of its ``TestTimeAug`` lists)."""
    if not tta_pipeline:
        return default_views()
    tta = [t for t in tta_pipeline if t.get("type") == "TestTimeAug"]
    if len(tta) != 1:
        raise ValueError("tta_pipeline needs exactly one TestTimeAug step, as MMSeg's dataset configs write it")
    choices = []
    for options in tta[0].get("transforms", []):
        parsed = [o for o in (_view_options(t) for t in options) if o is not None]
        if parsed:
            choices.append(parsed)
    return [TtaView(**{k: v for part in combo for k, v in part.items()}) for combo in itertools.product(*choices)]


def predict_tta(
    img: Tensor, normalize: Callable[[Tensor], Tensor], ori_shape: tuple[int, int], views: Sequence[TtaView],
    predict: Callable[[Tensor], Tensor], crop: tuple[int, int],
) -> Tensor:
    """Mean class probabilities ``(C, H, W)`` over ``views`` of a uint8 ``(3, H, W)`` image.

    ``normalize`` turns a uint8 ``(3, h, w)`` image into the model's ``(1, 3, h, w)`` input on its device;
    ``predict`` gives that input's logits (whole or slide inference).
    """
    hwc = img.permute(1, 2, 0).numpy()
    height, width = hwc.shape[:2]
    total: Tensor | None = None
    for view in views:
        target = (int(width * view.scale + 0.5), int(height * view.scale + 0.5))
        scaled = resize_image(hwc, rescale_size((width, height), target)) if view.scale != 1.0 else hwc
        x = normalize(torch.from_numpy(np.ascontiguousarray(scaled)).permute(2, 0, 1))
        if view.flip:
            x = x.flip(_FLIP_DIMS[view.flip])
        h, w = x.shape[-2:]
        padded = F.pad(x, (0, max(crop[1] - w, 0), 0, max(crop[0] - h, 0)))
        logits = predict(padded)[..., :h, :w].float()
        if view.flip:
            logits = logits.flip(_FLIP_DIMS[view.flip])
        logits = F.interpolate(logits, size=tuple(ori_shape), mode="bilinear", align_corners=False)
        probs = torch.softmax(logits, 1)[0]
        total = probs if total is None else total + probs
    assert total is not None, "no TTA views"
    return total / len(views)
