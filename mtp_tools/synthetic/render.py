"""Synthetic georeferenced suburb scenes with exact building labels.

Why: the demo model, ``make demo`` and the tiling/vectorization/CRS tests need aerial-looking images whose ground
truth is known exactly, without downloading data. A scene is a rotated street grid with sidewalks, verges, lane
markings and parked cars; residential blocks split into lots (house, driveway, shed, pool, hedges, trees),
commercial blocks (large flat-roofed buildings, some with courtyards, behind striped parking lots) and parks.
Buildings cast shadows away from one sun per scene; roofs are shaded per facet (gable/hip) or flat with parapets and
rooftop units; paved surfaces share colours with roofs so a model has to use shape, texture and shadow cues.

Labels: ``Scene.buildings`` are shapely polygons in pixel coordinates (x right, y down, pixel edges on integers)
and ``Scene.mask`` is their pixel-centre rasterization (:func:`~mtp_tools.synthetic.rasterize.rasterize_polygons`,
GDAL's rasterizer), so polygon areas and mask counts agree. Trees are kept off roofs (canopies are placed clear of
buildings, and roofs are painted after canopies), so what a model sees as roof is exactly what the mask says is roof.

Rendering is numpy + shapely in memory; :func:`~mtp_tools.synthetic.files.write_scene` writes a GeoTIFF and a
GeoJSON.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
import shapely
from shapely.geometry import LineString, Polygon, box

from mtp_tools.synthetic.rasterize import coverage, pixels_of, rasterize_polygons

# Reference colours (sRGB, 0-255). Roofs and paved surfaces deliberately share tones (grey, dark, red, light).
_PITCHED_ROOFS = np.array(
    [[132, 130, 128], [66, 68, 74], [172, 92, 64], [142, 74, 56], [112, 90, 72], [92, 98, 110], [200, 194, 182]],
    np.float32,
)
_PITCHED_WEIGHTS = np.array([0.2, 0.18, 0.2, 0.12, 0.12, 0.1, 0.08])
_FLAT_ROOFS = np.array([[216, 216, 210], [166, 162, 154], [122, 122, 124], [76, 77, 82]], np.float32)
_FLAT_WEIGHTS = np.array([0.35, 0.3, 0.2, 0.15])
_PAVINGS = np.array(
    [[178, 174, 166], [94, 95, 97], [158, 110, 90], [140, 138, 133], [170, 160, 140]], np.float32
)  # concrete, asphalt, red pavers, grey pavers, gravel
_PAVING_WEIGHTS = np.array([0.35, 0.25, 0.15, 0.15, 0.1])
_CAR_COLOURS = np.array(
    [[222, 224, 226], [172, 174, 178], [36, 37, 41], [102, 104, 108], [158, 32, 30], [40, 62, 122], [42, 72, 52],
     [192, 176, 140]],
    np.float32,
)
_CAR_WEIGHTS = np.array([0.24, 0.2, 0.2, 0.14, 0.08, 0.07, 0.03, 0.04])
_LUSH, _GRASS, _DRY = (np.array(c, np.float32) for c in ([72, 104, 48], [96, 118, 62], [146, 138, 92]))
_TREE_GREENS = np.array([[50, 76, 40], [62, 88, 46], [40, 60, 38], [74, 92, 52]], np.float32)
_HEDGE = np.array([46, 70, 38], np.float32)
_SIDEWALK = np.array([184, 181, 174], np.float32)
_COPING = np.array([206, 204, 196], np.float32)
_WATER = np.array([64, 168, 190], np.float32)
_GLASS = np.array([34, 40, 48], np.float32)
_VENT = np.array([204, 204, 200], np.float32)
_SOLAR = np.array([30, 36, 58], np.float32)
_SHADOW_TINT = np.array([0.40, 0.45, 0.56], np.float32)  # shadows are lit by blue sky light only
_WEEDS = np.array([104, 116, 64], np.float32)


@dataclass(frozen=True)
class Scene:
    """One rendered scene: RGB image, building mask and the building polygons the mask was rasterized from."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    mask: np.ndarray  # (H, W) uint8, 1 = building
    buildings: list[Polygon]  # pixel coordinates, x right, y down
    gsd_m: float
    seed: int
    sun_azimuth_deg: float  # clockwise from north (image up); shadows point the opposite way

    @property
    def cover(self) -> float:
        """Fraction of pixels that are building."""
        return float(self.mask.mean())


# ----------------------------------------------------------------------------------------------------------------
# Noise


def value_noise(shape: tuple[int, int], rng: np.random.Generator, cell_px: float, octaves: int = 3,
                persistence: float = 0.5) -> np.ndarray:
    """Multi-octave value noise (float32, roughly in [-0.7, 0.7]): smooth random variation at ``cell_px`` and finer.

    Natural surfaces (lawn, asphalt wear, roof weathering) vary at several scales at once; this is the cheapest
    separable way to get that from numpy alone.
    """
    height, width = shape
    total = np.zeros(shape, np.float32)
    amp, norm, cell = 1.0, 0.0, float(cell_px)
    for _ in range(octaves):
        cell = max(cell, 1.0)
        total += np.float32(amp) * _smooth_grid(rng, height, width, cell)
        norm += amp
        amp *= persistence
        cell /= 2.0
    return total / np.float32(norm)


def _smooth_grid(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    grid = rng.uniform(-1.0, 1.0, (int(height / cell) + 3, int(width / cell) + 3)).astype(np.float32)
    iy, fy = _lerp_coords(height, cell, rng.random())
    ix, fx = _lerp_coords(width, cell, rng.random())
    rows = grid[iy] + (grid[iy + 1] - grid[iy]) * fy[:, None]
    return rows[:, ix] + (rows[:, ix + 1] - rows[:, ix]) * fx[None, :]


def _lerp_coords(n: int, cell: float, phase: float) -> tuple[np.ndarray, np.ndarray]:
    pos = (np.arange(n) + 0.5) / cell + phase
    i = np.floor(pos).astype(np.intp)
    f = (pos - i).astype(np.float32)
    return i, f * f * (3.0 - 2.0 * f)


# ----------------------------------------------------------------------------------------------------------------
# Layout: geometry in a street-aligned frame (u along the main streets, v across them), in metres


def _shift(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


def _rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def apply_affine(m: np.ndarray, geom):
    """Affine 3x3 ``m`` applied to a shapely geometry or an array of them."""
    return shapely.transform(geom, lambda xy: xy @ m[:2, :2].T + m[:2, 2])


def _apply_xy(m: np.ndarray, xy: np.ndarray) -> np.ndarray:
    return xy @ m[:2, :2].T + m[:2, 2]


def _rect_corners(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])


def _choose(rng: np.random.Generator, options: Sequence, weights: Sequence[float]):
    """One of ``options`` with the given relative weights (``rng.choice`` with ``p`` is ten times slower)."""
    cumulative = np.cumsum(weights)
    return options[int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))]


