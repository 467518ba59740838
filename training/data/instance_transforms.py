"""MTP's multi-task data pipeline (``Multi-Task_Pretrain/augmentations.py``) for images with instances and a
semantic label, in numpy: SAMRS annotations, flip, random resize, random crop, the instance filter, packing.

Each step works on one ``results`` dict and moves boxes, bitmap masks and the semantic label with the image, as the
original ``MTP_*`` transforms do through mmdet's ``HorizontalBoxes``/``BitmapMasks`` (``mtp_multitask_spec.md``
§2.4, §2.8). Keys: ``img`` (H, W, 3) uint8 RGB, ``gt_bboxes`` (n, 4) float32 ``x1, y1, x2, y2``,
``gt_bboxes_labels`` (n,) int64, ``gt_masks`` (n, H, W) uint8, ``gt_ignore_flags`` (n,) bool (COCO crowd),
``gt_seg_map`` (H, W) uint8. Randomness comes from the per-sample generator (see :mod:`training.data.transforms`),
drawn in the original's order. Rotated boxes (``ROD_ConvertBoxType``, the RD task) come with the rotated decoder.

Differences from the original, all deliberate: images stay uint8 (the original loads float32 and its photometric
step truncates to uint8 only on the branches that touch the image), resizing is the project's numpy bilinear (a grey
level from cv2's fixed point at most), and ``PhotoMetricDistortion`` is MMSeg's on uint8 throughout.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from .transforms import (
    Compose,
    LoadImageFromFile,
    PhotoMetricDistortion,
    RandomFlip,
    Results,
    Transform,
    _pair,
    read_label,
    rescale_size,
    resize_image,
    resize_label,
)

IGNORE_INDEX = 255


# ----------------------------------------------------------------------------------------------------------------
# Box and mask primitives (mmdet's HorizontalBoxes / BitmapMasks)
# ----------------------------------------------------------------------------------------------------------------

def flip_boxes(boxes: np.ndarray, shape: tuple[int, int], direction: str) -> np.ndarray:
    """``HorizontalBoxes.flip_``: x1' = w - x2, x2' = w - x1 (and/or the same for y)."""
    h, w = shape
    out = boxes.copy()
    if direction in ("horizontal", "diagonal"):
        out[:, 0], out[:, 2] = w - boxes[:, 2], w - boxes[:, 0]
    if direction in ("vertical", "diagonal"):
        out[:, 1], out[:, 3] = h - boxes[:, 3], h - boxes[:, 1]
    return out


def clip_boxes(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``HorizontalBoxes.clip_``: x into [0, w], y into [0, h]."""
    h, w = shape
    out = boxes.copy()
    out[:, 0::2] = out[:, 0::2].clip(0, w)
    out[:, 1::2] = out[:, 1::2].clip(0, h)
    return out


