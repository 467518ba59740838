"""Instances across tiles: one detection per building, whole, however the tiles cut it.

Each tile's Mask R-CNN detections are pasted into the model grid (:func:`tile_detections`). Neighbouring tiles
overlap, so a building in an overlap is detected twice, and a building cut by a tile's edge comes out as a piece
there. The rules, applied to groups of detections that overlap:

* **Same building.** Two detections of different tiles are the same building when their masks' IoU, counted only
  inside the part of the raster both tiles see (their windows' intersection), is at least ``iou`` (0.5). Outside
  that part one of them is blind, so a piece cut by its tile's edge still matches the whole building seen by the
  other tile. Detections of one tile are never the same building (the model separated them).
* **Cut or whole.** A detection is *cut* when its mask reaches an edge of its tile that lies inside the raster
  (within ``EDGE_PX`` pixels): the building may go on beyond what the tile saw.
* **Duplicates suppressed.** Whole detections are kept best score first; one that is the same building as a kept one
  is dropped (non-maximum suppression by mask IoU across tile borders). A cut piece of a kept whole building is
  dropped too.
* **Cut buildings made whole.** Cut pieces that no whole detection explains are joined with the cut pieces of other
  tiles they match (union of masks, area-weighted mean score): a building larger than any tile's view comes out as
  one instance.

:class:`InstanceMerger` streams this: detections are held until no later tile can overlap them, then their group is
resolved and handed on, so memory follows the tile rows in flight, not the raster.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from mtp_core.models.multitask.mask_head import _paste_chunk

INSTANCE_IOU = 0.5  # mask IoU (inside the tiles' common window) above which two tiles' detections are one building
EDGE_PX = 2  # a mask this close to an inner tile edge is cut by it
MASK_LEVEL = 128  # mask probability x 255 from which a pixel belongs to a detection (0.5, as mmdet pastes)
MIN_PIXELS = 4  # detections with fewer mask pixels are dropped

Window = tuple[int, int, int, int]  # y0, x0, y1, x1 in the model grid, end exclusive


@dataclass
class Detection:
    """One detection in the model grid: its mask probability (x 255) over the crop at (y0, x0), score, 0-based
    object label, the tile that made it (index and window) and whether that tile's edge cut it."""

    y0: int
    x0: int
    prob: np.ndarray  # (h, w) uint8
    score: float
    label: int
    tile: int
    window: Window
    cut: bool

    @property
    def y1(self) -> int:
        return self.y0 + self.prob.shape[0]

    @property
    def x1(self) -> int:
        return self.x0 + self.prob.shape[1]

    @property
    def mask(self) -> np.ndarray:
        return self.prob >= MASK_LEVEL


@dataclass
class Instance:
    """A building after merging: mask probability (x 255, the mask where >= 128) over the crop at (y0, x0), score,
    0-based object label."""

    y0: int
    x0: int
    prob: np.ndarray
    score: float
    label: int

    @property
    def mask(self) -> np.ndarray:
        return self.prob >= MASK_LEVEL


def tile_detections(bboxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, mask_probs: torch.Tensor,
                    origin: tuple[int, int], size: int, shape: tuple[int, int], valid: np.ndarray, tile: int,
                    score_threshold: float) -> list[Detection]:
    """One tile's detections (boxes in tile pixels, 28 x 28 mask probabilities) pasted into the model grid, as
    mmdet pastes them (``grid_sample`` over each box's pixel window), clipped to the raster and to valid pixels.
    ``origin`` (y, x) of the tile, ``shape`` (height, width) of the raster."""
    oy, ox = origin
    height, width = shape
    window = (oy, ox, min(oy + size, height), min(ox + size, width))
    inner = (oy > 0, ox > 0, oy + size < height, ox + size < width)  # top, left, bottom, right edges inside
    limit_h, limit_w = window[2] - oy, window[3] - ox
    out = []
    for i in np.flatnonzero(scores >= score_threshold):
        box = torch.as_tensor(bboxes[i : i + 1], dtype=torch.float32)
        pasted, (rows, cols) = _paste_chunk(mask_probs[i : i + 1, None].float(), box, size, size, skip_empty=True)
        prob = np.rint(pasted[0].numpy().clip(0.0, 1.0) * 255.0).astype(np.uint8)
        r0, c0 = rows.start, cols.start
        r1, c1 = min(rows.stop, limit_h), min(cols.stop, limit_w)
        prob = prob[: r1 - r0, : c1 - c0] * valid[r0:r1, c0:c1]
        mask = prob >= MASK_LEVEL
        if mask.sum() < MIN_PIXELS:
            continue
        ys, xs = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        prob = np.ascontiguousarray(prob[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1])
        top, left = r0 + ys[0], c0 + xs[0]
        bottom, right = r0 + ys[-1] + 1, c0 + xs[-1] + 1
        cut = (inner[0] and top < EDGE_PX) or (inner[1] and left < EDGE_PX) or \
            (inner[2] and bottom > size - EDGE_PX) or (inner[3] and right > size - EDGE_PX)
        out.append(Detection(int(oy + top), int(ox + left), prob, float(scores[i]), int(labels[i]), tile, window,
                             bool(cut)))
    return out


def window_iou(a: Detection, b: Detection) -> float:
    """Mask IoU of two detections inside the window both of their tiles see."""
    y0, x0 = max(a.window[0], b.window[0], min(a.y0, b.y0)), max(a.window[1], b.window[1], min(a.x0, b.x0))
    y1, x1 = min(a.window[2], b.window[2], max(a.y1, b.y1)), min(a.window[3], b.window[3], max(a.x1, b.x1))
    if y0 >= y1 or x0 >= x1:
        return 0.0
    ma, mb = _in_frame(a, y0, x0, y1, x1), _in_frame(b, y0, x0, y1, x1)
    union = np.count_nonzero(ma | mb)
    return np.count_nonzero(ma & mb) / union if union else 0.0


