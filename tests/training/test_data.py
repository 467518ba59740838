"""Training data: SpaceNet datasets (real chips and generated files), MMSeg-equal transforms, seeded sampling,
and the device-side preprocessor, checked on hand-computable cases."""
from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely
import torch
from osgeo import gdal, osr
from torch.utils.data import DataLoader

from mtp_core.io import BandScaler
from tests.conftest import shared_file
from training.data import (
    InfiniteSampler,
    LoadAnnotations,
    PhotoMetricDistortion,
    RandomCrop,
    RandomFlip,
    RandomResize,
    Resize,
    SegDataPreProcessor,
    build_dataset,
    build_pipeline,
    collate,
    read_rgb,
)
from training.data.transforms import hsv_to_rgb, rescale_size, resize_image, resize_label, rgb_to_hsv

AOI0 = ("realdata", "spacenet1_AOI_0_TEST", "AOI_0_TEST")
CHIPS = [f"013022223130_Public_img{n}" for n in range(1, 11)]
TRAIN = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", reduce_zero_label=False),
         dict(type="RandomResize", scale=(384, 384), ratio_range=(0.5, 2.0), keep_ratio=True),
         dict(type="RandomCrop", crop_size=(384, 384), cat_max_ratio=0.75), dict(type="RandomFlip", prob=0.5),
         dict(type="PhotoMetricDistortion"), dict(type="PackSegInputs")]
VAL = [dict(type="LoadImageFromFile"), dict(type="Resize", scale=(384, 384), keep_ratio=False),
       dict(type="LoadAnnotations", reduce_zero_label=False), dict(type="PackSegInputs")]
TEST = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"), dict(type="PackSegInputs")]


def aoi0_root() -> Path:
    for chip in CHIPS:
        shared_file(*AOI0, "3band", f"3band_{chip}.tif")
        shared_file(*AOI0, "vectorData", "geoJson", f"{chip}_Geo.geojson")
    return shared_file(*AOI0)


def raw_dataset(pipeline, **kwargs):
    return build_dataset(dict(type="SpaceNetV1RawDataset", data_root=str(aoi0_root()), pipeline=pipeline, **kwargs))


def write_raster(path: Path, bands: np.ndarray, driver: str = "GTiff", geotransform=None, epsg=None, nodata=None):
    """Write (C, H, W) pixels with GDAL; PNG goes through a MEM copy (the PNG driver only has CreateCopy)."""
    gdal_type = {np.dtype(np.uint8): gdal.GDT_Byte, np.dtype(np.uint16): gdal.GDT_UInt16}[bands.dtype]
    mem = gdal.GetDriverByName("MEM").Create("", bands.shape[2], bands.shape[1], bands.shape[0], gdal_type)
    for i, band in enumerate(bands, start=1):
        mem.GetRasterBand(i).WriteArray(band)
        if nodata is not None:
            mem.GetRasterBand(i).SetNoDataValue(nodata)
    if geotransform is not None:
        mem.SetGeoTransform(geotransform)
    if epsg is not None:
        srs = osr.SpatialReference()
        srs.ImportFromEPSG(epsg)
        mem.SetProjection(srs.ExportToWkt())
    gdal.GetDriverByName(driver).CreateCopy(str(path), mem)


# ---------------------------------------------------------------------------------------------------- real chips

def pixel_space_buildings(geojson: Path, geotransform: tuple, shape: tuple[int, int]):
    """The chip's building union in pixel units, from the GeoJSON and the inverse geotransform (no GDAL rasterizer)."""
    inv = gdal.InvGeoTransform(geotransform)

    def to_pixels(xy: np.ndarray) -> np.ndarray:
        return np.stack([inv[0] + inv[1] * xy[:, 0] + inv[2] * xy[:, 1],
                         inv[3] + inv[4] * xy[:, 0] + inv[5] * xy[:, 1]], axis=1)

    features = json.loads(geojson.read_text())["features"]
    geoms = [shapely.transform(shapely.geometry.shape(f["geometry"]), to_pixels) for f in features]
    return shapely.union_all(geoms).intersection(shapely.box(0, 0, shape[1], shape[0]))