def boxes_inside(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``HorizontalBoxes.is_inside``: the box overlaps the image (after clipping: has some area inside)."""
    h, w = shape
    return (boxes[:, 0] < w) & (boxes[:, 1] < h) & (boxes[:, 2] > 0) & (boxes[:, 3] > 0)


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """``BitmapMasks.get_bboxes``: the tight box of each mask (pixel edges), zeros for an empty mask."""
    boxes = np.zeros((masks.shape[0], 4), np.float32)
    for i, mask in enumerate(masks):
        xs = np.flatnonzero(mask.any(axis=0))
        ys = np.flatnonzero(mask.any(axis=1))
        if len(xs) and len(ys):
            boxes[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return boxes


def resize_masks(masks: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """cv2 ``INTER_NEAREST`` resize of every (H, W) mask of an (n, H, W) stack (``BitmapMasks.rescale``)."""
    if masks.shape[0] == 0:
        return np.zeros((0, size_wh[1], size_wh[0]), np.uint8)
    return np.stack([resize_label(m, size_wh) for m in masks])


def flip_array(array: np.ndarray, direction: str, axis_h: int = 0) -> np.ndarray:
    """Flip an image-like array whose height is axis ``axis_h`` (and width the next one)."""
    axes = {"horizontal": (axis_h + 1,), "vertical": (axis_h,), "diagonal": (axis_h, axis_h + 1)}[direction]
    return np.ascontiguousarray(np.flip(array, axes))


# ----------------------------------------------------------------------------------------------------------------
# Annotations
# ----------------------------------------------------------------------------------------------------------------

def decode_mask(segmentation: Any, height: int, width: int) -> Optional[np.ndarray]:
    """A COCO ``segmentation`` (compressed or uncompressed RLE, or polygons) as an (H, W) uint8 bitmap; None when it
    is invalid (MTP then ignores the instance, as mmdet's ``_process_masks``)."""
    import pycocotools.mask as mask_utils  # training-only dependency

    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) % 2 == 0 and len(p) >= 6]
        if not polygons:
            return None
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, Mapping) and segmentation.get("counts") is not None and segmentation.get("size"):
        if isinstance(segmentation["counts"], list):
            rle = mask_utils.frPyObjects(dict(segmentation), height, width)
        elif isinstance(segmentation["counts"], (str, bytes)):
            rle = dict(segmentation)
        else:
            return None
    else:
        return None
    mask = mask_utils.decode(rle)
    if mask.shape != (height, width):
        raise ValueError(f"an instance mask is {mask.shape[0]}x{mask.shape[1]} but its image {height}x{width}: the "
                         "RLE 'size' must be the image's [height, width]")
    return mask.astype(np.uint8)


def shift_semantic_label(label: np.ndarray) -> np.ndarray:
    """MTP's ``--background True`` reading of a SAMRS gray PNG: ``label + 1`` in uint8, so the background 255 wraps to
    0 and class i becomes i + 1 (its ``== 256`` check after the addition never fires; spec §2.4, §7.4)."""
    return (label.astype(np.uint8) + np.uint8(1)).astype(np.uint8)


class LoadInstanceAnnotations(Transform):
    """``MTP_LoadAnnotations(with_bbox, with_mask, with_seg)``: boxes, labels and crowd flags of
    ``results['instances']``, their masks decoded at the image's ``ori_shape``, and the semantic label.

    ``background=True`` shifts the SAMRS label by one (:func:`shift_semantic_label`); ``False`` keeps SAMRS's ids
    (0..C-1, 255 ignored), which is what a model with C semantic classes needs (the original shifts regardless).
    """

    def __init__(self, with_bbox: bool = True, with_mask: bool = True, with_seg: bool = True,
                 background: Optional[bool] = None) -> None:
        self.with_bbox, self.with_mask, self.with_seg = with_bbox, with_mask, with_seg
        self.background = background

    def __call__(self, results: Results, rng: Optional[np.random.Generator]) -> Results:
        instances = results.get("instances", [])
        if self.with_bbox:
            results["gt_bboxes"] = np.array([i["bbox"] for i in instances], np.float32).reshape(-1, 4)
            results["gt_bboxes_labels"] = np.array([i["bbox_label"] for i in instances], np.int64)
            results["gt_ignore_flags"] = np.array([bool(i.get("ignore_flag", 0)) for i in instances], bool)
        if self.with_mask:
            h, w = results["ori_shape"]
            masks = []
            for k, instance in enumerate(instances):
                mask = decode_mask(instance.get("mask"), h, w)
                if mask is None:
                    results["gt_ignore_flags"][k] = True
                    mask = np.zeros((h, w), np.uint8)
                masks.append(mask)
            results["gt_masks"] = np.stack(masks) if masks else np.zeros((0, h, w), np.uint8)
        if self.with_seg and results.get("seg_map_path"):
            label = read_label(results["seg_map_path"])
            if label.shape != tuple(results["ori_shape"]):
                raise ValueError(f"semantic label {results['seg_map_path']} is {label.shape[0]}x{label.shape[1]}, its "
                                 f"image {results['ori_shape'][0]}x{results['ori_shape'][1]}")
            background = results.get("background", True) if self.background is None else self.background
            results["gt_seg_map"] = shift_semantic_label(label) if background else label
        return results


# ----------------------------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------------------------

