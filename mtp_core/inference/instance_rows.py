"""Instances and the semantic mask combined, row by row: which building each pixel belongs to.

The rule (documented in README and docs/architecture.md):

1. **The semantic mask says what is building.** Its blended, seam-free outline is kept as it is; the instance masks
   never add a building pixel the semantic decoder calls background, nor remove one.
2. **The instances say which buildings there are, best first.** An instance is kept when at least ``KEEP_VISIBLE``
   (half) of its mask's building pixels of its class are not held by a higher-scoring instance, else dropped as a
   duplicate or a part of a better one: Panoptic FPN's fusion of instances with a semantic mask (Kirillov et al.
   2019; Detectron2's ``combine_semantic_and_instance_outputs``), which removes the overlapping detections that
   "highest mask probability per pixel" alone turned into slivers.
3. **Where kept instances overlap, the surer mask wins.** A pixel two kept instances claim goes to the one with the
   higher mask probability there (the higher score on a tie), so the wall between two houses falls where their
   masks cross, not on the edge of the better-scored house's mask.
4. **Building pixels left over join the nearest instance of their region.** Building pixels no kept instance covers
   (the rim a 28 x 28 mask misses, a wing the box cut off) take the building of a 4-neighbour, grown at most
   ``GROW_PX`` pixels through the semantic mask: the geodesic nearest instance.
5. **What no instance explains stays semantic.** Building regions no instance reaches form buildings of their own,
   scored by the semantic probability (what the semantic-only job would give there).

Rows come out as *instance values* (:mod:`mtp_core.vectorize.instances`: the class in the high bits, a building
number in the low bits, 0 background, -1 nodata) and an 8-bit score (the instance's score, or the semantic
probability for buildings of rule 5). A row is final once the semantic rows ``GROW_PX`` below it are known and no
instance still to come can reach it, so :class:`InstanceRows` holds a band of rows, never the raster.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from mtp_core.inference.instance_merge import Instance
from mtp_core.vectorize.instances import NODATA_VALUE, encode

GROW_PX = 40  # building pixels up to this far from an instance (4-connected, inside the semantic mask) join it
KEEP_VISIBLE = 0.5  # an instance needs this share of its mask not held by better instances (Panoptic FPN's 0.5)
CLASS_NODATA = 255
COMBINE_COLUMNS = 1024  # columns combined at a time: the temporaries of rule 4 stay this wide
_LOCAL_IDS = 2**24 - 1  # building numbers cycle through 1.._LOCAL_IDS (neighbours never share one)


class InstanceRows:
    """Combines the semantic rows (:meth:`add_semantic`, in order) with the merged instances (:meth:`paint`) and
    hands out final rows (:meth:`ready`). ``classes``: the semantic class ids that are objects with instances
    (object label k is class k + 1)."""

    def __init__(self, width: int, height: int, grow_px: int = GROW_PX) -> None:
        self.width, self.height, self.grow = width, height, grow_px
        self.base = 0  # first row held
        self.emitted = 0  # rows above this one were handed out
        self.received = 0  # semantic rows known: [0, received)
        self._classes = np.zeros((0, width), np.uint8)
        self._prob = np.zeros((0, width), np.uint8)  # probability of the pixel's semantic class, x 255
        self._ids = np.zeros((0, width), np.int32)  # building number before growing, 0 = none
        self._score = np.zeros((0, width), np.uint8)  # the score of the building holding the pixel, x 255
        self._mprob = np.zeros((0, width), np.uint8)  # the mask probability of the building holding the pixel
        self._next_id = 0

    def add_semantic(self, y0: int, classes: np.ndarray, probs: np.ndarray) -> None:
        """The next finished semantic rows: classes (n, W) and class probabilities (K, n, W) in [0, 1]."""
        if y0 != self.received:
            raise ValueError(f"semantic rows must come in order: expected row {self.received}, got {y0}")
        n = classes.shape[0]
        prob = np.zeros(classes.shape, np.float32)
        for k in range(probs.shape[0]):  # a pass per class: no (n, W) int64 index for take_along_axis
            np.copyto(prob, probs[k], where=classes == k)
        self._classes = np.concatenate([self._classes, classes])
        self._prob = np.concatenate([self._prob, np.rint(np.clip(prob, 0, 1) * 255).astype(np.uint8)])
        for name, dtype in (("_ids", np.int32), ("_score", np.uint8), ("_mprob", np.uint8)):
            setattr(self, name, np.concatenate([getattr(self, name), np.zeros((n, self.width), dtype)]))
        self.received += n

    def paint(self, instances: Sequence[Instance]) -> None:
        """Instances whose rows are all known, best score first (rules 2 and 3)."""
        for inst in sorted(instances, key=lambda i: -i.score):
            if inst.y0 < self.base or inst.y0 + inst.prob.shape[0] > self.received:
                raise ValueError(f"instance rows {inst.y0}..{inst.y0 + inst.prob.shape[0]} are not held "
                                 f"({self.base}..{self.received})")
            rows = slice(inst.y0 - self.base, inst.y0 - self.base + inst.prob.shape[0])
            cols = slice(inst.x0, inst.x0 + inst.prob.shape[1])
            mine = inst.mask & (self._classes[rows, cols] == inst.label + 1)
            score = np.uint8(round(min(max(inst.score, 0.0), 1.0) * 255))
            # pixels held by a lower score were painted by an earlier call (streaming): the better instance wins
            held = self._ids[rows, cols] != 0
            better = ~held | (self._score[rows, cols] < score)
            if np.count_nonzero(mine & better) < max(KEEP_VISIBLE * np.count_nonzero(mine), 1):
                continue
            owner = self._mprob[rows, cols]  # a kept instance takes the shared pixels where its mask is surer
            take = mine & (~held | (inst.prob > owner) | ((inst.prob == owner) & better))
            self._mprob[rows, cols][take] = inst.prob[take]
            self._next_id = self._next_id % _LOCAL_IDS + 1
            self._ids[rows, cols][take] = self._next_id
            self._score[rows, cols][take] = score

    def ready(self, until: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(y0, values (n, W) int32, scores (n, W) uint8)`` of the rows that are final when the instances of rows
        above ``until`` are all painted (no instance still to come starts above it)."""
        known = min(until, self.received)
        end = self.height if known >= self.height else known - self.grow
        if end <= self.emitted:
            return
        lo = max(self.emitted - self.grow, self.base)
        hi = min(end + self.grow, self.received)
        values, scores = self._combine(lo - self.base, hi - self.base)
        a, b = self.emitted - lo, end - lo
        yield self.emitted, values[a:b], scores[a:b]
        self.emitted = end
        self._drop(max(end - self.grow, self.base))

    def _combine(self, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
        """Rules 1-5 over held rows [r0, r1): instance values and scores, ``COMBINE_COLUMNS`` columns at a time (a
        pixel's result depends on the pixels ``grow`` away, so each chunk is computed with that margin): the
        temporaries of growing stay the size of a chunk, not of the raster's width."""
        values = np.empty((r1 - r0, self.width), np.int32)
        scores = np.empty((r1 - r0, self.width), np.uint8)
        for c0 in range(0, self.width, COMBINE_COLUMNS):
            c1 = min(c0 + COMBINE_COLUMNS, self.width)
            lo, hi = max(c0 - self.grow, 0), min(c1 + self.grow, self.width)
            v, sc = self._combine_block(r0, r1, lo, hi)
            values[:, c0:c1], scores[:, c0:c1] = v[:, c0 - lo : c1 - lo], sc[:, c0 - lo : c1 - lo]
        return values, scores

    def _combine_block(self, r0: int, r1: int, c0: int, c1: int) -> tuple[np.ndarray, np.ndarray]:
        classes = self._classes[r0:r1, c0:c1]
        ids, score = self._ids[r0:r1, c0:c1].copy(), self._score[r0:r1, c0:c1].copy()
        building = (classes > 0) & (classes != CLASS_NODATA)
        free = building & (ids == 0)
        for _ in range(self.grow):
            if not free.any():
                break
            grown = np.zeros_like(ids)
            grown_score = np.zeros_like(score)
            for shift in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                nid, ncls, nscore = (_shifted(a, *shift) for a in (ids, classes, score))
                take = free & (grown == 0) & (nid > 0) & (ncls == classes)
                grown[take], grown_score[take] = nid[take], nscore[take]
            if not grown.any():  # a region no instance reaches: rule 5
                break
            ids[grown > 0], score[grown > 0] = grown[grown > 0], grown_score[grown > 0]
            free &= grown == 0
        score[building & (ids == 0)] = self._prob[r0:r1, c0:c1][building & (ids == 0)]
        values = np.where(building, encode(classes, ids), 0).astype(np.int32)
        values[classes == CLASS_NODATA] = NODATA_VALUE
        score[~building] = 0
        return values, score

    def _drop(self, row: int) -> None:
        n = row - self.base
        if n <= 0:
            return
        for name in ("_classes", "_prob", "_ids", "_score", "_mprob"):
            setattr(self, name, getattr(self, name)[n:].copy())
        self.base = row


def _shifted(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``a`` moved by (dy, dx) (the value of the neighbour at (y - dy, x - dx)), zeros where it leaves the array."""
    out = np.zeros_like(a)
    h, w = a.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = a[max(-dy, 0) : h + min(-dy, 0),
                                                                      max(-dx, 0) : w + min(-dx, 0)]
    return out