def _in_frame(d: Detection, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    """The detection's mask on the frame [y0, y1) x [x0, x1) of the model grid."""
    out = np.zeros((y1 - y0, x1 - x0), bool)
    ry0, rx0, ry1, rx1 = max(d.y0, y0), max(d.x0, x0), min(d.y1, y1), min(d.x1, x1)
    if ry0 < ry1 and rx0 < rx1:
        out[ry0 - y0 : ry1 - y0, rx0 - x0 : rx1 - x0] = d.mask[ry0 - d.y0 : ry1 - d.y0, rx0 - d.x0 : rx1 - d.x0]
    return out


@dataclass
class _Kept:
    members: list[Detection] = field(default_factory=list)

    @property
    def cut(self) -> bool:
        return all(m.cut for m in self.members)

    @property
    def tiles(self) -> set[int]:
        return {m.tile for m in self.members}


def resolve(group: Sequence[Detection], same: set[tuple[int, int]]) -> list[Instance]:
    """The buildings of a group of overlapping detections (module docstring); ``same`` holds the index pairs
    (i < j) of the group's detections that are the same building."""
    order = sorted(range(len(group)), key=lambda i: (group[i].cut, -group[i].score, group[i].tile, i))
    kept: list[tuple[_Kept, list[int]]] = []
    for i in order:
        det = group[i]
        related = [(k, idx) for k, idx in kept if any((min(i, j), max(i, j)) in same for j in idx)]
        if any(not k.cut for k, _ in related):
            continue  # a duplicate, or a piece, of a whole building already kept
        joinable = [(k, idx) for k, idx in related if det.tile not in k.tiles] if det.cut else []
        if joinable:
            joinable[0][0].members.append(det)
            joinable[0][1].append(i)
        else:
            kept.append((_Kept([det]), [i]))
    return [_union(k.members) for k, _ in kept]


def _union(members: Sequence[Detection]) -> Instance:
    """One instance from the detections of one building: the union of their masks (highest probability per pixel)
    and their area-weighted mean score; the label of the first (best) one."""
    if len(members) == 1:
        d = members[0]
        return Instance(d.y0, d.x0, d.prob, d.score, d.label)
    y0, x0 = min(m.y0 for m in members), min(m.x0 for m in members)
    y1, x1 = max(m.y1 for m in members), max(m.x1 for m in members)
    prob = np.zeros((y1 - y0, x1 - x0), np.uint8)
    for m in members:
        view = prob[m.y0 - y0 : m.y1 - y0, m.x0 - x0 : m.x1 - x0]
        np.maximum(view, m.prob, out=view)
    areas = np.array([np.count_nonzero(m.mask) for m in members], np.float64)
    score = float(np.dot(areas, [m.score for m in members]) / areas.sum())
    return Instance(y0, x0, prob, score, members[0].label)


class InstanceMerger:
    """Streams the rules of the module docstring: :meth:`add` a tile's detections (tiles in grid order), then
    :meth:`finish` once the tiles above a row are all added, to get the buildings no later tile can change."""

    def __init__(self, iou: float = INSTANCE_IOU) -> None:
        self.iou = iou
        self.held: list[Detection] = []
        self.same: list[tuple[int, int]] = []  # pairs of positions in ``held``

    @property
    def top(self) -> int | None:
        """The first row of the detections still held (None when none is)."""
        return min((d.y0 for d in self.held), default=None)

    def add(self, detections: Sequence[Detection]) -> None:
        """Holds a tile's detections and finds which held ones of other tiles are the same building."""
        if not detections:
            return
        boxes = np.array([(d.y0, d.x0, d.y1, d.x1, d.tile) for d in self.held], np.int64).reshape(-1, 5)
        for det in detections:
            near = np.flatnonzero((boxes[:, 0] < det.y1) & (boxes[:, 2] > det.y0) & (boxes[:, 1] < det.x1)
                                  & (boxes[:, 3] > det.x0) & (boxes[:, 4] != det.tile))
            index = len(self.held)
            self.same += [(int(j), index) for j in near if window_iou(self.held[j], det) >= self.iou]
            self.held.append(det)

    def finish(self, limit: float) -> list[Instance]:
        """Buildings of the groups whose detections all end above row ``limit`` (no later tile reaches them), in
        reading order of their groups; the other detections stay held."""
        if not self.held:
            return []
        n = len(self.held)
        pairs = np.array(self.same, np.int64).reshape(-1, 2)
        graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
        _, label = connected_components(graph, directed=False)
        bottom = np.zeros(label.max() + 1, np.int64)
        np.maximum.at(bottom, label, [d.y1 for d in self.held])
        done = bottom[label] <= limit
        if not done.any():
            return []
        groups: dict[int, list[int]] = {}
        for i in np.flatnonzero(done):
            groups.setdefault(int(label[i]), []).append(int(i))
        pairs_of: dict[int, list[tuple[int, int]]] = {}
        for a, b in self.same:
            if done[a]:
                pairs_of.setdefault(int(label[a]), []).append((a, b))
        out: list[Instance] = []
        for group, members in groups.items():
            local = {g: k for k, g in enumerate(members)}
            same = {(min(local[a], local[b]), max(local[a], local[b])) for a, b in pairs_of.get(group, [])}
            out += resolve([self.held[g] for g in members], same)
        keep = np.flatnonzero(~done)
        remap = {int(old): new for new, old in enumerate(keep)}
        self.held = [self.held[i] for i in keep]
        self.same = [(remap[a], remap[b]) for a, b in self.same if a in remap and b in remap]
        return sorted(out, key=lambda inst: (inst.y0, inst.x0, -inst.score))