def test_raw_masks_equal_the_polygons_in_pixel_space():
    ds = raw_dataset(TEST)
    assert len(ds) == 10 and {Path(p).name for p, _ in ds.samples} == {f"3band_{c}.tif" for c in CHIPS}
    checked = 0
    for i, (img_path, geojson) in enumerate(ds.samples):
        sample = ds[i]
        gt = sample["gt"].numpy()
        _, _, georef = read_rgb(img_path)
        h, w = gt.shape
        assert (h, w) == (406, 439) and sample["img"].shape == (3, 406, 439) and sample["img"].dtype == torch.uint8
        assert set(np.unique(gt)) <= {0, 1}, "no nodata tag on these chips, so no ignore pixels"
        buildings = pixel_space_buildings(Path(geojson), georef.geotransform, (h, w))
        if buildings.is_empty:
            assert gt.sum() == 0
            continue
        area = (gt == 1).sum()
        assert abs(area - buildings.area) <= 0.03 * buildings.area, (img_path, area, buildings.area)
        ys, xs = np.mgrid[0:h, 0:w] + 0.5
        centres_inside = shapely.contains_xy(buildings, xs, ys)
        assert ((gt == 1) == centres_inside).mean() > 0.999
        checked += 1
    assert checked == 7


def test_raw_mask_matches_the_competition_pixel_polygons():
    csv_path = shared_file(*AOI0, "vectorData", "summaryData", "public_polygons_solution_3Band_short.csv")
    with open(csv_path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["ImageId"] == "013022223130_Public_img4"]
    truth = shapely.union_all([shapely.force_2d(shapely.from_wkt(r["PolygonWKT_Pix"])) for r in rows])
    ds = raw_dataset(TEST)
    index = [Path(p).name for p, _ in ds.samples].index("3band_013022223130_Public_img4.tif")
    area = int((ds[index]["gt"] == 1).sum())
    assert len(rows) == 13 and abs(area - truth.area) <= 0.03 * truth.area


def test_empty_geojson_is_all_background_and_nodata_override_ignores_the_fill():
    ds = raw_dataset(TEST, split_file=None)
    names = [Path(p).name for p, _ in ds.samples]
    img1 = names.index("3band_013022223130_Public_img1.tif")
    assert json.loads(Path(ds.samples[img1][1]).read_text())["features"] == []
    empty = ds[img1]
    assert empty["gt"].shape == (406, 439) and int(empty["gt"].sum()) == 0

    fill_ignored = raw_dataset(TEST, nodata=0)[img1]
    img = fill_ignored["img"].numpy()
    gt = fill_ignored["gt"].numpy()
    assert np.array_equal(gt == 255, (img == 0).all(axis=0)) and set(np.unique(gt)) == {0, 255}


def test_nodata_pixels_become_ignore_and_labels_are_reprojected(tmp_path: Path):
    """UTM chip with nodata=0 in its left 10 columns; a building given in CRS84 lon/lat covering columns 5..19,
    rows 8..15 (pixel edges, so pixel centres are unambiguous)."""
    root = tmp_path / "AOI_9_TEST"
    (root / "3band").mkdir(parents=True)
    (root / "vectorData" / "geoJson").mkdir(parents=True)
    bands = np.full((3, 30, 40), 90, np.uint8)
    bands[:, :, :10] = 0
    bands[1, 0, 0] = 7          # one pixel with a non-nodata band is valid
    x0, y0 = 733601.0, 3725139.0
    write_raster(root / "3band" / "3band_AOI_9_TEST_img3.tif", bands, geotransform=(x0, 0.5, 0, y0, 0, -0.5),
                 epsg=32616, nodata=0)
    utm = osr.SpatialReference()
    utm.ImportFromEPSG(32616)
    wgs = osr.SpatialReference()
    wgs.ImportFromEPSG(4326)
    for srs in (utm, wgs):
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    to_lonlat = osr.CoordinateTransformation(utm, wgs)
    corners = [(x0 + 0.5 * c, y0 - 0.5 * r) for c, r in ((5, 8), (20, 8), (20, 16), (5, 16), (5, 8))]
    ring = [list(to_lonlat.TransformPoint(x, y)[:2]) for x, y in corners]
    (root / "vectorData" / "geoJson" / "Geo_AOI_9_TEST_img3.geojson").write_text(json.dumps({
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:OGC:1.3:CRS84"}},
        "features": [{"type": "Feature", "properties": {},
                      "geometry": {"type": "Polygon", "coordinates": [ring]}}]}))
    (tmp_path / "split.txt").write_text("3band_AOI_9_TEST_img3.tif\n")

    ds = build_dataset(dict(type="SpaceNetV1RawDataset", data_root=str(root), pipeline=TEST,
                            split_file=str(tmp_path / "split.txt")))
    gt = ds[0]["gt"].numpy()
    expected = np.zeros((30, 40), np.uint8)
    expected[8:16, 5:20] = 1
    expected[:, :10] = 255
    expected[0, 0] = 0
    assert np.array_equal(gt, expected)


