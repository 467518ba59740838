"""MMSeg-style data pipeline in plain numpy/torch: GDAL loading, resize, crop, flip, photometric, packing.

Each transform reproduces the MMCV 2.x / MMSeg 1.x algorithm it is named after, so MTP's configs train the same
way, with these deliberate differences:

* Images are **RGB** (GDAL band order), ``uint8``, ``(H, W, 3)``, not cv2's BGR. ``PhotoMetricDistortion`` converts
  RGB<->HSV with OpenCV's 8-bit maths (H in ``[0, 180)``), so hue/saturation act on the same colours as MMSeg's.
* Randomness comes from a ``numpy.random.Generator`` handed to every call (the dataset seeds it from the sampler's
  per-sample ``seed_key``), never from global state: a sample is a pure function of ``(index, seed_key)``, whatever the
  number of DataLoader workers or where training resumed. The draws happen in MMSeg's order with the same bounds
  (``integers(a, b)`` for ``np.random.randint(a, b)``, upper bound excluded, as in MMSeg's hue shift of [-18, 17]).
* Bilinear image resize is a separable numpy interpolation in float32, then round-half-even to uint8. It samples the
  same half-pixel-centre coordinates, with the same edge clamping, as cv2's ``INTER_LINEAR`` and torch's
  ``interpolate(mode='bilinear', align_corners=False, antialias=False)``, but without cv2's 11-bit fixed-point weights
  (nor its 2x-downscale shortcut to ``INTER_AREA``), so a pixel may differ from cv2 by one grey level. It is numpy
  rather than torch because torch's CPU kernel rounds differently with the thread count (DataLoader workers run
  with one thread, the main process with many), which would make samples depend on ``num_workers``.
  Label resize is cv2's ``INTER_NEAREST`` exactly (``floor(dst * src/dst)``).
"""
from __future__ import annotations

import difflib
import inspect
import math
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from osgeo import gdal, ogr, osr

from mtp_core.io import BandScaler
from mtp_core.io.gdal_errors import quiet_gdal

Results = dict
"""The dict a pipeline passes along (MMSeg's ``results``): ``img`` (H, W, 3) uint8 RGB, ``gt_seg_map`` (H, W)
uint8, ``img_path``, ``seg_map_path``, ``ori_shape``, ``img_shape``, ``scale_factor``, ``flip``, ..."""

IGNORE_INDEX = 255
GEOJSON_SUFFIXES = (".geojson", ".json")


# ----------------------------------------------------------------------------------------------------------------
# GDAL reading
# ----------------------------------------------------------------------------------------------------------------

