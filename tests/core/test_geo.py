"""Georeferenced I/O: rasters described in ground metres, reads at the model's resolution in a metric CRS, windows
with validity, streamed atomic GeoTIFFs, warps back to the source grid, band scaling, and vector files."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, osr
from shapely.geometry import MultiPolygon, Polygon, box

from mtp_core.io import (
    PIXEL_GEOTRANSFORM,
    BandScaler,
    GeoError,
    GeoTiffWriter,
    describe_raster,
    plan_read,
    read_vector,
    read_window,
    utm_epsg,
    warp_to_grid,
    write_vector,
)
from tests.conftest import shared_file

UTM33 = 32633
ORIGIN = (500_000.0, 4_500_000.0)


def _srs(epsg: int) -> osr.SpatialReference:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def _tif(path: Path, data: np.ndarray, geotransform=(ORIGIN[0], 0.5, 0, ORIGIN[1], 0, -0.5), epsg: int | None = UTM33,
         nodata: float | None = None) -> Path:
    """A plain GeoTIFF of ``data`` ((bands, h, w) or (h, w))."""
    data = data[None] if data.ndim == 2 else data
    gdal_type = gdal.GetDataTypeByName({"uint8": "Byte", "uint16": "UInt16", "int16": "Int16",
                                        "float32": "Float32"}[data.dtype.name])
    ds = gdal.GetDriverByName("GTiff").Create(str(path), data.shape[2], data.shape[1], data.shape[0], gdal_type)
    if geotransform is not None:
        ds.SetGeoTransform(geotransform)
    if epsg is not None:
        ds.SetSpatialRef(_srs(epsg))
    for b in range(data.shape[0]):
        band = ds.GetRasterBand(b + 1)
        if nodata is not None:
            band.SetNoDataValue(nodata)
        band.WriteArray(data[b])
    ds = None
    return path


def _blocks(h: int, w: int, cell: int, classes: int = 4, seed: int = 0) -> np.ndarray:
    """Constant squares of ``cell`` pixels with random values: exact content checks after resampling."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(1, classes + 1, size=(-(-h // cell), -(-w // cell)))
    return np.kron(grid, np.ones((cell, cell), int))[:h, :w].astype(np.uint8)


def _chip() -> Path:
    """A real SpaceNet-1 chip: EPSG:4326, Rio de Janeiro, about 0.5 m."""
    return shared_file("realdata", "spacenet1_AOI_0_TEST", "AOI_0_TEST", "3band", "3band_013022223130_Public_img1.tif")


def _pixel_to_map(gt, col: float, row: float) -> tuple[float, float]:
    return gt[0] + col * gt[1] + row * gt[2], gt[3] + col * gt[4] + row * gt[5]


def _map_to_pixel(gt, x: float, y: float) -> tuple[float, float]:
    col, row = gdal.ApplyGeoTransform(gdal.InvGeoTransform(gt), x, y)
    return col, row


# -----------------------------------------------------------------------------------------------------------------
# describe_raster


def test_describe_generated_utm_geotiff(tmp_path) -> None:
    data = np.arange(3 * 40 * 60, dtype=np.uint16).reshape(3, 40, 60)
    info = describe_raster(_tif(tmp_path / "utm.tif", data, nodata=0))
    assert (info.width, info.height, info.band_count, info.dtype) == (60, 40, 3, "uint16")
    assert info.nodata == (0.0, 0.0, 0.0) and info.epsg == UTM33 and not info.is_geographic
    assert info.has_georeference and "UTM zone 33N" in info.crs_wkt
    # ground metres on the ellipsoid: UTM's central meridian has scale 0.9996, so a 0.5 m grid step is 0.5002 m
    assert info.pixel_size_m == pytest.approx((0.5 / 0.9996, 0.5 / 0.9996), rel=1e-6)
    assert info.bounds == (ORIGIN[0], ORIGIN[1] - 20.0, ORIGIN[0] + 30.0, ORIGIN[1])
    assert Path(info.path).is_absolute()


def test_describe_rotated_grid(tmp_path) -> None:
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    gt = (ORIGIN[0], 0.5 * c, 0.5 * s, ORIGIN[1], 0.5 * s, -0.5 * c)
    info = describe_raster(_tif(tmp_path / "rot.tif", np.ones((20, 10), np.uint8), gt))
    assert info.pixel_size_m == pytest.approx((0.5 / 0.9996, 0.5 / 0.9996), rel=1e-6)
    corners = [_pixel_to_map(gt, col, row) for col in (0, 10) for row in (0, 20)]
    xs, ys = zip(*corners)
    assert info.bounds == pytest.approx((min(xs), min(ys), max(xs), max(ys)))
    assert not plan_read(info, 0.5).warped  # the model reads rotated pixels as they are