def test_non_uint8_chips_are_scaled_by_one_stretch_for_the_whole_dataset(tmp_path: Path):
    """16-bit chips: one 2-98 % stretch fitted over the dataset (never one per chip), the one inference uses."""
    (tmp_path / "img").mkdir()
    for i, gain in enumerate((1, 3)):  # a dark chip and a bright one
        bands = np.stack([np.arange(600, dtype=np.uint16).reshape(20, 30) * gain * (b + 1) for b in range(3)])
        bands[:, :, 0] = 0
        write_raster(tmp_path / "img" / f"c{i}.tif", bands, nodata=0)
    dataset = build_dataset(dict(type="SpaceNetV1Dataset", data_root=str(tmp_path), pipeline=TEST, img_suffix=".tif",
                                 data_prefix=dict(img_path="img", seg_map_path=None)))
    expected = BandScaler.fit_files(sorted((tmp_path / "img").glob("*.tif")), (1, 2, 3), 0)
    assert dataset.band_ranges == expected.ranges and expected.mode == "percentile"
    dark, mask, _ = read_rgb(str(tmp_path / "img" / "c0.tif"), scaler=dataset.scaler)
    bright, _, _ = read_rgb(str(tmp_path / "img" / "c1.tif"), scaler=dataset.scaler)
    assert dark.dtype == np.uint8 and dark.shape == (20, 30, 3) and mask[:, 0].all() and (dark[:, 0] == 0).all()
    assert dark[:, 1:].mean() < bright[:, 1:].mean()  # the same stretch keeps the bright chip brighter
    assert (np.diff(dark[..., 0][:, 1:].ravel().astype(int)) >= 0).all(), "a stretch keeps the order of values"
    with pytest.raises(ValueError, match="needs the dataset's band ranges"):
        read_rgb(str(tmp_path / "img" / "c0.tif"))
    fixed = build_dataset(dict(type="SpaceNetV1Dataset", data_root=str(tmp_path), pipeline=TEST, img_suffix=".tif",
                               data_prefix=dict(img_path="img", seg_map_path=None),
                               band_ranges=[[0, 1000], [0, 1000], [0, 1000]]))
    assert fixed.band_ranges == ((0.0, 1000.0),) * 3
    eight_bit = tmp_path / "eight"
    (eight_bit / "img").mkdir(parents=True)
    write_raster(eight_bit / "img" / "a.png", np.zeros((3, 8, 8), np.uint8), driver="PNG")
    assert build_dataset(dict(type="SpaceNetV1Dataset", data_root=str(eight_bit), pipeline=TEST,
                              data_prefix=dict(img_path="img", seg_map_path=None))).band_ranges is None


