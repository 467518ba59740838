"""Synthetic scenes: exact labels, variety a model has to cope with, and georeferenced files GDAL reads back."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import shapely
from osgeo import gdal, ogr, osr
from shapely.geometry import Polygon

from mtp_tools import synthetic
from mtp_tools.synthetic import generate_scene_files, rasterize_polygons, render_scene, write_scene
from mtp_tools.synthetic.cli import main

GSD = 0.5
ORIGIN = (500000.0, 4_500_000.0)


@pytest.fixture(scope="module")
def scenes() -> list:
    """A few 512 x 512 scenes shared by the tests that only look at them."""
    return [render_scene(512, 512, seed) for seed in range(4)]


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple:
    scene = render_scene(384, 512, 11)
    out = tmp_path_factory.mktemp("scene")
    tif, geojson = write_scene(scene, out / "s.tif", out / "s.geojson", epsg=32633, origin=ORIGIN)
    return scene, tif, geojson


def test_same_seed_same_scene_other_seed_other_scene() -> None:
    a, b, c = render_scene(256, 320, 7), render_scene(256, 320, 7), render_scene(256, 320, 8)
    assert a.image.shape == (256, 320, 3) and a.image.dtype == np.uint8
    assert a.mask.shape == (256, 320) and a.mask.dtype == np.uint8 and set(np.unique(a.mask)) <= {0, 1}
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert [p.wkb for p in a.buildings] == [p.wkb for p in b.buildings]
    assert not np.array_equal(a.image, c.image)


def test_mask_is_the_rasterization_of_the_polygons(scenes) -> None:
    for scene in scenes:
        h, w = scene.mask.shape
        assert np.array_equal(scene.mask, (rasterize_polygons(scene.buildings, h, w) > 0).astype(np.uint8))
        area = sum(p.area for p in scene.buildings)
        assert abs(area - int(scene.mask.sum())) <= 0.005 * area


def test_rasterizer_uses_pixel_centres_and_holes() -> None:
    ring = Polygon([(0.7, 0.7), (4.2, 0.7), (4.2, 4.2), (0.7, 4.2)], [[(2, 2), (3, 2), (3, 3), (2, 3)]])
    labels = rasterize_polygons([ring, Polygon([(5, 0), (6, 0), (6, 1), (5, 1)])], 6, 7)
    expected = np.zeros((6, 7), np.int32)
    expected[1:4, 1:4] = 1  # centres 1.5, 2.5, 3.5 are inside, 0.5 and 4.5 are not
    expected[2, 2] = 0  # the hole holds the centre (2.5, 2.5)
    expected[0, 5] = 2
    assert np.array_equal(labels, expected)


def test_mask_agrees_with_gdal_rasterizing_the_written_files(written) -> None:
    scene, tif, geojson = written
    raster = gdal.Open(str(tif))
    target = gdal.GetDriverByName("MEM").Create("", raster.RasterXSize, raster.RasterYSize, 1, gdal.GDT_Byte)
    target.SetGeoTransform(raster.GetGeoTransform())
    target.SetProjection(raster.GetProjection())
    vector = ogr.Open(str(geojson))
    assert gdal.RasterizeLayer(target, [1], vector.GetLayer(0), burn_values=[1]) == 0
    burned = target.GetRasterBand(1).ReadAsArray()
    assert burned.sum() > 0
    assert (burned == scene.mask).mean() >= 0.999


def test_polygons_are_valid_and_keep_a_gap(scenes) -> None:
    for scene in scenes:
        polys = np.array(scene.buildings, dtype=object)
        assert all(isinstance(p, Polygon) and p.is_valid and p.area > 0 for p in polys)
        h, w = scene.mask.shape
        assert all(0 <= c <= lim for p in polys for c, lim in zip(p.bounds, (w, h, w, h)))
        # Buildings are at least 1 m (2 px) apart: no overlaps, no shared walls.
        left, right = shapely.STRtree(polys).query(polys, predicate="dwithin", distance=1.0 / GSD - 1e-6)
        assert np.all(left == right)


def test_scenes_vary_in_shape_orientation_and_roof_colour(scenes) -> None:
    polys = [p for s in scenes for p in s.buildings]
    assert any(p.interiors for p in polys), "no courtyard building"
    bent = [p for p in polys if not p.interiors and len(p.exterior.coords) >= 7
            and p.area < 0.9 * p.minimum_rotated_rectangle.area]
    assert len(bent) >= 10, "too few L/T/U-shaped buildings"
    angles = np.array([_orientation_deg(p) for p in polys if p.area > 40])
    assert np.mean(np.minimum(angles, 90 - angles) > 2.0) > 0.3, "buildings are (nearly) all axis-aligned"
    assert np.histogram(angles, bins=9, range=(0, 90))[0].astype(bool).sum() >= 5
    colours = np.concatenate([_roof_colours(s) for s in scenes])
    kinds = {_colour_kind(c) for c in colours}
    assert {"red", "dark", "light", "grey"} <= kinds, kinds


def test_building_cover_is_reasonable(scenes) -> None:
    for scene in scenes:
        assert 0.10 <= scene.cover <= 0.35, (scene.seed, scene.cover)


def test_a_1024_scene_has_a_town_of_buildings() -> None:
    scene = render_scene(1024, 1024, 5)
    assert 0.10 <= scene.cover <= 0.35 and len(scene.buildings) > 100


def test_other_sizes_and_resolutions() -> None:
    scene = render_scene(97, 143, 3, gsd_m=0.3)
    assert scene.image.shape == (97, 143, 3) and scene.gsd_m == 0.3
    assert np.array_equal(scene.mask, (rasterize_polygons(scene.buildings, 97, 143) > 0).astype(np.uint8))
    with pytest.raises(ValueError):
        render_scene(0, 10, 1)


def test_geotiff_is_georeferenced_tiled_and_compressed(written) -> None:
    scene, tif, _ = written
    ds = gdal.Open(str(tif))
    assert ds.GetDriver().ShortName == "GTiff"
    assert (ds.RasterYSize, ds.RasterXSize, ds.RasterCount) == (384, 512, 3)
    assert all(ds.GetRasterBand(i).DataType == gdal.GDT_Byte for i in (1, 2, 3))
    assert ds.GetGeoTransform() == (ORIGIN[0], GSD, 0.0, ORIGIN[1], 0.0, -GSD)
    srs = osr.SpatialReference(wkt=ds.GetProjection())
    assert srs.GetAuthorityCode(None) == "32633"
    assert ds.GetMetadata("IMAGE_STRUCTURE").get("COMPRESSION") == "DEFLATE"
    assert ds.GetRasterBand(1).GetBlockSize() == [256, 256]
    assert np.array_equal(ds.ReadAsArray().transpose(1, 2, 0), scene.image)


def test_geojson_holds_the_polygons_in_map_coordinates_of_the_raster_crs(written) -> None:
    scene, _, geojson = written
    assert "EPSG::32633" in json.loads(Path(geojson).read_text())["crs"]["properties"]["name"]
    ds = ogr.Open(str(geojson))
    layer = ds.GetLayer(0)
    raster_srs = osr.SpatialReference()
    raster_srs.ImportFromEPSG(32633)
    assert layer.GetSpatialRef().IsSame(raster_srs)
    features = list(layer)
    assert len(features) == len(scene.buildings)
    for feature, polygon in zip(features, scene.buildings):
        assert feature.GetField("class") == "building"
        got = shapely.from_wkb(bytes(feature.GetGeometryRef().ExportToWkb()))
        expected = shapely.transform(polygon, lambda xy: xy * [GSD, -GSD] + ORIGIN)
        assert got.equals_exact(expected, tolerance=1e-5), feature.GetField("id")
    assert [f.GetField("id") for f in features] == list(range(1, len(features) + 1))


def test_writes_are_atomic(tmp_path, monkeypatch) -> None:
    scene = render_scene(64, 64, 2)
    write_scene(scene, tmp_path / "a.tif", tmp_path / "a.geojson")
    write_scene(scene, tmp_path / "a.tif", tmp_path / "a.geojson")  # replacing existing files works too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.geojson", "a.tif"]

    def broken(*args):
        raise RuntimeError("disk full")

    scene_with_buildings = render_scene(256, 256, 2)
    monkeypatch.setattr(ogr, "CreateGeometryFromWkb", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_scene(scene_with_buildings, tmp_path / "b.tif", tmp_path / "b.geojson")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.geojson", "a.tif", "b.tif"]


def test_generate_files_and_command_line(tmp_path, capsys) -> None:
    tif, geojson = generate_scene_files(tmp_path / "one", "demo", 128, 96, seed=4, epsg=32632)
    assert tif == tmp_path / "one" / "demo.tif" and geojson.exists()
    assert osr.SpatialReference(wkt=gdal.Open(str(tif)).GetProjection()).GetAuthorityCode(None) == "32632"
    assert main([str(tmp_path / "cli"), "--size", "96", "--seed", "5", "--count", "2", "--name", "t"]) == 0
    names = sorted(p.name for p in (tmp_path / "cli").iterdir())
    assert names == ["t_0.geojson", "t_0.tif", "t_1.geojson", "t_1.tif"]
    out = capsys.readouterr().out
    assert "t_0.tif" in out and "seed 6" in out and "building cover" in out
    assert synthetic.render_scene(96, 96, 5).image.tobytes() == gdal.Open(
        str(tmp_path / "cli" / "t_0.tif")).ReadAsArray().transpose(1, 2, 0).tobytes()


def _orientation_deg(polygon: Polygon) -> float:
    """Angle of the minimum rotated rectangle's first edge, folded into [0, 90)."""
    x, y = np.asarray(polygon.minimum_rotated_rectangle.exterior.coords)[:2].T
    return float(np.degrees(np.arctan2(y[1] - y[0], x[1] - x[0])) % 90.0)