class InstanceRandomFlip(RandomFlip):
    """``MTP_RandomFlip``: MMCV's direction draw (``prob`` split over ``direction``; MTP: 0.75 over horizontal,
    vertical and diagonal), applied to the image, boxes, masks and semantic label."""

    def __call__(self, results: Results, rng: Optional[np.random.Generator]) -> Results:
        shape = results["img"].shape[:2]
        results = super().__call__(results, rng)
        direction = results["flip_direction"]
        if direction is not None:
            if results.get("gt_bboxes") is not None:
                results["gt_bboxes"] = flip_boxes(results["gt_bboxes"], shape, direction)
            if results.get("gt_masks") is not None:
                results["gt_masks"] = flip_array(results["gt_masks"], direction, axis_h=1)
        return results


class InstanceResize(Transform):
    """``MTP_Resize(scale, keep_ratio)``: image bilinear; boxes scaled by ``scale_factor`` then clipped; masks and the
    semantic label nearest (cv2's rule), all to the same size (with ``keep_ratio`` the largest within ``scale``)."""

    def __init__(self, scale: Union[int, Sequence[int]], keep_ratio: bool = True) -> None:
        self.scale = _pair(scale, "Resize.scale")
        self.keep_ratio = bool(keep_ratio)

    def resize_to(self, results: Results, scale: tuple[int, int]) -> Results:
        h, w = results["img"].shape[:2]
        new_w, new_h = rescale_size((w, h), scale) if self.keep_ratio else scale
        results["img"] = resize_image(results["img"], (new_w, new_h))
        factor = (new_w / w, new_h / h)
        if results.get("gt_bboxes") is not None:
            boxes = results["gt_bboxes"] * np.array([factor[0], factor[1]] * 2, np.float32)
            results["gt_bboxes"] = clip_boxes(boxes, (new_h, new_w))
        if results.get("gt_masks") is not None:
            results["gt_masks"] = resize_masks(results["gt_masks"], (new_w, new_h))
        if results.get("gt_seg_map") is not None:
            results["gt_seg_map"] = resize_label(results["gt_seg_map"], (new_w, new_h))
        results.update(img_shape=(new_h, new_w), scale=scale, scale_factor=factor, keep_ratio=self.keep_ratio)
        return results

    def __call__(self, results: Results, rng: Optional[np.random.Generator]) -> Results:
        return self.resize_to(results, self.scale)


class InstanceRandomResize(Transform):
    """``MTP_RandomResize(scale, ratio_range)``: ratio ~ U[lo, hi), target ``int(scale * ratio)``, then
    :class:`InstanceResize` (MTP: ``keep_ratio=True``, so a square S tile becomes S·r × S·r)."""

    random = True

    def __init__(self, scale: Union[int, Sequence[int]], ratio_range: Sequence[float], keep_ratio: bool = True) -> None:
        self.scale = _pair(scale, "RandomResize.scale")
        if ratio_range is None or len(ratio_range) != 2 or not ratio_range[0] <= ratio_range[1]:
            raise ValueError(f"RandomResize.ratio_range must be (min, max) with min <= max, got {ratio_range!r}")
        self.ratio_range = (float(ratio_range[0]), float(ratio_range[1]))
        self.resize = InstanceResize(self.scale, keep_ratio)

    def __call__(self, results: Results, rng: Optional[np.random.Generator]) -> Results:
        lo, hi = self.ratio_range
        ratio = rng.random() * (hi - lo) + lo
        return self.resize.resize_to(results, (int(self.scale[0] * ratio), int(self.scale[1] * ratio)))