def test_raw_layout_errors_say_what_is_wrong(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="data_root not found"):
        build_dataset(dict(type="SpaceNetV1RawDataset", data_root=str(tmp_path / "nope"), pipeline=TEST))
    (tmp_path / "3band").mkdir()
    (tmp_path / "vectorData" / "geoJson").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no images ending with '\.tif'.*3band"):
        build_dataset(dict(type="SpaceNetV1RawDataset", data_root=str(tmp_path), pipeline=TEST))
    (tmp_path / "3band" / "3band_AOI_1_RIO_img7.tif").write_bytes(b"not a tiff")
    with pytest.raises(FileNotFoundError, match=r"without a label.*3band_AOI_1_RIO_img7\.tif"):
        build_dataset(dict(type="SpaceNetV1RawDataset", data_root=str(tmp_path), pipeline=TEST))
    (tmp_path / "vectorData" / "geoJson" / "AOI_1_RIO_img7_Geo.geojson").write_text('{"type": "FeatureCollection"}')
    ds = build_dataset(dict(type="SpaceNetV1RawDataset", data_root=str(tmp_path), pipeline=TEST))
    with pytest.raises(OSError, match="GDAL cannot read .*3band_AOI_1_RIO_img7.tif"):
        ds[0]


# ---------------------------------------------------------------------------------------------------- MMSeg layout

def make_mmseg_layout(root: Path, labels: dict[str, np.ndarray]) -> None:
    (root / "train" / "images").mkdir(parents=True)
    (root / "train" / "labels").mkdir(parents=True)
    for k, (stem, label) in enumerate(labels.items()):
        h, w = label.shape
        rgb = np.stack([np.full((h, w), 10 + k), np.full((h, w), 20 + k), np.full((h, w), 30 + k)]).astype(np.uint8)
        write_raster(root / "train" / "images" / f"{stem}.png", rgb, driver="PNG")
        write_raster(root / "train" / "labels" / f"{stem}.tif", label[None])


def mmseg_cfg(root: Path, pipeline=TEST, **kwargs) -> dict:
    return dict(type="SpaceNetV1Dataset", data_root=str(root), pipeline=pipeline, img_suffix=".png",
                seg_map_suffix=".tif", data_prefix=dict(img_path="train/images", seg_map_path="train/labels"),
                **kwargs)


def test_mmseg_layout_reads_rgb_images_and_labels_with_a_split_file(tmp_path: Path):
    labels = {"b": np.array([[0, 1, 255], [1, 1, 0]], np.uint8), "a": np.zeros((2, 3), np.uint8),
              "c": np.ones((4, 5), np.uint8)}
    make_mmseg_layout(tmp_path, labels)
    ds = build_dataset(mmseg_cfg(tmp_path))
    assert [Path(p).stem for p, _ in ds.samples] == ["a", "b", "c"], "sorted by path, as MMSeg"
    assert ds.classes == ("background", "building") and len(ds) == 3
    sample = ds[1]
    assert sample["img"].dtype == torch.uint8 and sample["img"].shape == (3, 2, 3)
    assert sample["img"][:, 0, 0].tolist() == [10, 20, 30], "R, G, B in GDAL band order ('b' was written first)"
    assert np.array_equal(sample["gt"].numpy(), labels["b"]) and sample["gt"].dtype == torch.uint8
    assert sample["meta"]["path"].endswith("b.png") and sample["meta"]["ori_shape"] == (2, 3)

    (tmp_path / "split.txt").write_text("c\nb\n")
    split = build_dataset(mmseg_cfg(tmp_path, ann_file="split.txt"))
    assert [Path(p).stem for p, _ in split.samples] == ["c", "b"]


def test_mmseg_layout_errors_say_what_is_wrong(tmp_path: Path):
    make_mmseg_layout(tmp_path, {"a": np.zeros((2, 2), np.uint8), "b": np.full((2, 2), 7, np.uint8)})
    with pytest.raises(FileNotFoundError, match=r"no images ending with '\.jpg' under .*train/images"):
        build_dataset(mmseg_cfg(tmp_path) | dict(img_suffix=".jpg"))
    with pytest.raises(ValueError, match=r"values \[7\].*0\.\.1 or 255"):
        build_dataset(mmseg_cfg(tmp_path))[1]
    (tmp_path / "train" / "labels" / "a.tif").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\) without a label.*a\.png"):
        build_dataset(mmseg_cfg(tmp_path))
    with pytest.raises(ValueError, match=r"unknown dataset type 'SpaceNetV1Datset'; did you mean 'SpaceNetV1Dataset'"):
        build_dataset(mmseg_cfg(tmp_path) | dict(type="SpaceNetV1Datset"))
    with pytest.raises(ValueError, match=r"no argument 'img_sufix' \(did you mean 'img_suffix'\?\)"):
        build_dataset(mmseg_cfg(tmp_path) | dict(img_sufix=".png"))
    with pytest.raises(ValueError, match=r"unknown transform type 'RandomFlp'; did you mean 'RandomFlip'"):
        build_pipeline([dict(type="RandomFlp", prob=0.5)])
    with pytest.raises(ValueError, match=r"'RandomCrop' needs argument\(s\): crop_size"):
        build_pipeline([dict(type="RandomCrop")])


