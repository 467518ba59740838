"""SAMRS datasets (SOTA, SIOR, FAST, or any set in their layout) for multi-task pretraining.

A SAMRS subset is an image folder, a folder of semantic gray PNGs (class ids, 255 = background) with the images'
stems, and a COCO instance json whose masks are compressed RLE (``mtp_multitask_spec.md`` §4). Reading follows MTP's
``MultiTaskCocoDataset.parse_data_info``: images in the json's order; labels from the json's categories whose names
are the dataset's classes, in the json's order; annotations marked ``ignore``, outside the image, without area or
narrower/lower than one pixel, or of another category are dropped; ``iscrowd`` ones are ignored.

``dataset[(index, seed_key)]`` runs the training pipeline with ``numpy.random.default_rng(seed_key)``; when it
returns None (every instance filtered away) another image is drawn from the same generator, as MTP's ``data_augs``
redraws with ``np.random.randint``. ``dataset[index]`` runs a pipeline without random steps (validation).
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
from torch.utils.data import Dataset

from mtp_core.models.multitask.samrs import SAMRS_CLASSES

from .instance_transforms import INSTANCE_TRANSFORMS, InstanceCompose
from .transforms import Compose, Transform, build_from_cfg

PipelineCfg = Union[Compose, Sequence[Union[Mapping[str, Any], Transform]]]
MAX_REDRAWS = 1000  # mmengine's max_refetch


def build_instance_pipeline(cfgs: PipelineCfg) -> Compose:
    """A :class:`Compose` of MTP's multi-task transforms from dicts (``dict(type='MTP_RandomCrop', ...)``)."""
    if isinstance(cfgs, Compose):
        return cfgs if isinstance(cfgs, InstanceCompose) else InstanceCompose(cfgs.transforms)
    return InstanceCompose([c if isinstance(c, Transform) else build_from_cfg(c, INSTANCE_TRANSFORMS, "transform")
                    for c in cfgs])


def _read_json(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"instance annotation file not found: {path}")
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise ValueError(f"{path} is not a COCO instance file: it has no {missing}")
    return data