class InstanceRandomCrop(Transform):
    """``MTP_RandomCrop(crop_size, crop_type='absolute', allow_negative_crop, recompute_bbox)``.

    A window of ``min(crop, side)`` per side at a uniform offset (height first, as the original draws); boxes are
    shifted and clipped, and kept where some of their area is inside; kept masks are cropped and, with
    ``recompute_bbox``, give the boxes back as their tight boxes. Without ``allow_negative_crop`` a window without any
    box returns None (the dataset draws another image).
    """

    random = True

    def __init__(self, crop_size: Union[int, Sequence[int]], allow_negative_crop: bool = False,
                 recompute_bbox: bool = False, bbox_clip_border: bool = True) -> None:
        self.crop_size = _pair(crop_size, "RandomCrop.crop_size")
        if min(self.crop_size) <= 0:
            raise ValueError(f"RandomCrop.crop_size must be positive, got {crop_size!r}")
        self.allow_negative_crop = bool(allow_negative_crop)
        self.recompute_bbox = bool(recompute_bbox)
        self.bbox_clip_border = bool(bbox_clip_border)

    def __call__(self, results: Results, rng: Optional[np.random.Generator]) -> Optional[Results]:
        img = results["img"]
        h, w = img.shape[:2]
        crop_h, crop_w = min(self.crop_size[0], h), min(self.crop_size[1], w)
        y1 = int(rng.integers(0, max(h - crop_h, 0) + 1))
        x1 = int(rng.integers(0, max(w - crop_w, 0) + 1))
        y2, x2 = y1 + crop_h, x1 + crop_w
        results["img"] = img[y1:y2, x1:x2]
        shape = results["img"].shape[:2]
        results["img_shape"] = shape
        if results.get("gt_bboxes") is not None:
            boxes = results["gt_bboxes"] - np.array([x1, y1, x1, y1], np.float32)
            if self.bbox_clip_border:
                boxes = clip_boxes(boxes, shape)
            valid = boxes_inside(boxes, shape)
            if not valid.any() and not self.allow_negative_crop:
                return None
            results["gt_bboxes"] = boxes[valid]
            for key in ("gt_ignore_flags", "gt_bboxes_labels"):
                if results.get(key) is not None:
                    results[key] = results[key][valid]
            if results.get("gt_masks") is not None:
                results["gt_masks"] = np.ascontiguousarray(results["gt_masks"][valid][:, y1:y2, x1:x2])
                if self.recompute_bbox:
                    results["gt_bboxes"] = masks_to_boxes(results["gt_masks"])
        if results.get("gt_seg_map") is not None:
            results["gt_seg_map"] = results["gt_seg_map"][y1:y2, x1:x2]
        return results


class FilterInstances(Transform):
    """``INS_FilterAnnotations(min_gt_bbox_wh, min_gt_mask_area, by_box, by_mask, keep_empty)``: drop instances whose
    box is not wider/taller than ``min_gt_bbox_wh`` or whose mask has fewer than ``min_gt_mask_area`` pixels. An image
    whose instances all go returns None (the dataset draws another image); one that had none is kept."""

    def __init__(self, min_gt_bbox_wh: Sequence[float] = (1.0, 1.0), min_gt_mask_area: int = 1, by_box: bool = True,
                 by_mask: bool = False, keep_empty: bool = True) -> None:
        if not (by_box or by_mask):
            raise ValueError("FilterAnnotations needs by_box or by_mask")
        self.min_gt_bbox_wh = (float(min_gt_bbox_wh[0]), float(min_gt_bbox_wh[1]))
        self.min_gt_mask_area = int(min_gt_mask_area)
        self.by_box, self.by_mask, self.keep_empty = bool(by_box), bool(by_mask), bool(keep_empty)

    def __call__(self, results: Results, rng: Optional[np.random.Generator]) -> Optional[Results]:
        boxes = results["gt_bboxes"]
        if boxes.shape[0] == 0:
            return results
        keep = np.ones(boxes.shape[0], bool)
        if self.by_box:
            keep &= ((boxes[:, 2] - boxes[:, 0]) > self.min_gt_bbox_wh[0]) & \
                    ((boxes[:, 3] - boxes[:, 1]) > self.min_gt_bbox_wh[1])
        if self.by_mask:
            keep &= results["gt_masks"].reshape(boxes.shape[0], -1).sum(axis=1) >= self.min_gt_mask_area
        if not keep.any() and self.keep_empty:
            return None
        for key in ("gt_bboxes", "gt_bboxes_labels", "gt_masks", "gt_ignore_flags"):
            if results.get(key) is not None:
                results[key] = results[key][keep]
        return results