# ---------------------------------------------------------------------------------------------------- transforms

class ScriptedRng:
    """Stands in for a Generator: ``integers`` and ``uniform`` return scripted values (default 0 / low bound)."""

    def __init__(self, integers=(), uniforms=()) -> None:
        self._integers, self._uniforms = list(integers), list(uniforms)

    def integers(self, *args: Any) -> int:
        return self._integers.pop(0) if self._integers else 0

    def uniform(self, low: float, high: float) -> float:
        return self._uniforms.pop(0) if self._uniforms else low


@pytest.mark.parametrize("size_wh, scale, expected", [
    ((439, 406), (384, 384), (384, 355)),      # long side limits: 384/439
    ((439, 406), (768, 768), (768, 710)),      # upscaling
    ((439, 406), (2048, 512), (554, 512)),     # short side limits: 512/406
    ((406, 439), (192, 192), (178, 192)),      # portrait
    ((100, 100), (300, 150), (150, 150)),
    ((3, 1), (10, 10), (10, 3)),               # 3.333 -> int(3.333 + 0.5) = 3
])
def test_keep_ratio_rescale_sizes(size_wh, scale, expected):
    assert rescale_size(size_wh, scale) == expected


def test_random_resize_draws_the_ratio_and_keeps_the_aspect():
    img = np.zeros((406, 439, 3), np.uint8)
    label = np.zeros((406, 439), np.uint8)
    step = RandomResize(scale=(384, 384), ratio_range=(0.5, 2.0), keep_ratio=True)
    for seed in range(5):
        ratio = np.random.default_rng(seed).random() * 1.5 + 0.5
        target = int(384 * ratio)
        out = step(dict(img=img, gt_seg_map=label), np.random.default_rng(seed))
        expected_w, expected_h = rescale_size((439, 406), (target, target))
        assert out["img"].shape == (expected_h, expected_w, 3) and out["gt_seg_map"].shape == (expected_h, expected_w)
        assert out["scale_factor"] == (expected_w / 439, expected_h / 406)


def test_bilinear_and_nearest_resize_by_hand():
    img = np.array([[0, 100]], np.uint8)[:, :, None].repeat(2, axis=0)            # 2x2, columns 0 and 100
    # half-pixel centres: source x = (x + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25, clamped to [0, 1]
    assert resize_image(img, (4, 2))[0, :, 0].tolist() == [0, 25, 75, 100]
    assert resize_image(img, (2, 2)).tolist() == img.tolist()
    label = np.array([[1, 2, 3]], np.uint8)
    assert resize_label(label, (6, 1)).tolist() == [[1, 1, 2, 2, 3, 3]]
    assert resize_label(label, (2, 1)).tolist() == [[1, 2]], "floor(x * 1.5): 0, 1"


def test_val_resize_is_exact_and_leaves_the_later_label_at_the_original_size():
    sample = raw_dataset(VAL)[3]
    assert sample["img"].shape == (3, 384, 384) and sample["gt"].shape == (406, 439)
    assert sample["meta"]["ori_shape"] == (406, 439) and sample["meta"]["img_shape"] == (384, 384)
    resized = Resize(scale=(50, 20))(dict(img=np.zeros((7, 9, 3), np.uint8), gt_seg_map=np.zeros((7, 9), np.uint8)),
                                     None)
    assert resized["img"].shape == (20, 50, 3) and resized["gt_seg_map"].shape == (20, 50)


