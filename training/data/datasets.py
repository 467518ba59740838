"""SpaceNet v1 building datasets: MMSeg's converted layout and the original GeoTIFF + GeoJSON layout.

Both give 2 classes, ``('background', 'building')``, buildings = 1 and 255 = ignore (MTP's own conversion burned
buildings as 255, see mtp_spec §3.4; here a building is always 1). Indexing:

* ``dataset[(index, seed_key)]`` runs the pipeline with ``numpy.random.default_rng(seed_key)`` (training, with
  :class:`~training.data.sampler.InfiniteSampler`), so every sample is reproducible bit for bit;
* ``dataset[index]`` is for pipelines without random steps (val/test); a random pipeline refuses it.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
from osgeo import gdal
from torch.utils.data import Dataset

from mtp_core.io import BandScaler, GeoError

from .transforms import IGNORE_INDEX, Compose, Transform, build_from_cfg, build_pipeline

PipelineCfg = Union[Compose, Sequence[Union[Mapping[str, Any], Transform]]]


class SegDataset(Dataset):
    """Samples ``(img_path, seg_map_path or None)`` run through a pipeline; see the module docstring for keys."""

    classes: tuple[str, ...] = ("background", "building")

    def __init__(self, samples: Sequence[tuple[str, Optional[str]]], pipeline: PipelineCfg,
                 reduce_zero_label: bool = False, ignore_index: int = IGNORE_INDEX,
                 nodata: Optional[float] = None,
                 band_ranges: Optional[Sequence[Sequence[float]]] = None) -> None:
        self.samples = list(samples)
        self.pipeline = build_pipeline(pipeline)
        self.reduce_zero_label = bool(reduce_zero_label)
        self.ignore_index = int(ignore_index)
        self.nodata = nodata
        self.scaler = self._scaler(band_ranges)

    def _scaler(self, band_ranges: Optional[Sequence[Sequence[float]]]) -> Optional[BandScaler]:
        """8-bit images need none; deeper ones get ``band_ranges`` or one stretch fitted over the dataset's images
        (never one per image, so every chip, and later every raster predicted, is scaled alike)."""
        if band_ranges is not None:
            return BandScaler.fixed(band_ranges)
        paths = self.image_paths()
        if not paths:
            return None
        first = gdal.Open(paths[0]) if os.path.isfile(paths[0]) else None
        bands = (1, 2, 3) if first is None or first.RasterCount >= 3 else (1,)
        try:
            scaler = BandScaler.fit_files(paths, bands, self.nodata)
        except GeoError:
            return None  # an unreadable image is reported when it is loaded, with its own message
        return None if scaler.mode == "identity" else scaler

    def image_paths(self) -> list[str]:
        """Every image file of the dataset (what one band stretch is fitted over)."""
        return [img for img, _ in self.samples]

    @property
    def band_ranges(self) -> Optional[tuple[tuple[float, float], ...]]:
        """(low, high) per band of the dataset's scaling, for the model card; None for 8-bit images."""
        return None if self.scaler is None else self.scaler.ranges

    def use_band_ranges(self, ranges: Optional[Sequence[Sequence[float]]]) -> None:
        """Scale like another dataset (validation like training) or like a trained model (its card)."""
        self.scaler = BandScaler.fixed(ranges) if ranges else None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: Union[int, tuple[int, Sequence[int]]]) -> Any:
        if isinstance(key, tuple):
            if len(key) != 2:
                raise TypeError(f"index a dataset with an int or (index, seed_key), got {key!r}")
            index, seed_key = int(key[0]), tuple(int(k) for k in key[1])
            rng: Optional[np.random.Generator] = np.random.default_rng(seed_key)
        elif isinstance(key, (int, np.integer)):
            index, rng = int(key), None
        else:
            raise TypeError(f"index a dataset with an int or (index, seed_key), got {type(key).__name__}")
        if not 0 <= index < len(self.samples):
            raise IndexError(f"index {index} out of range for a dataset of {len(self.samples)} samples")
        return self.pipeline(self.results(index), rng)

    def results(self, index: int) -> dict[str, Any]:
        """The dict the pipeline starts from for sample ``index``."""
        img_path, seg_map_path = self.samples[index]
        return {"img_path": img_path, "seg_map_path": seg_map_path, "sample_idx": index,
                "reduce_zero_label": self.reduce_zero_label, "num_classes": len(self.classes),
                "nodata": self.nodata, "scaler": self.scaler}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} samples, pipeline={self.pipeline!r})"