def test_describe_spacenet_chip_measures_degrees_in_metres() -> None:
    chip = _chip()
    info = describe_raster(chip)
    assert info.is_geographic and info.epsg == 4326 and info.dtype == "uint8" and info.band_count == 3
    # independent measure: the chip's edges projected into the UTM zone, divided by their pixel counts
    to_utm = osr.CoordinateTransformation(_srs(4326), _srs(32723))
    gt = info.geotransform
    (x0, y0, _), (x1, _, _), (_, y2, _) = to_utm.TransformPoints(
        [_pixel_to_map(gt, 0, 0), _pixel_to_map(gt, info.width, 0), _pixel_to_map(gt, 0, info.height)])
    expected = (abs(x1 - x0) / info.width, abs(y0 - y2) / info.height)
    assert info.pixel_size_m == pytest.approx(expected, rel=0.05)
    assert info.pixel_size_m == pytest.approx((0.4597, 0.4971), abs=0.001)  # not square: 0.46 m across, 0.50 m down


def test_web_mercator_pixels_are_measured_on_the_ground(tmp_path) -> None:
    """A 0.5 'metre' EPSG:3857 pixel at 45° N covers 0.5 * cos(45°) m on the ground: the model must see that."""
    x, y, _ = osr.CoordinateTransformation(_srs(4326), _srs(3857)).TransformPoint(10.0, 45.0)
    info = describe_raster(_tif(tmp_path / "merc.tif", np.ones((20, 20), np.uint8), (x, 0.5, 0, y, 0, -0.5), 3857))
    assert info.pixel_size_m == pytest.approx((0.5 * math.cos(math.radians(45.0)),) * 2, rel=0.01)
    plan = plan_read(info, 0.5)
    assert plan.warped and plan.geotransform[1] == pytest.approx(0.5 / math.cos(math.radians(45.0)), rel=0.01)


def test_utm_epsg_zones() -> None:
    assert utm_epsg(-43.68, -22.99) == 32723  # Rio de Janeiro
    assert utm_epsg(13.4, 52.5) == 32633 and utm_epsg(-84.5, 33.6) == 32616
    assert utm_epsg(180.0, 0.0) == 32660 and utm_epsg(-180.0, -1.0) == 32701
    with pytest.raises(GeoError, match="longitude/latitude"):
        utm_epsg(500_000.0, 4_500_000.0)


# -----------------------------------------------------------------------------------------------------------------
# plan_read


def test_plan_reads_utm_at_model_gsd_directly(tmp_path) -> None:
    info = describe_raster(_tif(tmp_path / "a.tif", np.ones((32, 32), np.uint8)))
    plan = plan_read(info, 0.5)
    assert not plan.warped and (plan.width, plan.height) == (32, 32)
    assert plan.geotransform == info.geotransform and plan.crs_wkt == info.crs_wkt
    assert plan_read(info, 0.6).warped is False  # within the 1.25 tolerance
    assert plan_read(info, None).warped is False


def test_plan_resamples_utm_03_to_05_over_the_same_footprint(tmp_path) -> None:
    data = _blocks(300, 250, 30)
    info = describe_raster(_tif(tmp_path / "fine.tif", data, (ORIGIN[0] + 0.1, 0.3, 0, ORIGIN[1] - 0.2, 0, -0.3)))
    plan = plan_read(info, 0.5)
    # 0.5 ground metres are 0.4998 grid units on UTM's central meridian (scale 0.9996)
    assert plan.warped and plan.geotransform[1] == pytest.approx(0.5 * 0.9996, rel=1e-6)
    assert plan.geotransform[5] == pytest.approx(-plan.geotransform[1], rel=1e-6)
    assert osr.SpatialReference(wkt=plan.crs_wkt).IsSame(_srs(UTM33))
    bounds = (plan.geotransform[0], plan.geotransform[3] + plan.height * plan.geotransform[5],
              plan.geotransform[0] + plan.width * plan.geotransform[1], plan.geotransform[3])
    assert np.allclose(bounds, info.bounds, atol=0.5)
    out, valid = read_window(plan, 0, 0, plan.width, plan.height, [1])
    # content stays in place: the centre of every 9 m square reads that square's value
    for row in range(15, 300, 30):
        for col in range(15, 250, 30):
            c, r = _map_to_pixel(plan.geotransform, *_pixel_to_map(info.geotransform, col, row))
            assert out[0, int(r), int(c)] == data[row, col]
    assert valid[1:-1, 1:-1].all()