def test_random_crop_cat_max_ratio_ignores_255_and_redraws_at_most_ten_times():
    # 10 x 12 label, crop 10 x 10, so the crop's x offset is 0, 1 or 2:
    #   x=0: {1: 50 px, 255: 50}        -> one counted class: rejected (accepted only if 255 were counted)
    #   x=1: {1: 40, 255: 50, 0: 10}    -> 1 covers 0.8 >= 0.75: rejected
    #   x=2: {1: 30, 255: 50, 0: 20}    -> 0.6: accepted
    label = np.zeros((10, 12), np.uint8)
    label[:, :5] = 1
    label[:, 5:10] = 255
    img = np.arange(120, dtype=np.uint8).reshape(10, 12)[:, :, None].repeat(3, axis=2)
    step = RandomCrop(crop_size=(10, 10), cat_max_ratio=0.75)
    for seed in range(30):
        out = step(dict(img=img, gt_seg_map=label), np.random.default_rng(seed))
        replay = np.random.default_rng(seed)
        offsets = [(int(replay.integers(0, 1)), int(replay.integers(0, 3))) for _ in range(11)]
        xs = [x for _, x in offsets]
        expected_x = 2 if 2 in xs[:10] else xs[10]
        assert out["img"][0, 0, 0] == expected_x and np.array_equal(out["gt_seg_map"], label[:, expected_x:][:, :10])
    small = RandomCrop(crop_size=384)(dict(img=img, gt_seg_map=label), np.random.default_rng(0))
    assert small["img"].shape == (10, 12, 3) and small["img_shape"] == (10, 12)


def test_flip_moves_image_and_label_together():
    img = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    label = np.array([[0, 1, 1, 255], [0, 0, 1, 1]], np.uint8)
    out = RandomFlip(prob=1.0)(dict(img=img.copy(), gt_seg_map=label.copy()), np.random.default_rng(0))
    assert out["flip"] and out["flip_direction"] == "horizontal"
    assert np.array_equal(out["img"], img[:, ::-1]) and np.array_equal(out["gt_seg_map"], label[:, ::-1])
    out = RandomFlip(prob=1.0, direction="vertical")(dict(img=img.copy(), gt_seg_map=label.copy()),
                                                     np.random.default_rng(0))
    assert np.array_equal(out["img"], img[::-1]) and np.array_equal(out["gt_seg_map"], label[::-1])
    out = RandomFlip(prob=0.0)(dict(img=img.copy(), gt_seg_map=label.copy()), np.random.default_rng(0))
    assert not out["flip"] and np.array_equal(out["img"], img)
    flips = [RandomFlip(prob=0.5)(dict(img=img), np.random.default_rng(s))["flip"] for s in range(200)]
    assert 70 < sum(flips) < 130


def test_hsv_conversions_follow_opencv_uint8():
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [128, 128, 128], [255, 128, 0]]], np.uint8)
    # OpenCV 8-bit HSV: H = degrees / 2, S = 255 * (max - min) / max, V = max
    assert rgb_to_hsv(rgb).tolist() == [[[0, 255, 255], [60, 255, 255], [120, 255, 255], [30, 255, 255],
                                         [0, 0, 128], [15, 255, 255]]]
    assert np.array_equal(hsv_to_rgb(rgb_to_hsv(rgb[:, :5])), rgb[:, :5])
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    assert np.array_equal(hsv_to_rgb(rgb_to_hsv(grey)), grey)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    back = hsv_to_rgb(rgb_to_hsv(noise)).astype(int)
    assert np.abs(back - noise).max() <= 5 and np.abs(back - noise).mean() < 0.5, "8-bit HSV quantization only"