def _existing_dir(path: str, what: str) -> str:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what} not found: {path} (check data_root and the folder names)")
    return path


def _read_split(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"split file not found: {path}")
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise ValueError(f"split file {path} lists no samples (one name per line)")
    return names


def _missing_labels_error(missing: list[str], looked: str) -> FileNotFoundError:
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    return FileNotFoundError(f"{len(missing)} image(s) without a label ({looked}): {shown}")


class SpaceNetV1Dataset(SegDataset):
    """MMSeg layout (MTP's ``SpaceNetV1Dataset``): ``data_root/<img_path>/*<img_suffix>`` with labels of the same
    stem in ``data_root/<seg_map_path>``. ``ann_file`` (relative to ``data_root``) lists stems, one per line, to
    use instead of scanning; without it images are found recursively and sorted by path, as MMSeg does.
    ``seg_map_path=None`` gives unlabelled samples (pipelines without ``LoadAnnotations``).
    Label files must hold buildings as 1: masks straight from MTP's ``process_spacenet.py`` burn them as 255, which
    reads as "ignore" and would silently drop every building from training, so map 255 -> 1 when converting.
    """

    def __init__(self, data_root: str, pipeline: PipelineCfg, data_prefix: Optional[Mapping[str, Optional[str]]] = None,
                 ann_file: str = "", img_suffix: str = ".png", seg_map_suffix: str = ".png",
                 reduce_zero_label: bool = False, ignore_index: int = IGNORE_INDEX,
                 band_ranges: Optional[Sequence[Sequence[float]]] = None) -> None:
        prefix = dict(img_path="", seg_map_path="")
        prefix.update(data_prefix or {})
        unknown = set(prefix) - {"img_path", "seg_map_path"}
        if unknown:
            raise ValueError(f"data_prefix takes img_path and seg_map_path, not {sorted(unknown)}")
        _existing_dir(data_root, "data_root")
        img_dir = _existing_dir(os.path.join(data_root, prefix["img_path"] or ""), "image folder")
        seg_dir = None
        if prefix["seg_map_path"] is not None:
            seg_dir = _existing_dir(os.path.join(data_root, prefix["seg_map_path"]), "label folder")

        if ann_file:
            stems = _read_split(os.path.join(data_root, ann_file))
        else:
            stems = sorted(os.path.relpath(os.path.join(root, name), img_dir)[: -len(img_suffix)]
                           for root, _, files in os.walk(img_dir) for name in files if name.endswith(img_suffix))
            if not stems:
                raise FileNotFoundError(f"no images ending with {img_suffix!r} under {img_dir}; set img_suffix "
                                        "(e.g. '.tif') or data_prefix.img_path")
        samples, missing_img, missing_seg = [], [], []
        for stem in stems:
            img = os.path.join(img_dir, stem + img_suffix)
            seg = os.path.join(seg_dir, stem + seg_map_suffix) if seg_dir is not None else None
            if not os.path.isfile(img):
                missing_img.append(img)
            elif seg is not None and not os.path.isfile(seg):
                missing_seg.append(stem + img_suffix)
            samples.append((img, seg))
        if missing_img:
            raise FileNotFoundError(f"{len(missing_img)} image(s) listed in {ann_file} do not exist, e.g. "
                                    f"{missing_img[0]}")
        if missing_seg:
            raise _missing_labels_error(missing_seg, f"looked for <stem>{seg_map_suffix} in {seg_dir}")
        super().__init__(samples, pipeline, reduce_zero_label=reduce_zero_label, ignore_index=ignore_index,
                         band_ranges=band_ranges)