def _pick(rng: np.random.Generator, colours: np.ndarray, weights: np.ndarray, jitter: float = 0.06) -> np.ndarray:
    """A palette colour with brightness and slight hue jitter, so no two objects are exactly alike."""
    rgb = _choose(rng, colours, weights)
    return np.clip(rgb * rng.uniform(1 - 2 * jitter, 1 + 2 * jitter) * rng.normal(1.0, jitter / 5, 3), 0, 255)


@dataclass
class _Building:
    footprint: Polygon
    parts: np.ndarray  # (P, 4, 2) roof rectangles; corner order follows the local box, later parts on top
    roof: str  # "gable" | "hip" | "flat"
    rgb: np.ndarray
    height_m: float
    pitch: float  # roof slope, radians
    solar: bool
    vents: list[Polygon]  # rooftop units (flat roofs)

    def moved(self, m: np.ndarray) -> "_Building":
        return _Building(apply_affine(m, self.footprint), _apply_xy(m, self.parts), self.roof, self.rgb, self.height_m,
                         self.pitch, self.solar, [apply_affine(m, v) for v in self.vents])


@dataclass
class _Plan:
    """Everything a scene contains, as geometry plus per-object attributes, in one coordinate system."""

    lots: list = field(default_factory=list)  # (polygon, rgb multiplier)
    hedges: list = field(default_factory=list)
    paved: list = field(default_factory=list)  # (polygon, rgb)
    soil: list = field(default_factory=list)  # (polygon, rgb): cleared plots (two-date pairs), mottled and weedy
    sidewalks: list = field(default_factory=list)
    roads: list = field(default_factory=list)
    markings: list = field(default_factory=list)
    pools: list = field(default_factory=list)
    cars: list = field(default_factory=list)  # ((4, 2) corners, long axis first; rgb)
    trees: list = field(default_factory=list)  # (x, y, radius, height_m, green index)
    buildings: list[_Building] = field(default_factory=list)


@dataclass(frozen=True)
class _Style:
    grid_angle: float
    sun_azimuth: float  # radians clockwise from north
    sun_elevation: float
    line_w: float  # painted lines are at least a pixel wide so they survive pixel-centre rasterization
    asphalt: np.ndarray
    marking: np.ndarray
    dryness: float
    density: float  # 0 = large lots, many parks; 1 = small lots filled by their houses, more commercial blocks


def _scene_style(rng: np.random.Generator, gsd_m: float) -> _Style:
    grid_angle = 0.0 if rng.random() < 0.3 else rng.uniform(0.0, np.pi)
    marking = np.array([235, 235, 230] if rng.random() < 0.7 else [225, 190, 70], np.float32)
    return _Style(grid_angle, rng.uniform(0.0, 2 * np.pi), np.radians(rng.uniform(35.0, 65.0)), max(0.15, gsd_m),
                  np.full(3, rng.uniform(72.0, 108.0), np.float32) * np.array([0.98, 1.0, 1.03], np.float32),
                  marking, rng.uniform(-0.5, 0.4), rng.uniform(0.0, 1.0))


def _make_building(rng: np.random.Generator, kind: str, w: float, d: float, roof: str, height_m: float) -> _Building:
    """A footprint of ``kind`` inside the local box [0, w] x [0, d] (front at y = 0) and its roof rectangles."""
    if kind == "courtyard":
        t = rng.uniform(7.0, min(11.0, (min(w, d) - 6.0) / 2))
        parts = [(0, 0, w, t), (0, d - t, w, d), (0, 0, t, d), (w - t, 0, w, d)]
        footprint = Polygon(_rect_corners(0, 0, w, d), [_rect_corners(t, t, w - t, d - t)[::-1]])
    else:
        main_d = d if kind == "rect" else d * rng.uniform(0.5, 0.72)
        wing_w = min(w * rng.uniform(0.3, 0.5), w - 2.0)
        wing_w = max(wing_w, min(4.0, w / 2))
        overlap = min(2.0, main_d / 3)
        parts = [(0, 0, w, main_d)]
        if kind == "L":
            x0 = 0.0 if rng.random() < 0.5 else w - wing_w
            parts.append((x0, main_d - overlap, x0 + wing_w, d))
        elif kind == "T":
            parts.append(((w - wing_w) / 2, main_d - overlap, (w + wing_w) / 2, d))
        elif kind == "U":
            wing_w = min(wing_w, w / 3)
            parts += [(0, main_d - overlap, wing_w, d), (w - wing_w, main_d - overlap, w, d)]
        footprint = shapely.union_all([box(*p) for p in parts]).simplify(0)  # drops collinear vertices
    vents: list[Polygon] = []
    if roof == "flat":
        vents = _rooftop_units(rng, footprint, parts)
    return _Building(footprint, np.array([_rect_corners(*p) for p in parts]), roof, _roof_colour(rng, roof),
                     height_m, np.radians(rng.uniform(25.0, 40.0)), roof != "flat" and rng.random() < 0.12, vents)


def _roof_colour(rng: np.random.Generator, roof: str) -> np.ndarray:
    if roof == "flat":
        return _pick(rng, _FLAT_ROOFS, _FLAT_WEIGHTS)
    return _pick(rng, _PITCHED_ROOFS, _PITCHED_WEIGHTS)


def _rooftop_units(rng: np.random.Generator, footprint: Polygon, parts: list[tuple]) -> list[Polygon]:
    """Air-handling boxes on flat roofs: small bright squares with their own little shadows, a strong roof cue."""
    units: list[Polygon] = []
    for _ in range(min(int(rng.poisson(footprint.area / 120.0)), 8)):
        x0, y0, x1, y1 = parts[rng.integers(len(parts))]
        size = rng.uniform(1.2, 3.0)
        if x1 - x0 < size + 3 or y1 - y0 < size + 3:
            continue
        x, y = rng.uniform(x0 + 1.5, x1 - 1.5 - size), rng.uniform(y0 + 1.5, y1 - 1.5 - size)
        unit = box(x, y, x + size, y + size * rng.uniform(0.6, 1.6))
        if footprint.buffer(-1.0).contains(unit) and all(unit.distance(u) > 0.8 for u in units):
            units.append(unit)
    return units


def _place(building: _Building, lot_box: Polygon, x0: float, y0: float, angle: float) -> _Building:
    """Building moved so its local box starts at (x0, y0), turned about its centre; unturned if that leaves the lot."""
    cx, cy = building.parts[:, :, 0].max() / 2, building.parts[:, :, 1].max() / 2

    def turned(a: float) -> _Building:
        return building.moved(_shift(x0 + cx, y0 + cy) @ _rotation(a) @ _shift(-cx, -cy))

    placed = turned(angle)
    return placed if lot_box.contains(placed.footprint) else turned(0.0)