def test_photometric_distortion_off_is_identity_and_each_step_is_mmseg_arithmetic():
    img = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    off = PhotoMetricDistortion()(dict(img=img.copy()), ScriptedRng())
    assert np.array_equal(off["img"], img)
    # brightness on (+10.7), contrast mode 1 ("first") but its coin says no, saturation and hue off
    bright = PhotoMetricDistortion()(dict(img=img.copy()), ScriptedRng(integers=[1, 1, 0], uniforms=[10.7]))
    assert np.array_equal(bright["img"], np.clip(img.astype(np.float32) + 10.7, 0, 255).astype(np.uint8))
    # only contrast, applied last (mode 0): x * 1.3, clipped and truncated
    contrast = PhotoMetricDistortion()(dict(img=img.copy()), ScriptedRng(integers=[0, 0, 0, 0, 1], uniforms=[1.3]))
    assert np.array_equal(contrast["img"], np.clip(img.astype(np.float32) * 1.3, 0, 255).astype(np.uint8))
    # only hue, +18 steps of 2 degrees: pure red becomes H=18 (36 degrees)
    red = np.zeros((1, 1, 3), np.uint8)
    red[..., 0] = 255
    hue = PhotoMetricDistortion()(dict(img=red), ScriptedRng(integers=[0, 0, 0, 1, 18]))
    assert rgb_to_hsv(hue["img"]).tolist() == [[[18, 255, 255]]]
    for seed in range(5):
        out = PhotoMetricDistortion()(dict(img=img.copy()), np.random.default_rng(seed))["img"]
        assert out.dtype == np.uint8 and out.shape == img.shape


def test_load_annotations_reduce_zero_label_is_mmseg(tmp_path: Path):
    write_raster(tmp_path / "l.tif", np.array([[[0, 1, 2, 255]]], np.uint8))
    out = LoadAnnotations(reduce_zero_label=True)(dict(seg_map_path=str(tmp_path / "l.tif")), None)
    assert out["gt_seg_map"].tolist() == [[255, 0, 1, 255]]
    kept = LoadAnnotations()(dict(seg_map_path=str(tmp_path / "l.tif"), reduce_zero_label=False), None)
    assert kept["gt_seg_map"].tolist() == [[0, 1, 2, 255]]


# ---------------------------------------------------------------------------------------------------- determinism

def test_samples_are_a_pure_function_of_the_seed_key():
    ds = raw_dataset(TRAIN)
    a, b, c = ds[(5, (0, 17))], ds[(5, (0, 17))], ds[(5, (0, 18))]
    assert torch.equal(a["img"], b["img"]) and torch.equal(a["gt"], b["gt"]) and a["meta"] == b["meta"]
    assert a["img"].shape != c["img"].shape or not torch.equal(a["img"], c["img"])
    with pytest.raises(ValueError, match=r"random steps .*\(index, seed_key\)"):
        ds[5]


def test_worker_count_does_not_change_the_batches():
    ds = raw_dataset(TRAIN)

    def batches(workers: int) -> list:
        sampler = InfiniteSampler(len(ds), seed=3)
        loader = DataLoader(ds, batch_size=2, sampler=sampler, num_workers=workers, collate_fn=collate)
        return list(itertools.islice(loader, 3))

    for one, other in zip(batches(0), batches(2)):
        for x, y in zip(one, other):
            assert torch.equal(x["img"], y["img"]) and torch.equal(x["gt"], y["gt"]) and x["meta"] == y["meta"]


# ---------------------------------------------------------------------------------------------------- sampler

def global_stream(n: int, seed: int, epochs: int) -> list[int]:
    return [int(i) for e in range(epochs) for i in torch.randperm(n, generator=torch.Generator().manual_seed(seed + e))]


def test_sampler_ranks_are_disjoint_and_cover_the_global_stream():
    n, world = 5, 3
    stream = global_stream(n, seed=7, epochs=6)
    seen = {}
    for rank in range(world):
        for index, (seed, position) in itertools.islice(InfiniteSampler(n, seed=7, rank=rank, world_size=world), 10):
            assert seed == 7 and position % world == rank and position not in seen
            seen[position] = index
    assert sorted(seen) == list(range(30)) and [seen[p] for p in range(30)] == stream
    plain = [i for i, _ in itertools.islice(InfiniteSampler(4, shuffle=False), 9)]
    assert plain == [0, 1, 2, 3, 0, 1, 2, 3, 0]


