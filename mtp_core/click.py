"""Click-to-segment: the building under one click, as a polygon with the job's attributes, fast after the first click.

Why it is built this way:

* **The job's own tiles.** A click is predicted on exactly the tiles ``mtp predict`` lays over the raster (the model
  grid of :func:`mtp_core.io.plan_read`, a :class:`mtp_core.tiling.TileGrid` with the model card's tile and
  overlap), blended with the same weights in the same order. So the building a click returns is the building the
  whole-raster job gives, not a second opinion that disagrees near window edges. Tiles are also the cache unit:
  neighbouring clicks share them, like Geo-SAM's shared crop grid, but without a seam between crops.
* **Only final pixels.** A pixel's blended probability is final only once every tile covering it is predicted. The
  clicked region (4-connected, the clicked pixel's class) grows over final pixels only; where it reaches a pixel that
  is not final yet, the tiles covering that pixel are predicted and the region is grown again. A building cut by a
  tile border therefore comes out whole, up to ``max_tiles`` tiles per click (``ClickResult.complete`` says when
  that limit cut it).
* **The layer's grid and CRS.** Rasters in degrees or far from the model's resolution are read through the warped
  VRT at the model's ground resolution, as in the job. The region is then resampled onto the raster's own grid
  (class nearest, probabilities bilinear, as ``warp_to_grid`` does for the job) before it is vectorized, so vertices
  lie on the layer's pixel edges in the layer's CRS, and areas are measured as the job measures them.
* **Bounded and thread-safe.** Predictions are kept for the ``cache_tiles`` most recently used tiles (each holds
  ``classes x tile² x 4`` bytes of probabilities: 0.5 MB for the 256 px demo model, 1.2 MB for a 384 px two-class
  model). One click runs at a time (a lock), so a click can run in a worker thread (a QGIS task) while the
  segmenter stays shared; each call sees the raster through the segmenter's own GDAL handles.
* **Says why nothing was found.** Every click returns a :class:`ClickResult` whose ``status`` tells a building from
  background, a region below the minimum area, nodata, a point outside the raster, and (with ``run_model=False``,
  for hover previews) an area not predicted yet.
"""
from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import shapely
from osgeo import gdal, osr
from shapely import Polygon

from mtp_core.inference import CLASS_NODATA, Predictor, RasterSource
from mtp_core.io import BandScaler, describe_raster, plan_read
from mtp_core.io.gdal_errors import raises_gdal_errors
from mtp_core.pipeline import check_bands
from mtp_core.progress import CancelCallback, check_cancel
from mtp_core.tiling import Tile, TileGrid, blend_weights
from mtp_core.vectorize import vectorize_array

ClickStatus = Literal["building", "background", "small", "nodata", "outside", "uncached"]

#: The attributes of a click's polygon, as the job names them (its ``id`` is the target layer's business), and the
#: Python type of each, so a front end can make a layer for them.
FIELDS: dict[str, type] = {"class": int, "score": float, "area_m2": float, "perimeter_m": float, "source": str,
                           "model": str}

_EDGE_SAMPLES = 8  # points per side when a window's outline is taken to another CRS


