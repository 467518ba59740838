"""The eight symmetries of a square tile (0-3 quarter turns, each with or without a mirror): the views of test-time
augmentation.

Why these eight: an aerial image has no up or handedness, so a model's answer for a turned or mirrored tile is an
equally good guess, and the mean over all eight cancels much of its orientation-dependent noise (a wall a pixel or
two off, a jagged edge). Each view turns tensors, boxes and masks the same way, so what a model finds in a view can be
turned back onto the tile (:meth:`View.undo`, :meth:`View.boxes` for where a tile's box lies in the view).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class View:
    """``turns`` quarter turns (``torch.rot90`` over the last two dimensions, rows toward columns), then a mirror
    of the columns if ``mirror``."""

    turns: int
    mirror: bool

    def apply(self, x: Tensor) -> Tensor:
        """``x`` (..., H, W) as this view sees it."""
        x = torch.rot90(x, self.turns, dims=(-2, -1))
        return x.flip(-1) if self.mirror else x

    def undo(self, x: Tensor) -> Tensor:
        """What this view saw, ``x`` (..., H, W), turned back to the tile's orientation (:meth:`apply`'s inverse)."""
        x = x.flip(-1) if self.mirror else x
        return torch.rot90(x, -self.turns, dims=(-2, -1))

    @property
    def inverse(self) -> "View":
        """The view that turns this one's tensors and boxes back (a mirrored view is its own inverse)."""
        return self if self.mirror else View(-self.turns % 4, False)

    def boxes(self, boxes: Tensor, size: float) -> Tensor:
        """Boxes (n, 4) as ``x1, y1, x2, y2`` in pixel-edge coordinates of a ``size`` x ``size`` tile, where this view
        sees them: a box's mask over the tile, :meth:`apply`'d, is the viewed box's mask."""
        for _ in range(self.turns % 4):  # a quarter turn takes (x, y) to (y, size - x)
            x1, y1, x2, y2 = boxes.unbind(-1)
            boxes = torch.stack([y1, size - x2, y2, size - x1], -1)
        if self.mirror:
            x1, y1, x2, y2 = boxes.unbind(-1)
            boxes = torch.stack([size - x2, y1, size - x1, y2], -1)
        return boxes


IDENTITY = View(0, False)
VIEWS = tuple(View(turns, mirror) for turns in range(4) for mirror in (False, True))  # IDENTITY first