def _car(rng: np.random.Generator, cx: float, cy: float, along_x: bool) -> tuple[np.ndarray, np.ndarray]:
    length, width = rng.uniform(4.2, 4.9), rng.uniform(1.75, 1.9)
    hl, hw = (length / 2, width / 2) if along_x else (width / 2, length / 2)
    corners = _rect_corners(cx - hl, cy - hw, cx + hl, cy + hw)
    if not along_x:  # long axis first, so the painter knows where the windscreen goes
        corners = corners[[0, 3, 2, 1]]
    if rng.random() < 0.5:  # facing the other way
        corners = corners[[2, 3, 0, 1]]
    return corners, _pick(rng, _CAR_COLOURS, _CAR_WEIGHTS, 0.03)


class _LotWriter:
    """Adds lot-local geometry (s along the street, t from the front line into the lot) to the plan."""

    def __init__(self, plan: _Plan, m: np.ndarray):
        self.plan, self.m = plan, m

    def building(self, b: _Building) -> None:
        self.plan.buildings.append(b.moved(self.m))

    def add(self, layer: str, geom: Polygon, value=None) -> None:
        getattr(self.plan, layer).append((apply_affine(self.m, geom), value))

    def car(self, corners: np.ndarray, rgb: np.ndarray) -> None:
        self.plan.cars.append((_apply_xy(self.m, corners), rgb))

    def tree(self, s: float, t: float, rng: np.random.Generator, r_range=(1.8, 4.5)) -> None:
        x, y = _apply_xy(self.m, np.array([s, t]))
        self.plan.trees.append((x, y, rng.uniform(*r_range), rng.uniform(5.0, 14.0), rng.integers(len(_TREE_GREENS))))


def _residential_lot(rng: np.random.Generator, out: _LotWriter, lot_w: float, lot_d: float, kerb: float,
                     density: float) -> None:
    """A house facing the street with a driveway to the kerb; maybe a car, shed, pool, hedges and garden trees."""
    lot = box(0, 0, lot_w, lot_d)
    out.add("lots", lot, rng.normal(1.0, 0.045, 3).astype(np.float32))
    for _ in range(rng.poisson(1.6)):
        out.tree(rng.uniform(0, lot_w), rng.uniform(-kerb * 0.4, lot_d), rng)
    if rng.random() < 0.3:
        out.add("hedges", box(0, lot_d - 0.9, lot_w, lot_d))
    if rng.random() < 0.25:
        out.add("hedges", box(lot_w - 0.9, rng.uniform(0, 6), lot_w, lot_d))
    side, setback = rng.uniform(1.0, 3.0), rng.uniform(3.0, 8.0)
    avail_w, avail_d = lot_w - 2 * side, lot_d - setback - 5.0
    if avail_w < 8.0 or avail_d < 7.5:
        return
    w_max, d_max = min(20.0, avail_w), min(16.0, avail_d)
    w = rng.uniform(min(8.0 + 5.0 * density, w_max), w_max)
    d = rng.uniform(min(7.5 + 4.0 * density, d_max), d_max)
    kind = _choose(rng, ["rect", "L", "T", "U"], [0.5, 0.32, 0.12, 0.06])
    roof = _choose(rng, ["gable", "hip", "flat"], [0.5, 0.38, 0.12])
    angle = rng.uniform(-np.pi / 4, np.pi / 4) if rng.random() < 0.1 else rng.normal(0.0, np.radians(1.5))
    x0 = side + rng.uniform(0, avail_w - w)
    house = _place(_make_building(rng, kind, w, d, roof, rng.uniform(4.5, 8.5)), lot.buffer(-0.5), x0, setback, angle)
    out.building(house)
    _driveway(rng, out, lot_w, kerb, x0, w, setback, d)
    back = setback + d + 1.5
    built = [house.footprint]
    if rng.random() < 0.35 and lot_d - 0.8 - back > 3.5:
        built += _shed(rng, out, lot, house.footprint, lot_w, lot_d, back)
    if rng.random() < 0.15:
        _pool(rng, out, built, lot_w, lot_d, back)


def _pool(rng: np.random.Generator, out: _LotWriter, built: list[Polygon], lot_w: float, lot_d: float,
          back: float) -> None:
    """A swimming pool in the back yard, clear of the lot's buildings."""
    pw, pd = rng.uniform(5.0, 10.0), rng.uniform(3.0, 5.0)
    if pw >= lot_w - 2.0 or pd >= lot_d - 1.0 - back:
        return
    x, y = rng.uniform(1.0, lot_w - 1.0 - pw), rng.uniform(back, lot_d - 1.0 - pd)
    pool = box(x, y, x + pw, y + pd)
    if all(pool.distance(b) > 1.5 for b in built):
        out.add("pools", pool)


def _driveway(rng: np.random.Generator, out: _LotWriter, lot_w: float, kerb: float, x0: float, w: float,
              setback: float, d: float) -> None:
    """Paved strip from the kerb beside the house (or up to its front wall), often with a car on it."""
    room_left, room_right = x0, lot_w - x0 - w
    room = max(room_left, room_right)
    if room >= 4.2:
        dw = rng.uniform(2.8, min(4.5, room - 1.0))
        s0 = x0 - 0.6 - dw if room_left >= room_right else x0 + w + 0.6
        t_end = setback + d * rng.uniform(0.2, 0.8)
    else:
        dw = rng.uniform(2.8, min(5.5, w * 0.6))
        s0, t_end = x0 + rng.uniform(0, w - dw), setback
    out.add("paved", box(s0, -kerb, s0 + dw, t_end), _pick(rng, _PAVINGS, _PAVING_WEIGHTS))
    if rng.random() < 0.45 and t_end > 5.8:
        out.car(*_car(rng, s0 + dw / 2, rng.uniform(2.8, t_end - 2.8), along_x=False))


def _shed(rng: np.random.Generator, out: _LotWriter, lot: Polygon, house: Polygon, lot_w: float, lot_d: float,
          back: float) -> list[Polygon]:
    """A small outbuilding in the back yard, at least 1.5 m from the house; its footprint, if one fits."""
    sw, sd = rng.uniform(5.0, 8.0), rng.uniform(4.0, 6.0)
    if sw > lot_w - 1.6 or sd > lot_d - 0.8 - back:
        return []
    roof = _choose(rng, ["gable", "flat"], [0.6, 0.4])
    shed = _make_building(rng, "rect", sw, sd, roof, rng.uniform(2.2, 3.2))
    for _ in range(4):
        x, y = rng.uniform(0.8, lot_w - 0.8 - sw), rng.uniform(back, lot_d - 0.8 - sd)
        placed = _place(shed, lot.buffer(-0.5), x, y, rng.normal(0.0, np.radians(2.0)))
        if placed.footprint.distance(house) >= 1.5:
            out.building(placed)
            return [placed.footprint]
    return []