@dataclass(frozen=True)
class ClickResult:
    """What one click found. ``geometry`` (raster CRS) and ``attributes`` are set when ``status == 'building'``.

    ``seconds``: time spent in :meth:`ClickSegmenter.segment_at`; ``tiles_run``: tiles the model predicted for this
    click (0: everything came from the cache); ``tiles``: tiles the region was read from; ``complete``: False when
    ``max_tiles`` stopped the region before its end was seen (it may go on past the polygon returned).
    """

    status: ClickStatus
    x: float
    y: float
    crs_wkt: str
    seconds: float
    tiles_run: int = 0
    tiles: int = 0
    geometry: Polygon | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    class_name: str = ""
    complete: bool = True
    region_m2: float = 0.0  # ground area of the clicked region before vectorizing (says how small a 'small' one is)

    @property
    def found(self) -> bool:
        return self.status == "building"

    @property
    def cached(self) -> bool:
        return self.tiles_run == 0

    def timing(self, seconds: float | None = None) -> str:
        """'40 ms, cached' or '1.6 s, 4 tiles predicted' (``seconds``: the time to show, if not this call's)."""
        seconds = self.seconds if seconds is None else seconds
        took = f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"
        work = "cached" if self.cached else f"{self.tiles_run} tile{'s' * (self.tiles_run != 1)} predicted"
        return f"{took}, {work}"

    def message(self, min_area_m2: float | None = None) -> str:
        """One line for a status bar."""
        if self.status == "building":
            cut = "" if self.complete else f"; cut at {self.tiles} tiles, larger than a click may read"
            return f"{self.class_name} {self.attributes['area_m2']:.0f} m² ({self.timing()}{cut})"
        if self.status == "small":
            limit = "" if min_area_m2 is None else f", below the {min_area_m2:g} m² minimum"
            return f"only {self.region_m2:.1f} m² of {self.class_name} here{limit} ({self.timing()})"
        return {"background": f"no building at this point ({self.timing()})",
                "nodata": "no data at this point",
                "outside": "outside the raster",
                "uncached": "not predicted here yet"}[self.status]


@dataclass(frozen=True)
class _TilePrediction:
    probs: np.ndarray | None  # (K, t, t) float32 softmax; None when the tile holds no valid pixel (not run)
    valid: np.ndarray  # (t, t) bool


@dataclass(frozen=True)
class _Area:
    """Blended prediction over the bounding box of the tiles read: rows y0.., columns x0.. of the model grid."""

    y0: int
    x0: int
    classes: np.ndarray  # (h, w) uint8, CLASS_NODATA where no tile saw valid pixels
    probs: np.ndarray  # (K, h, w) float32
    final: np.ndarray  # (h, w) bool: every tile covering the pixel has been predicted


