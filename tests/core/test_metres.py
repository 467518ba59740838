"""One ground-metre rule for every CRS: a building measures the same in UTM, Web Mercator and degrees, whether
measured from a raster's pixels, from a vector layer, or predicted on the scene warped into each CRS."""
from __future__ import annotations

import numpy as np
import pytest
import shapely
from osgeo import gdal, osr

from mtp_core.inference import Predictor
from mtp_core.io import GroundFrame, PixelMeasure, read_vector, to_metric
from mtp_core.pipeline import extract_buildings
from mtp_core.weights import DEMO_CHECKPOINT
from mtp_tools.synthetic import render_scene, write_scene

UTM18 = 32618
ORIGIN = (583000.0, 4495000.0)  # 40.6° N, where Web Mercator's metres are 1.32x too long (areas 1.74x)


def _srs(epsg: int) -> osr.SpatialReference:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def _moved(geoms: np.ndarray, src: int, dst: int) -> np.ndarray:
    ct = osr.CoordinateTransformation(_srs(src), _srs(dst))
    return shapely.transform(geoms, lambda xy: np.asarray(ct.TransformPoints(xy))[:, :2])


def test_a_layer_measures_the_same_in_every_crs():
    house = shapely.box(ORIGIN[0], ORIGIN[1], ORIGIN[0] + 12.0, ORIGIN[1] + 9.0)
    row = np.array([shapely.affinity.translate(house, 20.0 * i, 0.0) for i in range(5)], dtype=object)
    reference = shapely.area(to_metric(row, _srs(UTM18).ExportToWkt()))
    assert reference == pytest.approx(108.0 / 0.9996**2, rel=2e-3)  # UTM grid metres are within 0.1 % of ground
    for epsg in (3857, 4326):
        moved = _moved(row, UTM18, epsg)
        assert shapely.area(to_metric(moved, _srs(epsg).ExportToWkt())) == pytest.approx(reference, rel=1e-6)
    assert shapely.area(_moved(row, UTM18, 3857)).sum() / reference.sum() == pytest.approx(1.74, rel=0.01)


@pytest.mark.parametrize("epsg", [UTM18, 3857, 4326])
def test_a_raster_pixel_measures_the_same_in_every_crs(epsg):
    """A 10 x 6 pixel block of a north-up raster of about 0.5 m pixels in each CRS: its measures from the pixel frame
    equal those of the same ground taken into UTM (whose grid metres are ground metres to 0.1 %)."""
    corner = _moved(np.array([shapely.Point(ORIGIN)], dtype=object), UTM18, epsg)[0]
    far = _moved(np.array([shapely.Point(ORIGIN[0] + 0.5, ORIGIN[1] - 0.5)], dtype=object), UTM18, epsg)[0]
    gt = (corner.x, far.x - corner.x, 0.0, corner.y, 0.0, far.y - corner.y)
    measure = PixelMeasure(gt, _srs(epsg).ExportToWkt(), 100, 100)
    block = np.array([shapely.box(40, 40, 50, 46)], dtype=object)
    on_map = shapely.transform(block, lambda xy: np.stack([gt[0] + xy[:, 0] * gt[1], gt[3] + xy[:, 1] * gt[5]], 1))
    in_utm = _moved(shapely.segmentize(on_map, abs(gt[1]) / 4), epsg, UTM18)
    k = 0.9996 * (1 + (ORIGIN[0] - 500000.0) ** 2 / (2 * 6371000.0**2))  # UTM's scale here
    assert measure.area_m2(block)[0] == pytest.approx(shapely.area(in_utm)[0] / k**2, rel=1e-4)
    assert measure.perimeter_m(block)[0] == pytest.approx(shapely.length(in_utm)[0] / k, rel=1e-4)
    assert measure.px_m == pytest.approx((0.5 / k, 0.5 / k), rel=0.02)  # about 0.5 m pixels in every CRS


def test_the_frame_is_equal_area_far_from_its_centre():
    """A 1 km² square 300 km from the frame's centre still measures 1 km² (areas never depend on the centre)."""
    frame = GroundFrame(_srs(UTM18).ExportToWkt(), ORIGIN)
    square = _moved(np.array([shapely.box(0, 0, 1000, 1000)], dtype=object), 32631, UTM18)  # in UTM 31, moved
    local = shapely.area(GroundFrame(_srs(32631).ExportToWkt(), (500.0, 500.0)).project(
        np.array([shapely.box(0, 0, 1000, 1000)], dtype=object)))[0]
    assert shapely.area(frame.project(square))[0] == pytest.approx(local, rel=1e-6)


def test_the_same_scene_in_three_crss_gives_the_same_buildings(tmp_path):
    """Predicted end to end with the demo model: the scene written in UTM, then warped to Web Mercator and degrees.
    The model sees resampled pixels in each, so outlines move by a pixel here and there; the metres must not."""
    scene = render_scene(512, 512, 7)
    utm, _ = write_scene(scene, tmp_path / "utm.tif", epsg=UTM18, origin=ORIGIN)
    for epsg in (3857, 4326):
        gdal.Warp(str(tmp_path / f"e{epsg}.tif"), str(utm), dstSRS=f"EPSG:{epsg}", resampleAlg="bilinear")
    predictor = Predictor.from_checkpoint(DEMO_CHECKPOINT, device="cpu")
    layers = {}
    for name in ("utm", "e3857", "e4326"):
        result = extract_buildings(predictor, tmp_path / f"{name}.tif", tmp_path / "out", min_area_m2=30.0)
        geoms, attrs, crs = read_vector(result.vector_path, target_crs_wkt=_srs(UTM18).ExportToWkt())
        layers[name] = (np.array(geoms, dtype=object), np.array(attrs["area_m2"]))
    ref_geoms, ref_area = layers["utm"]
    tree = shapely.STRtree(ref_geoms)
    for name in ("e3857", "e4326"):
        geoms, area = layers[name]
        i, j = tree.query(geoms, predicate="intersects")
        iou = shapely.area(shapely.intersection(geoms[i], ref_geoms[j])) / shapely.area(
            shapely.union(geoms[i], ref_geoms[j]))
        same = iou > 0.8
        assert same.sum() >= 0.8 * len(ref_geoms), name
        ratio = area[i[same]] / ref_area[j[same]]
        assert np.median(ratio) == pytest.approx(1.0, abs=0.01), name  # Web Mercator was 1.74x
        assert area.sum() == pytest.approx(ref_area.sum(), rel=0.02), name
        # --min-area 30 m² keeps the same buildings: the UTM buildings clearly above it (and clear of the scene's
        # edge, which the warps cut) are found in this CRS too, and none clearly below it is
        inside = shapely.within(ref_geoms, shapely.box(ORIGIN[0] + 5, ORIGIN[1] - 251, ORIGIN[0] + 251, ORIGIN[1] - 5))
        found = np.isin(np.arange(len(ref_geoms)), j[iou > 0.5])
        assert found[(ref_area > 36.0) & inside].all(), name
        assert (area > 30.0).all(), name
