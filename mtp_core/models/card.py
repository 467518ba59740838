"""The model card: what a checkpoint needs besides its weights to be run correctly on a raster.

It travels inside our checkpoints (``meta["model_card"]``); released MTP/MMSeg files have none, so the named
configs provide defaults (SpaceNetv1: 2 classes, 384 px tiles with stride 256, ImageNet mean/std on 0–255 RGB).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class ModelCard:
    """How to build and feed a model.

    ``architecture`` is a registry name and ``arch_args`` its keyword arguments, so ``create_model`` rebuilds the
    exact network. ``gsd_m`` is the ground resolution (metres per pixel) the model was trained at; rasters far from
    it are resampled. ``bands`` are the 1-based raster bands fed as the model's input channels, in order.
    ``band_ranges`` ((min, max) per band) fixes how non-8-bit rasters map to 0–255; without it a 2–98 % stretch is
    computed once per raster.
    """

    architecture: str
    arch_args: dict[str, Any] = field(default_factory=dict)
    classes: tuple[str, ...] = ("background", "building")
    gsd_m: float = 0.5
    tile: int = 384
    overlap: int = 128
    mean: tuple[float, ...] = IMAGENET_MEAN_255
    std: tuple[float, ...] = IMAGENET_STD_255
    bands: tuple[int, ...] = (1, 2, 3)
    threshold: float | None = None
    band_ranges: tuple[tuple[float, float], ...] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        problems = []
        if not self.architecture:
            problems.append("architecture is empty")
        if len(self.classes) < 2:
            problems.append(f"need at least 2 classes, got {list(self.classes)}")
        if not len(self.mean) == len(self.std) == len(self.bands):
            problems.append(
                f"mean {list(self.mean)}, std {list(self.std)} and bands {list(self.bands)} differ in length")
        if any(s <= 0 for s in self.std):
            problems.append(f"std must be positive, got {list(self.std)}")
        if any(b < 1 for b in self.bands):
            problems.append(f"bands are 1-based raster band numbers, got {list(self.bands)}")
        if self.tile <= 0 or not 0 <= self.overlap < self.tile:
            problems.append(f"need tile > 0 and 0 <= overlap < tile, got tile {self.tile}, overlap {self.overlap}")
        if self.gsd_m <= 0:
            problems.append(f"gsd_m must be positive, got {self.gsd_m}")
        if self.band_ranges is not None and (len(self.band_ranges) != len(self.bands)
                                             or any(len(r) != 2 or r[0] >= r[1] for r in self.band_ranges)):
            problems.append(f"band_ranges must give (min, max) with min < max for each of the {len(self.bands)} bands, "
                            f"got {self.band_ranges}")
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            problems.append(f"threshold must be in (0, 1) or None, got {self.threshold}")
        if problems:
            raise ValueError("invalid model card: " + "; ".join(problems))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists, not tuples), so the card pickles under ``weights_only=True``."""
        out = dataclasses.asdict(self)
        if self.band_ranges is not None:
            out["band_ranges"] = [list(r) for r in self.band_ranges]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelCard":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model card fields {unknown}; known fields are {sorted(known)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        if values.get("band_ranges") is not None:
            values["band_ranges"] = tuple(tuple(r) for r in values["band_ranges"])
        if "arch_args" in values:
            values["arch_args"] = dict(data["arch_args"])
        return cls(**values)

    def replace(self, **changes: Any) -> "ModelCard":
        return dataclasses.replace(self, **changes)