class ClickSegmenter:
    """Segments the building under a point of one raster with one predictor, caching tile predictions.

    ``bands``: raster bands fed to the model (default: the model card's). ``cache_tiles``: tile predictions kept
    (least recently used go first). ``max_tiles``: the most tiles one click may read to finish a region.
    ``min_area_m2``, ``simplify_m``, ``regularize``: as in ``mtp predict`` (public attributes, may be changed between
    clicks; they do not touch the cache). Opening describes the raster and fits the band scaling once, like the job.
    """

    @raises_gdal_errors
    def __init__(self, predictor: Predictor, raster: str | Path, *, bands: Sequence[int] | None = None,
                 cache_tiles: int = 36, max_tiles: int = 16, min_area_m2: float = 4.0, simplify_m: float = 0.25,
                 regularize: bool = False) -> None:
        if cache_tiles < 1 or max_tiles < 1:
            raise ValueError(f"cache_tiles and max_tiles must be at least 1, got {cache_tiles} and {max_tiles}")
        card = predictor.card
        self.predictor = predictor
        self.info = describe_raster(raster)
        self.bands = check_bands(self.info, bands or card.bands, len(card.mean))
        self.plan = plan_read(self.info, card.gsd_m)
        scaler = (BandScaler.fixed(card.band_ranges) if card.band_ranges
                  else BandScaler.fit(self.plan.dataset, self.bands, self.info.nodata))
        self._source = RasterSource(self.plan, self.bands, scaler)
        self.cache_tiles, self.max_tiles = cache_tiles, max_tiles
        self.min_area_m2, self.simplify_m, self.regularize = min_area_m2, simplify_m, regularize
        self.source_name = Path(self.info.path).name
        self.model_name = card.description or card.architecture
        self.tiles_predicted = 0  # over the segmenter's life: what the model has run
        self._tile = card.tile
        grid = TileGrid(self.plan.height, self.plan.width, card.tile, predictor.overlap)
        self._row_origins = np.asarray(grid.row_origins)
        self._col_origins = np.asarray(grid.col_origins)
        self._weights = blend_weights(card.tile, predictor.overlap)
        self._cache: OrderedDict[tuple[int, int], _TilePrediction] = OrderedDict()
        self._lock = threading.Lock()
        self._inverse_source = gdal.InvGeoTransform(self.info.geotransform)
        self._inverse_plan = gdal.InvGeoTransform(self.plan.geotransform)
        self._to_plan = self._to_source = None
        if self.plan.warped:
            self._to_plan = _transform(self.info.crs_wkt, self.plan.crs_wkt)
            self._to_source = _transform(self.plan.crs_wkt, self.info.crs_wkt)

    @property
    def cached_tiles(self) -> int:
        return len(self._cache)

    @raises_gdal_errors
    def segment_at(self, x: float, y: float, *, run_model: bool = True, cancel: CancelCallback = None) -> ClickResult:
        """The region of the clicked pixel's class under (x, y), given in the raster's CRS.

        With ``run_model=False`` nothing is predicted: a click needing new tiles returns status ``uncached`` (cheap
        enough for hover previews). ``cancel()`` is checked before each model batch (raises ``Cancelled``).
        """
        start = time.perf_counter()
        with self._lock:
            return self._segment(float(x), float(y), run_model, cancel, start)

    # ------------------------------------------------------------------------------------------------ the click
    def _segment(self, x: float, y: float, run_model: bool, cancel: CancelCallback, start: float) -> ClickResult:
        def result(status: ClickStatus, **kwargs: Any) -> ClickResult:
            return ClickResult(status, x, y, self.info.crs_wkt, time.perf_counter() - start, tiles_run=tiles_run,
                               tiles=len(tiles), **kwargs)

        tiles: dict[tuple[int, int], _TilePrediction] = {}
        tiles_run = 0
        pixel = self._model_pixel(x, y)
        if pixel is None:
            return result("outside")
        row, col = pixel
        needed = self._covering(np.array([row]), np.array([col]))
        complete = True
        while True:
            fetched = self._fetch(needed, run_model, cancel)
            if fetched is None:
                return result("uncached")
            tiles.update(fetched[0])
            tiles_run += fetched[1]
            area = self._blend(tiles)
            seed = (row - area.y0, col - area.x0)
            cls = int(area.classes[seed])
            if cls == CLASS_NODATA:
                return result("nodata")
            if cls == 0:
                return result("background")
            region = _region((area.classes == cls) & area.final, *seed)
            needed = self._open_border(region, area) - tiles.keys()
            if not needed:
                break
            if len(tiles) + len(needed) > self.max_tiles:
                complete = False
                break
        name = self.predictor.card.classes[cls]
        region_m2 = float(region.sum()) * self._model_pixel_m2()
        polygon, attributes = self._polygon(region, area, cls, x, y)
        if polygon is None:
            return result("small", class_name=name, region_m2=region_m2)
        return result("building", geometry=polygon, attributes=attributes, class_name=name, complete=complete,
                      region_m2=region_m2)

    def _model_pixel(self, x: float, y: float) -> tuple[int, int] | None:
        """(row, column) of the model grid under a raster-CRS point; None outside the raster."""
        col, row = gdal.ApplyGeoTransform(self._inverse_source, x, y)
        if not (0 <= col < self.info.width and 0 <= row < self.info.height):
            return None
        if self._to_plan is not None:
            x, y = self._to_plan.TransformPoint(x, y)[:2]
        col, row = gdal.ApplyGeoTransform(self._inverse_plan, x, y)
        col, row = math.floor(col), math.floor(row)
        if not (0 <= col < self.plan.width and 0 <= row < self.plan.height):
            return None
        return row, col

    def _model_pixel_m2(self) -> float:
        if self.plan.warped:
            return self.predictor.card.gsd_m ** 2
        return self.info.pixel_size_m[0] * self.info.pixel_size_m[1]

    # ------------------------------------------------------------------------------------------------ tiles
    def _cover(self, origins: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Index range [lo, hi) of the tile origins whose tiles cover each coordinate in ``v``."""
        return np.searchsorted(origins, v - self._tile, "right"), np.searchsorted(origins, v, "right")

    def _covering(self, rows: np.ndarray, cols: np.ndarray) -> set[tuple[int, int]]:
        """Origins (y, x) of every tile covering any of the pixels (rows[i], cols[i])."""
        r_lo, r_hi = self._cover(self._row_origins, rows)
        c_lo, c_hi = self._cover(self._col_origins, cols)
        out = set()
        for a, b, c, d in np.unique(np.stack([r_lo, r_hi, c_lo, c_hi], axis=1), axis=0).tolist():
            out.update((int(self._row_origins[i]), int(self._col_origins[j])) for i in range(a, b)
                       for j in range(c, d))
        return out


    def _fetch(self, keys: set[tuple[int, int]], run_model: bool,
               cancel: CancelCallback) -> tuple[dict[tuple[int, int], _TilePrediction], int] | None:
        """Predictions of the tiles ``keys`` and how many the model ran: cached ones reused, missing ones predicted
        as the job predicts them (tiles without a valid pixel are not run). None when missing and not allowed."""
        found: dict[tuple[int, int], _TilePrediction] = {}
        missing = []
        for key in sorted(keys):
            if key in self._cache:
                self._cache.move_to_end(key)
                found[key] = self._cache[key]
            else:
                missing.append(key)
        if missing and not run_model:
            return None
        run_total = 0
        while missing:
            check_cancel(cancel)
            size = self.predictor.batch_size
            batch, missing = missing[:size], missing[size:]
            reads = [self._source.read(Tile(x, y, self._tile, 0)) for y, x in batch]
            run = [i for i, (_, valid) in enumerate(reads) if valid.any()]
            probs = self.predictor.infer(np.stack([self.predictor.normalize(*reads[i]) for i in run])) if run else []
            by_index = dict(zip(run, probs))
            for i, key in enumerate(batch):
                found[key] = self._cache[key] = _TilePrediction(by_index.get(i), reads[i][1])
                if len(self._cache) > self.cache_tiles:
                    self._cache.popitem(last=False)
            run_total += len(run)
        self.tiles_predicted += run_total
        return found, run_total

    def _blend(self, tiles: dict[tuple[int, int], _TilePrediction]) -> _Area:
        """The job's blend (``Predictor.run``) over the tiles' bounding box: weighted sums added in grid order, then
        the card's threshold or argmax; and which pixels are final."""
        t, height, width = self._tile, self.plan.height, self.plan.width
        y0, x0 = min(k[0] for k in tiles), min(k[1] for k in tiles)
        y1, x1 = min(max(k[0] for k in tiles) + t, height), min(max(k[1] for k in tiles) + t, width)
        h, w = y1 - y0, x1 - x0
        prob = np.zeros((self.predictor.card.num_classes, h, w), np.float32)
        weight = np.zeros((h, w), np.float32)
        covered = np.zeros((h, w), np.int32)
        for ty, tx in sorted(tiles):
            th, tw = min(t, height - ty), min(t, width - tx)
            rows, cols = slice(ty - y0, ty - y0 + th), slice(tx - x0, tx - x0 + tw)
            covered[rows, cols] += 1
            tile = tiles[(ty, tx)]
            if tile.probs is None:
                continue
            wv = self._weights[:th, :tw] * tile.valid[:th, :tw]
            prob[:, rows, cols] += tile.probs[:, :th, :tw] * wv
            weight[rows, cols] += wv
        classes, probs = self.predictor.classify(prob, weight)  # exactly as the job classifies its rows
        r_lo, r_hi = self._cover(self._row_origins, np.arange(y0, y1))
        c_lo, c_hi = self._cover(self._col_origins, np.arange(x0, x1))
        final = covered == (r_hi - r_lo)[:, None] * (c_hi - c_lo)[None, :]
        return _Area(y0, x0, classes, probs, final)

    def _open_border(self, region: np.ndarray, area: _Area) -> set[tuple[int, int]]:
        """Tiles covering the raster pixels next to the region that are not final yet (where it may go on)."""
        ring = _outer_ring(region)
        rows, cols = np.nonzero(ring)
        rows, cols = rows + area.y0 - 1, cols + area.x0 - 1  # ring is padded by one pixel
        inside = (rows >= 0) & (rows < self.plan.height) & (cols >= 0) & (cols < self.plan.width)
        rows, cols = rows[inside], cols[inside]
        r, c = rows - area.y0, cols - area.x0
        h, w = area.final.shape
        in_area = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        final = np.zeros(len(rows), bool)
        final[in_area] = area.final[r[in_area], c[in_area]]
        return self._covering(rows[~final], cols[~final]) if not final.all() else set()

    # ------------------------------------------------------------------------------------------------ polygon
    def _polygon(self, region: np.ndarray, area: _Area, cls: int, x: float,
                 y: float) -> tuple[Polygon | None, dict[str, Any]]:
        """The region vectorized as the job vectorizes (on the raster's grid and CRS); None if below the minimum."""
        margin = 0
        if self.plan.warped:  # bilinear probabilities near the outline need their neighbours
            margin = 2 + 2 * math.ceil(max(self.info.pixel_size_m) / self.predictor.card.gsd_m)
        rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
        r0, r1 = max(rows[0] - margin, 0), min(rows[-1] + 1 + margin, region.shape[0])
        c0, c1 = max(cols[0] - margin, 0), min(cols[-1] + 1 + margin, region.shape[1])
        mask = np.where(region[r0:r1, c0:c1], cls, 0).astype(np.uint8)
        probs = area.probs[:, r0:r1, c0:c1]
        gt = _shifted(self.plan.geotransform, area.x0 + c0, area.y0 + r0)
        if self.plan.warped:
            mask, probs, gt = self._on_source_grid(mask, probs, gt)
        vectors = vectorize_array(mask, gt, self.info.crs_wkt, prob=probs, min_area_m2=self.min_area_m2,
                                  simplify_m=self.simplify_m, regularize=self.regularize, source=self.source_name,
                                  model=self.model_name,
                                  whole=(self.info.geotransform, self.info.width, self.info.height))
        if not vectors.geometries:
            return None, {}
        point = shapely.Point(x, y)
        geoms = np.array(vectors.geometries, dtype=object)
        inside = np.flatnonzero(shapely.contains(geoms, point))
        i = int(inside[0]) if len(inside) else int(np.argmin(shapely.distance(geoms, point)))
        return vectors.geometries[i], {name: vectors.attributes[name][i] for name in FIELDS}

    def _on_source_grid(self, mask: np.ndarray, probs: np.ndarray,
                        gt: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
        """A model-grid window resampled onto the raster's own grid, as ``warp_to_grid`` does for the job: classes
        nearest, probabilities quantized to 8 bits and bilinear. Probabilities come back (K, h, w), class 0 empty."""
        h, w = mask.shape
        along = np.linspace(0.0, 1.0, _EDGE_SAMPLES + 1)
        zeros, ones = np.zeros_like(along), np.ones_like(along)
        sides = ((along, zeros), (along, ones), (zeros, along), (ones, along))
        outline = np.concatenate([np.stack(side, axis=1) for side in sides]) * (w, h)
        on_map = [gdal.ApplyGeoTransform(gt, c, r) for c, r in outline]
        on_source = self._to_source.TransformPoints(on_map)
        pixels = np.array([gdal.ApplyGeoTransform(self._inverse_source, p[0], p[1]) for p in on_source])
        c0, r0 = np.maximum(np.floor(pixels.min(axis=0)).astype(int) - 1, 0)
        c1 = min(int(np.ceil(pixels[:, 0].max())) + 1, self.info.width)
        r1 = min(int(np.ceil(pixels[:, 1].max())) + 1, self.info.height)
        dst_gt = _shifted(self.info.geotransform, int(c0), int(r0))
        classes = _mem(mask[None], gt, self.plan.crs_wkt)
        dst_classes = _mem(np.zeros((1, r1 - r0, c1 - c0), np.uint8), dst_gt, self.info.crs_wkt)
        gdal.Warp(dst_classes, classes, resampleAlg="near")
        quantized = np.rint(np.clip(probs[1:], 0.0, 1.0) * 255.0).astype(np.uint8)
        scores = _mem(quantized, gt, self.plan.crs_wkt)
        dst_scores = _mem(np.zeros((len(quantized), r1 - r0, c1 - c0), np.uint8), dst_gt, self.info.crs_wkt)
        gdal.Warp(dst_scores, scores, resampleAlg="bilinear")
        out_probs = np.concatenate([np.zeros((1, r1 - r0, c1 - c0), np.uint8),
                                    dst_scores.ReadAsArray().reshape(len(quantized), r1 - r0, c1 - c0)])
        return dst_classes.ReadAsArray(), out_probs, dst_gt


# ----------------------------------------------------------------------------------------------------------------
# helpers


def _region(same: np.ndarray, row: int, col: int) -> np.ndarray:
    """The 4-connected region of True pixels in ``same`` that holds (row, col), found on runs of pixels.

    Runs are maximal horizontal stretches of True; two runs in adjacent rows touch when their column ranges overlap.
    A search over runs visits each run of the region once, so a building costs a few hundred steps, not one per pixel.
    """
    h, w = same.shape
    edges = np.diff(np.pad(same, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    run_row, run_start = np.nonzero(edges == 1)
    run_end = np.nonzero(edges == -1)[1]  # exclusive; row-major order pairs each end with its start
    first = np.searchsorted(run_row, np.arange(h + 1))
    lo, hi = first[row], first[row + 1]
    seed = lo + int(np.searchsorted(run_end[lo:hi], col, "right"))
    seen = np.zeros(len(run_row), bool)
    seen[seed] = True
    stack = [seed]
    while stack:
        k = stack.pop()
        r, s, e = run_row[k], run_start[k], run_end[k]
        for rr in (r - 1, r + 1):
            if 0 <= rr < h:
                lo, hi = first[rr], first[rr + 1]
                a = lo + int(np.searchsorted(run_end[lo:hi], s, "right"))  # first run ending after s
                b = lo + int(np.searchsorted(run_start[lo:hi], e, "left"))  # runs starting before e
                for j in range(a, b):
                    if not seen[j]:
                        seen[j] = True
                        stack.append(j)
    marks = np.zeros((h, w + 1), np.int32)
    np.add.at(marks, (run_row[seen], run_start[seen]), 1)
    np.add.at(marks, (run_row[seen], run_end[seen]), -1)
    return np.cumsum(marks, axis=1)[:, :w] > 0


def _outer_ring(region: np.ndarray) -> np.ndarray:
    """Pixels 4-adjacent to the region and not in it, on the region's grid padded by one pixel all round."""
    p = np.pad(region, 1)
    ring = np.zeros_like(p)
    ring[:-1] |= p[1:]
    ring[1:] |= p[:-1]
    ring[:, :-1] |= p[:, 1:]
    ring[:, 1:] |= p[:, :-1]
    return ring & ~p


def _shifted(gt: Sequence[float], col: int, row: int) -> tuple[float, ...]:
    """Geotransform of the window whose top-left pixel is (col, row) of ``gt``'s grid."""
    x, y = gdal.ApplyGeoTransform(list(gt), float(col), float(row))
    return (x, gt[1], gt[2], y, gt[4], gt[5])


def _transform(src_wkt: str, dst_wkt: str) -> osr.CoordinateTransformation:
    src, dst = osr.SpatialReference(), osr.SpatialReference()
    src.ImportFromWkt(src_wkt)
    dst.ImportFromWkt(dst_wkt)
    for srs in (src, dst):
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return osr.CoordinateTransformation(src, dst)


def _mem(bands: np.ndarray, gt: Sequence[float], crs_wkt: str) -> gdal.Dataset:
    """An in-memory uint8 raster holding ``bands`` (n, h, w)."""
    n, h, w = bands.shape
    ds = gdal.GetDriverByName("MEM").Create("", w, h, n, gdal.GDT_Byte)
    ds.SetGeoTransform(list(gt))
    ds.SetProjection(crs_wkt)
    for i in range(n):
        ds.GetRasterBand(i + 1).WriteArray(bands[i])
    return ds
