"""Two dates of one synthetic suburb: buildings added and demolished between them, plus the nuisances a change
detector must ignore.

Why: change detection needs image pairs whose changes are known exactly. Both dates come from one layout
(:func:`~mtp_tools.synthetic.render.plan_scene`): the *before* image lacks the buildings that are new, the *after*
image lacks the demolished ones (their ground is often left as bare soil, as new ones are often preceded by a cleared
plot). Everything else that differs is a nuisance, not a change: the sun moves (shadows turn and lengthen), the season
changes the lawns, the light and the camera differ, parked cars come and go, and the after image is misregistered by a
small shift (sub-pixel to a few pixels). Labels are in the before image's frame, which is the true ground: the
georeference of both files is the same, so the misregistration is an error in the after image, as in real archives.

Only houses and larger buildings change (footprints of at least :data:`MIN_CHANGE_M2`); sheds and buildings cut by
the scene border never do.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from osgeo import gdal, osr
from shapely.geometry import Polygon, box

from mtp_core.io import atomic_path, gdal_exceptions
from mtp_tools.synthetic.files import write_geojson, write_geotiff
from mtp_tools.synthetic.rasterize import rasterize_polygons
from mtp_tools.synthetic.render import apply_affine, finish, paint, plan_scene

MIN_CHANGE_M2 = 50.0
P_NEW, P_DEMOLISHED = 0.15, 0.12
_SOIL = np.array([146, 122, 94], np.float32)


@dataclass(frozen=True)
class ScenePair:
    """Two dates of one place and what changed between them (pixel coordinates of the before image)."""

    before: np.ndarray  # (H, W, 3) uint8
    after: np.ndarray  # (H, W, 3) uint8, content shifted by ``shift_px`` (the misregistration)
    before_mask: np.ndarray  # (H, W) uint8 buildings of the first date
    after_mask: np.ndarray  # (H, W) uint8 buildings of the second date, in the true (before) frame
    change_mask: np.ndarray  # (H, W) uint8, 1 where a building appeared or disappeared
    changes: list[Polygon]  # footprints of the changed buildings
    kinds: list[str]  # "new" or "demolished", one per change
    shift_px: tuple[float, float]  # (dx, dy) of the after image's content against the ground
    gsd_m: float
    seed: int


def render_pair(height: int, width: int, seed: int, gsd_m: float = 0.5, shift_px: float | None = None,
                max_shift_px: float = 1.0) -> ScenePair:
    """A before/after pair, the same for the same arguments.

    The misregistration's direction comes from the seed; its length is ``shift_px`` when given, else drawn from
    [0.25, ``max_shift_px``] px. Changing only ``shift_px`` gives the same scenes, changes and nuisances, misregistered
    by another amount.
    """
    if shift_px is not None and shift_px < 0 or max_shift_px < 0.25:
        raise ValueError(f"shift_px must be >= 0 and max_shift_px >= 0.25, got {shift_px} and {max_shift_px}")
    rng, style, plan, tex = plan_scene(height, width, seed, gsd_m)
    changes_rng = np.random.default_rng([seed, 7])
    new, demolished = _pick_changes(changes_rng, plan.buildings, height, width, gsd_m)
    soil_new = [b.footprint for i, b in enumerate(plan.buildings) if i in new and changes_rng.random() < 0.5]
    soil_gone = [b.footprint for i, b in enumerate(plan.buildings) if i in demolished and changes_rng.random() < 0.6]
    angle = changes_rng.uniform(0.0, 2 * np.pi)
    length = changes_rng.uniform(0.25, max_shift_px) if shift_px is None else float(shift_px)
    shift = (float(length * np.cos(angle)), float(length * np.sin(angle)))
    sun_turn = changes_rng.choice([-1.0, 1.0]) * changes_rng.uniform(0.35, 1.2)
    elevation = np.clip(style.sun_elevation + changes_rng.uniform(-0.25, 0.25), np.radians(30), np.radians(70))
    season = changes_rng.choice([-1.0, 1.0]) * changes_rng.uniform(0.3, 0.7)
    after_style = replace(style, sun_azimuth=style.sun_azimuth + sun_turn, sun_elevation=float(elevation),
                          dryness=float(np.clip(style.dryness + season, -0.8, 0.8)))
    light = changes_rng.uniform(0.86, 1.14, 3).astype(np.float32)
    parked = [c for c in plan.cars if changes_rng.random() < 0.5]

    before_plan = replace(plan, buildings=[b for i, b in enumerate(plan.buildings) if i not in new],
                          soil=[(p, _soil(changes_rng)) for p in soil_new])
    after_plan = replace(plan, buildings=[b for i, b in enumerate(plan.buildings) if i not in demolished],
                         soil=[(p, _soil(changes_rng)) for p in soil_gone], cars=parked)
    before_img, before_mask, _ = paint(before_plan, style, tex, height, width, gsd_m)
    after_img, after_mask, _ = paint(after_plan, after_style, tex, height, width, gsd_m)
    after_img = shifted(after_img.reshape(height, width, 3) * light, *shift).reshape(-1, 3)

    changed = [plan.buildings[i].footprint for i in sorted(new | demolished)]
    kinds = ["new" if i in new else "demolished" for i in sorted(new | demolished)]
    change_mask = (rasterize_polygons(changed, height, width) > 0).astype(np.uint8)
    return ScenePair(finish(rng, before_img, height, width),
                     finish(np.random.default_rng([seed, 8]), after_img, height, width),
                     before_mask, after_mask, change_mask, changed, kinds, shift, gsd_m, seed)


def _pick_changes(rng: np.random.Generator, buildings: list, height: int, width: int,
                  gsd_m: float) -> tuple[set[int], set[int]]:
    """Indices of new and demolished buildings among those wholly inside the scene and large enough; at least one
    of each when there are two candidates."""
    frame = box(1, 1, width - 1, height - 1)
    min_px = MIN_CHANGE_M2 / gsd_m**2
    candidates = [i for i, b in enumerate(buildings) if frame.contains(b.footprint) and b.footprint.area >= min_px]
    draws = rng.random(len(candidates))
    new = {i for i, u in zip(candidates, draws) if u < P_NEW}
    demolished = {i for i, u in zip(candidates, draws) if P_NEW <= u < P_NEW + P_DEMOLISHED}
    if len(candidates) >= 2 and not new:
        new = {int(rng.choice([i for i in candidates if i not in demolished]))}
    if len(candidates) >= 2 and not demolished:
        demolished = {int(rng.choice([i for i in candidates if i not in new]))}
    return new, demolished


def _soil(rng: np.random.Generator) -> np.ndarray:
    return _SOIL * rng.uniform(0.85, 1.1)


def shifted(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """``image`` (H, W, C) with its content moved by (dx, dy) pixels, bilinear, edges repeated."""
    h, w = image.shape[:2]

    def taps(n: int, d: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.arange(n) - d
        lo = np.floor(src)
        frac = (src - lo).astype(np.float32)
        lo = lo.astype(np.int64)
        return np.clip(lo, 0, n - 1), np.clip(lo + 1, 0, n - 1), frac

    x0, x1, fx = taps(w, dx)
    y0, y1, fy = taps(h, dy)
    rows = image[y0] * (1 - fy)[:, None, None] + image[y1] * fy[:, None, None]
    return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


def write_pair(pair: ScenePair, out_dir: str | os.PathLike, name: str, epsg: int = 32633,
               origin: tuple[float, float] = (500000.0, 4_500_000.0)) -> tuple[Path, Path, Path]:
    """``NAME_before.tif``, ``NAME_after.tif`` (the same georeference) and ``NAME_changes.geojson`` (``id``,
    ``class``, ``kind``), each written atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    gt = (origin[0], pair.gsd_m, 0.0, origin[1], 0.0, -pair.gsd_m)
    paths = out / f"{name}_before.tif", out / f"{name}_after.tif", out / f"{name}_changes.geojson"
    with gdal_exceptions():
        for image, path in zip((pair.before, pair.after), paths):
            with atomic_path(path) as tmp:
                write_geotiff(tmp, image, gt, srs)
        to_map = np.array([[pair.gsd_m, 0.0, origin[0]], [0.0, -pair.gsd_m, origin[1]], [0.0, 0.0, 1.0]])
        polygons = [apply_affine(to_map, p) for p in pair.changes]
        with atomic_path(paths[2]) as tmp:
            tmp.unlink()  # the GeoJSON driver refuses to write over a file, even an empty one
            write_geojson(tmp, polygons, srs, kinds=pair.kinds)
    return paths


def write_pair_levir(pair: ScenePair, root: str | os.PathLike, name: str) -> tuple[Path, Path, Path]:
    """LEVIR-CD's layout for training: ``A/NAME.png``, ``B/NAME.png`` and ``label/NAME.png`` (changed = 255)."""
    root = Path(root)
    paths = root / "A" / f"{name}.png", root / "B" / f"{name}.png", root / "label" / f"{name}.png"
    with gdal_exceptions():
        for array, path in zip((pair.before, pair.after, pair.change_mask * np.uint8(255)), paths):
            path.parent.mkdir(parents=True, exist_ok=True)
            bands = array[..., None] if array.ndim == 2 else array
            mem = gdal.GetDriverByName("MEM").Create("", bands.shape[1], bands.shape[0], bands.shape[2], gdal.GDT_Byte)
            for b in range(bands.shape[2]):
                mem.GetRasterBand(b + 1).WriteArray(bands[:, :, b])
            with atomic_path(path) as tmp:
                gdal.GetDriverByName("PNG").CreateCopy(str(tmp), mem, options=["WORLDFILE=NO"])
                Path(str(tmp) + ".aux.xml").unlink(missing_ok=True)
    return paths