class SAMRSDataset(Dataset):
    """One SAMRS subset: ``data_root/img_prefix/<file_name>``, ``data_root/seg_prefix/<stem><seg_map_suffix>`` and
    ``data_root/ann_file``.

    ``classes``: a SAMRS name (``'sota'``, ``'sior'``, ``'fast'``), a list of class names, or None for the json's
    categories. ``background`` is MTP's ``--background``: the semantic label shifted by one (0 = background).
    """

    def __init__(self, data_root: str, ann_file: str, pipeline: PipelineCfg, img_prefix: str = "images",
                 seg_prefix: Optional[str] = "gray", seg_map_suffix: str = ".png",
                 classes: Union[str, Sequence[str], None] = None, background: bool = True,
                 test_mode: bool = False) -> None:
        if not os.path.isdir(data_root):
            raise FileNotFoundError(f"data_root not found: {data_root}")
        self.data_root = data_root
        self.ann_file = os.path.join(data_root, ann_file)
        self.img_dir = os.path.join(data_root, img_prefix)
        self.seg_dir = os.path.join(data_root, seg_prefix) if seg_prefix else None
        self.seg_map_suffix = seg_map_suffix
        self.background = bool(background)
        self.test_mode = bool(test_mode)
        self.pipeline = build_instance_pipeline(pipeline)
        coco = _read_json(self.ann_file)
        self.classes, self.cat2label = self._categories(coco["categories"], classes)
        self.images = list(coco["images"])
        if not self.images:
            raise ValueError(f"{self.ann_file} lists no images")
        by_image: dict[Any, list[dict[str, Any]]] = {img["id"]: [] for img in self.images}
        for ann in coco["annotations"]:
            if ann.get("image_id") not in by_image:
                raise ValueError(f"{self.ann_file}: annotation {ann.get('id')} refers to image {ann.get('image_id')}, "
                                 "which the file does not list")
            by_image[ann["image_id"]].append(ann)
        self.annotations = [by_image[img["id"]] for img in self.images]
        ids = [a.get("id") for anns in self.annotations for a in anns]
        if len(set(ids)) != len(ids):
            raise ValueError(f"annotation ids in {self.ann_file} are not unique")
        missing = [img["file_name"] for img in self.images
                   if not os.path.isfile(os.path.join(self.img_dir, img["file_name"]))]
        if missing:
            raise FileNotFoundError(f"{len(missing)} image(s) of {self.ann_file} are not in {self.img_dir}, e.g. "
                                    f"{missing[0]}")

    def _categories(self, categories: list[dict[str, Any]],
                    classes: Union[str, Sequence[str], None]) -> tuple[tuple[str, ...], dict[Any, int]]:
        names = [c["name"] for c in categories]
        if classes is None:
            wanted = tuple(names)
        elif isinstance(classes, str):
            if classes.lower() not in SAMRS_CLASSES:
                raise ValueError(f"classes {classes!r} is not a SAMRS subset ({', '.join(SAMRS_CLASSES)}); give the "
                                 "class names as a list, or None for the annotation file's categories")
            wanted = SAMRS_CLASSES[classes.lower()]
        else:
            wanted = tuple(classes)
        cat_ids = [c["id"] for c in categories if c["name"] in wanted]  # json order, as pycocotools' getCatIds
        found = [c["name"] for c in categories if c["name"] in wanted]
        if found != [n for n in wanted if n in found]:
            raise ValueError(f"{self.ann_file}: its categories are in another order than the classes {list(wanted)}; "
                             "MTP numbers labels in the file's order, which would disagree with the semantic PNG ids")
        if not cat_ids:
            raise ValueError(f"{self.ann_file} has none of the classes {list(wanted)} (its categories: {names})")
        return wanted, {cat_id: i for i, cat_id in enumerate(cat_ids)}

    def __len__(self) -> int:
        return len(self.images)

    def data_info(self, index: int) -> dict[str, Any]:
        """MTP's ``parse_data_info`` for image ``index``: paths, size and the instances that train."""
        img = self.images[index]
        stem = img["file_name"].rsplit(".", 1)[0]
        seg = os.path.join(self.seg_dir, stem + self.seg_map_suffix) if self.seg_dir else None
        if seg is not None and not os.path.isfile(seg):
            raise FileNotFoundError(f"semantic label not found for {img['file_name']}: {seg}")
        height, width = int(img["height"]), int(img["width"])
        instances = []
        for ann in self.annotations[index]:
            if ann.get("ignore", False):
                continue
            x1, y1, w, h = ann["bbox"]
            inter_w = max(0, min(x1 + w, width) - max(x1, 0))
            inter_h = max(0, min(y1 + h, height) - max(y1, 0))
            if inter_w * inter_h == 0 or ann["area"] <= 0 or w < 1 or h < 1:
                continue
            if ann["category_id"] not in self.cat2label:
                continue
            if "segmentation" not in ann:
                raise ValueError(f"{self.ann_file}: annotation {ann.get('id')} has no segmentation (mask)")
            instances.append({"bbox": [x1, y1, x1 + w, y1 + h], "bbox_label": self.cat2label[ann["category_id"]],
                              "ignore_flag": int(bool(ann.get("iscrowd", False))), "mask": ann["segmentation"]})
        return {"img_path": os.path.join(self.img_dir, img["file_name"]), "seg_map_path": seg, "img_id": img["id"],
                "height": height, "width": width, "instances": instances, "sample_idx": index,
                "background": self.background}

    def __getitem__(self, key: Union[int, tuple[int, Sequence[int]]]) -> dict[str, Any]:
        if isinstance(key, tuple):
            index, rng = int(key[0]), np.random.default_rng(tuple(int(k) for k in key[1]))
        elif isinstance(key, (int, np.integer)):
            index, rng = int(key), None
        else:
            raise TypeError(f"index a dataset with an int or (index, seed_key), got {type(key).__name__}")
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        for _ in range(MAX_REDRAWS + 1):
            sample = self.pipeline(self.data_info(index), rng)
            if sample is not None:
                return sample
            if rng is None or self.test_mode:
                raise ValueError(f"the pipeline dropped {self.images[index]['file_name']} in test mode")
            index = int(rng.integers(0, len(self)))
        raise ValueError(f"no usable image after {MAX_REDRAWS} redraws: check the pipeline and the annotations")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} images, {len(self.classes)} classes, {self.ann_file})"