def _roof_colours(scene) -> np.ndarray:
    """Median RGB of each building with at least 30 pixels."""
    h, w = scene.mask.shape
    labels = rasterize_polygons(scene.buildings, h, w).ravel()
    pixels = scene.image.reshape(-1, 3)
    counts = np.bincount(labels, minlength=len(scene.buildings) + 1)
    return np.array([np.median(pixels[labels == k], axis=0) for k in np.flatnonzero(counts[1:] >= 30) + 1])


def _colour_kind(rgb: np.ndarray) -> str:
    r, g, b = (float(c) for c in rgb)
    if r > g + 30 and r > b + 30:
        return "red"
    if max(r, g, b) < 90:
        return "dark"
    if min(r, g, b) > 170:
        return "light"
    if max(r, g, b) - min(r, g, b) < 20:
        return "grey"
    return "other"


# ------------------------------------------------------------------------------------------------ before/after pairs


@pytest.fixture(scope="module")
def pair():
    from mtp_tools.synthetic.pair import render_pair

    return render_pair(256, 256, seed=31)


def test_a_pair_has_new_and_demolished_buildings_exactly_labelled(pair) -> None:
    kinds = pair.kinds
    assert "new" in kinds and "demolished" in kinds and len(pair.changes) == len(kinds)
    for polygon, kind in zip(pair.changes, kinds):
        inside = rasterize_polygons([polygon], 256, 256) > 0
        present = (pair.before_mask[inside].mean(), pair.after_mask[inside].mean())
        assert present == ((0.0, 1.0) if kind == "new" else (1.0, 0.0)), kind
        assert polygon.area * GSD**2 >= 50.0  # houses and larger, never sheds
    assert np.array_equal(pair.change_mask == 1, rasterize_polygons(pair.changes, 256, 256) > 0)
    unchanged = pair.change_mask == 0
    assert np.array_equal(pair.before_mask[unchanged], pair.after_mask[unchanged])  # nothing else changed


