"""Progress reports and cancellation shared by the engine, the CLI, Processing and the QGIS dock.

Long work calls ``progress(Progress)`` after every batch and ``cancel()`` before the next one; a cancelled run raises
:class:`Cancelled` and leaves no output file behind.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional


class Cancelled(Exception):
    """The caller asked to stop; partial outputs were removed."""


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    elapsed_s: float
    km2_done: float = 0.0
    unit: str = "tiles"

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0

    @property
    def km2_per_s(self) -> float:
        return self.km2_done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def rate(self) -> float:
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        if self.done == 0:
            return None
        return self.elapsed_s * (self.total - self.done) / self.done


ProgressCallback = Optional[Callable[[Progress], None]]
CancelCallback = Optional[Callable[[], bool]]


def check_cancel(cancel: CancelCallback) -> None:
    if cancel is not None and cancel():
        raise Cancelled("cancelled by the user")