def test_plan_warps_the_geographic_chip_into_its_utm_zone() -> None:
    info = describe_raster(_chip())
    plan = plan_read(info, 0.5)
    centre = _pixel_to_map(info.geotransform, info.width / 2, info.height / 2)
    assert utm_epsg(*centre) == 32723
    assert plan.warped and osr.SpatialReference(wkt=plan.crs_wkt).IsSame(_srs(32723))
    assert plan.geotransform[1] == 0.5 and plan.geotransform[5] == -0.5 and plan.geotransform[2] == 0.0
    # a source pixel corner keeps its map position: lon/lat -> model grid pixel -> lon/lat
    lon, lat = _pixel_to_map(info.geotransform, 100, 200)
    x, y, _ = osr.CoordinateTransformation(_srs(4326), _srs(32723)).TransformPoint(lon, lat)
    col, row = _map_to_pixel(plan.geotransform, x, y)
    assert 0 < col < plan.width and 0 < row < plan.height
    back = osr.CoordinateTransformation(_srs(32723), _srs(4326)).TransformPoint(*_pixel_to_map(plan.geotransform,
                                                                                               col, row))
    assert back[:2] == pytest.approx((lon, lat), abs=1e-9)
    # the model grid shows the same ground: 0.46 x 0.50 m source pixels, about 0.5 m model pixels
    assert plan.width * 0.5 == pytest.approx(info.width * info.pixel_size_m[0], rel=0.03)
    assert plan.height * 0.5 == pytest.approx(info.height * info.pixel_size_m[1], rel=0.03)


def test_geographic_warp_keeps_content_in_place(tmp_path) -> None:
    """Squares in a degree raster land where their coordinates say, and outside the footprint is invalid."""
    chip = describe_raster(_chip())
    data = _blocks(400, 440, 40, seed=3)
    info = describe_raster(_tif(tmp_path / "deg.tif", data, chip.geotransform, 4326))
    plan = plan_read(info, 0.5)
    out, valid = read_window(plan, -8, -8, plan.width + 16, plan.height + 16, [1])
    to_utm = osr.CoordinateTransformation(_srs(4326), _srs(32723))
    for row in range(20, 400, 40):
        for col in range(20, 440, 40):
            x, y, _ = to_utm.TransformPoint(*_pixel_to_map(info.geotransform, col, row))
            c, r = _map_to_pixel(plan.geotransform, x, y)
            assert out[0, int(r) + 8, int(c) + 8] == data[row, col]
    assert not valid[:8].any() and not valid[:, :8].any()  # boundless margin
    assert not valid[8:-8, 8:-8].all()  # the rotated footprint leaves corners outside the source (alpha mask)
    assert (out[0][~valid] == 0).all()
    again, again_valid = read_window(plan.reopen(), -8, -8, plan.width + 16, plan.height + 16, [1])  # thread handle
    assert np.array_equal(again, out) and np.array_equal(again_valid, valid)


def test_real_utm_chip_with_nodata_reads_directly_or_warped() -> None:
    info = describe_raster(shared_file("realdata", "solaris", "sample_geotiff.tif"))
    assert (info.epsg, info.dtype, info.nodata) == (32616, "uint16", (0.0,))
    assert info.pixel_size_m == pytest.approx((0.5, 0.5), rel=1e-3)  # UTM grid metres within 0.1 % of the ground
    assert not plan_read(info, 0.5).warped
    plan = plan_read(info, 0.3)  # a 0.3 m model: warped in the raster's own CRS, nodata carried over
    assert plan.warped and plan.geotransform[1] == pytest.approx(0.3, rel=1e-3) and plan.dataset.RasterCount == 1
    assert plan.dataset.GetRasterBand(1).GetNoDataValue() == 0
    data, valid = read_window(plan, plan.width - 20, -20, 64, 64, [1])
    assert not valid[:20].any() and not valid[:, 20:].any() and valid[20:, :20].mean() > 0.9
    scaler = BandScaler.fit(plan, [1], info.nodata)
    source = gdal.Open(info.path).ReadAsArray()
    expected = np.percentile(source[source != 0], [2, 98])
    assert scaler.low[0] == pytest.approx(expected[0], rel=0.05) and scaler.high[0] == pytest.approx(expected[1],
                                                                                                      rel=0.05)


