"""Regularization: right-angled building outlines, in metres so right angles are right angles on the ground.

* **Regularization** (optional) gives building outlines right angles. Direction: the mode of a length-weighted
  density of the convex hull's side angles modulo 90 degrees (the hull ignores ragged concave noise), refined by a
  weighted circular mean. Snapping: the raw outline, straightened by a 1-pixel Douglas-Peucker, is turned to that
  direction; consecutive sides closer to horizontal (vertical) form one wall placed at their extent-weighted mean
  height (abscissa); walls whose net extent is under 3 pixels are zig-zag noise and merge into their neighbours;
  corners are the crossings of consecutive walls. So a noisy rectangle becomes 4 corners and an L 6, all right
  angles. Courtyards are snapped the same way (a collapsing one stays raw). A polygon is reverted to its
  unregularized outline when the result is invalid, its IoU with the raw outline is below 0.85, it leaves the raw
  outline's bounding box by more than 2 pixels (a local change, so polygons can be finished band by band), or it
  would overlap another polygon. Only polygons that share no edge with another polygon are regularized (buildings
  surrounded by background): snapping one side of a shared edge would open a gap.
"""
from __future__ import annotations

import math

import numpy as np
import shapely

from mtp_core.vectorize.rings import cyclic, from_open_rings, open_rings

_MIN_IOU = 0.85          # a regularized outline further than this from the raw one is not trusted
_REG_TOLERANCE_PX = 1.0  # Douglas-Peucker tolerance that turns pixel staircases into straight sides
_MIN_SIDE_PX = 3.0       # walls shorter than this are pixel noise and merge into their neighbours
#: a regularized outline stays within this many pixels of its raw outline's bounding box
REG_REACH_PX = 2.0


def regularize(polys: np.ndarray, px_m: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Right-angled outlines in the pixel frame and whether each is kept (valid, IoU with the raw one >= 0.85).

    Each outline is straightened (Douglas-Peucker, 1 pixel), turned so that its dominant direction is the x axis, and
    every ring is snapped to axis-parallel walls (:func:`_snap_rings`), then turned back. A hole whose walls collapse
    stays as it was; an outline whose shell collapses is not regularized. Each outline is worked on in metres from the
    pixel corner at its bounding box's minimum, so the result does not depend on where the pixel frame starts (a
    window around a click regularizes a building exactly as the whole raster does).
    """
    scale = np.asarray(px_m)
    corner = np.floor(shapely.bounds(polys).reshape(-1, 2, 2)[:, 0]) if len(polys) else np.empty((0, 2))
    raw = _moved(polys, -corner, scale)
    pixel = math.sqrt(px_m[0] * px_m[1])
    straight = _straighten(raw, _REG_TOLERANCE_PX * pixel)
    theta = _dominant_directions(straight)
    origin = shapely.get_coordinates(shapely.centroid(straight))

    xy, ring_of, ring_poly = open_rings(straight)
    owner = ring_poly[ring_of]
    local = _rotate(xy - origin[owner], -theta[owner])
    corners, corner_ring, snapped = _snap_rings(local, ring_of, len(ring_poly), _MIN_SIDE_PX * pixel)

    is_shell = np.r_[True, ring_poly[1:] != ring_poly[:-1]]
    made = np.zeros(len(polys), bool)
    made[ring_poly[is_shell & snapped]] = True
    ok = np.zeros(len(polys), bool)
    out = np.empty(len(polys), object)
    if not made.any():
        return out, ok
    keep_raw = ~snapped[ring_of] & made[owner]  # collapsed holes of regularized outlines stay as they were
    ring_ids = np.concatenate([corner_ring, ring_of[keep_raw]])
    coords = np.concatenate([corners, local[keep_raw]])
    take = made[ring_poly[ring_ids]]
    order = np.argsort(ring_ids[take], kind="stable")
    ring_ids, coords = ring_ids[take][order], coords[take][order]
    world = _rotate(coords, theta[ring_poly[ring_ids]]) + origin[ring_poly[ring_ids]]
    used, ring_index = np.unique(ring_ids, return_inverse=True)
    regular = from_open_rings(world, ring_index, np.unique(ring_poly[used], return_inverse=True)[1])
    made_idx = np.flatnonzero(made)
    valid = shapely.is_valid(regular) & (shapely.area(regular) > 0)
    inter = np.zeros(len(regular))
    inter[valid] = shapely.area(shapely.intersection(regular[valid], raw[made_idx[valid]]))
    union = shapely.area(regular) + shapely.area(raw[made_idx]) - inter
    good = valid & (inter >= _MIN_IOU * union)
    ok[made_idx[good]] = True
    out[ok] = shapely.normalize(_moved(regular[good], corner[made_idx[good]] * scale, 1.0 / scale))
    raw_box, box = shapely.bounds(polys[ok]).reshape(-1, 4), shapely.bounds(out[ok]).reshape(-1, 4)
    reach = np.array([-REG_REACH_PX, -REG_REACH_PX, REG_REACH_PX, REG_REACH_PX])
    inside = np.all(box[:, :2] >= (raw_box + reach)[:, :2], axis=1) & np.all(box[:, 2:] <= (raw_box + reach)[:, 2:],
                                                                              axis=1)
    far = np.flatnonzero(ok)[~inside]
    ok[far] = False
    out[far] = None
    return out, ok


def _moved(polys: np.ndarray, shift: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Each polygon shifted by its own ``shift`` (one row per polygon), then scaled."""
    owner = shapely.get_coordinates(polys, return_index=True)[1]
    return shapely.transform(polys, lambda xy: (xy + shift[owner]) * scale)


