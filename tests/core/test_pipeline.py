"""The main job as users run it: `mtp predict` on projected and geographic rasters, bad inputs, cancel, shards."""
from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import shapely
import torch
from osgeo import gdal, osr

from mtp_core.checkpoint import CheckpointError
from mtp_core.cli import main
from mtp_core.errors import UserError
from mtp_core.inference import CLASS_NODATA, Predictor
from mtp_core.io import BandScaler, GeoError, describe_raster, read_vector, to_metric
from mtp_core.models import create_model
from mtp_core.pipeline import extract_buildings
from mtp_core.progress import Cancelled
from mtp_core.shard import parse_shard, select_shard
from mtp_core.weights import DEMO_CHECKPOINT
from mtp_tools.synthetic import render_scene, write_scene
from tests.conftest import shared_file

CHIP = ("realdata", "spacenet1_AOI_0_TEST", "AOI_0_TEST", "3band", "3band_013022223130_Public_img10.tif")
FIELDS = {"id", "class", "score", "area_m2", "perimeter_m", "source", "model"}


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    """The embedded demo model: real predictions on synthetic scenes, 256 px tiles (one tile for small rasters)."""
    assert DEMO_CHECKPOINT.is_file()
    return DEMO_CHECKPOINT


@pytest.fixture(scope="module")
def scene_tif(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scene")
    tif, _ = write_scene(render_scene(200, 180, seed=4), out / "scene.tif", out / "scene.geojson")
    return tif


def predictor(checkpoint: Path) -> Predictor:
    return Predictor.from_checkpoint(checkpoint, device="cpu", batch_size=4)


def test_predict_writes_mask_and_attributed_polygons_in_the_raster_crs(checkpoint, scene_tif, tmp_path, capsys):
    assert main(["predict", str(scene_tif), "--checkpoint", str(checkpoint), "--out", str(tmp_path),
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("device: cpu") and "tiles/s" in out and "km²/s" in out
    src, mask = describe_raster(scene_tif), describe_raster(tmp_path / "scene_mask.tif")
    assert (mask.width, mask.height, mask.geotransform, mask.epsg) == (src.width, src.height, src.geotransform, 32633)
    geoms, attrs, crs = read_vector(tmp_path / "scene_buildings.gpkg")
    assert osr.SpatialReference(wkt=crs).GetAuthorityCode(None) == "32633"
    assert len(geoms) > 0 and set(attrs) >= FIELDS
    assert all(0.0 <= s <= 1.0 for s in attrs["score"]) and set(attrs["source"]) == {"scene.tif"}
    minx, miny, maxx, maxy = src.bounds
    assert shapely.total_bounds(geoms).tolist() >= [minx, miny, minx, miny]
    assert all(shapely.within(g, shapely.box(minx, miny, maxx, maxy).buffer(1e-6)) for g in geoms)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene_buildings.gpkg", "scene_mask.tif"]


def test_geographic_chip_comes_back_on_its_own_grid(checkpoint, tmp_path):
    chip = shared_file(*CHIP)
    result = extract_buildings(predictor(checkpoint), chip, tmp_path, probabilities=True)
    src, mask = describe_raster(chip), describe_raster(result.mask_path)
    assert result.prediction.warped
    assert (mask.width, mask.height, mask.epsg) == (src.width, src.height, 4326)
    assert np.allclose(mask.geotransform, src.geotransform)
    assert describe_raster(result.prob_path).band_count == 1
    geoms, attrs, _ = read_vector(result.vector_path)
    minx, miny, maxx, maxy = src.bounds
    assert all(minx - 1e-9 <= b <= maxx + 1e-9 for g in geoms for b in shapely.bounds(g)[::2])
    # areas in m², not square degrees: equal to the polygons' area in the chip's UTM zone within 1 %
    utm_areas = shapely.area(to_metric(np.asarray(geoms, dtype=object), describe_raster(chip).crs_wkt))
    np.testing.assert_allclose(attrs["area_m2"], utm_areas, rtol=0.01)


def test_nodata_stays_nodata(checkpoint, tmp_path):
    scene = render_scene(600, 300, seed=2)
    tif, _ = write_scene(scene, tmp_path / "in" / "holes.tif")
    ds = gdal.Open(str(tif), gdal.GA_Update)
    for b in range(1, 4):
        band = ds.GetRasterBand(b)
        band.SetNoDataValue(0)
        data = band.ReadAsArray()
        data[:300, :] = 0
        band.WriteArray(data)
    ds = None
    result = extract_buildings(predictor(checkpoint), tif, tmp_path / "out")
    mask = gdal.Open(str(result.mask_path)).ReadAsArray()
    assert (mask[:300] == CLASS_NODATA).all() and (mask[300:] != CLASS_NODATA).all()
    assert result.prediction.stats.tiles_skipped == 2  # the first tile row is all nodata: not run


def test_cancel_leaves_no_output(checkpoint, scene_tif, tmp_path):
    calls = []
    with pytest.raises(Cancelled):
        extract_buildings(predictor(checkpoint), scene_tif, tmp_path, probabilities=True,
                          progress=calls.append, cancel=lambda: len(calls) >= 1)
    assert list(tmp_path.iterdir()) == []


def _write_raster(path: Path, bands: int, georef: bool = True) -> Path:
    ds = gdal.GetDriverByName("GTiff").Create(str(path), 80, 70, bands, gdal.GDT_Byte)
    if georef:
        ds.SetGeoTransform((500000, 0.5, 0, 4500000, 0, -0.5))
        srs = osr.SpatialReference()
        srs.ImportFromEPSG(32633)
        ds.SetProjection(srs.ExportToWkt())
    ds = None
    return path


@pytest.mark.parametrize(
    ("setup", "args", "message", "status"),
    [  # a raster that fails is one failure of the batch (1); bad options stop the command before any raster (2)
        (lambda d: d / "missing.tif", [], "not found", 1),
        (lambda d: _write_raster(d / "gray.tif", 1), [], "has 1 band", 1),
        (lambda d: _write_raster(d / "rgb.tif", 3), ["--bands", "3,2"], "takes 3 bands", 1),
        (lambda d: _write_raster(d / "plain.tif", 3, georef=False), [], "--pixel-crs", 1),
        (lambda d: d / "missing.tif", ["--shard", "3/2"], "K must be in 0..N-1", 2),
        (lambda d: _write_raster(d / "rgb.tif", 3), ["--tile", "128"], "takes 256 px tiles", 2),
    ],
)
def test_bad_inputs_are_explained(checkpoint, tmp_path, capsys, setup, args, message, status):
    raster = setup(tmp_path)
    rc = main(["predict", str(raster), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out"), *args])
    assert rc == status
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_batch_goes_on_past_a_failed_raster(checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00 not really a tiff")
    gray = _write_raster(tmp_path / "gray.tif", 1)
    good = write_scene(render_scene(256, 256, 3), tmp_path / "good.tif")[0]
    out = tmp_path / "out"
    rc = main(["predict", str(bad), str(gray), str(good), "--checkpoint", str(checkpoint), "--out", str(out)])
    assert rc == 1
    err = capsys.readouterr().err
    assert "bad.tif: FAILED" in err and "gray.tif: FAILED" in err and "Traceback" not in err
    assert (out / "good_buildings.gpkg").exists() and (out / "good_mask.tif").exists()
    with open(out / "failures.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [Path(r["raster"]).name for r in rows] == ["bad.tif", "gray.tif"]  # the batch's order
    assert {r["kind"] for r in rows} == {"input"} and "has 1 band" in rows[1]["message"]
    assert not list(out.glob("bad_*")) and not list(out.glob("gray_*"))  # nothing half-made
    # the rerun with the broken files fixed redoes only them; the report of the last run goes away
    bad.unlink()
    gray.unlink()
    assert main(["predict", str(good), "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    assert not (out / "failures.csv").exists()
    # --fail-fast: stops at the first failure
    assert main(["predict", str(bad), str(good), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "ff"),
                 "--fail-fast"]) == 1
    assert not (tmp_path / "ff" / "good_mask.tif").exists()


def test_a_bug_keeps_its_traceback_and_the_batch_goes_on(checkpoint, tmp_path, capsys, monkeypatch):
    import mtp_core.pipeline as pipeline

    real = pipeline.extract_buildings
    first = write_scene(render_scene(128, 128, 1), tmp_path / "a.tif")[0]
    second = write_scene(render_scene(128, 128, 2), tmp_path / "b.tif")[0]

    def buggy(predictor, raster, *args, **kwargs):
        if Path(raster).name == "a.tif":
            return {}["a key the code forgot"]  # a KeyError: a bug, not bad input
        return real(predictor, raster, *args, **kwargs)

    monkeypatch.setattr(pipeline, "extract_buildings", buggy)
    rc = main(["predict", str(first), str(second), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" in err and "KeyError" in err and "a bug in mtp_core" in err
    assert (tmp_path / "o" / "b_buildings.gpkg").exists()


def test_pixel_crs_runs_in_pixel_units(checkpoint, tmp_path):
    raster = _write_raster(tmp_path / "plain.tif", 3, georef=False)
    with pytest.raises(GeoError, match="--pixel-crs"):
        extract_buildings(predictor(checkpoint), raster, tmp_path / "a")
    result = extract_buildings(predictor(checkpoint), raster, tmp_path / "b", pixel_crs=True)
    assert result.mask_path.exists()


def test_nodata_value_keeps_the_black_fill_of_a_spacenet_chip_out(tmp_path, capsys):
    chip = shared_file(*CHIP)  # declares no nodata; 68 % of it is black fill outside the imagery
    ds = gdal.Open(str(chip))
    black = ds.ReadAsArray().max(axis=0) == 0
    ds = None
    assert main(["predict", str(chip), "--out", str(tmp_path / "plain"), "--device", "cpu"]) == 0
    assert main(["predict", str(chip), "--out", str(tmp_path / "fill"), "--device", "cpu", "--nodata", "0"]) == 0
    masks = {}
    for run in ("plain", "fill"):
        ds = gdal.Open(str(tmp_path / run / f"{chip.stem}_mask.tif"))
        masks[run] = ds.ReadAsArray()
        ds = None
    assert (masks["plain"][black] != CLASS_NODATA).mean() > 0.99  # without --nodata the fill is segmented
    # The mask comes back from the model's metric grid (nearest): a few pixels along the rim of the fill may differ.
    fill = masks["fill"]
    assert (fill[black] == CLASS_NODATA).mean() > 0.99 and (fill[~black] != CLASS_NODATA).mean() > 0.99
    fill_polys, _, _ = read_vector(tmp_path / "fill" / f"{chip.stem}_buildings.gpkg")
    plain_polys, _, _ = read_vector(tmp_path / "plain" / f"{chip.stem}_buildings.gpkg")
    assert max(p.area for p in fill_polys) < max(p.area for p in plain_polys) / 10  # no "building" over the fill


def test_a_file_that_is_not_a_checkpoint_is_explained(scene_tif, tmp_path, capsys):
    bad = tmp_path / "notes.pth"
    bad.write_text("not a checkpoint")
    assert main(["predict", str(scene_tif), "--checkpoint", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "notes.pth" in err and "checkpoint" in err and "Traceback" not in err


def test_shards_split_the_inputs_and_reruns_skip_finished_rasters(checkpoint, tmp_path, capsys, monkeypatch):
    names = [tmp_path / f"r{i}.tif" for i in range(5)]
    assert [p.name for p in select_shard(names, 1, 2)] == ["r1.tif", "r3.tif"]
    assert parse_shard("2/4") == (2, 4) and parse_shard(None, {}) == (0, 1)
    assert parse_shard(None, {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5",
                              "SLURM_ARRAY_TASK_COUNT": "3"}) == (2, 3)
    assert parse_shard(None, {"RANK": "1", "WORLD_SIZE": "2"}) == (1, 2)
    scene = render_scene(100, 100, seed=1)
    rasters = [write_scene(scene, tmp_path / "in" / f"t{i}.tif")[0] for i in range(3)]
    args = ["predict", *map(str, rasters), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out")]
    assert main([*args, "--shard", "0/2"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.gpkg")) == ["t0_buildings.gpkg", "t2_buildings.gpkg"]
    capsys.readouterr()
    assert main(args) == 0  # the killed-and-restarted job: only t1 is left to do
    out = capsys.readouterr().out
    assert out.count("outputs exist, skipped") == 2 and "t1.tif: " in out


def test_uint16_rasters_are_scaled_once_per_raster(checkpoint, tmp_path):
    scene = render_scene(256, 256, seed=8)
    tif8, _ = write_scene(scene, tmp_path / "in" / "eight.tif")
    src = gdal.Open(str(tif8))
    tif16 = tmp_path / "in" / "sixteen.tif"
    out = gdal.GetDriverByName("GTiff").Create(str(tif16), 256, 256, 3, gdal.GDT_UInt16)
    out.SetGeoTransform(src.GetGeoTransform())
    out.SetProjection(src.GetProjection())
    for b in range(1, 4):
        out.GetRasterBand(b).WriteArray(src.GetRasterBand(b).ReadAsArray().astype(np.uint16) * 16)
    out = src = None
    base = extract_buildings(predictor(checkpoint), tif8, tmp_path / "a")
    fixed = predictor(checkpoint)
    fixed.card = fixed.card.replace(band_ranges=((0, 255 * 16),) * 3)  # the card's fixed scaling
    same = extract_buildings(fixed, tif16, tmp_path / "b")
    stretched = extract_buildings(predictor(checkpoint), tif16, tmp_path / "c")  # 2-98 % stretch
    masks = [gdal.Open(str(r.mask_path)).ReadAsArray() for r in (base, same, stretched)]
    assert np.array_equal(masks[0], masks[1])
    assert (masks[2] == masks[0]).mean() > 0.8


def test_an_output_folder_that_cannot_be_created_is_explained(checkpoint, scene_tif, tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file where the output folder should go")
    assert main(["predict", str(scene_tif), "--checkpoint", str(checkpoint), "--out", str(blocker / "out")]) == 2
    err = capsys.readouterr().err
    assert "file.txt" in err and "Traceback" not in err


def test_a_checkpoint_without_a_decoder_is_refused_for_prediction(tmp_path, capsys):
    """An encoder-only file (an MTP *_encoder.pth, an MAE file) would predict with a random head: refused before
    anything is read, naming what is missing and the command that makes a full checkpoint."""
    encoder = tmp_path / "encoder.pth"
    torch.save(create_model("mtp_vit_tiny_rvsa").state_dict(), encoder)
    scene = write_scene(render_scene(64, 64, 1), tmp_path / "scene.tif")[0]
    rc = main(["predict", str(scene), "--checkpoint", str(encoder), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "no trained decoder" in err and "decode_head" in err and "python -m training.train" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
    converted = tmp_path / "converted.pth"  # convert-ckpt writes the new decoder, untrained: refused too
    assert main(["convert-ckpt", str(encoder), str(converted)]) == 0
    with pytest.raises(CheckpointError, match="untrained decoder"):
        Predictor.from_checkpoint(converted)


def test_a_truncated_geotiff_is_one_clear_line_and_leaves_nothing(checkpoint, scene_tif, tmp_path, capsys):
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(scene_tif.read_bytes()[: scene_tif.stat().st_size // 2])
    out = tmp_path / "out"
    rc = main(["predict", str(truncated), "--checkpoint", str(checkpoint), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err and "IReadBlock" not in err.split("FAILED:")[0]
    line = next(line for line in err.splitlines() if "truncated.tif: FAILED" in line)
    assert "damaged or missing" in line and "window x=" in line and str(truncated) in line
    assert sorted(p.name for p in out.iterdir()) == ["failures.csv"]


def test_a_rotated_raster_is_predicted_and_vectorized_on_its_own_grid(checkpoint, tmp_path):
    image = render_scene(192, 192, 5).image
    c, s = math.cos(math.radians(20)), math.sin(math.radians(20))
    gt = (500000.0, 0.5 * c, 0.5 * s, 4500000.0, 0.5 * s, -0.5 * c)
    rotated = tmp_path / "rotated.tif"
    ds = gdal.GetDriverByName("GTiff").Create(str(rotated), 192, 192, 3, gdal.GDT_Byte)
    ds.SetGeoTransform(gt)
    utm = osr.SpatialReference()
    utm.ImportFromEPSG(32633)
    ds.SetProjection(utm.ExportToWkt())
    for b in range(3):
        ds.GetRasterBand(b + 1).WriteArray(image[:, :, b])
    ds = None
    result = extract_buildings(predictor(checkpoint), rotated, tmp_path / "out")
    mask = describe_raster(result.mask_path)
    assert mask.geotransform == pytest.approx(gt) and not result.prediction.warped
    geoms, attrs, _ = read_vector(result.vector_path)
    assert len(geoms) > 3
    footprint = shapely.Polygon([gdal.ApplyGeoTransform(gt, col, row) for col, row in
                                 ((0, 0), (192, 0), (192, 192), (0, 192))])
    assert all(footprint.buffer(1e-6).contains(g) for g in geoms)
    assert sum(attrs["area_m2"]) == pytest.approx(sum(g.area for g in geoms) / 0.9996**2, rel=1e-3)


def test_outputs_are_cloud_optimized_geotiffs(checkpoint, scene_tif, tmp_path):
    result = extract_buildings(predictor(checkpoint), scene_tif, tmp_path, probabilities=True)
    for path in (result.mask_path, result.prob_path):
        ds = gdal.Open(str(path))
        assert ds.GetMetadata("IMAGE_STRUCTURE").get("LAYOUT") == "COG", path
    assert gdal.Open(str(result.mask_path)).GetRasterBand(1).GetNoDataValue() == CLASS_NODATA


def test_gdal_error_mode_is_only_changed_inside_engine_calls(scene_tif, tmp_path):
    """Inside QGIS other plugins share GDAL's exception mode: the engine leaves it as it found it (off or on)."""
    code = f"""
from osgeo import gdal, ogr, osr
from mtp_core.io import describe_raster
from mtp_core.inference import Predictor
from mtp_core.pipeline import extract_buildings
from mtp_core.weights import DEMO_CHECKPOINT
modes = lambda: (gdal.GetUseExceptions(), ogr.GetUseExceptions(), osr.GetUseExceptions())
assert modes() == (0, 0, 0)
extract_buildings(Predictor.from_checkpoint(DEMO_CHECKPOINT), {str(scene_tif)!r}, {str(tmp_path / "a")!r})
try:
    describe_raster("/nonexistent.tif")
except ValueError:
    pass
assert modes() == (0, 0, 0), modes()
gdal.UseExceptions()
describe_raster({str(scene_tif)!r})
assert gdal.GetUseExceptions() == 1
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


def test_the_io_package_imports_without_torch():
    code = "import sys; import mtp_core.io, mtp_core.io.metres; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


@pytest.mark.parametrize(("env", "expected"), [
    (dict(SLURM_ARRAY_TASK_ID="6", SLURM_ARRAY_TASK_COUNT="8", SLURM_ARRAY_TASK_MIN="0", SLURM_ARRAY_TASK_MAX="14",
          SLURM_ARRAY_TASK_STEP="2"), (3, 8)),  # --array=0-15:2
    (dict(SLURM_ARRAY_TASK_ID="12", SLURM_ARRAY_TASK_COUNT="4", SLURM_ARRAY_TASK_MIN="3", SLURM_ARRAY_TASK_MAX="12",
          SLURM_ARRAY_TASK_STEP="3"), (3, 4)),  # --array=3-12:3
])
def test_slurm_arrays_with_steps_give_consecutive_shards(env, expected):
    assert parse_shard(None, env) == expected


def test_an_unevenly_spaced_slurm_array_asks_for_shard():
    env = dict(SLURM_ARRAY_TASK_ID="4", SLURM_ARRAY_TASK_COUNT="3", SLURM_ARRAY_TASK_MIN="1",
               SLURM_ARRAY_TASK_MAX="9", SLURM_ARRAY_TASK_STEP="1")  # --array=1,4,9
    with pytest.raises(UserError, match="--shard K/3"):
        parse_shard(None, env)


def _uint16_copy(tif8: Path, path: Path, gain: int) -> Path:
    src = gdal.Open(str(tif8))
    out = gdal.GetDriverByName("GTiff").Create(str(path), src.RasterXSize, src.RasterYSize, 3, gdal.GDT_UInt16)
    out.SetGeoTransform(src.GetGeoTransform())
    out.SetProjection(src.GetProjection())
    for b in range(1, 4):
        out.GetRasterBand(b).WriteArray(src.GetRasterBand(b).ReadAsArray().astype(np.uint16) * gain)
    return path


def test_a_batch_and_its_shards_scale_every_raster_alike(checkpoint, tmp_path, monkeypatch):
    """A model without band ranges on 16-bit rasters: one stretch fitted over the whole batch, the same in every
    shard, so neighbouring rasters are scaled alike (a stretch per raster would make each one look different)."""
    import mtp_core.pipeline as pipeline

    dark = _uint16_copy(write_scene(render_scene(128, 128, 1), tmp_path / "a8.tif")[0], tmp_path / "a.tif", 4)
    bright = _uint16_copy(write_scene(render_scene(128, 128, 2), tmp_path / "b8.tif")[0], tmp_path / "b.tif", 16)
    seen: dict[str, object] = {}
    real_source = pipeline.RasterSource

    def spy(plan, bands, scaler):
        seen[Path(plan.info.label).name] = scaler
        return real_source(plan, bands, scaler)

    monkeypatch.setattr(pipeline, "RasterSource", spy)
    expected = BandScaler.fit_files([dark, bright], (1, 2, 3))
    assert expected.mode == "percentile" and expected.high[0] > 255 * 4  # the bright raster is in the fit
    for shard in ("0/2", "1/2"):
        assert main(["predict", str(dark), str(bright), "--checkpoint", str(checkpoint), "--out",
                     str(tmp_path / "out"), "--shard", shard]) == 0
    assert seen == {"a.tif": expected, "b.tif": expected}