def _commercial_lot(rng: np.random.Generator, out: _LotWriter, lot_w: float, lot_d: float, kerb: float,
                    style: _Style) -> None:
    """A large building (courtyard, U, L, T or slab) behind a striped parking lot with cars."""
    out.add("lots", box(0, 0, lot_w, lot_d), rng.normal(1.0, 0.04, 3).astype(np.float32))
    front, side = rng.uniform(13.0, 19.0), rng.uniform(3.0, 6.0)
    max_w, max_d = min(42.0, lot_w - 2 * side), min(40.0, lot_d - front - 3.0)
    if max_w >= 12.0 and max_d >= 10.0:
        w, d = rng.uniform(max(12.0, 0.6 * max_w), max_w), rng.uniform(max(10.0, 0.6 * max_d), max_d)
        kinds, p = ["rect", "L", "U", "T"], [0.3, 0.3, 0.25, 0.15]
        if min(w, d) >= 22.0:
            kinds, p = kinds + ["courtyard"], [0.15, 0.2, 0.2, 0.1, 0.35]
        kind = _choose(rng, kinds, p)
        roof = "flat" if kind == "courtyard" or rng.random() < 0.75 else _choose(rng, ["gable", "hip"], [1, 1])
        x0 = side + rng.uniform(0, max_w - w)
        building = _make_building(rng, kind, w, d, roof, rng.uniform(6.0, 16.0))
        out.building(_place(building, box(0, 0, lot_w, lot_d).buffer(-0.5), x0, front + 1.5,
                            rng.normal(0.0, np.radians(1.0))))
    _parking(rng, out, lot_w, front, kerb, style)
    for _ in range(rng.poisson(3.0)):
        edge = rng.uniform(0.5, 2.5)
        out.tree(edge if rng.random() < 0.5 else lot_w - edge, rng.uniform(front, lot_d), rng)


def _parking(rng: np.random.Generator, out: _LotWriter, lot_w: float, depth: float, kerb: float,
             style: _Style) -> None:
    asphalt = style.asphalt * rng.uniform(0.9, 1.15)
    out.add("paved", box(1.0, 0.0, lot_w - 1.0, depth), asphalt)
    e0 = rng.uniform(1.0, max(1.0, lot_w - 8.0))
    out.add("paved", box(e0, -kerb, e0 + 7.0, 0.0), asphalt)
    rows = [(depth - 5.2, depth - 0.2)] + ([(0.5, 5.5)] if depth >= 16.0 else [])
    occupancy = rng.uniform(0.25, 0.9)
    half_line = style.line_w / 2
    for t0, t1 in rows:
        stalls = np.arange(2.0, lot_w - 2.0 - 2.6, 2.6)
        for s in stalls:
            out.add("markings", box(s - half_line, t0, s + half_line, t1))
            if rng.random() < occupancy:
                out.car(*_car(rng, s + 1.3 + rng.normal(0, 0.1), (t0 + t1) / 2 + rng.normal(0, 0.2), along_x=False))
        if len(stalls):
            s = stalls[-1] + 2.6
            out.add("markings", box(s - half_line, t0, s + half_line, t1))


def _park(rng: np.random.Generator, out: _LotWriter, width: float, depth: float) -> None:
    """Lawn, clumps of trees and a footpath crossing the block."""
    out.add("lots", box(0, 0, width, depth), np.array([0.95, 1.02, 0.95], np.float32))
    path = LineString([(0, rng.uniform(0, depth)), (width, rng.uniform(0, depth))]).buffer(1.2, cap_style="flat")
    out.add("paved", path, _pick(rng, _PAVINGS[[0, 4]], np.array([0.5, 0.5])))
    for _ in range(rng.poisson(width * depth / 130.0)):
        out.tree(rng.uniform(0, width), rng.uniform(0, depth), rng, (2.5, 6.0))


BlockFiller = Callable[[np.random.Generator, "_Plan", tuple, "_Street", "_Street", "_Style", Polygon], None]


@dataclass(frozen=True)
class _Street:
    centre: float
    half: float  # half the asphalt width
    verge: float  # grass strip between kerb and sidewalk
    sidewalk: float

    @property
    def reach(self) -> float:
        """From the centre line to the back of the sidewalk, where lots begin."""
        return self.half + self.verge + self.sidewalk


def _street(rng: np.random.Generator, centre: float) -> _Street:
    verge = 0.0 if rng.random() < 0.5 else rng.uniform(1.2, 3.0)
    sidewalk = 0.0 if rng.random() < 0.1 else rng.uniform(1.4, 2.4)
    return _Street(centre, rng.uniform(3.0, 4.5), verge, sidewalk)


def _add_street(plan: _Plan, st: _Street, lo: float, hi: float, along_u: bool) -> None:
    """Asphalt and the two sidewalk strips of a street running along u (main) or v (cross), from lo to hi."""
    def rect(a0: float, a1: float) -> Polygon:
        return box(lo, st.centre + a0, hi, st.centre + a1) if along_u else box(st.centre + a0, lo, st.centre + a1, hi)

    plan.roads.append((rect(-st.half, st.half), None))
    if st.sidewalk > 0:
        inner = st.half + st.verge
        plan.sidewalks += [(rect(inner, st.reach), None), (rect(-st.reach, -inner), None)]


def _layout(rng: np.random.Generator, height: int, width: int, gsd_m: float, style: _Style,
            fill_block: BlockFiller | None = None) -> _Plan:
    """Streets, blocks and their contents in the street frame; only blocks near the scene are filled."""
    plan = _Plan()
    w_m, h_m = width * gsd_m, height * gsd_m
    reach = 0.5 * np.hypot(w_m, h_m) + 40.0
    to_frame = _rotation(-style.grid_angle) @ _shift(-w_m / 2, -h_m / 2)
    view = apply_affine(to_frame, box(0, 0, w_m, h_m)).buffer(20.0)
    shapely.prepare(view)
    mains = [_street(rng, -reach - rng.uniform(0, 60.0))]
    while mains[-1].centre < reach + 60.0:
        nxt = _street(rng, 0.0)
        mains.append(replace(nxt, centre=mains[-1].centre + mains[-1].reach + nxt.reach + rng.uniform(44.0, 68.0)))
    crossings: list[list[_Street]] = []
    for a, b in zip(mains[:-1], mains[1:]):
        row = [_street(rng, -reach - rng.uniform(0, 120.0))]
        while row[-1].centre < reach + 120.0:
            row.append(_street(rng, row[-1].centre + rng.uniform(100.0, 230.0)))
        crossings.append(row)
        for cross in row:
            if view.intersects(box(cross.centre - cross.reach, a.centre, cross.centre + cross.reach, b.centre)):
                _add_street(plan, cross, a.centre, b.centre, along_u=False)
                _dashes(plan, style, cross, a.centre + a.half + 1.0, b.centre - b.half - 1.0, False, view, [])
        for c0, c1 in zip(row[:-1], row[1:]):
            block = (c0.centre + c0.reach, a.centre + a.reach, c1.centre - c1.reach, b.centre - b.reach)
            if view.intersects(box(*block)):
                (fill_block or _block)(rng, plan, block, a, b, style, view)
    for j, st in enumerate(mains):
        if view.intersects(box(-reach, st.centre - st.reach, reach, st.centre + st.reach)):
            _add_street(plan, st, -reach, reach, along_u=True)
            near = (crossings[j - 1] if j > 0 else []) + (crossings[j] if j < len(crossings) else [])
            _dashes(plan, style, st, -reach, reach, True, view, near)
            _street_life(rng, plan, st, reach, near, view)
    return plan


