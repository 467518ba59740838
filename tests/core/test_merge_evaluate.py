"""`mtp vectorize`, `mtp merge` and `mtp evaluate` as a batch job uses them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import shapely
from osgeo import gdal, osr

from mtp_core.cli import main
from mtp_core.io import read_vector
from mtp_tools.synthetic import render_scene
from tests.conftest import shared_file

ORIGIN = (500000.0, 4500000.0)


def write_mask(mask: np.ndarray, path: Path, x_offset_px: int = 0) -> Path:
    ds = gdal.GetDriverByName("GTiff").Create(str(path), mask.shape[1], mask.shape[0], 1, gdal.GDT_Byte)
    ds.SetGeoTransform((ORIGIN[0] + 0.5 * x_offset_px, 0.5, 0, ORIGIN[1], 0, -0.5))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    ds.SetProjection(srs.ExportToWkt())
    ds.GetRasterBand(1).WriteArray(mask)
    ds = None
    return path


def test_merge_makes_buildings_cut_at_raster_borders_whole(tmp_path: Path, capsys) -> None:
    mask = render_scene(240, 300, seed=11).mask
    cut = 150
    whole = write_mask(mask, tmp_path / "whole.tif")
    left = write_mask(mask[:, :cut], tmp_path / "left.tif")
    right = write_mask(mask[:, cut:], tmp_path / "right.tif", x_offset_px=cut)
    for raster in (whole, left, right):
        assert main(["vectorize", str(raster), str(tmp_path / f"{raster.stem}.gpkg"), "--simplify", "0",
                     "--min-area", "0"]) == 0
    assert main(["merge", str(tmp_path / "left.gpkg"), str(tmp_path / "right.gpkg"),
                 "--out", str(tmp_path / "merged.gpkg")]) == 0
    expected, _, _ = read_vector(tmp_path / "whole.gpkg")
    merged, attrs, _ = read_vector(tmp_path / "merged.gpkg")
    pieces = len(read_vector(tmp_path / "left.gpkg")[0]) + len(read_vector(tmp_path / "right.gpkg")[0])
    assert pieces > len(expected)  # some buildings really were cut
    assert len(merged) == len(expected)
    assert shapely.equals(shapely.union_all(merged), shapely.union_all(expected))
    total = sum(attrs["area_m2"])
    assert abs(total - mask.sum() * 0.25) / total < 0.005
    assert attrs["id"] == list(range(1, len(merged) + 1))
    assert "buildings from 2 layer(s)" in capsys.readouterr().out


def test_evaluate_reproduces_the_solaris_expectations(capsys) -> None:
    folder = ("realdata", "solaris")
    assert main(["evaluate", str(shared_file(*folder, "pred.geojson")), str(shared_file(*folder, "gt.geojson")),
                 "--min-area", "0"]) == 0
    assert "all                           8     20     20     0.2857   0.2857   0.2857" in capsys.readouterr().out
    assert main(["evaluate", str(shared_file(*folder, "SN2_sample_preds.csv")),
                 str(shared_file(*folder, "SN2_sample_truth.csv"))]) == 0
    out = capsys.readouterr().out
    assert "AOI_2_Vegas                  35      2      7" in out and "0.8861" in out
    assert "AOI_5_Khartoum               52     55     75" in out and "0.4444" in out


def test_evaluate_refuses_mixed_inputs(capsys) -> None:
    folder = ("realdata", "solaris")
    pred, truth = shared_file(*folder, "pred.geojson"), shared_file(*folder, "SN2_sample_truth.csv")
    rc = main(["evaluate", str(pred), str(truth)])
    assert rc == 2 and "compare a SpaceNet CSV with another CSV" in capsys.readouterr().err
