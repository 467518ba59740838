"""Band scaling and normalization: raw band values to the 0–255 range the models' mean/std were computed on, then to
model input. Training and inference both go through here.

Why fixed ranges, fitted once for a whole dataset: a stretch computed per tile would change brightness from tile to
tile (seams), and one computed per image or per raster would scale neighbouring rasters, shards of a batch and the
training chips differently. So 8-bit images are fed as they are, and deeper types (uint16, int16, float) get one
linear stretch per band from fixed (low, high) ranges: the model card's (written at training time from the training
set), else fitted over the rasters of the job (:meth:`BandScaler.fit_files`: a bounded, deterministic sample of
windows spread over up to 64 of them, whatever their number and size).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from osgeo import gdal_array

from mtp_core.errors import GeoError
from mtp_core.io.gdal_errors import raises_gdal_errors
from mtp_core.io.raster import Source, open_raster, read_window

_SAMPLE_WINDOW = 256
_MODES = ("identity", "percentile", "fixed")


@dataclass(frozen=True)
class BandScaler:
    """``(x - low) * 255 / (high - low)`` per band, clipped to [0, 255], as float32.

    ``mode`` records where the ranges came from: ``identity`` (uint8, low 0, high 255: values pass unchanged),
    ``percentile`` (fitted; ``percentiles`` says which) or ``fixed`` (given ranges).
    """

    low: tuple[float, ...]
    high: tuple[float, ...]
    mode: str = "fixed"
    percentiles: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ValueError(f"unknown scaling mode {self.mode!r}; use one of {list(_MODES)}")
        if not self.low or len(self.low) != len(self.high):
            raise ValueError(f"need one (low, high) per band, got low {list(self.low)} and high {list(self.high)}")
        bad = [i + 1 for i, (lo, hi) in enumerate(zip(self.low, self.high)) if not (math.isfinite(lo) and hi > lo)]
        if bad:
            raise ValueError(f"band ranges must be finite with high > low; bands {bad} are not: "
                             f"low {list(self.low)}, high {list(self.high)}")

    @classmethod
    def identity(cls, band_count: int) -> "BandScaler":
        """8-bit images: the model's 0–255 statistics apply directly."""
        return cls((0.0,) * band_count, (255.0,) * band_count, "identity")

    @classmethod
    def fixed(cls, ranges: Sequence[tuple[float, float]]) -> "BandScaler":
        """Known (min, max) per band, e.g. from a model card, so every raster is scaled the same way."""
        return cls(tuple(float(lo) for lo, _ in ranges), tuple(float(hi) for _, hi in ranges), "fixed")

    @classmethod
    @raises_gdal_errors
    def fit(cls, dataset: Source, bands: Sequence[int], nodata: Sequence[float | None] | None = None,
            percentiles: tuple[float, float] = (2.0, 98.0), max_pixels: int = 1 << 22) -> "BandScaler":
        """Identity for uint8 bands, else a percentile stretch per band from at most ``max_pixels`` sampled pixels.

        ``dataset`` is a plan or a GDAL handle (a warped VRT is fine); pixels GDAL masks out are skipped, and so are
        values equal to ``nodata`` (one entry per raster band, as in ``RasterInfo.nodata``).
        """
        if not 0.0 <= percentiles[0] < percentiles[1] <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
        ds = getattr(dataset, "dataset", dataset)
        bands = [int(b) for b in bands]
        if not bands or any(not 1 <= b <= ds.RasterCount for b in bands):
            raise GeoError(f"band numbers {bands} are out of range: the raster has bands 1..{ds.RasterCount}")
        dtype = np.dtype(gdal_array.GDALTypeCodeToNumericTypeCode(ds.GetRasterBand(bands[0]).DataType))
        if dtype == np.uint8:
            return cls.identity(len(bands))
        samples = _sample(ds, bands, max_pixels)
        low, high = [], []
        for i, b in enumerate(bands):
            values = samples[i]
            missing = None if nodata is None or b > len(nodata) else nodata[b - 1]
            if missing is not None:
                values = values[~np.isnan(values)] if math.isnan(missing) else values[values != missing]
            if values.size == 0:
                raise GeoError(f"band {b} has no valid pixels in the sample; check its nodata value, or give fixed "
                               f"band ranges")
            lo, hi = np.percentile(values, percentiles)
            low.append(float(lo))
            high.append(float(hi) if hi > lo else float(lo) + 1.0)  # a flat band maps to 0 instead of dividing by 0
        return cls(tuple(low), tuple(high), "percentile", (float(percentiles[0]), float(percentiles[1])))

    @classmethod
    @raises_gdal_errors
    def fit_files(cls, paths: Sequence[str | os.PathLike], bands: Sequence[int], nodata: float | None = None,
                  percentiles: tuple[float, float] = (2.0, 98.0), max_pixels: int = 1 << 22,
                  max_files: int = 64) -> "BandScaler":
        """One stretch for a whole dataset or batch: identity when the images are 8-bit, else per-band percentiles
        of a sample pooled over up to ``max_files`` files evenly spaced in sorted order (the same ranges whichever
        process computes them, e.g. every shard of a Slurm array). ``nodata`` overrides the files' own value."""
        ordered = sorted(dict.fromkeys(os.fspath(p) for p in paths))
        if not ordered:
            raise GeoError("no raster to fit band ranges on")
        picked = [ordered[round(i)] for i in np.linspace(0, len(ordered) - 1, min(max_files, len(ordered)))]
        datasets = [open_raster(path) for path in dict.fromkeys(picked)]
        short = [ds.GetDescription() for ds in datasets if ds.RasterCount < max(bands)]
        if short:
            raise GeoError(f"{short[0]} has fewer than {max(bands)} bands; choose bands that every raster has")
        types = {gdal_array.GDALTypeCodeToNumericTypeCode(ds.GetRasterBand(b).DataType) for ds in datasets
                 for b in bands}
        if types == {np.uint8}:
            return cls.identity(len(bands))
        per_file = max(1, max_pixels // len(datasets))
        pooled: list[list[np.ndarray]] = [[] for _ in bands]
        for ds in datasets:
            for i, values in enumerate(_sample(ds, list(bands), per_file)):
                missing = nodata if nodata is not None else ds.GetRasterBand(bands[i]).GetNoDataValue()
                if missing is not None:
                    values = values[~np.isnan(values)] if math.isnan(missing) else values[values != missing]
                pooled[i].append(values.astype(np.float64))
        low, high = [], []
        for i, parts in enumerate(pooled):
            values = np.concatenate(parts)
            values = values[np.isfinite(values)]
            if values.size == 0:
                raise GeoError(f"band {bands[i]} has no valid pixels in {len(datasets)} sampled raster(s); check its "
                               "nodata value, or give fixed band ranges")
            lo, hi = np.percentile(values, percentiles)
            low.append(float(lo))
            high.append(float(hi) if hi > lo else float(lo) + 1.0)
        return cls(tuple(low), tuple(high), "percentile", (float(percentiles[0]), float(percentiles[1])))

    @property
    def ranges(self) -> tuple[tuple[float, float], ...]:
        """(low, high) per band, as a model card stores them."""
        return tuple(zip(self.low, self.high))

    def to_uint8(self, array: np.ndarray) -> np.ndarray:
        """The scaled values rounded to uint8 (what training pipelines carry)."""
        return np.rint(self(array)).astype(np.uint8)

    def __call__(self, array: np.ndarray) -> np.ndarray:
        """Scales ``(bands, h, w)`` raw values to float32 in [0, 255]."""
        a = np.asarray(array)
        if a.ndim != 3 or a.shape[0] != len(self.low):
            raise ValueError(f"expected ({len(self.low)}, h, w), got shape {a.shape}")
        low = np.asarray(self.low, np.float32)[:, None, None]
        scale = (255.0 / (np.asarray(self.high, np.float64) - np.asarray(self.low, np.float64)))
        out = a.astype(np.float32) - low
        out *= scale.astype(np.float32)[:, None, None]
        return np.clip(out, 0.0, 255.0, out=out)

    def to_dict(self) -> dict[str, Any]:
        """Plain types, for output metadata and logs, so a run's scaling can be reproduced."""
        return {"mode": self.mode, "low": list(self.low), "high": list(self.high),
                "percentiles": None if self.percentiles is None else list(self.percentiles)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BandScaler":
        pct = data.get("percentiles")
        return cls(tuple(data["low"]), tuple(data["high"]), data["mode"], None if pct is None else tuple(pct))


def _sample(ds: Any, bands: list[int], max_pixels: int) -> list[np.ndarray]:
    """Valid values per band from a grid of windows spread evenly over the raster (the whole raster if small)."""
    width, height = ds.RasterXSize, ds.RasterYSize
    if width * height <= max_pixels:
        windows = [(0, 0, width, height)]
    else:
        size_x, size_y = min(_SAMPLE_WINDOW, width), min(_SAMPLE_WINDOW, height)
        count = max(1, max_pixels // (size_x * size_y))
        nx = int(np.clip(round(math.sqrt(count * width / height)), 1, math.ceil(width / size_x)))
        ny = int(np.clip(count // nx, 1, math.ceil(height / size_y)))
        xs = [int((i + 0.5) * width / nx - size_x / 2) for i in range(nx)]
        ys = [int((j + 0.5) * height / ny - size_y / 2) for j in range(ny)]
        windows = [(min(max(x, 0), width - size_x), min(max(y, 0), height - size_y), size_x, size_y)
                   for y in ys for x in xs]
    parts: list[list[np.ndarray]] = [[] for _ in bands]
    for x, y, w, h in windows:
        data, valid = read_window(ds, x, y, w, h, bands)
        for i in range(len(bands)):
            parts[i].append(data[i][valid])
    return [np.concatenate(p) for p in parts]


def normalize(scaled: np.ndarray, mean: Sequence[float], std: Sequence[float],
              valid: np.ndarray | None = None) -> np.ndarray:
    """Model input from 0–255 band values ``(C, h, w)`` or ``(N, C, h, w)``: ``(x - mean) / std`` per band, float32;
    pixels that are not ``valid`` become 0 (the mean). Training and inference both go through here."""
    x = np.asarray(scaled, dtype=np.float32)
    shape = (-1, 1, 1)
    out = (x - np.asarray(mean, np.float32).reshape(shape)) / np.asarray(std, np.float32).reshape(shape)
    if valid is not None:
        out = np.where(valid, out, np.float32(0.0))
    return out.astype(np.float32, copy=False)