def test_the_dates_differ_in_light_season_and_registration(pair) -> None:
    same_place = (pair.before_mask == 0) & (pair.after_mask == 0)
    diff = np.abs(pair.before.astype(int) - pair.after.astype(int))[same_place]
    assert diff.mean() > 8  # sun, season, exposure: a pixel difference alone is no change detector
    assert 0.25 <= float(np.hypot(*pair.shift_px)) <= 1.0


def test_the_same_pair_misregistered_by_another_amount() -> None:
    from mtp_tools.synthetic.pair import render_pair

    still, moved = render_pair(192, 192, seed=8, shift_px=0.0), render_pair(192, 192, seed=8, shift_px=3.0)
    assert np.array_equal(still.before, moved.before) and np.array_equal(still.change_mask, moved.change_mask)
    assert np.hypot(*moved.shift_px) == pytest.approx(3.0)
    grey = [p.after.astype(np.float32).mean(axis=2) for p in (still, moved)]
    spectrum = np.fft.ifft2(np.fft.fft2(grey[1] - grey[1].mean()) * np.conj(np.fft.fft2(grey[0] - grey[0].mean())))
    dy, dx = np.unravel_index(np.argmax(np.abs(spectrum)), spectrum.shape)
    dy, dx = (dy + 96) % 192 - 96, (dx + 96) % 192 - 96
    assert (dx, dy) == (round(moved.shift_px[0]), round(moved.shift_px[1]))


