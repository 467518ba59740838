"""Guarantees of ``mtp_core.vectorize``: exact areas, valid outlines, holes, no gaps between classes, block-size
independence, map placement (projected and geographic), filtering, simplification, regularization, scores, cancel."""
from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from osgeo import gdal, osr
from shapely import Point, Polygon, affinity, box

from mtp_core.io import read_vector
from mtp_core.progress import Cancelled
from mtp_core.vectorize import (
    FIELDS,
    VectorizeCancelled,
    VectorResult,
    vectorize_array,
    vectorize_raster,
    vectorize_raster_to_file,
)
from mtp_core.vectorize.stream import _ArrayRows, _options, _Run
from mtp_tools.synthetic import rasterize_polygons, render_scene

GSD = 0.5
ORIGIN = (500000.0, 4500000.0)
GT = (ORIGIN[0], GSD, 0.0, ORIGIN[1], 0.0, -GSD)
#: UTM's scale on its central meridian, where these rasters sit: one grid metre is 1 / K0 metres on the ground, and
#: areas and lengths are ground metres (mtp_core.io.metres)
K0 = 0.9996
RAW = {"min_area_m2": 0.0, "simplify_m": 0.0}


def utm_wkt(epsg: int = 32633) -> str:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    return srs.ExportToWkt()


def write_tif(path, array: np.ndarray, gt, wkt: str, nodata: int | None = None) -> str:
    bands = array[None] if array.ndim == 2 else array
    ds = gdal.GetDriverByName("GTiff").Create(str(path), bands.shape[2], bands.shape[1], bands.shape[0], gdal.GDT_Byte)
    ds.SetGeoTransform(gt)
    ds.SetProjection(wkt)
    for i, band in enumerate(bands, start=1):
        ds.GetRasterBand(i).WriteArray(band)
        if nodata is not None:
            ds.GetRasterBand(i).SetNoDataValue(nodata)
    ds = None
    return str(path)


def to_pixels(geoms, gt=GT) -> np.ndarray:
    """Map geometries back to the pixel frame (x = column, y = row)."""
    return shapely.transform(np.asarray(geoms), lambda xy: (xy - [gt[0], gt[3]]) / [gt[1], gt[5]])


def corner_angles(polygon: Polygon) -> np.ndarray:
    """Interior-ish angle (degrees, 0-180) at every vertex of the exterior ring."""
    xy = np.asarray(polygon.exterior.coords)[:-1]
    a, b = np.roll(xy, 1, axis=0) - xy, np.roll(xy, -1, axis=0) - xy
    cos = np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


def noisy(mask: np.ndarray, rng: np.random.Generator, p: float = 0.3) -> np.ndarray:
    """Flips pixels on both sides of the outline with probability ``p``, like a segmentation model's ragged edges."""
    m = np.pad(mask.astype(bool), 1)
    core, up, down, left, right = m[1:-1, 1:-1], m[:-2, 1:-1], m[2:, 1:-1], m[1:-1, :-2], m[1:-1, 2:]
    edge = (core | up | down | left | right) & ~(core & up & down & left & right)
    return (core ^ (edge & (rng.random(core.shape) < p))).astype(np.uint8)


@pytest.fixture(scope="module")
def scene():
    return render_scene(300, 257, seed=3)


def test_area_is_pixel_count_times_pixel_area(scene):
    result = vectorize_array(scene.mask, GT, utm_wkt(), **RAW)
    total = sum(g.area for g in result.geometries)
    assert total == pytest.approx(scene.mask.sum() * GSD * GSD, rel=0.005)
    assert result.attributes["area_m2"] == pytest.approx([g.area / K0**2 for g in result.geometries], rel=1e-6)
    assert result.attributes["perimeter_m"] == pytest.approx([g.length / K0 for g in result.geometries], rel=1e-6)
    assert result.attributes["id"] == list(range(1, len(result) + 1))
    assert set(result.attributes["class"]) == {1}


def test_all_geometries_valid(scene):
    for options in (RAW, {}, {"regularize": True}, {"simplify_m": 1.0, "regularize": True}):
        result = vectorize_array(scene.mask, GT, utm_wkt(), **options)
        assert len(result) > 10
        assert all(g.geom_type == "Polygon" and g.is_valid and not g.is_empty for g in result.geometries)
        overlap_free_pairs(result.geometries)


