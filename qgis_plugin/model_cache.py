"""The model a run uses, kept between runs: building a Predictor (reading the checkpoint, moving it to the GPU) takes
seconds, a second run on the same settings should not pay for it again.

:class:`ModelSpec` is plain data (it crosses from the dock to a task's worker thread); :class:`PredictorCache` builds
the Predictor in whichever thread asks first (a QgsTask, never the GUI thread) and replaces it when the spec changes.
Nothing here imports torch before a Predictor is actually built.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mtp_core.inference import Predictor


@dataclass(frozen=True)
class ModelSpec:
    """A checkpoint file (any layout the engine reads), optionally built as a named architecture, on a device.

    ``architecture`` empty: the file's own model card says what to build. ``overlap``/``threshold`` None: the
    card's own values. ``tta``: test-time augmentation (the 8 views of each tile, 8x the time).
    """

    checkpoint: str
    architecture: str = ""
    device: str = "auto"
    batch_size: int = 8
    overlap: int | None = None
    threshold: float | None = None
    tta: bool = False

    def key(self) -> tuple:
        """Equal keys give the same Predictor; a rewritten checkpoint (new mtime) gives a new one."""
        try:
            mtime = os.stat(self.checkpoint).st_mtime_ns
        except OSError:  # building it then raises the engine's message about the missing file
            mtime = None
        return (os.path.abspath(self.checkpoint), mtime, self.architecture, self.device, self.batch_size,
                self.overlap, self.threshold, self.tta)


def build_predictor(spec: ModelSpec) -> Predictor:
    from mtp_core.inference import Predictor

    return Predictor.from_checkpoint(spec.checkpoint, architecture=spec.architecture, device=spec.device,
                                     batch_size=spec.batch_size, overlap=spec.overlap, threshold=spec.threshold,
                                     tta=spec.tta)


class PredictorCache:
    """One Predictor, keyed by :meth:`ModelSpec.key`; thread-safe, so a task and a map tool can share it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._predictor: Predictor | None = None

    def get(self, spec: ModelSpec) -> Predictor:
        """The cached Predictor for ``spec``, built now (slow: call it from a task) when the key changed."""
        key = spec.key()
        with self._lock:
            if self._key != key:
                self._key, self._predictor = None, None  # frees the old model's (GPU) memory before loading
                self._predictor = build_predictor(spec)
                self._key = key
            return self._predictor

    def holds(self, spec: ModelSpec) -> bool:
        """Whether :meth:`get` would return the cached Predictor for ``spec`` (no loading)."""
        with self._lock:
            return self._key is not None and self._key == spec.key()

    def clear(self) -> None:
        with self._lock:
            self._key, self._predictor = None, None