def _dashes(plan: _Plan, style: _Style, st: _Street, lo: float, hi: float, along_u: bool, view: Polygon,
            crossings: list[_Street]) -> None:
    """Dashed centre line (3 m on, 3 m off) on streets wide enough for two lanes, interrupted at junctions."""
    if st.half < 3.4:
        return
    hw = style.line_w / 2
    for a in np.arange(lo, hi - 3.0, 6.0):
        if any(abs(a + 1.5 - c.centre) < c.half + 3.0 for c in crossings):
            continue
        dash = box(a, st.centre - hw, a + 3.0, st.centre + hw) if along_u else box(st.centre - hw, a, st.centre + hw,
                                                                                  a + 3.0)
        if view.intersects(dash):
            plan.markings.append((dash, None))


def _street_life(rng: np.random.Generator, plan: _Plan, st: _Street, reach: float, crossings: list[_Street],
                 view: Polygon) -> None:
    """Cars parked along the kerb and street trees on wide verges."""
    park = rng.uniform(0.0, 0.35) if rng.random() < 0.6 else 0.0
    trees = st.verge >= 1.5 and rng.random() < 0.6
    spacing = rng.uniform(9.0, 14.0)
    for sign in (-1.0, 1.0):
        for u in np.arange(-reach, reach, 6.5):
            at_junction = any(abs(u - c.centre) < c.reach + 6.0 for c in crossings)
            if at_junction or not view.contains(shapely.Point(u, st.centre)):
                continue
            if rng.random() < park:
                corners, rgb = _car(rng, u, st.centre + sign * (st.half - 1.25), along_x=True)
                plan.cars.append((corners, rgb))
        if trees:
            for u in np.arange(-reach + rng.uniform(0, spacing), reach, spacing):
                if all(abs(u - c.centre) > c.reach + 3.0 for c in crossings):
                    plan.trees.append((u, st.centre + sign * (st.half + st.verge / 2), rng.uniform(2.0, 3.5),
                                       rng.uniform(6.0, 12.0), rng.integers(len(_TREE_GREENS))))


def _block(rng: np.random.Generator, plan: _Plan, block: tuple, south: _Street, north: _Street, style: _Style,
           view: Polygon) -> None:
    """Fills one block: residential (two rows of lots back to back), commercial or park; lots out of view stay empty."""
    u0, v0, u1, v1 = block
    if u1 - u0 < 10.0 or v1 - v0 < 10.0:
        return
    kind = _choose(rng, ["residential", "commercial", "park"], [0.72, 0.12 + 0.18 * style.density,
                                                                0.07 - 0.05 * style.density])
    if kind == "park":
        _park(rng, _LotWriter(plan, _shift(u0, v0)), u1 - u0, v1 - v0)
    elif kind == "commercial":
        for a, b in _split(rng, u0, u1, 36.0, 60.0):
            if view.intersects(box(a, v0, b, v1)):
                _commercial_lot(rng, _LotWriter(plan, _shift(a, v0)), b - a, v1 - v0, south.reach - south.half, style)
    else:
        mean_w = rng.uniform(13.0, 24.0 - 9.0 * style.density)
        depth = (v1 - v0) / 2
        for a, b in _split(rng, u0, u1, 0.85 * mean_w, 1.15 * mean_w):
            if view.intersects(box(a, v0, b, v0 + depth)):
                _residential_lot(rng, _LotWriter(plan, _shift(a, v0)), b - a, depth, south.reach - south.half,
                                 style.density)
        for a, b in _split(rng, u0, u1, 0.85 * mean_w, 1.15 * mean_w):
            if view.intersects(box(a, v1 - depth, b, v1)):
                flip = np.array([[1.0, 0.0, a], [0.0, -1.0, v1], [0.0, 0.0, 1.0]])  # front on the north street
                _residential_lot(rng, _LotWriter(plan, flip), b - a, depth, north.reach - north.half, style.density)


def _split(rng: np.random.Generator, lo: float, hi: float, w_min: float, w_max: float) -> list[tuple[float, float]]:
    """Cuts [lo, hi] into pieces of width in [w_min, w_max]; a short remainder joins the last piece."""
    cuts = [lo]
    while hi - cuts[-1] >= w_min:
        cuts.append(min(cuts[-1] + rng.uniform(w_min, w_max), hi))
    if len(cuts) == 1:
        return []
    cuts[-1] = hi
    return list(zip(cuts[:-1], cuts[1:]))


def _keep_trees_off(plan: _Plan) -> None:
    """Drops trees whose canopy would touch a building or a pool (see the module docstring)."""
    if not plan.trees:
        return
    trees = np.array([t[:3] for t in plan.trees])
    keep = np.ones(len(trees), bool)
    for obstacles, margin in (([b.footprint for b in plan.buildings], 0.4), ([p for p, _ in plan.pools], -1.0)):
        if obstacles:
            _, dist = shapely.STRtree(obstacles).query_nearest(shapely.points(trees[:, :2]), return_distance=True,
                                                               all_matches=False)
            keep &= dist >= trees[:, 2] * 1.15 + margin  # canopies are lumpy, up to ~1.2 r
    plan.trees = [t for t, k in zip(plan.trees, keep) if k]


def _to_pixels(plan: _Plan, m: np.ndarray) -> _Plan:
    """The plan in pixel coordinates (one vectorised transform per layer)."""
    def layer(items: list) -> list:
        if not items:
            return []
        geoms = apply_affine(m, np.array([g for g, _ in items], dtype=object))
        return list(zip(geoms, [v for _, v in items]))

    out = _Plan(**{name: layer(getattr(plan, name)) for name in
                   ("lots", "hedges", "paved", "sidewalks", "roads", "markings", "pools")})
    out.cars = [(_apply_xy(m, c), rgb) for c, rgb in plan.cars]
    scale = np.sqrt(abs(np.linalg.det(m[:2, :2])))
    out.trees = [(*_apply_xy(m, np.array([x, y])), r * scale, h, g) for x, y, r, h, g in plan.trees]
    out.buildings = [b.moved(m) for b in plan.buildings]
    return out


# ----------------------------------------------------------------------------------------------------------------
# Painting


@dataclass
class _Textures:
    low: np.ndarray  # tens of metres: lawn tone, wear
    mid: np.ndarray  # metres: patches, stains
    fine: np.ndarray  # a pixel or two: grain
    grain: np.ndarray  # white noise

    def at(self, idx: np.ndarray, mid: float, fine: float, grain: float) -> np.ndarray:
        return (1.0 + mid * self.mid.flat[idx] + fine * self.fine.flat[idx] + grain * self.grain.flat[idx])[:, None]


