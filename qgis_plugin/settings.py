"""The dock's choices, remembered across QGIS restarts in the user's QGIS profile (``QgsSettings``, ``mtp/dock/...``).

Values are plain types with their defaults in one place, so the dock, its tests and a future map tool read the same
settings the same way. Layers are not stored (their ids change between projects); everything else is.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from qgis.core import QgsSettings

PREFIX = "mtp/dock/"
MODES = ("segment", "change")
MODEL_KINDS = ("demo", "demo-instances", "checkpoint", "architecture")
AREAS = ("layer", "extent", "polygons")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class DockSettings:
    """Everything the dock remembers. ``overlap`` -1 and ``threshold`` 0 mean "the model card's own". ``mode``:
    segment one raster, or the changes between two; ``kinds`` and ``building_checkpoint`` ("": the demo model) are
    the change mode's building model."""

    mode: str = "segment"
    model_kind: str = "demo"
    checkpoint: str = ""
    architecture: str = ""
    weights: str = ""
    area: str = "layer"
    selected_only: bool = False
    device: str = "auto"
    batch_size: int = 8
    overlap: int = -1
    threshold: float = 0.0
    bands: str = ""
    nodata: str = ""  # a band value to treat as nodata ("": the raster's own)
    min_area_m2: float = 4.0
    simplify_m: float = 0.25
    regularize: bool = False
    output_folder: str = ""
    kinds: bool = False
    building_checkpoint: str = ""


_CHOICES = {"mode": MODES, "model_kind": MODEL_KINDS, "area": AREAS, "device": DEVICES}


def load_settings(settings: QgsSettings | None = None) -> DockSettings:
    """The remembered settings; a missing or unusable value (an edited profile) falls back to its default."""
    settings = settings or QgsSettings()
    values = {}
    for field in dataclasses.fields(DockSettings):
        default = field.default
        try:
            value = settings.value(PREFIX + field.name, default, type=type(default))
        except TypeError:  # PyQt cannot convert the stored text to the field's type
            value = default
        if value is None or (field.name in _CHOICES and value not in _CHOICES[field.name]):
            value = default
        values[field.name] = value
    return DockSettings(**values)


def save_settings(values: DockSettings, settings: QgsSettings | None = None) -> None:
    settings = settings or QgsSettings()
    for field in dataclasses.fields(DockSettings):
        settings.setValue(PREFIX + field.name, getattr(values, field.name))
    settings.sync()