def test_sampler_resume_continues_exactly():
    full = list(itertools.islice(InfiniteSampler(7, seed=1, rank=1, world_size=2), 20))
    for k in (0, 3, 4, 11):
        assert list(itertools.islice(InfiniteSampler(7, seed=1, rank=1, world_size=2, start=k), 20 - k)) == full[k:]
    state = InfiniteSampler(7, seed=1, rank=0, world_size=2).state_dict(consumed=11)
    resumed = InfiniteSampler(7, seed=1, rank=1, world_size=2)
    resumed.load_state_dict(state)
    assert list(itertools.islice(resumed, 9)) == full[11:]
    with pytest.raises(ValueError, match="seed=1.*same dataset and seed"):
        InfiniteSampler(7, seed=2, world_size=2).load_state_dict(state)


def test_sampler_resume_with_another_world_size_reshards_the_rest_of_the_stream():
    """2 ranks trained on 11 samples each (global positions 0-21); 3 ranks continue at 22, 23, 24, ..."""
    state = InfiniteSampler(7, seed=1, rank=0, world_size=2).state_dict(consumed=11)
    continued = {}
    for rank in range(3):
        sampler = InfiniteSampler(7, seed=1, rank=rank, world_size=3)
        sampler.load_state_dict(state)
        for index, (seed, position) in itertools.islice(sampler, 5):
            continued[position] = index
    stream = global_stream(7, seed=1, epochs=6)
    assert sorted(continued) == list(range(22, 37)) and all(stream[p] == i for p, i in continued.items())
    later = InfiniteSampler(7, seed=1, rank=2, world_size=3)
    later.load_state_dict(state)
    assert later.state_dict(consumed=5)["position"] == 22 + 15


# ---------------------------------------------------------------------------------------------------- preprocessor

MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


def packed(img: np.ndarray, gt: np.ndarray) -> dict:
    return {"img": torch.from_numpy(img), "gt": torch.from_numpy(gt), "meta": {"path": "x.png"}}


def test_preprocessor_normalizes_then_pads_like_mmseg():
    img = np.stack([np.full((2, 3), 200), np.full((2, 3), 100), np.full((2, 3), 0)]).astype(np.uint8)
    gt = np.array([[0, 1, 255], [1, 0, 1]], np.uint8)
    imgs, gts = SegDataPreProcessor(MEAN, STD, size=(4, 5))([packed(img, gt), packed(img, gt)], torch.device("cpu"))
    assert imgs.shape == (2, 3, 4, 5) and imgs.dtype == torch.float32 and gts.shape == (2, 4, 5)
    assert gts.dtype == torch.int64
    expected = [(200 - 123.675) / 58.395, (100 - 116.28) / 57.12, (0 - 103.53) / 57.375]
    assert torch.allclose(imgs[0, :, 0, 0], torch.tensor(expected), atol=1e-6)
    assert (imgs[:, :, 2:, :] == 0).all() and (imgs[:, :, :, 3:] == 0).all(), "padding is 0 after normalization"
    assert (gts[:, 2:] == 255).all() and (gts[:, :, 3:] == 255).all() and gts[0, :2, :3].tolist() == gt.tolist()

    pre = SegDataPreProcessor(MEAN, STD)
    same, _ = SegDataPreProcessor(pre.mean, pre.std)([packed(img, gt)], "cpu")   # tensors accepted too
    assert torch.equal(same[0], imgs[0, :, :2, :3])
    bgr, _ = SegDataPreProcessor(MEAN, STD, bgr_to_rgb=False)([packed(img, gt)], "cpu")
    assert torch.allclose(bgr[0, :, 0, 0], torch.tensor([(0 - 123.675) / 58.395, (100 - 116.28) / 57.12,
                                                         (200 - 103.53) / 57.375]), atol=1e-6)
    other = packed(np.zeros((3, 4, 4), np.uint8), np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="set size=.*or use batch size 1"):
        SegDataPreProcessor(MEAN, STD)([packed(img, gt), other], "cpu")
    with pytest.raises(ValueError, match="larger than the padding size"):
        SegDataPreProcessor(MEAN, STD, size=(3, 3))([other], "cpu")
    unlabelled = {"img": torch.from_numpy(img), "gt": None, "meta": {"path": "x.png"}}
    assert SegDataPreProcessor(MEAN, STD)([unlabelled], "cpu")[1] is None