def test_plan_never_warps_rasters_in_pixel_units(tmp_path) -> None:
    path = _tif(tmp_path / "plain.tif", np.ones((10, 12), np.uint8), geotransform=None, epsg=None)
    with pytest.raises(GeoError, match="--pixel-crs"):
        describe_raster(path)
    info = describe_raster(path, allow_pixel_crs=True)
    assert not info.has_georeference and info.crs_wkt == "" and info.epsg is None
    assert info.geotransform == PIXEL_GEOTRANSFORM and info.pixel_size_m == (1.0, 1.0)
    plan = plan_read(info, 0.5)
    assert not plan.warped and (plan.width, plan.height) == (12, 10)


# -----------------------------------------------------------------------------------------------------------------
# read_window


def test_read_window_is_boundless_and_masks_nodata(tmp_path) -> None:
    data = np.arange(1, 2 * 20 * 30 + 1, dtype=np.uint16).reshape(2, 20, 30)
    data[:, 5:8, 10:12] = 0  # nodata in both bands
    data[0, 12, 3] = 0  # nodata in one band only: still valid
    plan = plan_read(describe_raster(_tif(tmp_path / "n.tif", data, nodata=0)), 0.5)
    out, valid = read_window(plan, -4, -3, 20, 16, [2, 1])
    assert out.shape == (2, 16, 20) and out.dtype == np.uint16 and valid.shape == (16, 20)
    assert np.array_equal(out[:, 3:, 4:], data[::-1, :13, :16])
    assert not valid[:3].any() and not valid[:, :4].any() and (out[:, :3] == 0).all()
    assert not valid[3 + 5:3 + 8, 4 + 10:4 + 12].any()
    assert valid[3 + 12, 4 + 3] and valid[3:, 4:].sum() == 13 * 16 - 6
    outside, none_valid = read_window(plan.reopen(), 100, 100, 8, 8, [1])
    assert not none_valid.any() and not outside.any()
    with pytest.raises(GeoError, match="out of range"):
        read_window(plan, 0, 0, 4, 4, [3])


def test_read_window_treats_nan_as_invalid(tmp_path) -> None:
    data = np.ones((2, 6, 6), np.float32)
    data[1, 2, 2] = np.nan
    ds = gdal.Open(str(_tif(tmp_path / "f.tif", data)))
    out, valid = read_window(ds, 0, 0, 6, 6, [1, 2])
    assert not valid[2, 2] and valid.sum() == 35 and np.isfinite(out).all()


# -----------------------------------------------------------------------------------------------------------------
# GeoTiffWriter


def test_geotiff_writer_streams_rows_into_a_tiled_compressed_georeferenced_file(tmp_path) -> None:
    rng = np.random.default_rng(1)
    expected = rng.integers(0, 200, size=(2, 300, 200)).astype(np.uint8)
    gt = (ORIGIN[0], 0.5, 0.0, ORIGIN[1], 0.0, -0.5)
    dst = tmp_path / "out.tif"
    buffers = set()
    with GeoTiffWriter(dst, 200, 300, 2, np.uint8, gt, _srs(UTM33).ExportToWkt(), nodata=255, block=64) as writer:
        for y in range(0, 300, 48):  # row bands that are not tile multiples, each in two halves
            rows = expected[:, y:y + 48]
            writer.write(rows[:, :, 100:], 100, y)
            writer.write(rows[:, :, :100], 0, y)
            # memory: one row of tiles plus the latest write (in rows of tiles), never the raster, allocated once
            assert writer._buffer.shape[1] <= 2 * 64
            buffers.add(id(writer._buffer))
        assert not dst.exists()
    assert len(buffers) <= 2
    ds = gdal.Open(str(dst))
    assert np.array_equal(ds.ReadAsArray(), expected)
    assert ds.GetMetadata("IMAGE_STRUCTURE")["COMPRESSION"] == "DEFLATE"
    assert ds.GetRasterBand(1).GetBlockSize() == [64, 64] and ds.GetRasterBand(2).GetNoDataValue() == 255
    assert ds.GetGeoTransform() == gt and ds.GetSpatialRef().IsSame(_srs(UTM33))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif"]