def _textures(rng: np.random.Generator, height: int, width: int, gsd_m: float) -> _Textures:
    shape = (height, width)
    return _Textures(value_noise(shape, rng, 60.0 / gsd_m, 3), value_noise(shape, rng, 6.0 / gsd_m, 3),
                     value_noise(shape, rng, max(1.5, 0.8 / gsd_m), 2),
                     rng.standard_normal(shape, dtype=np.float32))


def _paint_items(img: np.ndarray, items: list, height: int, width: int, tex: _Textures,
                 texture: tuple[float, float, float], default_rgb: np.ndarray | None = None) -> None:
    """Paints polygons with their own colours (or ``default_rgb``), textured; later polygons on top."""
    if not items:
        return
    idx, poly = pixels_of([g for g, _ in items], height, width)
    if default_rgb is None:
        rgb = np.array([v for _, v in items], np.float32)[poly]
    else:
        rgb = default_rgb[None, :]
    img[idx] = rgb * tex.at(idx, *texture)


def _ground(plan: _Plan, style: _Style, tex: _Textures, height: int, width: int) -> np.ndarray:
    """Lawn whose tone drifts between lush and dry, each lot slightly different, with hedges."""
    dry = np.clip(0.5 + 1.6 * tex.low.ravel() + style.dryness, 0.0, 1.0)[:, None]
    lush = np.clip(0.5 - 2.0 * tex.mid.ravel(), 0.0, 1.0)[:, None] * 0.6
    base = _GRASS * (1 - dry) + _DRY * dry
    img = base * (1 - lush) + _LUSH * lush
    img *= (1.0 + 0.08 * tex.mid.ravel() + 0.10 * tex.fine.ravel() + 0.05 * tex.grain.ravel())[:, None]
    if plan.lots:
        idx, lot = pixels_of([g for g, _ in plan.lots], height, width)
        img[idx] *= np.array([v for _, v in plan.lots], np.float32)[lot]
    _paint_items(img, plan.hedges, height, width, tex, (0.1, 0.25, 0.08), _HEDGE)
    return img


def _streets(img: np.ndarray, plan: _Plan, style: _Style, tex: _Textures, height: int, width: int) -> None:
    _paint_items(img, plan.paved, height, width, tex, (0.06, 0.04, 0.03))
    sidewalk = coverage([g for g, _ in plan.sidewalks], height, width)
    road = coverage([g for g, _ in plan.roads], height, width)
    idx = np.flatnonzero(sidewalk & ~road)
    img[idx] = _SIDEWALK * tex.at(idx, 0.05, 0.03, 0.03)
    idx = np.flatnonzero(road)
    img[idx] = style.asphalt * tex.at(idx, 0.1, 0.05, 0.04) * (1.0 + 0.08 * tex.low.flat[idx])[:, None]
    if plan.markings:
        idx = pixels_of([g for g, _ in plan.markings], height, width)[0]
        alpha = np.float32(0.75 * min(1.0, 0.15 / style.line_w) + 0.2)
        img[idx] = img[idx] * (1 - alpha) + style.marking * alpha


def _soil(img: np.ndarray, plan: _Plan, tex: _Textures, height: int, width: int) -> None:
    """Cleared plots: bare earth, strongly mottled (tyre tracks, clods), with tufts of weeds; nothing like a roof's
    even surface."""
    if not plan.soil:
        return
    idx, item = pixels_of([g for g, _ in plan.soil], height, width)
    earth = np.array([v for _, v in plan.soil], np.float32)[item] * tex.at(idx, 0.35, 0.3, 0.12)
    weeds = np.clip(2.5 * (tex.mid.flat[idx] + 0.5 * tex.fine.flat[idx]) - 0.4, 0.0, 1.0)[:, None]
    img[idx] = earth * (1 - weeds) + _WEEDS * weeds * tex.at(idx, 0.1, 0.2, 0.1)


def _pools(img: np.ndarray, plan: _Plan, tex: _Textures, height: int, width: int, gsd_m: float) -> None:
    if not plan.pools:
        return
    pools = [g for g, _ in plan.pools]
    _paint_items(img, [(p.buffer(0.6 / gsd_m, join_style="mitre"), None) for p in pools], height, width, tex,
                 (0.03, 0.03, 0.02), _COPING)
    _paint_items(img, plan.pools, height, width, tex, (0.05, 0.03, 0.02), _WATER)


def _cars(img: np.ndarray, plan: _Plan, tex: _Textures, height: int, width: int) -> None:
    """Body, windows and roof, derived from each car's corners (long axis first, front at corner 0's end)."""
    if not plan.cars:
        return
    corners = np.array([c for c, _ in plan.cars])
    rgb = np.array([v for _, v in plan.cars], np.float32)

    def sub(a0: float, a1: float, b0: float, b1: float) -> list:
        o, ea, eb = corners[:, 0], corners[:, 1] - corners[:, 0], corners[:, 3] - corners[:, 0]
        pts = [o + a * ea + b * eb for a, b in ((a0, b0), (a1, b0), (a1, b1), (a0, b1))]
        return list(shapely.polygons(np.stack(pts, axis=1)))

    for polys, colour in ((sub(0, 1, 0, 1), rgb), (sub(0.22, 0.82, 0.08, 0.92), np.broadcast_to(_GLASS, rgb.shape)),
                          (sub(0.36, 0.7, 0.1, 0.9), rgb * 0.95)):
        _paint_items(img, list(zip(polys, colour)), height, width, tex, (0.0, 0.03, 0.03))


def _trees(img: np.ndarray, shadow: np.ndarray, plan: _Plan, style: _Style, tex: _Textures, height: int,
           width: int, shadow_px_per_m: np.ndarray) -> None:
    """Round, lumpy canopies lit from the sun side, and their shadow discs on the ground."""
    img2 = img.reshape(height, width, 3)
    shadow2 = shadow.reshape(height, width)
    sun = np.array([np.sin(style.sun_azimuth), -np.cos(style.sun_azimuth)]) * np.cos(style.sun_elevation)
    for x, y, r, h, green in plan.trees:
        sx, sy = shadow_px_per_m * h
        _disc(shadow2, tex, x + sx, y + sy, r * 0.95)
        y0, y1 = max(int(y - r * 1.2), 0), min(int(y + r * 1.2) + 2, height)
        x0, x1 = max(int(x - r * 1.2), 0), min(int(x + r * 1.2) + 2, width)
        if y0 >= y1 or x0 >= x1:
            continue
        dy = (np.arange(y0, y1) + 0.5 - y)[:, None] / r
        dx = (np.arange(x0, x1) + 0.5 - x)[None, :] / r
        d2 = dx * dx + dy * dy
        inside = d2 < 1.0 + 0.45 * tex.mid[y0:y1, x0:x1] + 0.25 * tex.fine[y0:y1, x0:x1]
        nz = np.sqrt(np.clip(1.0 - d2, 0.0, 1.0))
        light = 0.55 + 0.55 * (dx * sun[0] + dy * sun[1] + nz * np.sin(style.sun_elevation))
        leaves = 1.0 + 0.35 * tex.fine[y0:y1, x0:x1] + 0.08 * tex.grain[y0:y1, x0:x1]
        colour = _TREE_GREENS[green] * (light * leaves)[..., None]
        patch = img2[y0:y1, x0:x1]
        patch[inside] = colour[inside]


