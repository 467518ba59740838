"""Where finished rows go: an in-memory array, or the class GeoTIFF and the probability GeoTIFF."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from mtp_core.io import GeoTiffWriter

CLASS_NODATA = 255


class RowSink(Protocol):
    """Where finished rows go: classes (n, W) uint8 and probabilities (K, n, W) float32 (or None if not wanted)."""

    def write_rows(self, y0: int, classes: np.ndarray, probs: np.ndarray | None) -> None: ...


@dataclass
class ArraySink:
    """Collects the outputs of an in-memory prediction."""

    height: int
    width: int
    num_classes: int
    classes: np.ndarray = field(init=False)
    probs: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.classes = np.full((self.height, self.width), CLASS_NODATA, dtype=np.uint8)
        self.probs = np.zeros((self.num_classes, self.height, self.width), dtype=np.float32)

    def write_rows(self, y0: int, classes: np.ndarray, probs: np.ndarray | None) -> None:
        self.classes[y0 : y0 + classes.shape[0]] = classes
        if probs is not None:
            self.probs[:, y0 : y0 + classes.shape[0]] = probs


class GeoTiffSink:
    """Finished rows into the class GeoTIFF and (optionally) a uint8 probability GeoTIFF (P × 255, classes 1..K-1)."""

    def __init__(self, classes: GeoTiffWriter, probs: GeoTiffWriter | None) -> None:
        self.classes, self.probs = classes, probs

    def write_rows(self, y0: int, classes: np.ndarray, probs: np.ndarray | None) -> None:
        self.classes.write(classes, 0, y0)
        if self.probs is not None and probs is not None:
            scaled = np.rint(np.clip(probs[1:], 0.0, 1.0) * 255.0).astype(np.uint8)
            self.probs.write(scaled, 0, y0)