def test_geotiff_writer_accepts_writes_out_of_row_order(tmp_path) -> None:
    expected = _blocks(100, 90, 7)
    dst = tmp_path / "any_order.tif"
    with GeoTiffWriter(dst, 90, 100, 1, "uint8", PIXEL_GEOTRANSFORM, "", block=32) as writer:
        writer.write(expected[:40], 0, 0)  # flushes the first row of tiles
        writer.write(expected[60:], 0, 60)
        writer.write(expected[10:20, 5:50], 5, 10)  # above the flushed rows: rewritten through GDAL
        writer.write(expected[40:60], 0, 40)
    ds = gdal.Open(str(dst))
    assert np.array_equal(ds.ReadAsArray(), expected) and ds.GetSpatialRef() is None


def test_geotiff_writer_leaves_nothing_on_error_and_keeps_an_old_file(tmp_path) -> None:
    class Cancelled(Exception):
        pass

    dst = tmp_path / "result.tif"
    with pytest.raises(Cancelled):
        with GeoTiffWriter(dst, 64, 64, 1, np.float32, PIXEL_GEOTRANSFORM, "") as writer:
            writer.write(np.zeros((32, 64), np.float32), 0, 0)
            raise Cancelled
    assert list(tmp_path.iterdir()) == []
    dst.write_bytes(b"previous result")
    with pytest.raises(KeyboardInterrupt):
        with GeoTiffWriter(dst, 64, 64, 1, np.float32, PIXEL_GEOTRANSFORM, ""):
            raise KeyboardInterrupt
    assert dst.read_bytes() == b"previous result" and [p.name for p in tmp_path.iterdir()] == ["result.tif"]


def test_geotiff_writer_rejects_bad_writes_and_unwritable_paths(tmp_path) -> None:
    with GeoTiffWriter(tmp_path / "w.tif", 16, 16, 1, np.uint8, PIXEL_GEOTRANSFORM, "") as writer:
        with pytest.raises(ValueError, match="outside"):
            writer.write(np.zeros((4, 4), np.uint8), 14, 0)
        with pytest.raises(ValueError, match="convert it first"):
            writer.write(np.zeros((4, 4), np.float32), 0, 0)
        with pytest.raises(ValueError, match=r"\(1, h, w\)"):
            writer.write(np.zeros((2, 4, 4), np.uint8), 0, 0)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(GeoError, match="writable"):
        with GeoTiffWriter(blocker / "out.tif", 16, 16, 1, np.uint8, PIXEL_GEOTRANSFORM, ""):
            pass


# -----------------------------------------------------------------------------------------------------------------
# warp_to_grid


def _model_grid_info(tmp_path: Path, plan) -> object:
    """The model grid as a RasterInfo: an empty raster written on it."""
    path = tmp_path / "grid.tif"
    with GeoTiffWriter(path, plan.width, plan.height, 1, np.uint8, plan.geotransform, plan.crs_wkt):
        pass
    return describe_raster(path)


@pytest.mark.parametrize("source", ["utm_0.3m", "degrees"])
def test_warp_to_grid_round_trip_keeps_classes(tmp_path, source) -> None:
    if source == "degrees":
        gt, epsg = describe_raster(_chip()).geotransform, 4326
    else:
        gt, epsg = (ORIGIN[0], 0.3, 0, ORIGIN[1], 0, -0.3), UTM33
    classes = _blocks(400, 440, 50, classes=3, seed=5)
    classes[:, :60] = 255  # nodata strip
    src = describe_raster(_tif(tmp_path / "classes.tif", classes, gt, epsg, nodata=255))
    grid = _model_grid_info(tmp_path, plan_read(src, 0.5))
    on_grid = warp_to_grid(src.path, tmp_path / "model_grid.tif", like=grid)
    back = warp_to_grid(on_grid, tmp_path / "back.tif", like=src)
    out = gdal.Open(str(back))
    assert out.GetGeoTransform() == src.geotransform and out.GetSpatialRef().IsSame(gdal.Open(src.path).GetSpatialRef())
    assert out.GetRasterBand(1).GetNoDataValue() == 255
    got = out.ReadAsArray()
    edge = np.zeros_like(classes, bool)  # class boundaries and the raster border, 2 pixels wide
    edge[:, 1:] |= classes[:, 1:] != classes[:, :-1]
    edge[1:] |= classes[1:] != classes[:-1]
    edge = np.maximum.reduce([np.roll(np.roll(edge, dy, 0), dx, 1) for dy in range(-2, 3) for dx in range(-2, 3)])
    edge[:2] = edge[-2:] = edge[:, :2] = edge[:, -2:] = True
    assert (got[~edge] == classes[~edge]).mean() >= 0.99
    assert (got[:, :58] == 255).all()  # nodata stays nodata