def overlap_others(regular: np.ndarray, index: np.ndarray, plain: np.ndarray) -> np.ndarray:
    """Which regularized outlines would overlap another polygon, regularized or not (those are reverted).

    Unregularized outlines never overlap, so checking against both versions of every neighbour leaves none.
    """
    both = np.concatenate([plain, regular])
    owner = np.concatenate([np.arange(len(plain)), index])
    i, j = shapely.STRtree(both).query(regular, predicate="intersects")
    other = owner[j] != index[i]
    i, j = i[other], j[other]
    hit = np.zeros(len(regular), bool)
    hit[i[shapely.relate_pattern(regular[i], both[j], "T********")]] = True
    return hit


def _straighten(polys: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker outlines: the fast variant, or the topology-preserving one where the fast one breaks one."""
    fast = shapely.simplify(polys, tolerance, preserve_topology=False)
    polygon = shapely.get_type_id(fast) == shapely.GeometryType.POLYGON
    broken = ~polygon | shapely.is_empty(fast) | ~shapely.is_valid(fast)
    fast[broken] = shapely.simplify(polys[broken], tolerance, preserve_topology=True)
    return fast


def _rotate(xy: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Points turned counter-clockwise by ``angle`` (one angle per point) about the origin."""
    cos, sin = np.cos(angle), np.sin(angle)
    return np.stack([xy[:, 0] * cos - xy[:, 1] * sin, xy[:, 0] * sin + xy[:, 1] * cos], axis=1)


def _dominant_directions(polys: np.ndarray) -> np.ndarray:
    """Building direction of each polygon (radians, modulo 90 degrees) from the sides of its convex hull.

    The hull ignores the ragged concave bits of a predicted outline and keeps the long outer walls. The direction is
    the mode of a length-weighted kernel density of the sides' angles (times 4, so that walls at right angles agree;
    1-degree grid), refined by the weighted circular mean of the sides within 10 degrees of it.
    """
    xy, poly = shapely.get_coordinates(shapely.get_exterior_ring(shapely.convex_hull(polys)), return_index=True)
    same = poly[1:] == poly[:-1]
    sides, poly = (xy[1:] - xy[:-1])[same], poly[1:][same]
    weight = np.hypot(sides[:, 0], sides[:, 1])
    quad = 4 * np.arctan2(sides[:, 1], sides[:, 0])
    grid = np.radians(np.arange(0.0, 360.0, 4.0))
    density = weight[:, None] * np.exp(8.0 * (np.cos(quad[:, None] - grid[None, :]) - 1.0))
    starts = np.flatnonzero(np.r_[True, poly[1:] != poly[:-1]])  # every polygon has a hull with sides
    mode = grid[np.argmax(np.add.reduceat(density, starts, axis=0), axis=1)]
    near = np.cos(quad - mode[poly]) > math.cos(math.radians(40.0))
    sin_sum = np.bincount(poly, weights=np.where(near, weight * np.sin(quad), 0.0), minlength=len(polys))
    cos_sum = np.bincount(poly, weights=np.where(near, weight * np.cos(quad), 0.0), minlength=len(polys))
    return 0.25 * np.arctan2(sin_sum, cos_sum)


def _snap_rings(xy: np.ndarray, ring: np.ndarray, n_rings: int,
                min_side: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Axis-parallel rings from rings whose walls are roughly axis-parallel: (corners, ring of each, ring snapped).

    Consecutive sides closer to horizontal (vertical) form one wall; a wall becomes a line at the mean height
    (abscissa) of its sides, weighted by their extent along the wall. The wall whose net extent along its axis is
    smallest is merged into its two neighbours (which then form one wall) while it is under ``min_side``: zig-zags
    of pixel noise go, real jogs stay. Corners are the crossings of consecutive lines. A ring left with fewer than
    four walls is not snapped.
    """
    before, after = cyclic(ring)
    edges = xy[after] - xy
    horizontal = np.abs(edges[:, 0]) >= np.abs(edges[:, 1])
    turn = horizontal != horizontal[before]
    walls = np.bincount(ring, weights=turn, minlength=n_rings).astype(np.int64)  # even; 0 if all one way
    starts = np.flatnonzero(np.r_[True, ring[1:] != ring[:-1]])
    turned = np.cumsum(turn)
    turns_so_far = turned - np.repeat(turned[starts] - turn[starts], np.diff(np.r_[starts, len(ring)]))
    wall_offset = np.cumsum(walls) - walls
    has_walls = walls[ring] > 0
    # Sides before a ring's first turn belong to its last wall.
    wall = wall_offset[ring] + (turns_so_far - 1) % np.maximum(walls[ring], 1)
    wall, e, h = wall[has_walls], edges[has_walls], horizontal[has_walls]
    mid = (xy + edges / 2)[has_walls]
    n_walls = int(walls.sum())
    along = np.abs(np.where(h, e[:, 0], e[:, 1]))
    table = {
        "dx": np.bincount(wall, weights=e[:, 0], minlength=n_walls),
        "dy": np.bincount(wall, weights=e[:, 1], minlength=n_walls),
        "weight": np.bincount(wall, weights=along, minlength=n_walls),
        "moment": np.bincount(wall, weights=along * np.where(h, mid[:, 1], mid[:, 0]), minlength=n_walls),
    }
    is_h = np.zeros(n_walls, bool)
    is_h[wall] = h
    wall_ring = np.repeat(np.arange(n_rings), walls)
    extent = np.where(is_h, np.abs(table["dx"]), np.abs(table["dy"]))
    noisy = np.zeros(n_rings, bool)
    if n_walls:
        noisy[wall_ring[extent < min_side]] = True
    noisy &= walls > 4
    merged = [_merge_walls({k: v[wall_offset[r]:wall_offset[r] + walls[r]] for k, v in table.items()},
                           is_h[wall_offset[r]:wall_offset[r] + walls[r]], min_side) for r in np.flatnonzero(noisy)]
    plain = ~noisy[wall_ring]
    wall_ring = np.concatenate([wall_ring[plain]] + [np.full(len(m[1]), r) for r, m in zip(np.flatnonzero(noisy),
                                                                                             merged)])
    is_h = np.concatenate([is_h[plain]] + [m[1] for m in merged])
    plain_lines = table["moment"][plain] / np.maximum(table["weight"][plain], 1e-300)
    lines = np.concatenate([plain_lines] + [m[0] for m in merged])
    order = np.argsort(wall_ring, kind="stable")
    wall_ring, is_h, lines = wall_ring[order], is_h[order], lines[order]
    count = np.bincount(wall_ring, minlength=n_rings)
    snapped = count >= 4
    take = snapped[wall_ring]
    wall_ring, is_h, lines = wall_ring[take], is_h[take], lines[take]
    nxt = lines[cyclic(wall_ring)[1]]
    corners = np.where(is_h[:, None], np.stack([nxt, lines], 1), np.stack([lines, nxt], 1))
    return corners, wall_ring, snapped


def _merge_walls(table: dict[str, np.ndarray], is_h: np.ndarray, min_side: float) -> tuple[np.ndarray, np.ndarray]:
    """Walls of one ring after merging the shortest ones (see :func:`_snap_rings`): (line positions, horizontal)."""
    dx, dy, weight, moment = (table[k].tolist() for k in ("dx", "dy", "weight", "moment"))
    horizontal = is_h.tolist()
    while len(horizontal) > 4:
        extent = [abs(x) if h else abs(y) for x, y, h in zip(dx, dy, horizontal)]
        k = min(range(len(extent)), key=extent.__getitem__)
        if extent[k] >= min_side:
            break
        before, after = (k - 1) % len(horizontal), (k + 1) % len(horizontal)
        dx[before] += dx[k] + dx[after]
        dy[before] += dy[k] + dy[after]
        weight[before] += weight[after]
        moment[before] += moment[after]
        for i in sorted((k, after), reverse=True):
            del dx[i], dy[i], weight[i], moment[i], horizontal[i]
    return np.array(moment) / np.maximum(np.array(weight), 1e-300), np.array(horizontal, bool)
