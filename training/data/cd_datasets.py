"""Change-detection datasets in Open-CD 1.1.0's layout, as MTP's configs name them: LEVIR-CD, WHU-CD, CDD (SVCD) and
OSCD (RGB patches).

Each split is ``data_root/<img_path_from>/NAME``, ``<img_path_to>/NAME`` and ``<seg_map_path>/NAME`` (``train/A``,
``train/B``, ``train/label``), found by scanning date A's folder for ``img_suffix`` (recursively, sorted by path) or
listed in ``ann_file``; date B must hold the same names. Labels are 0/255 masks made binary on loading
(``format_seg_map='to_binary'``: >= 128 is *changed*). Classes are ``('unchanged', 'changed')``. Indexing is that of
:class:`~training.data.datasets.SegDataset`: ``dataset[(index, seed_key)]`` for random pipelines.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence

from .datasets import PipelineCfg, SegDataset, _existing_dir, _missing_labels_error, _read_split
from .transforms import IGNORE_INDEX

_PREFIX_KEYS = ("img_path_from", "img_path_to", "seg_map_path")


class CDDataset(SegDataset):
    """Samples ``((date_a, date_b), label or None)`` run through a ``MultiImg*`` pipeline."""

    classes = ("unchanged", "changed")

    def __init__(self, samples: Sequence[tuple[tuple[str, str], Optional[str]]], pipeline: PipelineCfg,
                 format_seg_map: Optional[str] = "to_binary", reduce_zero_label: bool = False,
                 ignore_index: int = IGNORE_INDEX, band_ranges: Optional[Sequence[Sequence[float]]] = None) -> None:
        self.format_seg_map = format_seg_map
        super().__init__(samples, pipeline, reduce_zero_label=reduce_zero_label, ignore_index=ignore_index,
                         band_ranges=band_ranges)

    def image_paths(self) -> list[str]:
        return [path for pair, _ in self.samples for path in pair]

    def results(self, index: int) -> dict[str, Any]:
        out = super().results(index)
        out["img_path"] = list(out["img_path"])
        out["format_seg_map"] = self.format_seg_map
        return out


class BaseCDDataset(CDDataset):
    """Open-CD's ``_BaseCDDataset`` folder layout (see the module docstring); ``None`` suffixes take the dataset's
    own (:attr:`IMG_SUFFIX`, :attr:`SEG_MAP_SUFFIX`)."""

    IMG_SUFFIX = ".png"
    SEG_MAP_SUFFIX = ".png"

    def __init__(self, data_root: str, pipeline: PipelineCfg, data_prefix: Optional[Mapping[str, Optional[str]]] = None,
                 ann_file: str = "", img_suffix: Optional[str] = None, seg_map_suffix: Optional[str] = None,
                 format_seg_map: Optional[str] = "to_binary", reduce_zero_label: bool = False,
                 ignore_index: int = IGNORE_INDEX, band_ranges: Optional[Sequence[Sequence[float]]] = None) -> None:
        img_suffix = self.IMG_SUFFIX if img_suffix is None else img_suffix
        seg_map_suffix = self.SEG_MAP_SUFFIX if seg_map_suffix is None else seg_map_suffix
        prefix: dict[str, Optional[str]] = dict(img_path_from="A", img_path_to="B", seg_map_path="label")
        prefix.update(data_prefix or {})
        unknown = set(prefix) - set(_PREFIX_KEYS)
        if unknown:
            raise ValueError(f"data_prefix takes {', '.join(_PREFIX_KEYS)}, not {sorted(unknown)}")
        _existing_dir(data_root, "data_root")
        dir_a = _existing_dir(os.path.join(data_root, prefix["img_path_from"] or ""), "date A folder (img_path_from)")
        dir_b = _existing_dir(os.path.join(data_root, prefix["img_path_to"] or ""), "date B folder (img_path_to)")
        seg_dir = None
        if prefix["seg_map_path"] is not None:
            seg_dir = _existing_dir(os.path.join(data_root, prefix["seg_map_path"]), "label folder (seg_map_path)")
        if ann_file:
            names = [n + img_suffix for n in _read_split(os.path.join(data_root, ann_file))]
        else:
            names = self._scan(dir_a, img_suffix)
            others = self._scan(dir_b, img_suffix)
            if names != others:
                only_a, only_b = sorted(set(names) - set(others)), sorted(set(others) - set(names))
                raise FileNotFoundError(f"dates A ({dir_a}) and B ({dir_b}) hold different images: "
                                        f"{len(only_a)} only in A (e.g. {only_a[:1]}), {len(only_b)} only in B "
                                        f"(e.g. {only_b[:1]})")
        if not names:
            raise FileNotFoundError(f"no images ending with {img_suffix!r} under {dir_a}; set img_suffix or "
                                    "data_prefix.img_path_from")
        samples, missing = [], []
        for name in names:
            pair = (os.path.join(dir_a, name), os.path.join(dir_b, name))
            for path in pair:
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"image {path} (listed in {ann_file or 'date A'}) does not exist")
            seg = None
            if seg_dir is not None:
                stem = name[: len(name) - len(img_suffix)] if img_suffix else name
                seg = os.path.join(seg_dir, stem + seg_map_suffix)
                if not os.path.isfile(seg):
                    missing.append(name)
            samples.append((pair, seg))
        if missing:
            raise _missing_labels_error(missing, f"looked for <name>{seg_map_suffix} in {seg_dir}")
        super().__init__(samples, pipeline, format_seg_map, reduce_zero_label, ignore_index, band_ranges)

    @staticmethod
    def _scan(folder: str, suffix: str) -> list[str]:
        return sorted(os.path.relpath(os.path.join(root, name), folder) for root, _, files in os.walk(folder)
                      for name in files if name.endswith(suffix) and not name.endswith(".aux.xml"))


class LEVIR_CD_Dataset(BaseCDDataset):  # noqa: N801  (Open-CD's names, so MTP's configs read as they are)
    """LEVIR-CD: PNG images and labels."""


class WHU_CD_Dataset(BaseCDDataset):  # noqa: N801
    """WHU-CD: any file name (Open-CD's suffix ''), the label with the same name."""

    IMG_SUFFIX = SEG_MAP_SUFFIX = ""


class SVCD_Dataset(BaseCDDataset):  # noqa: N801
    """CDD (season-varying change detection, SVCD): JPEG images and labels."""

    IMG_SUFFIX = SEG_MAP_SUFFIX = ".jpg"


class OSCD_RGB_CD_Dataset(BaseCDDataset):  # noqa: N801
    """OSCD as MTP uses it: RGB PNG patches (resized to 224 by the pipeline's MultiImgResize)."""


CD_DATASETS = {cls.__name__: cls for cls in (LEVIR_CD_Dataset, WHU_CD_Dataset, SVCD_Dataset, OSCD_RGB_CD_Dataset)}
