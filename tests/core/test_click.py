"""Click-to-segment engine: a click gives the building the whole-raster job gives, from a bounded cache of tiles.

One synthetic 512 x 512 scene (9 tiles of the embedded demo model) and one ``mtp predict`` job on it are the
reference: the job's polygons are what a click must return, the scene's labels what it must overlap.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely
from osgeo import gdal, osr

from mtp_core.click import FIELDS, ClickSegmenter
from mtp_core.inference import Predictor
from mtp_core.io import describe_raster, read_vector
from mtp_core.pipeline import extract_buildings
from mtp_core.progress import Cancelled
from mtp_core.tiling import TileGrid
from mtp_core.weights import DEMO_CHECKPOINT
from mtp_tools.synthetic import render_scene, write_scene

SIZE = 512


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.from_checkpoint(DEMO_CHECKPOINT, device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> tuple[Path, list]:
    folder = tmp_path_factory.mktemp("click")
    tif, geojson = write_scene(render_scene(SIZE, SIZE, seed=3), folder / "scene.tif", folder / "scene.geojson")
    return tif, read_vector(geojson)[0]


@pytest.fixture(scope="module")
def job(predictor, scene, tmp_path_factory) -> tuple[list, dict]:
    """The job's polygons and attributes (``mtp predict`` defaults)."""
    result = extract_buildings(predictor, scene[0], tmp_path_factory.mktemp("job"))
    geoms, attrs, _ = read_vector(result.vector_path)
    assert len(geoms) > 50
    return geoms, attrs


@pytest.fixture(scope="module")
def warm(predictor, scene) -> ClickSegmenter:
    """A segmenter shared by the tests that do not count predicted tiles."""
    return ClickSegmenter(predictor, scene[0])


def iou(a, b) -> float:
    return shapely.area(shapely.intersection(a, b)) / shapely.area(shapely.union(a, b))


def covering_tiles(seg: ClickSegmenter, x: float, y: float) -> int:
    """How many tiles of the job's grid cover the pixel under (x, y) (a projected raster: the model grid is its own)."""
    col, row = gdal.ApplyGeoTransform(gdal.InvGeoTransform(seg.info.geotransform), x, y)
    grid = TileGrid(seg.plan.height, seg.plan.width, seg.predictor.card.tile, seg.predictor.overlap)
    rows = sum(o <= int(row) < o + grid.tile for o in grid.row_origins)
    cols = sum(o <= int(col) < o + grid.tile for o in grid.col_origins)
    return rows * cols


def test_every_click_gives_the_jobs_polygon_and_attributes(predictor, scene, job):
    geoms, attrs = job
    seg = ClickSegmenter(predictor, scene[0])
    for i, polygon in enumerate(geoms):
        point = polygon.representative_point()
        result = seg.segment_at(point.x, point.y)
        assert result.found, (i, result.message())
        assert shapely.equals(result.geometry, polygon), i
        # the same measures (float rounding aside: the click's pixel frame starts elsewhere)
        assert result.attributes == {name: attrs[name][i] for name in FIELDS}
        assert result.crs_wkt == seg.info.crs_wkt and result.message().startswith("building ")
    assert seg.tiles_predicted == 9  # each tile of the raster once, however many clicks


def test_a_click_overlaps_the_labelled_building(scene, warm):
    tif, labels = scene
    seg = warm
    overlaps = []
    interior = shapely.box(*describe_raster(tif).bounds).buffer(-5.0)
    for label in labels:
        if label.area < 80 or not interior.contains(label):  # sheds, and buildings cut by the scene's edge
            continue
        point = label.representative_point()
        result = seg.segment_at(point.x, point.y)
        overlaps.append(iou(result.geometry, label) if result.found else 0.0)
    assert len(overlaps) > 40
    assert min(overlaps) > 0.6 and np.mean(np.array(overlaps) > 0.7) > 0.9 and np.mean(overlaps) > 0.85