def _open_raster(path: str) -> gdal.Dataset:
    """Open a raster read-only whether or not someone switched on ``gdal.UseExceptions()``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"raster not found: {path}")
    with quiet_gdal():
        gdal.ErrorReset()
        try:
            ds = gdal.Open(path, gdal.GA_ReadOnly)
        except RuntimeError as exc:
            raise OSError(f"GDAL cannot read {path}: {exc}") from exc
        if ds is None:
            raise OSError(f"GDAL cannot read {path}: {gdal.GetLastErrorMsg() or 'unknown format'}")
    return ds


def _read_bands(ds: gdal.Dataset, path: str, bands: Sequence[int]) -> np.ndarray:
    with quiet_gdal():
        try:
            data = ds.ReadAsArray(band_list=list(bands))
        except RuntimeError as exc:
            raise OSError(f"GDAL cannot read the pixels of {path}: {exc}") from exc
    if data is None:
        raise OSError(f"GDAL cannot read the pixels of {path}: {gdal.GetLastErrorMsg() or 'read failed'}")
    return data if data.ndim == 3 else data[None]


@dataclass(frozen=True)
class Georef:
    """Pixel grid of an image on the ground: what a GeoJSON label is rasterized onto."""

    geotransform: tuple
    wkt: str


def read_rgb(path: str, nodata: Optional[float] = None,
             scaler: Optional[BandScaler] = None) -> tuple[np.ndarray, Optional[np.ndarray], Optional[Georef]]:
    """Read an image as ``(H, W, 3)`` uint8 RGB with GDAL, plus its nodata mask and georeferencing.

    The first three bands are taken in file order (SpaceNet 3-band chips and PNGs are R, G, B); a single band is
    repeated to three (as cv2's colour read does). Non-uint8 rasters are scaled by the dataset's ``scaler`` (one
    stretch for the whole dataset, the one inference uses: :mod:`mtp_core.io.scaling`), nodata pixels set to 0.
    The nodata mask is True where every band read equals its nodata value (``nodata`` overrides the file's value,
    e.g. 0 for SpaceNet chips whose strip-edge fill is untagged); None when no nodata value applies.
    """
    ds = _open_raster(path)
    count = ds.RasterCount
    if count == 2 or count == 0:
        raise ValueError(f"{path} has {count} band(s); expected 1 (grey) or at least 3 (R, G, B first)")
    band_ids = [1, 2, 3] if count >= 3 else [1]
    data = _read_bands(ds, path, band_ids)
    nodata_values = [nodata if nodata is not None else ds.GetRasterBand(b).GetNoDataValue() for b in band_ids]
    mask: Optional[np.ndarray] = None
    if any(v is not None for v in nodata_values):
        mask = np.ones(data.shape[1:], bool)
        for band, value in zip(data, nodata_values):
            if value is None:
                mask[:] = False
            elif math.isnan(value):
                mask &= np.isnan(band)
            else:
                mask &= band == value
    if data.dtype != np.uint8:
        if scaler is None:
            raise ValueError(f"{path} is {data.dtype}, not 8-bit: it needs the dataset's band ranges (a dataset "
                             "fits them over its images, or set band_ranges in its config)")
        if len(scaler.low) != data.shape[0]:
            raise ValueError(f"{path} has {data.shape[0]} band(s) to read, the dataset's band ranges "
                             f"{len(scaler.low)}: give a dataset images with the same number of bands")
        data = scaler.to_uint8(data)
        if mask is not None:
            data[:, mask] = 0
    if data.shape[0] == 1:
        data = np.repeat(data, 3, axis=0)
    img = np.ascontiguousarray(data.transpose(1, 2, 0))
    geotransform = ds.GetGeoTransform(can_return_null=True)
    georef = Georef(tuple(geotransform), ds.GetProjection() or "") if geotransform is not None else None
    return img, mask, georef


def read_label(path: str) -> np.ndarray:
    """Read a label raster's first band as ``(H, W)`` uint8 (class ids; 255 = ignore)."""
    ds = _open_raster(path)
    data = _read_bands(ds, path, [1])[0]
    if data.dtype != np.uint8:
        if data.size and (data.min() < 0 or data.max() > 255):
            raise ValueError(f"label {path} has values outside 0..255 (dtype {data.dtype}); class ids must fit uint8")
        data = data.astype(np.uint8)
    return data


def _target_srs(wkt: str) -> Optional[osr.SpatialReference]:
    if not wkt:
        return None
    srs = osr.SpatialReference()
    srs.ImportFromWkt(wkt)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def open_labels(path: str, georef: Georef) -> tuple[ogr.DataSource, ogr.Layer, Optional[osr.SpatialReference],
                                                   Optional[osr.CoordinateTransformation]]:
    """A label file's first layer (its data source kept alive with it), the image's CRS and the transformation
    into it (None when the CRSs are the same or one is unknown); errors name the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"label GeoJSON not found: {path}")
    with quiet_gdal():
        try:
            src = ogr.Open(path)
        except RuntimeError as exc:
            raise OSError(f"OGR cannot read {path}: {exc}") from exc
    if src is None or src.GetLayerCount() == 0:
        raise OSError(f"OGR cannot read {path}: {gdal.GetLastErrorMsg() or 'not a vector file'}")
    layer = src.GetLayer(0)
    dst_srs = _target_srs(georef.wkt)
    transform = None
    src_srs = layer.GetSpatialRef()
    if src_srs is not None and dst_srs is not None:
        src_srs = src_srs.Clone()
        src_srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        if not src_srs.IsSame(dst_srs, ["CRITERION=EQUIVALENT_EXCEPT_AXIS_ORDER_GEOGCRS"]):
            transform = osr.CoordinateTransformation(src_srs, dst_srs)
    return src, layer, dst_srs, transform


def rasterize_geojson(path: str, shape: tuple[int, int], georef: Georef) -> np.ndarray:
    """Burn a GeoJSON's polygons onto an image grid: building 1, background 0, as ``(H, W)`` uint8.

    Geometries are reprojected into the image's CRS when the file's CRS differs (both in lon/lat-first order, the
    GeoJSON convention). GDAL burns the pixels whose centre lies inside a polygon (``all_touched`` off), the rule
    solaris/rasterio use for SpaceNet masks. A file without features gives an all-background mask.
    """
    _source, layer, dst_srs, transform = open_labels(path, georef)  # the layer lives while its source does

    height, width = shape
    raster = gdal.GetDriverByName("MEM").Create("", width, height, 1, gdal.GDT_Byte)
    raster.SetGeoTransform(georef.geotransform)
    if georef.wkt:
        raster.SetProjection(georef.wkt)
    # Geometries go into a memory layer already in the image CRS, so GDAL's rasterizer has nothing to reproject.
    mem = ogr.GetDriverByName("Memory").CreateDataSource("")
    burn = mem.CreateLayer("burn", srs=dst_srs, geom_type=ogr.wkbUnknown)
    layer.ResetReading()
    for feature in layer:
        geometry = feature.GetGeometryRef()
        if geometry is None or geometry.IsEmpty():
            continue
        geometry = geometry.Clone()
        geometry.FlattenTo2D()
        if transform is not None and geometry.Transform(transform) != 0:
            raise ValueError(f"cannot reproject a geometry of {path} into the image CRS")
        out = ogr.Feature(burn.GetLayerDefn())
        out.SetGeometry(geometry)
        burn.CreateFeature(out)
    if burn.GetFeatureCount() > 0:
        with quiet_gdal():
            err = gdal.RasterizeLayer(raster, [1], burn, burn_values=[1])
        if err != 0:
            raise OSError(f"GDAL could not rasterize {path}: {gdal.GetLastErrorMsg()}")
    return raster.GetRasterBand(1).ReadAsArray().astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------------
# Geometry and colour primitives
# ----------------------------------------------------------------------------------------------------------------

def rescale_size(size_wh: tuple[int, int], scale: tuple[int, int]) -> tuple[int, int]:
    """``mmcv.rescale_size``: the largest ``(w, h)`` with the same aspect whose long side <= max(scale) and short
    side <= min(scale); factor ``min(max(scale)/long, min(scale)/short)``, each side ``int(side * factor + 0.5)``."""
    w, h = size_wh
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(w * float(factor) + 0.5), int(h * float(factor) + 0.5)


def _linear_taps(src_size: int, dst_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source pixels and weight of the second one for each output pixel: centre ``(dst + 0.5) * src/dst - 0.5``,
    clamped to the first pixel, the second tap clamped to the last pixel."""
    centre = np.maximum((np.arange(dst_size) + 0.5) * (src_size / dst_size) - 0.5, 0.0)
    first = np.minimum(np.floor(centre).astype(np.int64), src_size - 1)
    return first, np.minimum(first + 1, src_size - 1), centre - first


def resize_image(img: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a ``(H, W, C)`` uint8 image to ``size_wh`` (see the module docstring for cv2 parity)."""
    w, h = size_wh
    if img.shape[:2] == (h, w):
        return img.copy()
    x0, x1, fx = _linear_taps(img.shape[1], w)
    y0, y1, fy = _linear_taps(img.shape[0], h)
    trailing = (1,) * (img.ndim - 2)
    fx = fx.astype(np.float32).reshape((1, w) + trailing)
    fy = fy.astype(np.float32).reshape((h, 1) + trailing)
    src = img.astype(np.float32)
    rows = src[:, x0] * (1 - fx) + src[:, x1] * fx
    out = rows[y0] * (1 - fy) + rows[y1] * fy
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def resize_label(label: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """cv2 ``INTER_NEAREST`` resize: source index ``floor(dst * (1 / (dst_size / src_size)))``, clamped."""
    w, h = size_wh
    src_h, src_w = label.shape[:2]
    ys = np.minimum(np.floor(np.arange(h) * (1.0 / (h / src_h))).astype(np.int64), src_h - 1)
    xs = np.minimum(np.floor(np.arange(w) * (1.0 / (w / src_w))).astype(np.int64), src_w - 1)
    return np.ascontiguousarray(label[ys[:, None], xs[None, :]])


def _cv_tables() -> tuple[np.ndarray, np.ndarray]:
    i = np.arange(1, 256, dtype=np.float64)
    sdiv = np.zeros(256, np.int64)
    hdiv = np.zeros(256, np.int64)
    sdiv[1:] = np.rint((255 << 12) / i)
    hdiv[1:] = np.rint((180 << 12) / (6.0 * i))
    return sdiv, hdiv


_SDIV, _HDIV = _cv_tables()
# OpenCV HSV2RGB sector table: which of (v, p, q, t) becomes (b, g, r) in each 60-degree sector.
_SECTORS = np.array([[1, 3, 0], [1, 0, 2], [3, 0, 1], [0, 2, 1], [0, 1, 3], [2, 1, 0]])


def rgb_to_hsv(img: np.ndarray) -> np.ndarray:
    """OpenCV ``COLOR_RGB2HSV`` for uint8 (fixed-point, 12-bit tables): H in [0, 180), S and V in [0, 255]."""
    rgb = img.astype(np.int64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(axis=-1)
    diff = v - rgb.min(axis=-1)
    s = (diff * _SDIV[v] + (1 << 11)) >> 12
    h = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * _HDIV[diff] + (1 << 11)) >> 12
    h = np.where(h < 0, h + 180, h)
    return np.stack([h, s, v], axis=-1).astype(np.uint8)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """OpenCV ``COLOR_HSV2RGB`` for uint8: float32 sector maths (its scalar path), then round to uint8."""
    f32 = np.float32
    h = hsv[..., 0].astype(f32) * (f32(6.0) / f32(180.0))
    s = hsv[..., 1].astype(f32) * (f32(1.0) / f32(255.0))
    v = hsv[..., 2].astype(f32) * (f32(1.0) / f32(255.0))
    h = np.fmod(h, f32(6.0))
    sector = np.floor(h).astype(np.int64)
    frac = h - sector.astype(f32)
    bad = (sector < 0) | (sector >= 6)
    sector = np.where(bad, 0, sector)
    frac = np.where(bad, f32(0.0), frac)
    one = f32(1.0)
    tab = np.stack([v, v * (one - s), v * (one - s * frac), v * (one - s * (one - frac))], axis=-1)
    bgr = np.take_along_axis(tab, _SECTORS[sector], axis=-1)
    bgr = np.where((s == 0)[..., None], v[..., None], bgr)
    rgb = bgr[..., ::-1] * f32(255.0)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------------------------------------------

class Transform(ABC):
    """A pipeline step: ``results = step(results, rng)``; ``random`` steps need a Generator, others ignore it."""

    random: ClassVar[bool] = False

    @abstractmethod
    def __call__(self, results: Results, rng: Optional[np.random.Generator]) -> Results:
        """Transform ``results`` in place or into a new dict, drawing only from ``rng``."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


def _pair(value: Union[int, Sequence[int]], name: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, (int, np.integer)) for v in value):
        return int(value[0]), int(value[1])
    raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")


class LoadImageFromFile(Transform):
    """Read ``results['img_path']`` with GDAL as RGB uint8 (see :func:`read_rgb`); sets ``ori_shape``/``img_shape``.

    Also keeps the image's nodata mask and georeferencing for :class:`LoadAnnotations`, which needs them to turn a
    GeoJSON into a mask on the original pixel grid (even after a ``Resize``, as in MTP's val pipeline).
    """

    def __call__(self, results: Results, rng: Optional[np.random.Generator]) -> Results:
        img, mask, georef = read_rgb(results["img_path"], results.get("nodata"), results.get("scaler"))
        results.update(img=img, nodata_mask=mask, georef=georef, ori_shape=img.shape[:2], img_shape=img.shape[:2])
        return results


class LoadAnnotations(Transform):
    """Load ``results['seg_map_path']`` into ``gt_seg_map`` (uint8 class ids, 255 = ignore).

    A label raster is read as is (MMSeg). A GeoJSON (SpaceNet's original layout) is rasterized on the image's
    original grid: buildings 1, background 0, and 255 where the image is nodata. ``reduce_zero_label`` follows
    MMSeg (0 -> 255, others - 1); None takes the dataset's setting. Values outside ``0..num_classes-1`` and 255 are
    an error here rather than a device-side assert in the loss later.
    """

    def __init__(self, reduce_zero_label: Optional[bool] = None) -> None:
        self.reduce_zero_label = reduce_zero_label

    def __call__(self, results: Results, rng: Optional[np.random.Generator]) -> Results:
        path = results.get("seg_map_path")
        if path is None:
            raise ValueError(f"no label for {results.get('img_path')}: this dataset has no seg_map_path; "
                             "drop LoadAnnotations from the pipeline for unlabelled data")
        if path.lower().endswith(GEOJSON_SUFFIXES):
            if "ori_shape" not in results:
                raise ValueError("LoadAnnotations on a GeoJSON needs the image grid: put LoadImageFromFile first")
            georef = results.get("georef")
            if georef is None:
                raise ValueError(f"{results['img_path']} has no georeferencing, so {path} cannot be rasterized on it")
            label = rasterize_geojson(path, results["ori_shape"], georef)
            if results.get("nodata_mask") is not None:
                label[results["nodata_mask"]] = IGNORE_INDEX
        else:
            label = read_label(path)
        reduce = self.reduce_zero_label
        if reduce is None:
            reduce = results.get("reduce_zero_label", False)
        if reduce:
            label[label == 0] = 255
            label = label - 1
            label[label == 254] = 255
        num_classes = results.get("num_classes")
        if num_classes is not None:
            counts = np.bincount(label.ravel(), minlength=256)
            bad = [int(v) for v in np.flatnonzero(counts) if v >= num_classes and v != IGNORE_INDEX]
            if bad:
                raise ValueError(f"label {path} has values {bad}; expected class ids 0..{num_classes - 1} or "
                                 f"{IGNORE_INDEX} (ignore): convert the label files to that encoding")
        results["gt_seg_map"] = label
        results["reduce_zero_label"] = bool(reduce)
        return results


class Resize(Transform):
    """``mmcv.transforms.Resize`` with ``scale=(w, h)``: exactly that size, or with ``keep_ratio`` the largest size
    within it (:func:`rescale_size`). Image bilinear, label (if already loaded) nearest."""

    def __init__(self, scale: Union[int, Sequence[int]], keep_ratio: bool = False,
                 interpolation: str = "bilinear") -> None:
        self.scale = _pair(scale, "Resize.scale")
        self.keep_ratio = bool(keep_ratio)
        if interpolation not in ("bilinear", "nearest"):
            raise ValueError(f"Resize.interpolation must be 'bilinear' or 'nearest', got {interpolation!r}")
        self.interpolation = interpolation

    def resize_to(self, results: Results, scale: tuple[int, int]) -> Results:
        h, w = results["img"].shape[:2]
        new_w, new_h = rescale_size((w, h), scale) if self.keep_ratio else scale
        if self.interpolation == "bilinear":
            results["img"] = resize_image(results["img"], (new_w, new_h))
        else:
            results["img"] = resize_label(results["img"], (new_w, new_h))
        if results.get("gt_seg_map") is not None:
            results["gt_seg_map"] = resize_label(results["gt_seg_map"], (new_w, new_h))
        results.update(img_shape=(new_h, new_w), scale=scale, scale_factor=(new_w / w, new_h / h),
                       keep_ratio=self.keep_ratio)
        return results

    def __call__(self, results: Results, rng: Optional[np.random.Generator]) -> Results:
        return self.resize_to(results, self.scale)


class RandomResize(Transform):
    """``mmcv.transforms.RandomResize`` with a base ``scale`` and ``ratio_range``: ratio ~ U[lo, hi), target
    ``(int(w * ratio), int(h * ratio))``, then :class:`Resize` (``keep_ratio`` etc. passed through)."""

    random = True

    def __init__(self, scale: Union[int, Sequence[int]], ratio_range: Optional[Sequence[float]],
                 keep_ratio: bool = False, interpolation: str = "bilinear") -> None:
        self.scale = _pair(scale, "RandomResize.scale")
        if ratio_range is None or len(ratio_range) != 2 or not ratio_range[0] <= ratio_range[1]:
            raise ValueError(f"RandomResize.ratio_range must be (min, max) with min <= max, got {ratio_range!r}")
        self.ratio_range = (float(ratio_range[0]), float(ratio_range[1]))
        self.resize = Resize(self.scale, keep_ratio=keep_ratio, interpolation=interpolation)

    def __call__(self, results: Results, rng: Optional[np.random.Generator]) -> Results:
        lo, hi = self.ratio_range
        ratio = rng.random() * (hi - lo) + lo
        target = int(self.scale[0] * ratio), int(self.scale[1] * ratio)
        return self.resize.resize_to(results, target)


class RandomCrop(Transform):
    """``mmseg RandomCrop``: a random ``crop_size=(h, w)`` window (the whole side where the image is smaller).

    With ``cat_max_ratio < 1`` a window is redrawn up to 10 times until it holds more than one class (ignore 255
    not counted) and no class covers ``cat_max_ratio`` or more of the counted pixels; the 11th draw is kept unchecked.
    """

    random = True

    def __init__(self, crop_size: Union[int, Sequence[int]], cat_max_ratio: float = 1.0,
                 ignore_index: int = IGNORE_INDEX) -> None:
        self.crop_size = _pair(crop_size, "RandomCrop.crop_size")
        if min(self.crop_size) <= 0:
            raise ValueError(f"RandomCrop.crop_size must be positive, got {crop_size!r}")
        self.cat_max_ratio = float(cat_max_ratio)
        self.ignore_index = int(ignore_index)

    def _bbox(self, shape: tuple[int, ...], rng: np.random.Generator) -> tuple[int, int, int, int]:
        margin_h = max(shape[0] - self.crop_size[0], 0)
        margin_w = max(shape[1] - self.crop_size[1], 0)
        y = int(rng.integers(0, margin_h + 1))
        x = int(rng.integers(0, margin_w + 1))
        return y, y + self.crop_size[0], x, x + self.crop_size[1]

    def choose_bbox(self, shape: tuple[int, ...], label: Optional[np.ndarray],
                    rng: np.random.Generator) -> tuple[int, int, int, int]:
        """``(y1, y2, x1, x2)`` of the crop, redrawn for ``cat_max_ratio`` as the class docstring says."""
        bbox = self._bbox(shape, rng)
        if self.cat_max_ratio < 1.0:
            if label is None:
                raise ValueError("RandomCrop with cat_max_ratio < 1 needs the label: put LoadAnnotations before it")
            for _ in range(10):
                y1, y2, x1, x2 = bbox
                counts = np.bincount(label[y1:y2, x1:x2].ravel(), minlength=256)
                counts[self.ignore_index] = 0
                counts = counts[counts > 0]
                if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                    break
                bbox = self._bbox(shape, rng)
        return bbox

    def __call__(self, results: Results, rng: Optional[np.random.Generator]) -> Results:
        img = results["img"]
        y1, y2, x1, x2 = self.choose_bbox(img.shape, results.get("gt_seg_map"), rng)
        results["img"] = img[y1:y2, x1:x2]
        if results.get("gt_seg_map") is not None:
            results["gt_seg_map"] = results["gt_seg_map"][y1:y2, x1:x2]
        results["img_shape"] = results["img"].shape[:2]
        return results


class RandomFlip(Transform):
    """``mmcv RandomFlip``: image and label flipped together; ``prob`` split evenly over ``direction`` (a name or a
    list of 'horizontal', 'vertical', 'diagonal'), or one probability per direction."""

    random = True
    _DIRECTIONS = ("horizontal", "vertical", "diagonal")

    def __init__(self, prob: Union[float, Sequence[float]],
                 direction: Union[str, Sequence[str]] = "horizontal") -> None:
        directions = [direction] if isinstance(direction, str) else list(direction)
        unknown = [d for d in directions if d not in self._DIRECTIONS]
        if unknown or not directions:
            raise ValueError(f"RandomFlip.direction must be among {self._DIRECTIONS}, got {direction!r}")
        if isinstance(prob, (int, float)):
            probs = [float(prob) / len(directions)] * len(directions)
        else:
            probs = [float(p) for p in prob]
            if len(probs) != len(directions):
                raise ValueError("RandomFlip: give one probability per direction")
        if any(p < 0 for p in probs) or sum(probs) > 1 + 1e-9:
            raise ValueError(f"RandomFlip.prob must be in [0, 1] (in total), got {prob!r}")
        self.prob = prob
        self.direction = direction
        self._choices: list[Optional[str]] = directions + [None]
        self._p = probs + [max(1.0 - sum(probs), 0.0)]

    @staticmethod
    def flip(array: np.ndarray, direction: str) -> np.ndarray:
        if direction == "horizontal":
            return np.ascontiguousarray(array[:, ::-1])
        if direction == "vertical":
            return np.ascontiguousarray(array[::-1])
        return np.ascontiguousarray(array[::-1, ::-1])

    def __call__(self, results: Results, rng: Optional[np.random.Generator]) -> Results:
        chosen = self._choices[int(rng.choice(len(self._choices), p=self._p))]
        results["flip"] = chosen is not None
        results["flip_direction"] = chosen
        if chosen is not None:
            results["img"] = self.flip(results["img"], chosen)
            if results.get("gt_seg_map") is not None:
                results["gt_seg_map"] = self.flip(results["gt_seg_map"], chosen)
        return results


class PhotoMetricDistortion(Transform):
    """``mmseg PhotoMetricDistortion``: brightness, contrast (first or last, coin flip), saturation, hue; each step
    applied with probability 0.5, in MMSeg's order and uint8 arithmetic (float32 then clip and truncate)."""

    random = True

    def __init__(self, brightness_delta: int = 32, contrast_range: Sequence[float] = (0.5, 1.5),
                 saturation_range: Sequence[float] = (0.5, 1.5), hue_delta: int = 18) -> None:
        self.brightness_delta = brightness_delta
        self.contrast_range = tuple(contrast_range)
        self.saturation_range = tuple(saturation_range)
        self.hue_delta = int(hue_delta)

    @staticmethod
    def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def _contrast(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.integers(2):
            return self._convert(img, alpha=rng.uniform(*self.contrast_range))
        return img

    def __call__(self, results: Results, rng: Optional[np.random.Generator]) -> Results:
        results["img"] = self.distort(results["img"], rng)
        return results

    def distort(self, img: np.ndarray, rng: np.random.Generator, contrast_mode: Optional[int] = None) -> np.ndarray:
        """One image through the four steps; ``contrast_mode`` 1 = contrast first, 0 = last, None = drawn."""
        if rng.integers(2):
            img = self._convert(img, beta=rng.uniform(-self.brightness_delta, self.brightness_delta))
        contrast_first = (rng.integers(2) if contrast_mode is None else contrast_mode) == 1
        if contrast_first:
            img = self._contrast(img, rng)
        if rng.integers(2):
            hsv = rgb_to_hsv(img)
            hsv[..., 1] = self._convert(hsv[..., 1], alpha=rng.uniform(*self.saturation_range))
            img = hsv_to_rgb(hsv)
        if rng.integers(2):
            hsv = rgb_to_hsv(img)
            hsv[..., 0] = (hsv[..., 0].astype(np.int64) + rng.integers(-self.hue_delta, self.hue_delta)) % 180
            img = hsv_to_rgb(hsv)
        if not contrast_first:
            img = self._contrast(img, rng)
        return img


class PackSegInputs(Transform):
    """Final step: ``{"img": uint8 (3, H, W) RGB tensor, "gt": uint8 (H, W) tensor or None, "meta": {...}}``.

    ``meta`` holds ``path``, ``seg_map_path``, ``sample_idx``, ``ori_shape``, ``img_shape``, ``scale_factor``,
    ``flip`` and ``flip_direction``; uint8 keeps worker-to-main transfers small (the preprocessor normalizes).
    """

    def __call__(self, results: Results, rng: Optional[np.random.Generator]) -> dict:
        img = torch.from_numpy(np.ascontiguousarray(results["img"].transpose(2, 0, 1)))
        label = results.get("gt_seg_map")
        gt = torch.from_numpy(np.ascontiguousarray(label)) if label is not None else None
        meta = {
            "path": str(results["img_path"]),
            "seg_map_path": results.get("seg_map_path"),
            "sample_idx": results.get("sample_idx"),
            "ori_shape": tuple(results["ori_shape"]),
            "img_shape": tuple(results["img"].shape[:2]),
            "scale_factor": results.get("scale_factor", (1.0, 1.0)),
            "flip": bool(results.get("flip", False)),
            "flip_direction": results.get("flip_direction"),
        }
        return {"img": img, "gt": gt, "meta": meta}


TRANSFORMS: dict[str, type[Transform]] = {
    cls.__name__: cls
    for cls in (LoadImageFromFile, LoadAnnotations, Resize, RandomResize, RandomCrop, RandomFlip,
                PhotoMetricDistortion, PackSegInputs)
}


# ----------------------------------------------------------------------------------------------------------------
# Building from config dicts
# ----------------------------------------------------------------------------------------------------------------

def build_from_cfg(cfg: Mapping[str, Any], registry: Mapping[str, Callable], kind: str) -> Any:
    """Instantiate ``registry[cfg['type']](**rest)``, with errors that name the closest valid type or argument."""
    if not isinstance(cfg, Mapping) or "type" not in cfg:
        raise ValueError(f"a {kind} config must be a dict with a 'type' key, got {cfg!r}")
    args = dict(cfg)
    name = args.pop("type")
    if name not in registry:
        close = difflib.get_close_matches(str(name), list(registry), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown {kind} type {name!r}{hint} Valid types: {', '.join(sorted(registry))}")
    target = registry[name]
    params = inspect.signature(target).parameters
    accepted = [p for p in params if p != "self"]
    for key in args:
        if key not in params:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{kind} {name!r} has no argument {key!r}{hint}; it takes: {', '.join(accepted)}")
    missing = [p.name for p in params.values()
               if p.default is inspect.Parameter.empty and p.name not in args
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if missing:
        raise ValueError(f"{kind} {name!r} needs argument(s): {', '.join(missing)}")
    return target(**args)


class Compose:
    """A pipeline: the steps in order. ``random`` tells whether it needs a seeded Generator."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)
        self.random = any(t.random for t in self.transforms)

    def __call__(self, results: Results, rng: Optional[np.random.Generator]) -> Any:
        if rng is None and self.random:
            names = [type(t).__name__ for t in self.transforms if t.random]
            raise ValueError(f"this pipeline has random steps ({', '.join(names)}): index the dataset with "
                             "(index, seed_key) as InfiniteSampler yields, so augmentation is reproducible")
        for transform in self.transforms:
            results = transform(results, rng)
        return results

    def __repr__(self) -> str:
        return "Compose([" + ", ".join(repr(t) for t in self.transforms) + "])"


def build_pipeline(cfgs: Union[Compose, Sequence[Union[Mapping[str, Any], Transform]]]) -> Compose:
    """Build a :class:`Compose` from MMSeg-style dicts (``[dict(type='LoadImageFromFile'), ...]``) or transforms."""
    if isinstance(cfgs, Compose):
        return cfgs
    steps = [c if isinstance(c, Transform) else build_from_cfg(c, TRANSFORMS, "transform") for c in cfgs]
    return Compose(steps)
