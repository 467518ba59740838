"""Synthetic scenes where buildings share walls: rows of terraced houses and semi-detached pairs, one label per house.

Why: a semantic mask merges buildings that touch into one region, so one polygon stands for a whole terrace and
SpaceNet's polygon F1 counts every house of it as missed. These scenes show that problem and train and measure what
solves it (instances). ``render_touching_scene(..., fraction)`` fills street blocks either with the ordinary
suburb of :mod:`.render` or with rows whose houses touch, choosing each block so that the share of buildings that
touch another stays at ``fraction`` (:func:`touching_fraction` measures it on the result).

A row is cut into groups (terraces of 3-8 houses, or pairs) separated by side passages; the houses of a group stand
wall to wall (their footprints share an edge exactly), each with its own roof (its colour, most of the time
different from its neighbour's; gable, hip or flat for the whole group; its own height), its front garden and a
path to the street. What separates two houses in the image is what separates them in real terraces: a change of
roof colour, the hip or ridge lines of each roof, a parapet between flat roofs, a step in the front wall.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import shapely
from shapely.geometry import Polygon, box

from mtp_tools.synthetic.render import (
    Scene,
    _block,
    _LotWriter,
    _make_building,
    _Plan,
    _shift,
    _Street,
    _Style,
    render_scene,
)

_MIN_ROW_M = 12.0  # a block side shorter than this gets the ordinary suburb
_VIEW_MARGIN_M = 20.0  # render._layout fills blocks within this distance of the scene


def touching_mask(polygons: Sequence[Polygon], tolerance: float = 0.25) -> np.ndarray:
    """Which polygons share a stretch of wall (longer than ``tolerance``, in the polygons' units) with another."""
    if len(polygons) == 0:
        return np.zeros(0, bool)
    geoms = np.asarray(polygons, dtype=object)
    i, j = shapely.STRtree(geoms).query(shapely.buffer(geoms, tolerance / 10), predicate="intersects")
    keep = i < j
    i, j = i[keep], j[keep]
    shared = shapely.length(shapely.intersection(shapely.boundary(geoms[i]), shapely.buffer(geoms[j], 1e-6)))
    touching = np.zeros(len(geoms), bool)
    touching[i[shared > tolerance]] = touching[j[shared > tolerance]] = True
    return touching


def touching_fraction(polygons: Sequence[Polygon], tolerance: float = 0.25) -> float:
    """Share of polygons that share a stretch of wall with another (:func:`touching_mask`); 0 for no polygons."""
    return float(touching_mask(polygons, tolerance).mean()) if len(polygons) else 0.0


class TouchingBlocks:
    """A block filler for :func:`~mtp_tools.synthetic.render.render_scene`: a block becomes rows of touching houses
    while the share of touching buildings placed so far is below ``fraction``, else the ordinary suburb."""

    def __init__(self, fraction: float) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"the touching fraction must be between 0 and 1, got {fraction}")
        self.fraction = fraction
        self.touching = 0
        self.total = 0

    def __call__(self, rng: np.random.Generator, plan: _Plan, block: tuple, south: _Street, north: _Street,
                 style: _Style, view: Polygon) -> None:
        before = len(plan.buildings)
        u0, v0, u1, v1 = block
        rows = u1 - u0 >= _MIN_ROW_M and v1 - v0 >= 2 * 14.0
        if rows and self.fraction > 0 and self.touching <= self.fraction * (self.total + 1):
            depth = (v1 - v0) / 2
            flip = np.array([[1.0, 0.0, u0], [0.0, -1.0, v1], [0.0, 0.0, 1.0]])  # front on the north street
            for writer, street in ((_LotWriter(plan, _shift(u0, v0)), south), (_LotWriter(plan, flip), north)):
                band = box(u0, v0, u1, v0 + depth) if writer.m[1, 1] > 0 else box(u0, v1 - depth, u1, v1)
                if view.intersects(band):
                    _row(rng, writer, u1 - u0, depth, street.reach - street.half)
        else:
            _block(rng, plan, block, south, north, style, view)
        scene = view.buffer(-_VIEW_MARGIN_M)  # the layout's view is the scene grown by this margin
        placed = [b.footprint.intersection(scene) for b in plan.buildings[before:]]
        placed = [p for p in placed if not p.is_empty and p.area > 1.0]
        self.total += len(placed)
        self.touching += round(touching_fraction(placed, 0.25) * len(placed))


def _row(rng: np.random.Generator, out: _LotWriter, length: float, depth: float, kerb: float) -> None:
    """One side of a block (s along the street, t from the front line) as groups of houses wall to wall."""
    out.add("lots", box(0, 0, length, depth), rng.normal(1.0, 0.045, 3).astype(np.float32))
    s = rng.uniform(0.5, 3.0)
    while length - s >= 9.0:
        pair = rng.random() < 0.4
        count = 2 if pair else int(rng.integers(3, 9))
        widths = rng.uniform(7.0, 11.0, count) if pair else rng.uniform(5.0, 8.5, count)
        while count > 1 and s + widths[:count].sum() > length - 0.5:
            count -= 1
        if count < 2:
            break
        _group(rng, out, s, widths[:count], depth, kerb)
        s += float(widths[:count].sum()) + rng.uniform(2.5, 6.0)
    for _ in range(rng.poisson(length / 25.0)):
        out.tree(rng.uniform(0, length), rng.uniform(depth - 4.0, depth - 1.5), rng, (1.8, 3.2))


def _group(rng: np.random.Generator, out: _LotWriter, s0: float, widths: np.ndarray, depth: float,
           kerb: float) -> None:
    """Houses of ``widths`` side by side from ``s0``: shared walls, one roof type, a roof and height each."""
    setback = rng.uniform(2.5, 6.5)
    house_d = min(rng.uniform(8.0, 13.0), depth - setback - 3.0)
    if house_d < 6.0:
        return
    roof = str(rng.choice(["gable", "hip", "flat"], p=[0.45, 0.35, 0.2]))
    stagger = rng.random() < 0.35
    height = rng.uniform(5.0, 9.0)
    edges = s0 + np.concatenate([[0.0], np.cumsum(widths)])
    previous = None
    for left, right in zip(edges[:-1], edges[1:]):
        front = setback + (rng.uniform(-0.8, 0.8) if stagger else 0.0)
        house = _make_building(rng, "rect", float(right - left), house_d, roof, height + rng.uniform(-0.8, 0.8))
        if previous is not None and rng.random() < 0.3:  # some neighbours share a roof colour
            house.rgb = np.clip(previous.rgb * rng.uniform(0.97, 1.03), 0, 255)
        house = house.moved(_shift(float(left), front))
        out.building(house)
        out.add("paved", box(left + (right - left) / 2 - 0.6, -kerb, left + (right - left) / 2 + 0.6, front),
                np.array([178, 174, 166], np.float32) * rng.uniform(0.9, 1.05))
        if rng.random() < 0.3:
            out.add("hedges", box(left, 0.0, right, 0.6))
        previous = house


def render_touching_scene(height: int, width: int, seed: int, fraction: float, gsd_m: float = 0.5) -> Scene:
    """A synthetic scene (as :func:`~mtp_tools.synthetic.render.render_scene`) where about ``fraction`` of the
    buildings share a wall with another; the same for the same arguments."""
    return render_scene(height, width, seed, gsd_m, fill_block=TouchingBlocks(fraction))