def _disc(target: np.ndarray, tex: _Textures, x: float, y: float, r: float) -> None:
    height, width = target.shape
    y0, y1 = max(int(y - r * 1.2), 0), min(int(y + r * 1.2) + 2, height)
    x0, x1 = max(int(x - r * 1.2), 0), min(int(x + r * 1.2) + 2, width)
    if y0 >= y1 or x0 >= x1:
        return
    d2 = ((np.arange(y0, y1) + 0.5 - y)[:, None] ** 2 + (np.arange(x0, x1) + 0.5 - x)[None, :] ** 2) / (r * r)
    target[y0:y1, x0:x1] |= d2 < 1.0 + 0.4 * tex.mid[y0:y1, x0:x1]


def _swept(polygons: list[Polygon], offsets: np.ndarray) -> list[Polygon]:
    """Pieces whose union is each polygon swept along its offset (Minkowski sum with a segment): a cast shadow."""
    if not polygons:
        return []
    geoms = np.array(polygons, dtype=object)
    coords, which = shapely.get_coordinates(geoms, return_index=True)
    moved = shapely.set_coordinates(shapely.transform(geoms, lambda xy: xy), coords + offsets[which])
    rings, owner = shapely.get_rings(geoms, return_index=True)
    rc, ring_of = shapely.get_coordinates(rings, return_index=True)
    same = ring_of[1:] == ring_of[:-1]
    p, q = rc[:-1][same], rc[1:][same]
    d = offsets[owner[ring_of[:-1][same]]]
    quads = shapely.polygons(np.stack([p, q, q + d, p + d], axis=1))
    return list(geoms) + list(moved) + list(quads)


def _part_under(idx: np.ndarray, bld: np.ndarray, plan: _Plan, parts: np.ndarray, height: int,
                width: int) -> np.ndarray:
    """Roof rectangle (index into ``parts``) of each building pixel; later parts win where wings overlap."""
    counts = [len(b.parts) for b in plan.buildings]
    part_bld = np.repeat(np.arange(len(plan.buildings)), counts)
    first_part = np.cumsum([0] + counts[:-1])
    part_map = np.full(height * width, -1, np.int64)
    flat, part = pixels_of(list(shapely.polygons(parts)), height, width)
    part_map[flat] = part
    part = part_map[idx]
    # A pixel on a footprint edge can miss every rectangle by rounding: it takes its building's main part.
    return np.where((part >= 0) & (part_bld[np.maximum(part, 0)] == bld), part, first_part[bld])


def _part_frames(parts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centre, ridge direction (unit, along the long side), half length and half width of each roof rectangle."""
    e1, e2 = parts[:, 1] - parts[:, 0], parts[:, 3] - parts[:, 0]
    l1, l2 = np.linalg.norm(e1, axis=1), np.linalg.norm(e2, axis=1)
    long1 = l1 >= l2
    axis = np.where(long1[:, None], e1 / l1[:, None], e2 / l2[:, None])
    return parts.mean(axis=1), axis, np.where(long1, l1, l2) / 2, np.where(long1, l2, l1) / 2


def _outline(labels: np.ndarray, idx: np.ndarray, width: int) -> np.ndarray:
    """Whether each labelled pixel touches another label (4-neighbourhood): where a flat roof has its parapet."""
    edge = np.zeros(idx.size, bool)
    for step in (1, -1, width, -width):
        edge |= labels[np.clip(idx + step, 0, labels.size - 1)] != labels[idx]
    return edge


def _roofs(img: np.ndarray, labels: np.ndarray, owner: np.ndarray, plan: _Plan, style: _Style, tex: _Textures,
           width: int, gsd_m: float) -> None:
    """Per-pixel roof colour: Lambert-lit facets for gable/hip roofs with ridge lines, flat roofs with parapets.

    Each pixel is expressed in its roof rectangle's frame (a along the ridge, b across it); the facet follows from
    which side of the ridge (gable) or of the hip diagonals (hip) the pixel lies on.
    """
    idx = np.flatnonzero(labels)
    if idx.size == 0:
        return
    bld = owner[labels[idx] - 1]
    parts = np.concatenate([b.parts for b in plan.buildings])
    part = _part_under(idx, bld, plan, parts, labels.size // width, width)
    centre, axis, half_len, half_wid = _part_frames(parts)
    px, py = idx % width + 0.5 - centre[part, 0], idx // width + 0.5 - centre[part, 1]
    ax, ay = axis[part, 0], axis[part, 1]
    a, b = px * ax + py * ay, -px * ay + py * ax
    hl, hw = half_len[part], half_wid[part]

    roof = np.array([b_.roof for b_ in plan.buildings])[bld]
    hip_end = (roof == "hip") & (hl - np.abs(a) < hw - np.abs(b))
    nx = np.where(hip_end, np.sign(a) * ax, np.sign(b) * -ay)  # horizontal direction the facet faces
    ny = np.where(hip_end, np.sign(a) * ay, np.sign(b) * ax)
    sun = np.array([np.sin(style.sun_azimuth), -np.cos(style.sun_azimuth)])
    pitch = np.array([b_.pitch for b_ in plan.buildings])[bld]
    sin_el, cos_el = np.sin(style.sun_elevation), np.cos(style.sun_elevation)
    lum = np.sin(pitch) * cos_el * (nx * sun[0] + ny * sun[1]) + np.cos(pitch) * sin_el
    factor = np.where(roof == "flat", 1.0, 0.3 + 0.7 * lum / sin_el)  # 0.3: sky light reaches every facet
    ridge_px = 0.35 / gsd_m
    factor *= np.where((roof != "flat") & (np.abs(b) < ridge_px) & ~hip_end, 1.08, 1.0)
    factor *= np.where((roof == "hip") & (np.abs((hl - np.abs(a)) - (hw - np.abs(b))) < ridge_px), 1.06, 1.0)
    factor *= np.where((roof == "flat") & _outline(labels, idx, width), 1.15, 1.0)

    rgb = np.array([b_.rgb for b_ in plan.buildings], np.float32)[bld]
    grain = np.where(roof == "flat", 0.03, 0.07)
    shade = factor * (1.0 + 0.05 * tex.mid.flat[idx] + grain * tex.fine.flat[idx] + 0.03 * tex.grain.flat[idx])
    img[idx] = rgb * shade[:, None].astype(np.float32)

    solar = np.array([b_.solar for b_ in plan.buildings])[bld] & ~hip_end
    sunny_side = np.sign(b) * (-ay * sun[0] + ax * sun[1]) > 0  # panels go on the facet facing the sun
    panel = solar & sunny_side & (np.abs(b) > 0.2 * hw) & (np.abs(b) < 0.85 * hw) & (np.abs(a) < 0.6 * hl)
    img[idx[panel]] = _SOLAR * (0.9 + 0.25 * lum[panel, None] + 0.04 * tex.grain.flat[idx[panel]][:, None])


def _rooftop(img: np.ndarray, mask: np.ndarray, plan: _Plan, tex: _Textures, height: int, width: int,
             shadow_px_per_m: np.ndarray) -> None:
    """Rooftop units and the short shadows they cast on their roof."""
    vents = [v for b in plan.buildings for v in b.vents]
    if not vents:
        return
    shade = coverage(_swept(vents, np.repeat(shadow_px_per_m[None, :] * 1.2, len(vents), axis=0)), height, width)
    idx = np.flatnonzero(shade & mask)
    img[idx] *= 0.62
    _paint_items(img, [(v, None) for v in vents], height, width, tex, (0.02, 0.03, 0.03), _VENT)


def finish(rng: np.random.Generator, img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Camera: white balance and exposure, a touch of haze, optical blur, sensor noise, 8-bit quantization."""
    img = img.reshape(height, width, 3)
    img *= rng.uniform(0.92, 1.08) * rng.normal(1.0, 0.025, 3).astype(np.float32)
    haze = np.float32(rng.uniform(0.0, 0.08))
    img = img * (1 - haze) + haze * 190.0
    k = np.float32(rng.uniform(0.15, 0.24))
    img[1:-1] = (1 - 2 * k) * img[1:-1] + k * (img[:-2] + img[2:])
    img[:, 1:-1] = (1 - 2 * k) * img[:, 1:-1] + k * (img[:, :-2] + img[:, 2:])
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(1.5, 3.0))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _clip_to_scene(footprints: list[Polygon], height: int, width: int) -> tuple[list[Polygon], np.ndarray]:
    """Building footprints cut to the image (parts outside would have no pixels), with the source index of each."""
    frame = box(0, 0, width, height)
    shapely.prepare(frame)
    polys: list[Polygon] = []
    owner: list[int] = []
    for i, fp in enumerate(footprints):
        if frame.contains(fp):
            pieces = [fp]
        elif frame.intersects(fp):
            pieces = [g for g in shapely.get_parts(frame.intersection(fp)) if isinstance(g, Polygon)]
        else:
            continue
        for piece in pieces:
            if piece.area >= 0.5:
                polys.append(piece)
                owner.append(i)
    return polys, np.array(owner, np.int64)