def test_pair_files_and_the_levir_layout(pair, tmp_path, capsys) -> None:
    from mtp_tools.synthetic.pair import write_pair, write_pair_levir

    before, after, changes = write_pair(pair, tmp_path, "p")
    assert [p.name for p in (before, after, changes)] == ["p_before.tif", "p_after.tif", "p_changes.geojson"]
    a, b = gdal.Open(str(before)), gdal.Open(str(after))
    assert a.GetGeoTransform() == b.GetGeoTransform() and a.GetProjection() == b.GetProjection()
    source = ogr.Open(str(changes))  # must outlive its layer
    assert [f.GetField("kind") for f in source.GetLayer()] == pair.kinds
    a_png, b_png, label = write_pair_levir(pair, tmp_path / "levir", "p")
    assert [p.relative_to(tmp_path / "levir").as_posix() for p in (a_png, b_png, label)] == [
        "A/p.png", "B/p.png", "label/p.png"]
    assert set(np.unique(gdal.Open(str(label)).ReadAsArray())) == {0, 255}
    assert main([str(tmp_path / "cli"), "--pair", "--size", "96", "--seed", "3", "--shift", "2"]) == 0
    assert "after image shifted by 2.00 px" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == [
        "scene_0_after.tif", "scene_0_before.tif", "scene_0_changes.geojson"]
    with pytest.raises(SystemExit):
        main([str(tmp_path / "x"), "--layout", "levir"])


def test_touching_mask_flags_shared_walls_and_found_wants_iou_above_half(tmp_path) -> None:
    """The diagnostics of bench/instances.py: which houses share a wall (a corner or a 1 cm gap is not a wall), and
    which labelled houses some predicted polygon overlaps with IoU > 0.5."""
    from shapely.geometry import box

    from mtp_core.io import write_vector
    from mtp_tools.synthetic.touching import touching_mask
    from mtp_tools.touching_compare import found

    houses = [box(0, 0, 6, 10), box(6, 0, 12, 10), box(12, 10, 18, 20), box(30.01, 0, 36, 10), box(24, 0, 30, 10)]
    assert touching_mask(houses).tolist() == [True, True, False, False, False]
    row = box(0, 0, 12, 10)  # both houses of the pair in one polygon: IoU 0.5 with each, not above
    write_vector(tmp_path / "p.gpkg", [row, box(24.5, 0, 30, 10)], {"score": [0.9, 0.8]}, "EPSG:32633")
    assert found(tmp_path / "p.gpkg", houses, "EPSG:32633").tolist() == [False, False, False, False, True]