class PackInstanceInputs(Transform):
    """``MTP_PackInputs``: ``{"img": uint8 (3, H, W), "bboxes", "labels", "masks", "sem_seg", "meta"}`` as tensors;
    crowd instances (``ignored_instances`` in the original, which no MTP assigner reads) are left out."""

    def __call__(self, results: Results, rng: Optional[np.random.Generator]) -> dict:
        img = torch.from_numpy(np.ascontiguousarray(results["img"].transpose(2, 0, 1)))
        h, w = results["img"].shape[:2]
        boxes = results.get("gt_bboxes", np.zeros((0, 4), np.float32))
        keep = ~results.get("gt_ignore_flags", np.zeros(boxes.shape[0], bool))
        masks = results.get("gt_masks")
        seg = results.get("gt_seg_map")
        meta = {
            "path": str(results["img_path"]),
            "img_id": results.get("img_id"),
            "sample_idx": results.get("sample_idx"),
            "ori_shape": tuple(results["ori_shape"]),
            "img_shape": (h, w),
            "scale_factor": tuple(results.get("scale_factor", (1.0, 1.0))),
            "flip": bool(results.get("flip", False)),
            "flip_direction": results.get("flip_direction"),
        }
        return {
            "img": img,
            "bboxes": torch.from_numpy(np.ascontiguousarray(boxes[keep], np.float32)),
            "labels": torch.from_numpy(np.ascontiguousarray(results.get("gt_bboxes_labels",
                                                                        np.zeros(0, np.int64))[keep])),
            "masks": None if masks is None else torch.from_numpy(np.ascontiguousarray(masks[keep])),
            "sem_seg": None if seg is None else torch.from_numpy(np.ascontiguousarray(seg)),
            "meta": meta,
        }


class InstanceCompose(Compose):
    """A pipeline that stops at a step returning None (mmengine's ``Compose``): the image is to be redrawn."""

    def __call__(self, results: Results, rng: Optional[np.random.Generator]) -> Any:
        if rng is None and self.random:
            names = [type(t).__name__ for t in self.transforms if t.random]
            raise ValueError(f"this pipeline has random steps ({', '.join(names)}): index the dataset with "
                             "(index, seed_key) so augmentation is reproducible")
        for transform in self.transforms:
            results = transform(results, rng)
            if results is None:
                return None
        return results


INSTANCE_TRANSFORMS: dict[str, type[Transform]] = {
    "MTP_LoadImageFromFile": LoadImageFromFile,
    "MTP_LoadAnnotations": LoadInstanceAnnotations,
    "MTP_RandomFlip": InstanceRandomFlip,
    "MTP_Resize": InstanceResize,
    "MTP_RandomResize": InstanceRandomResize,
    "MTP_RandomCrop": InstanceRandomCrop,
    "INS_FilterAnnotations": FilterInstances,
    "MTP_PhotoMetricDistortion": PhotoMetricDistortion,
    "MTP_PackInputs": PackInstanceInputs,
}


def mtp_pipelines(image_size: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """MTP's ``set_configs(size)``: the training and validation pipelines (the rotated-box steps left out).

    Validation loads the annotations after the resize, so its ground truth stays at the original size.
    """
    crop = (image_size, image_size)
    train = [
        dict(type="MTP_LoadImageFromFile"),
        dict(type="MTP_LoadAnnotations", with_bbox=True, with_mask=True, with_seg=True),
        dict(type="MTP_RandomFlip", prob=0.75, direction=["horizontal", "vertical", "diagonal"]),
        dict(type="MTP_RandomResize", scale=crop, ratio_range=(0.5, 2.0), keep_ratio=True),
        dict(type="MTP_RandomCrop", crop_size=crop, recompute_bbox=True, allow_negative_crop=True),
        dict(type="INS_FilterAnnotations", min_gt_bbox_wh=(1e-5, 1e-5), by_mask=True),
        dict(type="MTP_PhotoMetricDistortion"),
        dict(type="MTP_PackInputs"),
    ]
    valid = [
        dict(type="MTP_LoadImageFromFile"),
        dict(type="MTP_Resize", scale=crop, keep_ratio=True),
        dict(type="MTP_LoadAnnotations", with_bbox=True, with_mask=True, with_seg=True),
        dict(type="MTP_PackInputs"),
    ]
    return train, valid