def test_neighbouring_clicks_reuse_the_cached_tiles(predictor, scene, job):
    geoms, _ = job
    seg = ClickSegmenter(predictor, scene[0])
    first = geoms[0].representative_point()
    uncached = seg.segment_at(first.x, first.y)
    assert uncached.found and uncached.tiles_run >= 1 and not uncached.cached
    predicted = seg.tiles_predicted
    near = min(geoms[1:], key=lambda g: g.distance(geoms[0])).representative_point()
    timings = []
    for _ in range(5):
        result = seg.segment_at(near.x, near.y)
        assert result.found and result.cached and result.tiles_run == 0
        timings.append(result.seconds)
    assert seg.tiles_predicted == predicted
    print(f"click latency on CPU: first {uncached.seconds * 1000:.0f} ms, cached median "
          f"{np.median(timings) * 1000:.0f} ms")
    assert np.median(timings) < 1.5  # generous on a loaded 2-core machine; bench/click_latency.py measures it


def test_a_building_cut_by_a_tile_border_comes_out_whole(predictor, scene, job, warm):
    geoms, _ = job
    seg = warm
    grown = []
    for polygon in geoms:
        point = polygon.representative_point()
        result = seg.segment_at(point.x, point.y)
        if result.tiles > covering_tiles(seg, point.x, point.y):
            grown.append((polygon, point, result))
    cut_short = 0
    limited: dict[int, ClickSegmenter] = {}  # one per limit, so each predicts every tile once at most
    for polygon, point, result in grown:
        assert shapely.equals(result.geometry, polygon) and result.complete
        limit = covering_tiles(seg, point.x, point.y)
        limited.setdefault(limit, ClickSegmenter(predictor, scene[0], max_tiles=limit))
        cut = limited[limit].segment_at(point.x, point.y)
        assert not cut.complete and "cut at" in cut.message()
        assert polygon.buffer(0.5).contains(cut.geometry)  # a part of the building, within a pixel
        cut_short += cut.geometry.area < polygon.area - 1.0
        if cut_short == 2:
            break
    assert cut_short, "the scene must have buildings that go on past the tiles under their click"


def test_background_outside_and_small_are_told_apart(predictor, scene, job):
    tif, _ = scene
    seg = ClickSegmenter(predictor, tif, min_area_m2=1000.0)
    minx, miny, maxx, maxy = describe_raster(tif).bounds
    outside = seg.segment_at(maxx + 10.0, maxy)
    assert outside.status == "outside" and outside.geometry is None and outside.message() == "outside the raster"
    assert seg.tiles_predicted == 0
    buildings = shapely.union_all(job[0]).buffer(3.0)
    background = next(p for p in shapely.points(np.stack(np.meshgrid(np.linspace(minx + 5, maxx - 5, 40),
                                                                         np.linspace(miny + 5, maxy - 5, 40)), -1)
                                                 .reshape(-1, 2)) if not buildings.contains(p))
    result = seg.segment_at(background.x, background.y)
    assert result.status == "background" and not result.found
    assert result.message().startswith("no building at this point")
    point = job[0][0].representative_point()
    small = seg.segment_at(point.x, point.y)
    assert small.status == "small" and small.geometry is None
    assert abs(small.region_m2 - job[1]["area_m2"][0]) < 0.1 * job[1]["area_m2"][0]
    assert "below the 1000 m² minimum" in small.message(seg.min_area_m2)


def test_nodata_pixels_say_so(predictor, scene, tmp_path):
    path = tmp_path / "holes.tif"
    ds = gdal.Translate(str(path), str(scene[0]), noData=0)
    for band in range(1, 4):
        ds.GetRasterBand(band).WriteArray(np.zeros((100, 100), np.uint8), 0, 0)
    ds = None
    seg = ClickSegmenter(predictor, path)
    gt = seg.info.geotransform
    result = seg.segment_at(gt[0] + 20 * gt[1], gt[3] + 20 * gt[5])
    assert result.status == "nodata" and result.message() == "no data at this point"


def test_hover_previews_never_run_the_model(predictor, scene, job):
    seg = ClickSegmenter(predictor, scene[0])
    point = job[0][0].representative_point()
    preview = seg.segment_at(point.x, point.y, run_model=False)
    assert preview.status == "uncached" and seg.tiles_predicted == 0 and seg.cached_tiles == 0
    seg.segment_at(point.x, point.y)
    again = seg.segment_at(point.x, point.y, run_model=False)
    assert again.found and shapely.equals(again.geometry, job[0][0])