def test_warp_to_grid_errors(tmp_path) -> None:
    info = describe_raster(_tif(tmp_path / "a.tif", np.ones((8, 8), np.uint8)))
    with pytest.raises(GeoError, match="resampling"):
        warp_to_grid(info.path, tmp_path / "b.tif", info, resampling="lanczos3")
    plain = describe_raster(_tif(tmp_path / "p.tif", np.ones((8, 8), np.uint8), None, None), allow_pixel_crs=True)
    with pytest.raises(GeoError, match="no georeference"):
        warp_to_grid(info.path, tmp_path / "b.tif", plain)
    with pytest.raises(GeoError, match="no georeference"):
        warp_to_grid(plain.path, tmp_path / "b.tif", info)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(GeoError, match="writable"):
        warp_to_grid(info.path, tmp_path / "a_file" / "b.tif", info)


# -----------------------------------------------------------------------------------------------------------------
# BandScaler


def test_band_scaler_stretches_uint16_by_percentiles_ignoring_nodata(tmp_path) -> None:
    ramp = np.arange(1, 10_001, dtype=np.uint16).reshape(100, 100)
    data = np.stack([ramp, ramp // 2 + 100])
    data[:, :, :10] = 0  # nodata: must not pull the low percentile down
    ds = gdal.Open(str(_tif(tmp_path / "u16.tif", data, nodata=0)))
    scaler = BandScaler.fit(ds, [1, 2], (0.0, 0.0))
    valid = ramp[:, 10:]
    assert scaler.mode == "percentile" and scaler.percentiles == (2.0, 98.0)
    assert scaler.low[0] == pytest.approx(np.percentile(valid, 2)) and scaler.high[0] == pytest.approx(
        np.percentile(valid, 98))
    out = scaler(data[:, 40:60, 40:60])
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 255
    assert scaler(np.array([[[scaler.low[0]]], [[scaler.high[1]]]]))[:, 0, 0].tolist() == [0.0, 255.0]
    assert BandScaler.from_dict(json.loads(json.dumps(scaler.to_dict()))) == scaler


def test_band_scaler_samples_a_bounded_number_of_pixels(tmp_path) -> None:
    rng = np.random.default_rng(2)
    data = rng.gamma(2.0, 300.0, size=(1, 1200, 1500)).astype(np.uint16)
    ds = gdal.Open(str(_tif(tmp_path / "big.tif", data)))
    scaler = BandScaler.fit(ds, [1], max_pixels=256 * 256 * 6)  # 6 windows of 256^2 spread over the raster
    full = np.percentile(data, [2, 98])
    assert scaler.low[0] == pytest.approx(full[0], rel=0.05) and scaler.high[0] == pytest.approx(full[1], rel=0.05)


def test_band_scaler_identity_for_uint8_and_fixed_ranges(tmp_path) -> None:
    data = np.arange(3 * 16 * 16, dtype=np.uint16).reshape(3, 16, 16).astype(np.uint8)
    scaler = BandScaler.fit(gdal.Open(str(_tif(tmp_path / "u8.tif", data))), [3, 1, 2])
    assert scaler.mode == "identity" and np.array_equal(scaler(data), data.astype(np.float32))
    fixed = BandScaler.fixed([(0, 1000), (100, 355), (-1.0, 1.0)])
    out = fixed(np.array([[[500, 2000]], [[100, 0]], [[0.0, -5.0]]]))
    assert out[:, 0].tolist() == [[127.5, 255.0], [0.0, 0.0], [127.5, 0.0]]
    assert fixed.to_dict() == {"mode": "fixed", "low": [0.0, 100.0, -1.0], "high": [1000.0, 355.0, 1.0],
                               "percentiles": None}
    with pytest.raises(ValueError, match="high > low"):
        BandScaler.fixed([(5, 5)])
    with pytest.raises(GeoError, match="out of range"):
        BandScaler.fit(gdal.Open(str(tmp_path / "u8.tif")), [4])


def test_band_scaler_reports_a_band_without_valid_pixels(tmp_path) -> None:
    ds = gdal.Open(str(_tif(tmp_path / "empty.tif", np.zeros((8, 8), np.int16), nodata=0)))
    with pytest.raises(GeoError, match="no valid pixels"):
        BandScaler.fit(ds, [1])


# -----------------------------------------------------------------------------------------------------------------
# vectors

ATTRS = {"id": [1, 2, 3], "class": ["building", "building", "shed"], "score": [0.9, 0.75, None],
         "area_m2": [100.0, 12.5, 4.0], "big": [1, 2**40, 3], "source": ["a.tif", "a.tif", "ü.tif"]}


def _buildings() -> list:
    x, y = ORIGIN
    return [box(x, y - 10, x + 10, y), Polygon([(x + 20, y - 5), (x + 30, y - 5), (x + 25, y)]),
            MultiPolygon([box(x + 40, y - 2, x + 42, y), box(x + 44, y - 2, x + 46, y)])]


@pytest.mark.parametrize("ext", [".gpkg", ".geojson", ".json", ".shp"])
def test_vector_round_trip_keeps_geometries_attributes_and_crs(tmp_path, ext) -> None:
    path = write_vector(tmp_path / f"b{ext}", _buildings(), ATTRS, _srs(UTM33).ExportToWkt())
    geoms, attrs, crs = read_vector(path)
    assert osr.SpatialReference(wkt=crs).IsSame(_srs(UTM33))  # a UTM CRS survives, GeoJSON included
    if ext != ".shp":  # a shapefile does not tell single polygons from multipolygons
        assert all(g.geom_type == "MultiPolygon" for g in geoms)  # polygons mixed with multipolygons: all multi
    assert all(g.equals(e) for g, e in zip(geoms, _buildings()))
    assert attrs["id"] == [1, 2, 3] and attrs["big"] == [1, 2**40, 3] and attrs["class"] == ATTRS["class"]
    assert attrs["score"] == [0.9, 0.75, None] and attrs["area_m2"] == [100.0, 12.5, 4.0]
    assert attrs["source"] == ["a.tif", "a.tif", "ü.tif"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_geojson_in_epsg4326_is_lon_lat_and_reprojects_without_swapping(tmp_path) -> None:
    lon, lat = -43.681, -22.987
    square = box(lon, lat, lon + 0.0001, lat + 0.0001)
    path = write_vector(tmp_path / "ll.geojson", [square], {"id": [7]}, "EPSG:4326")
    first = json.loads(path.read_text())["features"][0]["geometry"]["coordinates"][0][0]
    assert first[0] == pytest.approx(lon + 0.0001) or first[0] == pytest.approx(lon)  # x is the longitude
    assert -23.0 < first[1] < -22.9
    geoms, _, crs = read_vector(path, target_crs_wkt="EPSG:32723")
    minx, miny, maxx, maxy = geoms[0].bounds
    assert 600_000 < minx < 700_000 and 7_400_000 < miny < 7_500_000  # easting, northing: not swapped
    assert maxx - minx == pytest.approx(10.2, abs=0.3) and maxy - miny == pytest.approx(11.1, abs=0.3)
    back, _, _ = read_vector(path, target_crs_wkt=_srs(4326).ExportToWkt())
    assert back[0].equals_exact(square, 1e-12)
    polygons, _, _ = read_vector(write_vector(tmp_path / "p.gpkg", [square], {}, "EPSG:4326"))
    assert polygons[0].geom_type == "Polygon"  # only polygons: the layer stays Polygon


def test_shapefile_replaces_all_sidecars_and_write_failures_leave_no_file(tmp_path) -> None:
    old = tmp_path / "out.shp"
    write_vector(old, _buildings(), ATTRS, "EPSG:32633")
    (tmp_path / "out.qix").write_bytes(b"stale spatial index")
    write_vector(old, _buildings()[:1], {"id": [5]}, "EPSG:32633", layer_name="other")
    geoms, attrs, _ = read_vector(old)
    assert len(geoms) == 1 and attrs == {"id": [5]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.cpg", "out.dbf", "out.prj", "out.shp", "out.shx"]
    with pytest.raises(GeoError, match="mixes text and numbers"):
        write_vector(tmp_path / "bad.gpkg", _buildings()[:2], {"v": [1, "x"]}, "EPSG:32633")
    with pytest.raises(GeoError, match="2 values for 3 geometries"):
        write_vector(tmp_path / "bad.gpkg", _buildings(), {"v": [1, 2]}, "EPSG:32633")
    with pytest.raises(GeoError, match=r"\.geojson, \.gpkg, \.json, \.shp"):
        write_vector(tmp_path / "bad.kml", _buildings(), {}, "EPSG:32633")
    with pytest.raises(GeoError, match="not a CRS"):
        write_vector(tmp_path / "bad.gpkg", _buildings(), {}, "EPSG:99999999")
    assert not any(p.name.startswith("bad") or p.name.startswith(".") for p in tmp_path.iterdir())


def test_vector_nulls_empty_geometries_and_unwritable_paths(tmp_path) -> None:
    path = write_vector(tmp_path / "n.gpkg", [None, Polygon(), box(0, 0, 1, 1)],
                        {"score": [float("nan"), 1.0, 2.0], "note": [None, "", "x"]}, "EPSG:32633")
    geoms, attrs, _ = read_vector(path)
    assert geoms[0].is_empty and geoms[1].is_empty and geoms[2].equals(box(0, 0, 1, 1))
    assert attrs == {"score": [None, 1.0, 2.0], "note": [None, "", "x"]}
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(GeoError, match="writable"):
        write_vector(blocker / "out.gpkg", [box(0, 0, 1, 1)], {}, "EPSG:32633")
    (tmp_path / "dir.gpkg").mkdir()
    with pytest.raises(GeoError, match="it is a folder"):
        write_vector(tmp_path / "dir.gpkg", [box(0, 0, 1, 1)], {}, "EPSG:32633")
    with pytest.raises(GeoError, match="use int, float or str"):
        write_vector(tmp_path / "d.gpkg", [box(0, 0, 1, 1)], {"d": [{"a": 1}]}, "EPSG:32633")


def test_read_vector_errors(tmp_path) -> None:
    with pytest.raises(GeoError, match="not found"):
        read_vector(tmp_path / "missing.gpkg")
    with pytest.raises(GeoError, match="is a raster"):
        read_vector(_tif(tmp_path / "r.tif", np.ones((4, 4), np.uint8)))
    write_vector(tmp_path / "pixels.gpkg", [box(0, 0, 1, 1)], {}, "")
    assert read_vector(tmp_path / "pixels.gpkg")[2] == ""
    with pytest.raises(GeoError, match="no CRS"):
        read_vector(tmp_path / "pixels.gpkg", "EPSG:4326")


# -----------------------------------------------------------------------------------------------------------------
# bad rasters


def test_bad_raster_inputs_say_what_to_do(tmp_path) -> None:
    with pytest.raises(GeoError, match="not found.*check the path"):
        describe_raster(tmp_path / "missing.tif")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(GeoError, match="cannot read .* as a raster"):
        describe_raster(tmp_path / "notes.txt")
    with pytest.raises(GeoError, match="folder"):
        describe_raster(tmp_path)
    with pytest.raises(GeoError, match="is a vector dataset"):
        describe_raster(shared_file("realdata", "solaris", "gt.geojson"))
    with pytest.raises(GeoError, match=r"no georeference \(no CRS\).*--pixel-crs"):
        describe_raster(_tif(tmp_path / "nocrs.tif", np.ones((4, 4), np.uint8), epsg=None))
    gcps = _tif(tmp_path / "gcps.tif", np.ones((4, 4), np.uint8), None, None)
    ds = gdal.Open(str(gcps), gdal.GA_Update)
    ds.SetGCPs([gdal.GCP(13.0, 52.0, 0, 0, 0), gdal.GCP(13.1, 52.0, 0, 4, 0), gdal.GCP(13.0, 51.9, 0, 0, 4)],
               _srs(4326).ExportToWkt())
    ds = None
    with pytest.raises(GeoError, match="ground control points.*gdalwarp"):
        describe_raster(gcps)
    container = tmp_path / "two.gpkg"
    mem = gdal.GetDriverByName("MEM").Create("", 8, 8, 1)
    mem.SetGeoTransform((0, 1, 0, 0, 0, -1))
    mem.SetSpatialRef(_srs(UTM33))
    for table, extra in (("a", []), ("b", ["APPEND_SUBDATASET=YES"])):
        gdal.Translate(str(container), mem, format="GPKG", creationOptions=[f"RASTER_TABLE={table}"] + extra)
    with pytest.raises(GeoError, match=r"holds no pixels.*GPKG:.*two.gpkg:a"):
        describe_raster(container)
    assert describe_raster(f"GPKG:{container}:b").width == 8  # the subdataset it names opens
    with pytest.raises(GeoError, match="positive"):
        plan_read(describe_raster(f"GPKG:{container}:b"), 0.0)
