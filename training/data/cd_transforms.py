"""Open-CD 1.1.0's two-date pipeline (``MultiImg*``) in numpy, as MTP's change-detection configs use it.

The results dict holds ``img`` as a list of two ``(H, W, 3)`` uint8 RGB images (date A, date B) and one
``gt_seg_map``; every geometric step moves both images and the label together. Randomness comes from the Generator
handed to each call, drawn in Open-CD's order (see :mod:`.transforms` for the conventions shared with the
segmentation pipeline). Rotation by an arbitrary angle is mmcv's ``imrotate`` (about the image centre
``((w-1)/2, (h-1)/2)``, positive = clockwise, output the same size, border ``pad_val``/``seg_pad_val``) computed in
float32: cv2's ``warpAffine`` samples on a 1/32-pixel fixed-point grid, so a pixel may differ by a grey level.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .transforms import (
    IGNORE_INDEX,
    PhotoMetricDistortion,
    RandomCrop,
    Results,
    Transform,
    _pair,
    read_label,
    read_rgb,
    rescale_size,
    resize_image,
    resize_label,
)


class MultiImgLoadImageFromFile(Transform):
    """Read both dates (``results['img_path']``, two paths) with GDAL as RGB uint8; they must have one size."""

    def __call__(self, results: Results, rng: Optional[np.random.Generator]) -> Results:
        paths = results["img_path"]
        if len(paths) != 2:
            raise ValueError(f"a change-detection sample has two images (date A, date B), got {list(paths)}")
        imgs = [read_rgb(path, results.get("nodata"), results.get("scaler"))[0] for path in paths]
        if imgs[0].shape != imgs[1].shape:
            raise ValueError(f"{paths[0]} is {imgs[0].shape[1]}x{imgs[0].shape[0]} px but {paths[1]} is "
                             f"{imgs[1].shape[1]}x{imgs[1].shape[0]}: the two dates of a sample must share one grid")
        results.update(img=imgs, ori_shape=imgs[0].shape[:2], img_shape=imgs[0].shape[:2])
        return results


class MultiImgLoadAnnotations(Transform):
    """The change label: read as grey values, then the dataset's ``format_seg_map='to_binary'`` (< 128 -> 0,
    >= 128 -> 1, so 255 means *changed*, as LEVIR-CD and WHU-CD store it); ``reduce_zero_label`` as MMSeg.

    Loaded after a ``MultiImgResize`` (MTP's OSCD pipeline) the label keeps its original size, as in Open-CD: the
    loss then compares logits resized to it."""

    def __init__(self, reduce_zero_label: Optional[bool] = None) -> None:
        self.reduce_zero_label = reduce_zero_label

    def __call__(self, results: Results, rng: Optional[np.random.Generator]) -> Results:
        path = results.get("seg_map_path")
        if path is None:
            raise ValueError(f"no label for {results.get('img_path')}: drop MultiImgLoadAnnotations from the pipeline "
                             "for unlabelled pairs")
        label = read_label(path)
        reduce = results.get("reduce_zero_label", False) if self.reduce_zero_label is None else self.reduce_zero_label
        if reduce:
            label[label == 0] = 255
            label = label - 1
            label[label == 254] = 255
        fmt = results.get("format_seg_map")
        if fmt == "to_binary":
            label = (label >= 128).astype(np.uint8)
        elif fmt is not None:
            raise ValueError(f"format_seg_map {fmt!r} is not supported: use 'to_binary' or None")
        num_classes = results.get("num_classes")
        if num_classes is not None:
            counts = np.bincount(label.ravel(), minlength=256)
            bad = [int(v) for v in np.flatnonzero(counts) if v >= num_classes and v != IGNORE_INDEX]
            if bad:
                raise ValueError(f"label {path} has values {bad}; expected 0..{num_classes - 1} or {IGNORE_INDEX} "
                                 "(set format_seg_map='to_binary' for 0/255 masks)")
        results["gt_seg_map"] = label
        results["reduce_zero_label"] = bool(reduce)
        return results


def _rotate(array: np.ndarray, angle: float, border: float, nearest: bool) -> np.ndarray:
    """mmcv ``imrotate(array, angle)`` without auto_bound: clockwise by ``angle`` degrees about the centre."""
    h, w = array.shape[:2]
    cx, cy = (w - 1) * 0.5, (h - 1) * 0.5
    a = math.radians(-angle)  # cv2.getRotationMatrix2D(center, -angle, 1): forward map src -> dst
    cos, sin = math.cos(a), math.sin(a)
    tx, ty = (1 - cos) * cx - sin * cy, sin * cx + (1 - cos) * cy
    xs, ys = np.arange(w, dtype=np.float64) - tx, np.arange(h, dtype=np.float64)[:, None] - ty
    src_x = cos * xs - sin * ys  # warpAffine samples each output pixel through the inverse map
    src_y = sin * xs + cos * ys
    flat = array.reshape(h * w, -1)

    def tap(ix: np.ndarray, iy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
        return flat[np.clip(iy, 0, h - 1) * w + np.clip(ix, 0, w - 1)], inside[..., None]

    if nearest:
        values, inside = tap(np.floor(src_x + 0.5).astype(np.int64), np.floor(src_y + 0.5).astype(np.int64))
        return np.where(inside, values, np.asarray(border, array.dtype)).reshape(array.shape)
    x0, y0 = np.floor(src_x).astype(np.int64), np.floor(src_y).astype(np.int64)
    fx, fy = (src_x - x0).astype(np.float32)[..., None], (src_y - y0).astype(np.float32)[..., None]
    acc = np.zeros((h, w, flat.shape[1]), np.float32)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            values, inside = tap(x0 + dx, y0 + dy)
            acc += wx * wy * np.where(inside, values, np.float32(border))
    return np.clip(np.rint(acc), 0, 255).astype(array.dtype).reshape(array.shape)


class MultiImgRandomRotFlip(Transform):
    """Open-CD's ``MultiImgRandomRotFlip``: with ``rotate_prob`` a rotation by U(``degree``) degrees; otherwise with
    ``flip_prob`` a quarter-turn rotation (k ~ {0..3}) then a flip along a random axis. Both dates and the label move
    together; the rotation's corners are ``pad_val`` in the images and ``seg_pad_val`` (ignored) in the label."""

    random = True

    def __init__(self, rotate_prob: float = 0.5, flip_prob: float = 0.5,
                 degree: Union[float, Sequence[float]] = (-20, 20), pad_val: float = 0,
                 seg_pad_val: int = IGNORE_INDEX) -> None:
        if not (0 <= rotate_prob <= 1 and 0 <= flip_prob <= 1):
            raise ValueError(f"rotate_prob and flip_prob must be in [0, 1], got {rotate_prob} and {flip_prob}")
        if isinstance(degree, (int, float)):
            if degree <= 0:
                raise ValueError(f"degree {degree} should be positive")
            degree = (-degree, degree)
        if len(degree) != 2:
            raise ValueError(f"degree {degree} should be a (min, max) pair")
        self.rotate_prob, self.flip_prob = float(rotate_prob), float(flip_prob)
        self.degree = (float(min(degree)), float(max(degree)))
        self.pad_val, self.seg_pad_val = pad_val, seg_pad_val

    def __call__(self, results: Results, rng: Optional[np.random.Generator]) -> Results:
        rotated = False
        if rng.random() < self.rotate_prob:
            angle = rng.uniform(*self.degree)
            results["img"] = [_rotate(img, angle, self.pad_val, nearest=False) for img in results["img"]]
            if results.get("gt_seg_map") is not None:
                results["gt_seg_map"] = _rotate(results["gt_seg_map"], angle, self.seg_pad_val, nearest=True)
            rotated = True
        if rng.random() < self.flip_prob and not rotated:  # drawn even after a rotation, as the original
            k, axis = int(rng.integers(0, 4)), int(rng.integers(0, 2))

            def turn(a: np.ndarray) -> np.ndarray:
                return np.ascontiguousarray(np.flip(np.rot90(a, k), axis=axis))

            results["img"] = [turn(img) for img in results["img"]]
            if results.get("gt_seg_map") is not None:
                results["gt_seg_map"] = turn(results["gt_seg_map"])
        results["img_shape"] = results["img"][0].shape[:2]
        return results


class MultiImgRandomCrop(RandomCrop):
    """:class:`RandomCrop` (with ``cat_max_ratio``) on both dates and the label, the window drawn on date A."""

    def __call__(self, results: Results, rng: Optional[np.random.Generator]) -> Results:
        y1, y2, x1, x2 = self.choose_bbox(results["img"][0].shape, results.get("gt_seg_map"), rng)
        results["img"] = [img[y1:y2, x1:x2] for img in results["img"]]
        if results.get("gt_seg_map") is not None:
            results["gt_seg_map"] = results["gt_seg_map"][y1:y2, x1:x2]
        results["img_shape"] = results["img"][0].shape[:2]
        return results


class MultiImgExchangeTime(Transform):
    """Swap the dates with probability ``prob`` (the label of ``|A - B|`` change stays the same)."""

    random = True

    def __init__(self, prob: float = 0.5) -> None:
        if not 0 <= prob <= 1:
            raise ValueError(f"MultiImgExchangeTime.prob must be in [0, 1], got {prob}")
        self.prob = float(prob)

    def __call__(self, results: Results, rng: Optional[np.random.Generator]) -> Results:
        if rng.random() < self.prob:
            results["img"] = results["img"][::-1]
            results["exchanged"] = True
        return results


class MultiImgPhotoMetricDistortion(PhotoMetricDistortion):
    """:class:`PhotoMetricDistortion` on each date independently (date A's draws first). With
    ``consistent_contrast_mode`` one contrast position is drawn for both, with Open-CD's quirk kept: a drawn 0
    ("contrast last") is falsy, so each image then draws its own."""

    def __init__(self, brightness_delta: int = 32, contrast_range: Sequence[float] = (0.5, 1.5),
                 saturation_range: Sequence[float] = (0.5, 1.5), hue_delta: int = 18,
                 consistent_contrast_mode: bool = False) -> None:
        super().__init__(brightness_delta, contrast_range, saturation_range, hue_delta)
        self.consistent_contrast_mode = bool(consistent_contrast_mode)

    def __call__(self, results: Results, rng: Optional[np.random.Generator]) -> Results:
        mode = int(rng.integers(2)) if self.consistent_contrast_mode else None
        results["img"] = [self.distort(img, rng, mode or None) for img in results["img"]]
        return results


class MultiImgResize(Transform):
    """``MultiImgResize(scale, keep_ratio)``: both dates bilinear, the label (if loaded) nearest, as :class:`Resize`
    (OSCD: its 96 px patches to 224)."""

    def __init__(self, scale: Union[int, Sequence[int]], keep_ratio: bool = False) -> None:
        self.scale = _pair(scale, "MultiImgResize.scale")
        self.keep_ratio = bool(keep_ratio)

    def __call__(self, results: Results, rng: Optional[np.random.Generator]) -> Results:
        h, w = results["img"][0].shape[:2]
        new_w, new_h = rescale_size((w, h), self.scale) if self.keep_ratio else self.scale
        results["img"] = [resize_image(img, (new_w, new_h)) for img in results["img"]]
        if results.get("gt_seg_map") is not None:
            results["gt_seg_map"] = resize_label(results["gt_seg_map"], (new_w, new_h))
        results.update(img_shape=(new_h, new_w), scale=self.scale, scale_factor=(new_w / w, new_h / h),
                       keep_ratio=self.keep_ratio)
        return results


class MultiImgPackSegInputs(Transform):
    """Final step: ``{"img": uint8 (6, H, W) (date A's R, G, B then date B's), "gt": uint8 (H, W) or None,
    "meta": {...}}``; ``meta['path']`` is date A's path, ``meta['paths']`` both."""

    def __call__(self, results: Results, rng: Optional[np.random.Generator]) -> dict:
        img = np.concatenate([np.ascontiguousarray(i.transpose(2, 0, 1)) for i in results["img"]], axis=0)
        label = results.get("gt_seg_map")
        paths = [str(p) for p in results["img_path"]]
        meta = {
            "path": paths[0],
            "paths": paths,
            "seg_map_path": results.get("seg_map_path"),
            "sample_idx": results.get("sample_idx"),
            "ori_shape": tuple(results["ori_shape"]),
            "img_shape": tuple(results["img"][0].shape[:2]),
            "scale_factor": results.get("scale_factor", (1.0, 1.0)),
            "flip": False,
            "flip_direction": None,
        }
        return {"img": torch.from_numpy(img), "gt": torch.from_numpy(np.ascontiguousarray(label))
                if label is not None else None, "meta": meta}


CD_TRANSFORMS: dict[str, type[Transform]] = {
    cls.__name__: cls
    for cls in (MultiImgLoadImageFromFile, MultiImgLoadAnnotations, MultiImgRandomRotFlip, MultiImgRandomCrop,
                MultiImgExchangeTime, MultiImgPhotoMetricDistortion, MultiImgResize, MultiImgPackSegInputs)
}