def test_courtyards_are_kept():
    scene = next(s for s in (render_scene(300, 257, seed) for seed in range(40))
                 if any(len(b.interiors) for b in s.buildings))
    truth = next(b for b in scene.buildings if len(b.interiors))
    for options in ({}, {"regularize": True}):
        result = vectorize_array(scene.mask, GT, utm_wkt(), **options)
        yard = truth.interiors[0].centroid
        found = [g for g in to_pixels(result.geometries) if Polygon(g.exterior).contains(yard)]
        assert len(found) == 1 and len(found[0].interiors) >= 1
        assert found[0].interiors[0].is_valid


def multiclass_raster(rng: np.random.Generator, size: int = 80, background: bool = True) -> np.ndarray:
    """Blocky regions of classes 1-3 (and 0) with 15 % of the pixels scattered: islands, holes, diagonal touches."""
    low = 0 if background else 1
    coarse = rng.integers(low, 4, (size // 10, size // 10))
    raster = np.kron(coarse, np.ones((10, 10), np.uint8)).astype(np.uint8)
    scatter = rng.random(raster.shape) < 0.15
    raster[scatter] = rng.integers(low, 4, int(scatter.sum()))
    return raster


def overlap_free_pairs(geoms: list[Polygon]) -> int:
    """Asserts that no two polygons overlap; returns how many pairs touch."""
    arr = np.asarray(geoms)
    i, j = shapely.STRtree(arr).query(arr, predicate="intersects")
    pairs = i < j
    np.testing.assert_allclose(shapely.area(shapely.intersection(arr[i[pairs]], arr[j[pairs]])), 0.0, atol=1e-9)
    return int(pairs.sum())


def test_adjacent_classes_share_edges_exactly():
    raster = multiclass_raster(np.random.default_rng(1))
    pixels = shapely.union_all([box(c, r, c + 1, r + 1) for r, c in np.argwhere(raster > 0)])
    footprint = shapely.transform(pixels, lambda xy: np.array(ORIGIN) + xy * [GSD, -GSD])
    for simplify_m in (0.0, 0.0001):  # off, and on with a tolerance too small to remove a pixel corner
        result = vectorize_array(raster, GT, utm_wkt(), min_area_m2=0.0, simplify_m=simplify_m)
        assert set(result.attributes["class"]) == {1, 2, 3}
        assert shapely.equals(shapely.union_all(result.geometries), footprint)
        assert overlap_free_pairs(result.geometries) > 100


def test_simplified_classes_leave_no_gaps():
    raster = multiclass_raster(np.random.default_rng(2), background=False)
    for simplify_m in (0.5, 1.0, 2.0):
        result = vectorize_array(raster, GT, utm_wkt(), min_area_m2=0.0, simplify_m=simplify_m)
        assert all(g.is_valid for g in result.geometries)
        assert overlap_free_pairs(result.geometries) > 100
        union = shapely.union_all(result.geometries)
        assert union.geom_type == "Polygon" and len(union.interiors) == 0  # a gap would be a hole
        assert sum(g.area for g in result.geometries) == pytest.approx(union.area, rel=1e-9)


@pytest.mark.parametrize("options", [RAW, {"regularize": True}], ids=["raw", "simplify+regularize"])
def test_same_output_whatever_block_rows(scene, options):
    prob = (np.random.default_rng(0).random(scene.mask.shape) * 255).astype(np.uint8)
    results = {rows: vectorize_array(scene.mask, GT, utm_wkt(), prob=prob, block_rows=rows, **options)
               for rows in (7, 64, 1024)}
    assert results[7].counts["stitched"] > 5  # buildings did cross block borders
    reference = results[1024]
    for rows in (7, 64):
        got = results[rows]
        assert len(got) == len(reference)
        assert all(shapely.equals_exact(a, b, tolerance=0.0) for a, b in zip(got.geometries, reference.geometries))
        assert got.attributes == reference.attributes


def test_streamed_file_equals_in_memory_result_and_is_written_band_by_band(tmp_path, scene):
    tall = np.concatenate([scene.mask] * 4)  # 1028 rows of buildings
    classes = write_tif(tmp_path / "classes.tif", tall, GT, utm_wkt())
    probs = write_tif(tmp_path / "probs.tif", np.full(tall.shape, 200, np.uint8), GT, utm_wkt())
    options = dict(prob_raster_path=probs, block_rows=64, regularize=True, source="s.tif", model="m")
    expected = vectorize_raster(classes, **options)
    out = tmp_path / "out" / "buildings.gpkg"
    counts = vectorize_raster_to_file(classes, out, **options)
    assert counts == expected.counts and counts["polygons"] == len(expected) > 40
    geoms, columns, crs = read_vector(out)
    assert list(columns) == list(FIELDS) and columns == expected.attributes
    assert all(shapely.equals_exact(a, b, tolerance=0.0) for a, b in zip(geoms, expected.geometries))
    assert osr.SpatialReference(crs).GetAuthorityCode(None) == "32633"

    # Polygons leave the run while bands are still being read: memory does not follow the raster's height.
    read: list[int] = []
    rows = _ArrayRows(tall, None)
    run = _Run(rows, GT, utm_wkt(), _options(None, None, 64, 4.0, 0.25, False, "", "",
                                            lambda p: read.append(p.done), None))
    bands_read_at_chunk = [len(read) for _ in run.chunks()]
    assert len(bands_read_at_chunk) > 8 and bands_read_at_chunk[0] <= 8
    assert bands_read_at_chunk == sorted(bands_read_at_chunk)


def test_cancelled_file_is_not_written(tmp_path, scene):
    classes = write_tif(tmp_path / "classes.tif", scene.mask, GT, utm_wkt())
    bands: list[int] = []
    with pytest.raises(VectorizeCancelled):
        vectorize_raster_to_file(classes, tmp_path / "b.gpkg", block_rows=64, progress=lambda p: bands.append(p.done),
                                 cancel=lambda: len(bands) >= 3)
    assert list(tmp_path.iterdir()) == [tmp_path / "classes.tif"]


def test_projected_raster_file_places_polygons_on_the_map(tmp_path):
    mask = np.zeros((40, 60), np.uint8)
    mask[10:20, 30:45] = 1
    path = write_tif(tmp_path / "classes.tif", mask, GT, utm_wkt())
    result = vectorize_raster(path, source="classes.tif", model="mtp_vit_b_rvsa_upernet")
    (polygon,) = result.geometries
    assert polygon.bounds == (ORIGIN[0] + 30 * GSD, ORIGIN[1] - 20 * GSD, ORIGIN[0] + 45 * GSD, ORIGIN[1] - 10 * GSD)
    assert len(polygon.exterior.coords) == 5
    # to the nanometre precision of PROJ's projections over a pixel step
    assert result.attributes["area_m2"] == pytest.approx([150 * GSD * GSD / K0**2], rel=1e-8)
    assert result.attributes["perimeter_m"] == pytest.approx([50 * GSD / K0], rel=1e-8)
    assert result.attributes["source"] == ["classes.tif"] and result.attributes["model"] == ["mtp_vit_b_rvsa_upernet"]
    assert result.attributes["score"] == [None]
    assert osr.SpatialReference(result.crs_wkt).GetAuthorityCode(None) == "32633"
    assert isinstance(result, VectorResult) and result.counts["polygons"] == 1


def test_geographic_raster_has_degrees_and_true_areas():
    wgs84 = osr.SpatialReference()
    wgs84.ImportFromEPSG(4326)
    gt = (10.0, 1e-5, 0.0, 45.0, 0.0, -1e-5)  # about 0.79 m x 1.11 m pixels
    mask = np.zeros((100, 100), np.uint8)
    mask[20:70, 10:90] = 1
    result = vectorize_array(mask, gt, wgs84.ExportToWkt(), min_area_m2=4.0, simplify_m=0.25)
    (polygon,) = result.geometries
    assert polygon.bounds == pytest.approx((10.0001, 45.0 - 70e-5, 10.0009, 45.0 - 20e-5), abs=1e-12)

    utm = osr.SpatialReference()
    utm.ImportFromEPSG(32632)
    for srs in (wgs84, utm):
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    ct = osr.CoordinateTransformation(wgs84, utm)
    in_utm = Polygon([ct.TransformPoint(x, y)[:2] for x, y in polygon.exterior.coords])
    assert result.attributes["area_m2"][0] == pytest.approx(in_utm.area, rel=0.01)
    assert result.attributes["area_m2"][0] == pytest.approx(80 * 0.7885 * 50 * 1.1113, rel=0.01)
    assert result.attributes["perimeter_m"][0] == pytest.approx(in_utm.length, rel=0.01)


def test_min_area_drops_small_polygons_and_fills_small_holes():
    mask = np.zeros((60, 80), np.uint8)
    mask[2:3, 2:3] = 1      # 0.25 m²
    mask[2:5, 10:13] = 1    # 2.25 m²
    mask[2:6, 20:24] = 1    # 4 m²: kept (>=)
    mask[20:50, 20:60] = 1  # 300 m² with a 1-pixel hole (noise) and a 6 x 6 courtyard (9 m²)
    mask[25, 25] = 0
    mask[30:36, 40:46] = 0
    result = vectorize_array(mask, GT, utm_wkt(), min_area_m2=4.0, simplify_m=0.0)
    assert sorted(result.attributes["area_m2"]) == pytest.approx([4.0 / K0**2, (300.0 - 9.0) / K0**2], rel=1e-8)
    assert result.counts["small_dropped"] == 2 and result.counts["holes_filled"] == 1
    big = result.geometries[int(np.argmax(result.attributes["area_m2"]))]
    assert len(big.interiors) == 1
    assert len(vectorize_array(mask, GT, utm_wkt(), **RAW)) == 4


def test_simplification_stays_valid_and_on_pixel_corners(scene):
    raw = vectorize_array(scene.mask, GT, utm_wkt(), **RAW)
    vertices = [sum(len(g.exterior.coords) for g in raw.geometries)]
    for simplify_m in (0.25, 0.5, 1.0, 2.0):
        result = vectorize_array(scene.mask, GT, utm_wkt(), min_area_m2=0.0, simplify_m=simplify_m)
        assert len(result) == len(raw)
        assert all(g.is_valid for g in result.geometries)
        overlap_free_pairs(result.geometries)
        xy = shapely.get_coordinates(to_pixels(result.geometries))
        assert np.array_equal(xy, np.rint(xy))
        vertices.append(sum(len(g.exterior.coords) for g in result.geometries))
        assert sum(result.attributes["area_m2"]) == pytest.approx(sum(raw.attributes["area_m2"]), rel=0.03)
    assert vertices == sorted(vertices, reverse=True) and vertices[-1] < 0.7 * vertices[0]


def rotated(polygon: Polygon, angle: float) -> Polygon:
    return affinity.rotate(polygon, angle, origin="centroid")


def test_regularization_squares_a_noisy_rotated_rectangle():
    rng = np.random.default_rng(5)
    for angle in (0.0, 23.0, 41.0, 67.0):
        truth = rotated(box(40, 50, 100, 78), angle)
        mask = noisy(rasterize_polygons([truth], 128, 140) > 0, rng)
        result = vectorize_array(mask, GT, utm_wkt(), regularize=True, simplify_m=0.25)
        assert result.counts["regularized"] == 1
        (polygon,) = to_pixels(result.geometries)
        assert len(polygon.exterior.coords) == 5
        np.testing.assert_allclose(corner_angles(polygon), 90.0, atol=1.0)
        assert polygon.intersection(truth).area / polygon.union(truth).area > 0.93
        side = np.diff(np.asarray(polygon.exterior.coords)[:2], axis=0)[0]
        assert (math.degrees(math.atan2(side[1], side[0])) - angle + 45) % 90 - 45 == pytest.approx(0, abs=2.0)


def test_regularization_keeps_an_l_shape_and_a_courtyard():
    rng = np.random.default_rng(6)
    ell = rotated(Polygon([(30, 30), (100, 30), (100, 60), (60, 60), (60, 110), (30, 110)]), 17.0)
    yard = rotated(Polygon(box(20, 20, 90, 80).exterior, [box(40, 40, 70, 60).exterior.coords]), -31.0)
    for truth, vertices, holes in ((ell, 6, 0), (yard, 4, 1)):
        mask = noisy(rasterize_polygons([truth], 140, 140) > 0, rng)
        result = vectorize_array(mask, GT, utm_wkt(), regularize=True)
        assert result.counts["regularized"] == 1
        (polygon,) = result.geometries
        assert len(polygon.exterior.coords) == vertices + 1 and len(polygon.interiors) == holes
        for ring in [polygon] + [Polygon(r) for r in polygon.interiors]:
            np.testing.assert_allclose(corner_angles(ring), 90.0, atol=1.0)


def test_regularization_reverts_when_the_shape_is_not_rectilinear():
    # A disc snaps to a square whose IoU with it is about 0.83 (< 0.85); a triangle collapses to fewer than 4 walls.
    for blob in (Point(60, 60).buffer(25), Polygon([(20, 20), (100, 20), (60, 95)])):
        mask = rasterize_polygons([blob], 120, 120)
        plain = vectorize_array(mask, GT, utm_wkt())
        result = vectorize_array(mask, GT, utm_wkt(), regularize=True)
        assert result.counts["reverted"] == 1 and result.counts["regularized"] == 0
        assert shapely.equals_exact(result.geometries[0], plain.geometries[0], tolerance=0.0)


def test_scores_are_mean_probabilities(tmp_path):
    mask = np.zeros((50, 60), np.uint8)
    mask[5:15, 5:25] = 1
    mask[20:40, 30:50] = 2
    prob = np.zeros((50, 60), np.uint8)
    prob[5:15, 5:25] = 200
    prob[20:30, 30:50], prob[30:40, 30:50] = 100, 50
    classes = write_tif(tmp_path / "c.tif", mask, GT, utm_wkt())
    probs = write_tif(tmp_path / "p.tif", prob, GT, utm_wkt())
    for rows in (3, 1024):  # class 2 crosses several block borders with 3-row blocks
        result = vectorize_raster(classes, prob_raster_path=probs, block_rows=rows)
        assert result.attributes["class"] == [1, 2]
        assert result.attributes["score"] == [200 / 255, 75 / 255]

    two_bands = write_tif(tmp_path / "p2.tif", np.stack([np.full_like(prob, 10), np.full_like(prob, 20)]), GT,
                          utm_wkt())  # as `mtp predict` writes them: band c = class c, no background band
    assert vectorize_raster(classes, prob_raster_path=two_bands).attributes["score"] == [10 / 255, 20 / 255]

    per_class = np.zeros((3, 50, 60), np.float32)  # (K, H, W) floats, background first, as predict_array gives
    per_class[1], per_class[2] = 0.6, 0.9
    result = vectorize_array(mask, GT, utm_wkt(), prob=per_class)
    assert result.attributes["score"] == [153 / 255, pytest.approx(0.9, abs=0.5 / 255)]


def test_nodata_and_class_selection(tmp_path):
    mask = np.zeros((30, 30), np.uint8)
    mask[2:10, 2:10] = 1
    mask[12:20, 2:10] = 2
    mask[22:30, 2:10] = 255
    path = write_tif(tmp_path / "c.tif", mask, GT, utm_wkt(), nodata=255)
    assert vectorize_raster(path).attributes["class"] == [1, 2]
    assert vectorize_raster(path, classes=[2]).attributes["class"] == [2]


def test_progress_and_cancel(scene):
    calls: list[tuple[int, int]] = []
    vectorize_array(scene.mask, GT, utm_wkt(), block_rows=64, progress=lambda p: calls.append((p.done, p.total)))
    assert calls == [(64, 300), (128, 300), (192, 300), (256, 300), (300, 300)]

    calls.clear()
    with pytest.raises(VectorizeCancelled):  # the user cancels after two bands: no third band is read
        vectorize_array(scene.mask, GT, utm_wkt(), block_rows=64, progress=lambda p: calls.append((p.done, p.total)),
                        cancel=lambda: len(calls) >= 2)
    assert calls == [(64, 300), (128, 300)]
    assert issubclass(VectorizeCancelled, Cancelled)  # callers that catch any cancellation catch this one too


def test_rotated_rasters_are_placed_and_measured_on_their_own_grid():
    """A geotransform with rotation: each pixel corner goes where the geotransform says, and measures are the same as
    on the north-up grid (a rotation changes no area)."""
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    rotated = (ORIGIN[0], GSD * c, GSD * s, ORIGIN[1], GSD * s, -GSD * c)
    mask = np.zeros((40, 60), np.uint8)
    mask[10:20, 30:45] = 1
    (polygon,), attrs = (lambda r: (r.geometries, r.attributes))(vectorize_array(mask, rotated, utm_wkt(), **RAW))
    corners = {tuple(np.round(gdal.ApplyGeoTransform(rotated, col, row), 6)) for col in (30, 45) for row in (10, 20)}
    assert {tuple(np.round(xy, 6)) for xy in polygon.exterior.coords} == corners
    north_up = vectorize_array(mask, GT, utm_wkt(), **RAW).attributes
    assert attrs["area_m2"] == pytest.approx(north_up["area_m2"], rel=1e-6)
    assert attrs["perimeter_m"] == pytest.approx(north_up["perimeter_m"], rel=1e-6)
