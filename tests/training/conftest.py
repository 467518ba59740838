"""A tiny MMSeg-layout dataset (images/ + labels/ PNGs) and the tiny training config, for loop tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from osgeo import gdal

TINY_CONFIG = Path(__file__).resolve().parents[2] / "training" / "configs" / "tiny" / "rvsa-tiny-upernet-64.py"


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread, as the training subprocesses get (OMP_NUM_THREADS=1): on a few shared cores, OpenMP
    threads spinning against other processes made in-process training tests ten times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _write_png(array: np.ndarray, path: Path) -> None:
    bands = array[..., None] if array.ndim == 2 else array
    mem = gdal.GetDriverByName("MEM").Create("", bands.shape[1], bands.shape[0], bands.shape[2], gdal.GDT_Byte)
    for i in range(bands.shape[2]):
        mem.GetRasterBand(i + 1).WriteArray(bands[:, :, i])
    gdal.GetDriverByName("PNG").CreateCopy(str(path), mem)


def make_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Grass-green noise with a few bright rectangular roofs: easy to learn, cheap to make."""
    image = rng.normal((70, 110, 60), 12, size=(height, width, 3))
    label = np.zeros((height, width), np.uint8)
    for _ in range(rng.integers(2, 5)):
        h, w = rng.integers(8, 24, size=2)
        y, x = rng.integers(0, height - h), rng.integers(0, width - w)
        image[y : y + h, x : x + w] = rng.normal((200, 190, 180), 10, size=(h, w, 3))
        label[y : y + h, x : x + w] = 1
    return np.clip(image, 0, 255).astype(np.uint8), label


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_data")
    rng = np.random.default_rng(0)
    for split, count, (h, w) in (("train", 6, (80, 72)), ("val", 2, (96, 80))):
        for sub in ("images", "labels"):
            (root / split / sub).mkdir(parents=True)
        for i in range(count):
            image, label = make_scene(rng, h, w)
            _write_png(image, root / split / "images" / f"{split}_{i}.png")
            _write_png(label, root / split / "labels" / f"{split}_{i}.png")
    return root