class SpaceNetV1RawDataset(SegDataset):
    """SpaceNet v1 as distributed: ``data_root/3band/3band_<chip>.tif`` with labels
    ``data_root/vectorData/geoJson/<chip>_Geo.geojson`` (or ``Geo_<chip>.geojson``, the Rio "processedData" naming;
    folder ``vectordata/geojson`` also found). Masks are rasterized on the fly from the GeoJSON (nothing is written):
    building 1, background 0, 255 where the image is nodata.

    ``split_file`` lists chips one per line (``AOI_1_RIO_img1``, ``3band_AOI_1_RIO_img1`` or the ``.tif`` name).
    ``nodata`` overrides the images' nodata value: SpaceNet v1 chips at a strip edge are filled with 0 but carry no
    nodata tag, so ``nodata=0`` turns that fill into ignore instead of background.
    Images are RGB uint8 as stored; non-uint8 rasters are scaled by ``band_ranges`` ((low, high) per band), else by one
    2-98 percentile stretch fitted over the dataset's images (written into the trained model's card).
    """

    LABEL_DIRS = ("vectorData/geoJson", "vectordata/geojson", "vectorData/geojson")

    def __init__(self, data_root: str, pipeline: PipelineCfg, split_file: Optional[str] = None,
                 image_dir: str = "3band", label_dir: Optional[str] = None, nodata: Optional[float] = None,
                 band_ranges: Optional[Sequence[Sequence[float]]] = None) -> None:
        _existing_dir(data_root, "data_root")
        img_dir = _existing_dir(os.path.join(data_root, image_dir), "image folder")
        if label_dir is None:
            found = [d for d in self.LABEL_DIRS if os.path.isdir(os.path.join(data_root, d))]
            if not found:
                raise FileNotFoundError(f"no label folder under {data_root}: looked for {', '.join(self.LABEL_DIRS)}; "
                                        "set label_dir")
            label_dir = found[0]
        lbl_dir = _existing_dir(os.path.join(data_root, label_dir), "label folder")

        chips = {self._chip_id(name): os.path.join(img_dir, name) for name in os.listdir(img_dir)
                 if name.lower().endswith((".tif", ".tiff"))}
        if not chips:
            raise FileNotFoundError(f"no images ending with '.tif' or '.tiff' in {img_dir}")
        if split_file is not None:
            wanted = [self._chip_id(name) for name in _read_split(split_file)]
            unknown = [c for c in wanted if c not in chips]
            if unknown:
                raise FileNotFoundError(f"{len(unknown)} chip(s) of {split_file} have no image in {img_dir}, e.g. "
                                        f"{unknown[0]}")
        else:
            wanted = sorted(chips, key=lambda c: chips[c])
        labels = set(os.listdir(lbl_dir))
        samples, missing = [], []
        for chip in wanted:
            label = next((n for n in (f"{chip}_Geo.geojson", f"Geo_{chip}.geojson") if n in labels), None)
            if label is None:
                missing.append(os.path.basename(chips[chip]))
            else:
                samples.append((chips[chip], os.path.join(lbl_dir, label)))
        if missing:
            raise _missing_labels_error(missing, f"looked for <chip>_Geo.geojson and Geo_<chip>.geojson in {lbl_dir}")
        super().__init__(samples, pipeline, nodata=nodata, band_ranges=band_ranges)

    @staticmethod
    def _chip_id(name: str) -> str:
        """``3band_AOI_1_RIO_img1.tif`` / ``3band_AOI_1_RIO_img1`` / ``AOI_1_RIO_img1`` -> ``AOI_1_RIO_img1``."""
        stem = os.path.basename(name)
        for suffix in (".tif", ".tiff", ".TIF", ".TIFF"):
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
        return stem[len("3band_"):] if stem.startswith("3band_") else stem


DATASETS = {cls.__name__: cls for cls in (SpaceNetV1Dataset, SpaceNetV1RawDataset)}


def build_dataset(cfg: Mapping[str, Any]) -> SegDataset:
    """Build a dataset from an MMSeg-style dict, e.g. ``dict(type='SpaceNetV1Dataset', data_root=..., ...)``."""
    return build_from_cfg(cfg, DATASETS, "dataset")


def collate(samples: Sequence[Any]) -> list:
    """DataLoader ``collate_fn``: keep the packed samples as a list; sizes may differ until the preprocessor pads."""
    return list(samples)