def render_scene(height: int, width: int, seed: int, gsd_m: float = 0.5,
                 fill_block: BlockFiller | None = None) -> Scene:
    """A synthetic suburb of ``height`` x ``width`` pixels at ``gsd_m`` metres per pixel, the same for the same seed.

    The mask is the pixel-centre rasterization of ``Scene.buildings`` (see :func:`rasterize_polygons`).
    ``fill_block`` fills each street block instead of :func:`_block`, with its arguments (e.g. rows of houses that
    share walls, :mod:`mtp_tools.synthetic.touching`).
    """
    rng, style, plan, tex = plan_scene(height, width, seed, gsd_m, fill_block)
    img, mask, buildings = paint(plan, style, tex, height, width, gsd_m)
    return Scene(finish(rng, img, height, width), mask, buildings, gsd_m, seed, float(np.degrees(style.sun_azimuth)))


def plan_scene(height: int, width: int, seed: int, gsd_m: float = 0.5,
               fill_block: BlockFiller | None = None) -> tuple[np.random.Generator, _Style, _Plan, _Textures]:
    """Everything random about a scene but the camera: style, layout (in pixels; blocks filled by ``fill_block``
    when given) and textures; the generator is returned at the point where :func:`finish` draws the camera's
    noise."""
    if height <= 0 or width <= 0 or gsd_m <= 0:
        raise ValueError(f"need a positive size and gsd, got {height}x{width} at {gsd_m} m")
    rng = np.random.default_rng(seed)
    style = _scene_style(rng, gsd_m)
    plan = _layout(rng, height, width, gsd_m, style, fill_block)
    _keep_trees_off(plan)
    to_px = np.diag([1 / gsd_m, 1 / gsd_m, 1.0]) @ _shift(width * gsd_m / 2, height * gsd_m / 2) @ _rotation(
        style.grid_angle)
    return rng, style, _to_pixels(plan, to_px), _textures(rng, height, width, gsd_m)


def paint(plan: _Plan, style: _Style, tex: _Textures, height: int, width: int,
          gsd_m: float) -> tuple[np.ndarray, np.ndarray, list[Polygon]]:
    """The lit scene before the camera (float32, (H*W, 3)), its building mask (H, W) uint8 and footprints (pixels).

    Deterministic: the same plan, style and textures paint the same image (two dates of one place share them)."""
    # Shadows fall away from the sun: one metre of height casts 1 / tan(elevation) metres of shadow.
    toward_sun = np.array([np.sin(style.sun_azimuth), -np.cos(style.sun_azimuth)])
    shadow_px_per_m = -toward_sun / np.tan(style.sun_elevation) / gsd_m

    img = _ground(plan, style, tex, height, width)
    _streets(img, plan, style, tex, height, width)
    _soil(img, plan, tex, height, width)
    _pools(img, plan, tex, height, width, gsd_m)
    _cars(img, plan, tex, height, width)
    shadow = _cast_shadows(plan, shadow_px_per_m, height, width)
    _trees(img, shadow, plan, style, tex, height, width, shadow_px_per_m)

    buildings, owner = _clip_to_scene([b.footprint for b in plan.buildings], height, width)
    labels = rasterize_polygons(buildings, height, width).ravel()
    mask = labels > 0
    soft = _soften(shadow.reshape(height, width)).ravel()
    img *= 1.0 - (soft * ~mask)[:, None] * (1.0 - _SHADOW_TINT)
    _roofs(img, labels, owner, plan, style, tex, width, gsd_m)
    _rooftop(img, mask, plan, tex, height, width, shadow_px_per_m)
    return img, mask.reshape(height, width).astype(np.uint8), buildings


def _cast_shadows(plan: _Plan, shadow_px_per_m: np.ndarray, height: int, width: int) -> np.ndarray:
    """Ground covered by the shadows of buildings (each by its own height) and cars (1.5 m), as a flat mask."""
    casters = [b.footprint for b in plan.buildings] + [shapely.polygons(c) for c, _ in plan.cars]
    heights = np.array([b.height_m for b in plan.buildings] + [1.5] * len(plan.cars))
    return coverage(_swept(casters, heights[:, None] * shadow_px_per_m[None, :]), height, width)


def _soften(mask: np.ndarray) -> np.ndarray:
    """Penumbra: a 3x3 box blur of a boolean mask, as float32."""
    f = mask.astype(np.float32)
    f[1:-1] = (f[:-2] + f[1:-1] + f[2:]) / 3
    f[:, 1:-1] = (f[:, :-2] + f[:, 1:-1] + f[:, 2:]) / 3
    return f