def test_the_cache_is_bounded_and_a_cancel_stops_a_click(predictor, scene, job):
    geoms, _ = job
    seg = ClickSegmenter(predictor, scene[0], cache_tiles=2)
    for polygon in geoms[::25]:
        point = polygon.representative_point()
        result = seg.segment_at(point.x, point.y)
        assert shapely.equals(result.geometry, polygon)
        assert seg.cached_tiles <= 2
    fresh = ClickSegmenter(predictor, scene[0])
    point = geoms[0].representative_point()
    with pytest.raises(Cancelled):
        fresh.segment_at(point.x, point.y, cancel=lambda: True)
    assert fresh.tiles_predicted == 0
    with pytest.raises(ValueError, match="at least 1"):
        ClickSegmenter(predictor, scene[0], cache_tiles=0)


def test_regularized_clicks_match_the_regularized_job(predictor, scene, warm, tmp_path):
    result = extract_buildings(predictor, scene[0], tmp_path, regularize=True)
    geoms, attrs, _ = read_vector(result.vector_path)
    warm.regularize = True  # options may change between clicks: cached tiles stay valid
    try:
        for i in range(0, len(geoms), 4):
            point = geoms[i].representative_point()
            click = warm.segment_at(point.x, point.y)
            # regularized corners are off the pixel grid: window and raster origins round their last bits apart
            assert iou(click.geometry, geoms[i]) > 1 - 1e-9
            assert click.attributes["area_m2"] == pytest.approx(attrs["area_m2"][i], rel=1e-9)
    finally:
        warm.regularize = False
    assert warm.tiles_predicted <= 9


def test_a_geographic_raster_gives_degrees_at_the_right_place(predictor, tmp_path):
    tif, geojson = write_scene(render_scene(300, 300, seed=7), tmp_path / "utm.tif", tmp_path / "utm.geojson")
    labels = read_vector(geojson)[0]
    geographic = tmp_path / "lonlat.tif"
    gdal.Warp(str(geographic), str(tif), dstSRS="EPSG:4326", resampleAlg="bilinear")
    reference = extract_buildings(predictor, geographic, tmp_path / "job")
    geoms, attrs, _ = read_vector(reference.vector_path)
    seg = ClickSegmenter(predictor, geographic)
    assert seg.plan.warped and seg.info.is_geographic
    to_utm = _transform(seg.info.crs_wkt, describe_raster(tif).crs_wkt)
    to_lonlat = _transform(describe_raster(tif).crs_wkt, seg.info.crs_wkt)
    checked = 0
    interior = shapely.box(*describe_raster(tif).bounds).buffer(-5.0)
    for label in labels:
        if label.area < 80 or not interior.contains(label):  # buildings cut by the scene's edge are half seen
            continue
        lon, lat = to_lonlat.TransformPoint(*label.representative_point().coords[0])[:2]
        result = seg.segment_at(lon, lat)
        assert result.found and osr.SpatialReference(wkt=result.crs_wkt).IsGeographic()
        minx, miny, maxx, maxy = result.geometry.bounds
        assert 14.9 < minx < maxx < 15.1 and 40.5 < miny < maxy < 40.7  # the scene lies near 15° E, 40.6° N
        in_utm = shapely.transform(result.geometry, lambda xy: np.asarray(to_utm.TransformPoints(xy))[:, :2])
        assert iou(in_utm, label) > 0.6
        job_polygon = next(i for i, g in enumerate(geoms) if g.contains(shapely.Point(lon, lat)))
        assert iou(result.geometry, geoms[job_polygon]) > 1 - 1e-9  # the job's polygon, to the last bits
        assert result.attributes["area_m2"] == pytest.approx(attrs["area_m2"][job_polygon], rel=1e-6)
        # scores: the same probabilities resampled bilinearly, over a window instead of the whole raster
        assert result.attributes["score"] == pytest.approx(attrs["score"][job_polygon], abs=0.03)
        checked += 1
    assert checked >= 5


def _transform(src_wkt: str, dst_wkt: str) -> osr.CoordinateTransformation:
    src, dst = osr.SpatialReference(wkt=src_wkt), osr.SpatialReference(wkt=dst_wkt)
    for srs in (src, dst):
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return osr.CoordinateTransformation(src, dst)
