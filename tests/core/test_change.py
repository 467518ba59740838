"""The main job for two dates: pairs checked and put on one grid, two-date tiles through the Predictor, the change
mask and polygons with their kind, and ``mtp change`` as users run it (batches, shards, failures)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import shapely
import torch
import torch.nn.functional as F
from osgeo import gdal, osr

from mtp_core.change import _KindCounter, detect_changes, output_paths, pair_name
from mtp_core.cli import main
from mtp_core.errors import GeoError, UserError
from mtp_core.inference import ArraySource, Predictor, RasterSource, TwoDateSource
from mtp_core.io import BandScaler, describe_raster, plan_read, read_vector
from mtp_core.io.pair import check_pair, warp_onto
from mtp_core.models import create_model, default_card
from mtp_core.progress import Cancelled
from mtp_core.tiling import Tile
from mtp_core.vectorize import VectorResult
from mtp_tools.synthetic.pair import render_pair, write_pair

UTM = 32633


def write_tif(path: Path, image: np.ndarray, gt: tuple, epsg: int | None = UTM, nodata: float | None = None) -> Path:
    bands = image[..., None] if image.ndim == 2 else image
    dtype = gdal.GDT_Byte if bands.dtype == np.uint8 else gdal.GDT_Float32
    ds = gdal.GetDriverByName("GTiff").Create(str(path), bands.shape[1], bands.shape[0], bands.shape[2], dtype)
    if gt is not None:
        ds.SetGeoTransform(gt)
    if epsg is not None:
        srs = osr.SpatialReference()
        srs.ImportFromEPSG(epsg)
        ds.SetProjection(srs.ExportToWkt())
    for b in range(bands.shape[2]):
        ds.GetRasterBand(b + 1).WriteArray(bands[:, :, b])
        if nodata is not None:
            ds.GetRasterBand(b + 1).SetNoDataValue(nodata)
    ds = None
    return path


def texture(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3)).astype(np.float32)
    big = np.repeat(np.repeat(small, 8, 0), 8, 1)[:h, :w]
    return big.astype(np.uint8)


@pytest.fixture(scope="module")
def tiny_cd() -> Predictor:
    """A random tiny change detector at 64 px tiles: the plumbing, not the skill, is under test here."""
    torch.manual_seed(0)
    model = create_model("mtp_vit_tiny_rvsa_unet_cd", img_size=64)
    card = default_card("mtp_vit_tiny_rvsa_unet_cd", img_size=64).replace(overlap=16)
    return Predictor(model, card, device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory) -> tuple[Path, Path, Path]:
    out = tmp_path_factory.mktemp("pair")
    return write_pair(render_pair(192, 160, seed=21), out, "town")


# ------------------------------------------------------------------------------------------------ names and checks


@pytest.mark.parametrize(("before", "after", "name"), [
    ("a/x.tif", "b/x.tif", "x"), ("town_before.tif", "town_after.tif", "town"), ("t_pre.tif", "t_post.tif", "t"),
    ("2019.tif", "2023.tif", "2019_vs_2023"), ("_before.tif", "_after.tif", "_before_vs__after"),
])
def test_pair_names(before: str, after: str, name: str) -> None:
    assert pair_name(before, after) == name
    mask, vectors, prob = output_paths(name, "out")
    assert (mask.name, vectors.name, prob.name) == (f"{name}_change_mask.tif", f"{name}_changes.gpkg",
                                                     f"{name}_change_prob.tif")


def test_overlap_and_pixel_size_are_checked(tmp_path: Path) -> None:
    img = texture(64, 64, 0)
    first = describe_raster(write_tif(tmp_path / "a.tif", img, (500000, 0.5, 0, 4500000, 0, -0.5)))
    half = describe_raster(write_tif(tmp_path / "b.tif", img, (500016, 0.5, 0, 4500000, 0, -0.5)))
    assert check_pair(first, half).overlap == pytest.approx(0.5)
    far = describe_raster(write_tif(tmp_path / "c.tif", img, (600000, 0.5, 0, 4500000, 0, -0.5)))
    with pytest.raises(GeoError, match="do not overlap on the ground"):
        check_pair(first, far)
    coarse = describe_raster(write_tif(tmp_path / "d.tif", img, (500000, 5.0, 0, 4500000, 0, -5.0)))
    with pytest.raises(GeoError, match="differ too much in ground size.*10.0x"):
        check_pair(first, coarse)
    plain = describe_raster(write_tif(tmp_path / "e.tif", img, None, None), allow_pixel_crs=True)
    with pytest.raises(GeoError, match="no georeference but the other date has"):
        check_pair(first, plain)
    in_degrees = tmp_path / "f.tif"
    gdal.Warp(str(in_degrees), str(tmp_path / "b.tif"), dstSRS="EPSG:4326")
    assert check_pair(first, describe_raster(in_degrees)).overlap == pytest.approx(0.5, abs=0.03)


def test_the_second_date_is_warped_onto_the_first_grid(tmp_path: Path) -> None:
    """A copy reprojected to Web Mercator comes back pixel for pixel (within bilinear resampling) on the UTM grid."""
    img = texture(96, 96, 1)
    first = write_tif(tmp_path / "first.tif", img, (500000, 0.5, 0, 4500000, 0, -0.5))
    mercator = tmp_path / "second.tif"
    gdal.Warp(str(mercator), str(first), dstSRS="EPSG:3857", xRes=0.6, yRes=0.6, resampleAlg="cubic")
    grid = plan_read(describe_raster(first), 0.5)
    assert not grid.warped
    plan = warp_onto(describe_raster(mercator), grid)
    assert plan.warped and (plan.width, plan.height) == (96, 96)
    np.testing.assert_allclose(plan.geotransform, grid.geotransform)
    data, valid = RasterSource(plan, (1, 2, 3), BandScaler.identity(3)).read(Tile(16, 16, 64, 0))
    diff = np.abs(data - np.moveaxis(img[16:80, 16:80], -1, 0).astype(np.float32))[:, valid]
    assert valid.mean() > 0.95 and np.median(diff) < 12  # blocky texture survives two resamplings
    same = warp_onto(describe_raster(first), grid)
    assert not same.warped


def test_two_date_tiles_stack_the_dates_and_need_both_valid() -> None:
    a = np.full((8, 8, 3), 10.0, np.float32)
    b = np.full((8, 8, 3), 200.0, np.float32)
    valid_b = np.ones((8, 8), bool)
    valid_b[:, :2] = False
    source = TwoDateSource(ArraySource(a), ArraySource(b, valid_b))
    data, valid = source.read(Tile(0, 0, 8, 0))
    assert data.shape == (6, 8, 8) and data[:3].max() == 10 and data[3:].min() == 200
    assert valid.sum() == 48 and not valid[:, :2].any()
    with pytest.raises(ValueError, match="different grids"):
        TwoDateSource(ArraySource(a), ArraySource(np.zeros((9, 8, 3), np.float32)))


def test_predictor_normalises_each_date_and_runs_the_siamese_model(tiny_cd: Predictor) -> None:
    """One 64 px tile without overlap: the blended probabilities are the model's own softmax on (A || B), each date
    normalised with the card's mean/std."""
    predictor = Predictor(tiny_cd.model, tiny_cd.card.replace(overlap=0), device="cpu")
    a, b = texture(64, 64, 2).astype(np.float32), texture(64, 64, 3).astype(np.float32)
    classes, probs = predictor.predict_array(np.concatenate([a, b], axis=-1))
    mean = torch.tensor(predictor.card.mean).view(3, 1, 1)
    std = torch.tensor(predictor.card.std).view(3, 1, 1)
    x = torch.cat([(torch.from_numpy(a).permute(2, 0, 1) - mean) / std,
                   (torch.from_numpy(b).permute(2, 0, 1) - mean) / std])[None]
    with torch.no_grad():
        expected = F.softmax(tiny_cd.model(x), 1)[0].numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert classes.shape == (64, 64)


def test_a_segmentation_model_is_not_a_change_detector(tmp_path: Path, pair_files) -> None:
    seg = Predictor(create_model("mtp_vit_tiny_rvsa_upernet", img_size=64), default_card("mtp_vit_tiny_rvsa_upernet"),
                    device="cpu")
    with pytest.raises(UserError, match="is a segmentation model, not a change detector"):
        detect_changes(seg, pair_files[0], pair_files[1], tmp_path)


# ------------------------------------------------------------------------------------------------ the job


def test_outputs_on_the_first_rasters_grid(tiny_cd: Predictor, pair_files, tmp_path: Path) -> None:
    result = detect_changes(tiny_cd, pair_files[0], pair_files[1], tmp_path, probabilities=True, min_area_m2=0.0)
    assert result.mask_path.name == "town_change_mask.tif" and result.vector_path.name == "town_changes.gpkg"
    src, mask = describe_raster(pair_files[0]), describe_raster(result.mask_path)
    assert (mask.width, mask.height, mask.geotransform, mask.epsg) == (src.width, src.height, src.geotransform, UTM)
    assert describe_raster(result.prob_path).band_count == 1 and result.overlap == pytest.approx(1.0)
    geoms, attrs, _ = read_vector(result.vector_path)
    assert len(geoms) == result.changes and "kind" not in attrs
    assert set(attrs["source"]) == {"town_before.tif -> town_after.tif"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["town_change_mask.tif", "town_change_prob.tif",
                                                          "town_changes.gpkg"]


def test_a_second_date_in_degrees_is_warped_and_outputs_stay_on_the_first_grid(tiny_cd, pair_files, tmp_path):
    after_deg = tmp_path / "after_deg.tif"
    gdal.Warp(str(after_deg), str(pair_files[1]), dstSRS="EPSG:4326")
    result = detect_changes(tiny_cd, pair_files[0], after_deg, tmp_path / "out", name="deg")
    assert result.overlap > 0.95
    mask = gdal.Open(str(result.mask_path)).ReadAsArray()
    src = describe_raster(pair_files[0])
    assert mask.shape == (src.height, src.width)
    assert (mask == 255).mean() < 0.05  # the warped date covers (nearly) all of the first


def test_cancel_leaves_nothing(tiny_cd, pair_files, tmp_path) -> None:
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        detect_changes(tiny_cd, pair_files[0], pair_files[1], tmp_path, cancel=cancel)
    assert list(tmp_path.iterdir()) == []


def _mask(path: Path, array: np.ndarray) -> Path:
    return write_tif(path, array.astype(np.uint8), (500000, 0.5, 0, 4500000, 0, -0.5))


def test_the_kind_of_a_change_comes_from_both_dates_building_probabilities(tmp_path: Path) -> None:
    before, after = np.zeros((40, 40), np.uint8), np.zeros((40, 40), np.uint8)
    before[0:10, 0:10] = 250                             # demolished
    after[0:10, 20:30] = 250                             # new
    before[0:10, 30:40], after[0:10, 30:40] = 150, 250   # new: a false alarm on the bare plot is not "modified"
    before[20:30, 0:10], after[20:30, 0:10] = 240, 220   # modified: a building on both dates
    before[20:30, 20:30], after[20:30, 20:30] = 90, 100  # other: no building on either
    counter = _KindCounter([_mask(tmp_path / "b.tif", before), _mask(tmp_path / "a.tif", after)])

    def square(col: int, row: int) -> shapely.Polygon:
        x, y = 500000 + col * 0.5, 4500000 - row * 0.5
        return shapely.box(x + 0.5, y - 4.5, x + 4.5, y - 0.5)  # inside the 10 x 10 px block

    chunk = VectorResult([square(0, 0), square(20, 0), square(30, 0), square(0, 20), square(20, 20)], {}, "")
    assert counter(chunk) == {"kind": ["demolished", "new", "new", "modified", "other"]}
    assert counter.counts == {"new": 2, "demolished": 1, "modified": 1, "other": 1}


# ------------------------------------------------------------------------------------------------ the command


def test_command_lists_pairs_and_names_what_is_wrong(tmp_path: Path, capsys, pair_files) -> None:
    assert main(["change", str(pair_files[0]), "--out", str(tmp_path)]) == 2
    assert "even number" in capsys.readouterr().err
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(f"# before, after\n{pair_files[0]}, {pair_files[1]}\n{pair_files[0]}\n")
    assert main(["change", "--pairs", str(pairs), "--out", str(tmp_path)]) == 2
    assert "line 3: expected two paths" in capsys.readouterr().err
    assert main(["change", str(pair_files[0]), str(pair_files[1]), str(pair_files[0]), str(pair_files[1]),
                 "--name", "x", "--out", str(tmp_path)]) == 2
    assert "--name names one pair" in capsys.readouterr().err


def test_a_batch_of_pairs_goes_on_past_a_failure_and_shards_split_it(tiny_cd, pair_files, tmp_path, capsys,
                                                                     monkeypatch) -> None:
    monkeypatch.setattr("mtp_core.cli.change.load_predictors", lambda args: (tiny_cd, None))
    missing = tmp_path / "missing_after.tif"
    args = [str(pair_files[0]), str(pair_files[1]), str(pair_files[0]), str(missing), "--out", str(tmp_path / "o")]
    assert main(["change", *args]) == 1
    captured = capsys.readouterr()
    assert "raster not found" in captured.err and "2 pair(s): 1 done, 1 failed" in captured.out
    rows = list(csv.reader(open(tmp_path / "o" / "failures.csv")))
    assert rows[0] == ["before", "after", "kind", "message"] and rows[1][:3] == [str(pair_files[0]), str(missing),
                                                                                  "input"]
    assert (tmp_path / "o" / "town_changes.gpkg").exists()
    assert main(["change", *args[:2], "--out", str(tmp_path / "o")]) == 0  # outputs exist: skipped
    assert "skipped" in capsys.readouterr().out
    finished_first = sorted([(pair_files[0], pair_files[1]), (pair_files[0], missing)])[0][1] == pair_files[1]
    done, failing = ("0/2", "1/2") if finished_first else ("1/2", "0/2")
    assert main(["change", *args, "--shard", done]) == 0  # every 2nd of the sorted pairs: the finished one, skipped
    assert main(["change", *args, "--shard", failing]) == 1
    k = failing[0]
    assert (tmp_path / "o" / f"failures_shard{k}-of-2.csv").exists()
