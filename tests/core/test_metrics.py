"""Pixel metrics against MMSeg 1.0.0's IoUMetric goldens; SpaceNet polygon F1 against solaris's expected outputs."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import shapely
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from shapely.geometry import Polygon, box

from mtp_core.metrics import (
    PER_CLASS_KEYS,
    SUMMARY_KEYS,
    PixelMetrics,
    aoi_from_image_id,
    evaluate_spacenet_csv,
    intersect_and_union,
    polygon_f1,
    read_spacenet_csv,
    read_vector_file,
)
from tests.conftest import shared_file

SOLARIS = ("realdata", "solaris")

# ----------------------------------------------------------------------------------------------- MMSeg goldens


def _golden() -> dict:
    return json.loads(shared_file("reference", "mmseg", "golden_iou_metric.json").read_text())


def _floats(values) -> np.ndarray:
    """Golden float list (``null`` = NaN) as float64."""
    return np.array([np.nan if v is None else v for v in np.atleast_1d(values)], dtype=np.float64)


def _pairs(cases: dict, name: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    data = cases[name]["data"]
    if "same_as" in data:
        data = cases[data["same_as"]]["data"]
    return [(torch.tensor(p["pred"], dtype=torch.int64), torch.tensor(p["label"], dtype=torch.int64))
            for p in data["pairs"]]


CASES = ["binary_3pairs", "five_class_absent3", "five_class_edge", "five_class_edge_nan0"]


@pytest.mark.parametrize("case", CASES)
def test_iou_metric_equals_mmseg_golden(case: str) -> None:
    golden = _golden()
    assert sorted(golden["cases"]) == sorted(CASES), "a golden case is not covered"
    ref = golden["cases"][case]
    k = ref["num_classes"]
    metric = PixelMetrics(k, ignore_index=255, class_names=ref["classes"])

    pairs = _pairs(golden["cases"], case)
    assert len(pairs) == len(ref["per_pair_areas"])
    for (pred, label), areas in zip(pairs, ref["per_pair_areas"]):
        mine = intersect_and_union(pred, label, k, 255)
        for got, key in zip(mine, ("area_intersect", "area_union", "area_pred_label", "area_label")):
            assert got.dtype == torch.int64
            assert got.tolist() == [int(v) for v in areas[key]], key
        metric.update(pred, label)
    for row, key in enumerate(("area_intersect", "area_union", "area_pred_label", "area_label")):
        assert metric.total_areas[row].tolist() == [int(v) for v in ref["total_areas"][key]], key

    result = metric.compute(nan_to_num=ref["nan_to_num"])
    assert set(SUMMARY_KEYS) <= set(result)
    for key in SUMMARY_KEYS:  # rounded values equal (as float32, MMSeg's dtype) and logged the same
        np.testing.assert_array_equal(np.float32(result[key]), np.float32(ref["returned_metrics"][key]), err_msg=key)
        assert str(result[key]) == ref["returned_metrics_str"][key], key

    unrounded = ref["ret_metrics_unrounded"]
    for key in PER_CLASS_KEYS:
        np.testing.assert_allclose(result["per_class"][key], _floats(unrounded[key]), rtol=0, atol=1e-6,
                                   equal_nan=True, err_msg=key)
        assert np.array_equal(np.isnan(result["per_class"][key]), np.isnan(_floats(unrounded[key]))), key
    assert abs(float(metric.per_class(ref["nan_to_num"])["aAcc"]) - unrounded["aAcc"]) <= 1e-6

    table = ref["ret_metrics_class_rounded"]
    assert result["per_class_table"]["Class"] == table["Class"]
    for key in PER_CLASS_KEYS:
        np.testing.assert_array_equal(np.float32(result["per_class_table"][key]), np.float32(_floats(table[key])),
                                      err_msg=key)
        assert [str(v) for v in result["per_class_table"][key]] == ref["ret_metrics_class_str"][key], key


def test_fscore_and_dice_differ_where_mmseg_says() -> None:
    """five_class_edge: a class only in labels and one only in preds have Dice 0 but Fscore NaN (skipped)."""
    ref = _golden()["cases"]["five_class_edge"]
    metric = PixelMetrics(5)
    for pred, label in _pairs(_golden()["cases"], "five_class_edge"):
        metric.update(pred, label)
    result = metric.compute()
    assert result["mDice"] == 38.38 and result["mFscore"] == 76.76
    assert ref["returned_metrics_str"]["mFscore"] == "76.76"


def test_split_accumulators_sum_to_one() -> None:
    """Two ranks' ``total_areas`` summed (what ``reduce_`` all-reduces) equal one accumulator over all data."""
    cases = _golden()["cases"]
    pairs = _pairs(cases, "five_class_absent3") * 2
    whole, rank0, rank1 = PixelMetrics(5), PixelMetrics(5), PixelMetrics(5)
    for i, (pred, label) in enumerate(pairs):
        whole.update(pred, label)
        (rank0 if i % 2 == 0 else rank1).update(pred, label)
    rank0.total_areas += rank1.total_areas
    assert torch.equal(rank0.total_areas, whole.total_areas)
    assert rank0.compute()["mIoU"] == whole.compute()["mIoU"]


def _reduce_worker(rank: int, init_file: str, pairs: list, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        metric = PixelMetrics(5)
        for pred, label in pairs[rank::2]:
            metric.update(pred, label)
        metric.reduce_()
        if rank == 0:
            torch.save(metric.total_areas, out_file)
    finally:
        dist.destroy_process_group()


def test_reduce_across_two_gloo_ranks(tmp_path: Path) -> None:
    pairs = _pairs(_golden()["cases"], "five_class_absent3")
    whole = PixelMetrics(5)
    for pred, label in pairs:
        whole.update(pred, label)
    out = tmp_path / "areas.pt"
    mp.spawn(_reduce_worker, args=(str(tmp_path / "init"), pairs, str(out)), nprocs=2, join=True)
    assert torch.equal(torch.load(out, weights_only=True), whole.total_areas)


def test_reduce_without_process_group_is_a_no_op() -> None:
    metric = PixelMetrics(2)
    metric.update(torch.tensor([[0, 1]]), torch.tensor([[0, 0]]))
    before = metric.total_areas.clone()
    assert metric.reduce_() is metric
    assert torch.equal(metric.total_areas, before)


def test_ignore_index_and_out_of_range_values_are_not_counted() -> None:
    """Like histc(min=0, max=K-1): label 255 drops the pixel; other out-of-range values are simply not binned."""
    pred = torch.tensor([0, 1, 1, 7, 0, 1])
    label = torch.tensor([0, 1, 255, 1, 9, 255])
    inter, union, area_pred, area_label = intersect_and_union(pred, label, 2, 255)
    assert inter.tolist() == [1, 1] and area_pred.tolist() == [2, 1] and area_label.tolist() == [1, 2]
    assert union.tolist() == [2, 2]
    np_inter = intersect_and_union(pred.numpy(), label.numpy(), 2)[0]
    assert torch.equal(np_inter, inter)


def test_input_errors_are_clear() -> None:
    with pytest.raises(ValueError, match=r"pred \(2, 3\), label \(3, 2\)"):
        intersect_and_union(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), 2)
    with pytest.raises(TypeError, match="integer class indices"):
        PixelMetrics(2).update(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="class_names"):
        PixelMetrics(2, class_names=["a"])


def test_empty_accumulator_is_nan_not_an_error() -> None:
    result = PixelMetrics(2).compute()
    assert math.isnan(result["mIoU"]) and math.isnan(result["aAcc"])


# ----------------------------------------------------------------------------------------------- solaris


def _solaris(name: str) -> Path:
    return shared_file(*SOLARIS, name)


def test_geojson_pair_matches_solaris_eval_iou() -> None:
    """solaris ``Evaluator(gt).load_proposal(pred).eval_iou()``: TP 8, FP 20, FN 20, P = R = F1 = 2/7."""
    truth = read_vector_file(_solaris("gt.geojson"))
    pred = read_vector_file(_solaris("pred.geojson"), confidence_field="conf")
    assert len(truth.geometries) == 28 and len(pred.geometries) == 28
    result = polygon_f1(pred.geometries, truth.geometries, pred.confidences, iou_threshold=0.5, min_area=0)
    assert (result.tp, result.fp, result.fn) == (8, 20, 20)
    for value in (result.precision, result.recall, result.f1):
        assert value == pytest.approx(0.2857142857142857, rel=1e-12)
    assert len(result.matches) == 8 and all(m.iou > 0.5 for m in result.matches)
    assert len({m.truth for m in result.matches}) == 8


def test_geopackage_reads_the_same_as_geojson(tmp_path: Path) -> None:
    from osgeo import gdal

    gpkg = tmp_path / "gt.gpkg"
    assert gdal.VectorTranslate(str(gpkg), str(_solaris("gt.geojson")), format="GPKG") is not None
    from_gpkg, from_json = read_vector_file(gpkg), read_vector_file(_solaris("gt.geojson"))
    assert shapely.equals_exact(from_gpkg.geometries, from_json.geometries, tolerance=0).all()


def _results_rows(name: str) -> list[dict[str, str]]:
    with open(_solaris(name), newline="") as handle:
        return list(csv.DictReader(handle))


def _assert_counts(result, row: dict[str, str]) -> None:
    assert (result.tp, result.fp, result.fn) == (int(row["TruePos"]), int(row["FalsePos"]), int(row["FalseNeg"]))
    assert result.precision == pytest.approx(float(row["Precision"]), rel=1e-12, abs=1e-15)
    assert result.recall == pytest.approx(float(row["Recall"]), rel=1e-12, abs=1e-15)
    assert result.f1 == pytest.approx(float(row["F1Score"]), rel=1e-12, abs=1e-15)


def test_sn2_csv_matches_solaris_spacenet_buildings_2() -> None:
    evaluation = evaluate_spacenet_csv(_solaris("SN2_sample_preds.csv"), _solaris("SN2_sample_truth.csv"))
    vegas, khartoum = evaluation.per_aoi["AOI_2_Vegas"], evaluation.per_aoi["AOI_5_Khartoum"]
    assert (vegas.tp, vegas.fp, vegas.fn) == (35, 2, 7) and vegas.f1 == pytest.approx(0.886076, abs=1e-6)
    assert (khartoum.tp, khartoum.fp, khartoum.fn) == (52, 55, 75) and khartoum.f1 == pytest.approx(0.444444, abs=1e-6)

    # SN2_test_results.csv: solaris's groupby('AOI').sum() written without its index, so rows are in AOI order
    summary = _results_rows("SN2_test_results.csv")
    assert list(evaluation.per_aoi) == sorted(evaluation.per_aoi) and len(summary) == len(evaluation.per_aoi)
    for result, row in zip(evaluation.per_aoi.values(), summary):
        _assert_counts(result, row)

    full = _results_rows("SN2_test_results_full.csv")
    assert sorted(r["imageID"] for r in full) == sorted(evaluation.per_image)
    for row in full:
        _assert_counts(evaluation.per_image[row["imageID"]], row)
        assert aoi_from_image_id(row["imageID"]) == row["AOI"]


def test_sn2_matches_point_at_csv_rows() -> None:
    evaluation = evaluate_spacenet_csv(_solaris("SN2_sample_preds.csv"), _solaris("SN2_sample_truth.csv"))
    preds = read_spacenet_csv(_solaris("SN2_sample_preds.csv"))
    truths = read_spacenet_csv(_solaris("SN2_sample_truth.csv"))
    image = "AOI_2_Vegas_img5979"
    pred_rows = dict(zip(preds[image].rows, preds[image].geometries))
    truth_rows = dict(zip(truths[image].rows, truths[image].geometries))
    for match in evaluation.per_image[image].matches:
        a, b = pred_rows[match.proposal], truth_rows[match.truth]
        assert match.iou == pytest.approx(shapely.area(shapely.intersection(a, b)) / shapely.area(shapely.union(a, b)))
    assert len(evaluation.per_aoi["AOI_2_Vegas"].matches) == 35


def test_spacenet1_rules_on_sn2_sample() -> None:
    """The 2016 scorer has no area filter, so Khartoum's two ground-truth slivers under 20 px² become FNs."""
    evaluation = evaluate_spacenet_csv(
        _solaris("SN2_sample_preds.csv"), _solaris("SN2_sample_truth.csv"), rules="spacenet1"
    )
    khartoum = evaluation.per_aoi["AOI_5_Khartoum"]
    assert (khartoum.tp, khartoum.fp, khartoum.fn) == (52, 55, 77)


def test_spacenet1_truth_csv_reader_and_self_score() -> None:
    """SpaceNet 1 truth: empty chips are ``BuildingId -1`` rows; scored against itself every building is a TP."""
    path = shared_file("realdata", "spacenet1_AOI_0_TEST", "AOI_0_TEST", "vectorData", "summaryData",
                       "public_polygons_solution_3Band_short.csv")
    truth = read_spacenet_csv(path)
    counts = {image: len(s.geometries) for image, s in truth.items()}
    assert [counts[f"013022223130_Public_img{i}"] for i in range(1, 11)] == [0, 0, 0, 13, 12, 5, 6, 32, 28, 24]
    evaluation = evaluate_spacenet_csv(path, path, rules="spacenet1")
    total = evaluation.per_aoi["013022223130_Public"]
    assert (total.tp, total.fp, total.fn, total.f1) == (120, 0, 0, 1.0)


# ----------------------------------------------------------------------------------------------- hand-made rules


def test_iou_of_exactly_half_is_a_tp_only_for_spacenet1() -> None:
    truth, proposal = [box(0, 0, 20, 10)], [box(0, 0, 10, 10)]  # IoU = 100 / 200 = 0.5 exactly
    strict = polygon_f1(proposal, truth)
    assert (strict.tp, strict.fp, strict.fn) == (0, 1, 1)
    inclusive = polygon_f1(proposal, truth, rules="spacenet1")
    assert (inclusive.tp, inclusive.fp, inclusive.fn) == (1, 0, 0) and inclusive.matches[0].iou == 0.5


def test_confidence_order_decides_who_takes_the_ground_truth() -> None:
    truth = [box(0, 0, 10, 10)]
    good, fair = box(0, 0, 10, 9), box(0, 0, 10, 6)  # IoU 0.9 and 0.6
    by_file = polygon_f1([good, fair], truth)
    assert [m.proposal for m in by_file.matches] == [0] and (by_file.tp, by_file.fp) == (1, 1)
    by_conf = polygon_f1([good, fair], truth, confidences=[0.2, 0.8])
    assert [m.proposal for m in by_conf.matches] == [1] and by_conf.matches[0].iou == pytest.approx(0.6)
    tied = polygon_f1([fair, good], truth, confidences=[0.5, 0.5])  # stable: file order on ties
    assert [m.proposal for m in tied.matches] == [0]
    many = polygon_f1([good] * 40, truth, confidences=[0.5] * 20 + [0.9] * 20)  # numpy's quicksort would pick 39
    assert [m.proposal for m in many.matches] == [20] and (many.tp, many.fp) == (1, 39)
    with pytest.raises(ValueError, match="file order|given order"):
        polygon_f1([good], truth, confidences=[1.0], rules="spacenet1")


def test_proposal_takes_highest_iou_of_remaining_ground_truth() -> None:
    truth = [box(0, 0, 10, 10), box(2, 0, 12, 10)]
    proposal = box(2, 0, 12, 10)
    result = polygon_f1([proposal, proposal], truth)
    assert [(m.proposal, m.truth) for m in result.matches] == [(0, 1), (1, 0)]
    assert result.matches[1].iou == pytest.approx(80 / 120)


def test_invalid_proposal_is_repaired_with_buffer0_and_invalid_truth_scores_zero() -> None:
    bowtie = Polygon([(0, 0), (30, 20), (30, 0), (0, 10)])  # self-crossing; buffer(0) keeps the 200 px² lobe
    lobe = Polygon([(10, 20 / 3), (30, 20), (30, 0)])
    assert not bowtie.is_valid
    repaired = polygon_f1([bowtie], [lobe])
    assert (repaired.tp, repaired.fp, repaired.fn) == (1, 0, 0)
    assert repaired.matches[0].iou == pytest.approx(1.0)
    invalid_truth = polygon_f1([lobe], [bowtie])
    assert (invalid_truth.tp, invalid_truth.fp, invalid_truth.fn) == (0, 1, 1)


def test_min_area_keeps_truth_at_or_above_and_proposals_strictly_above() -> None:
    truth = [box(0, 0, 4, 5), box(100, 0, 103, 6)]  # 20 px² (kept), 18 px² (dropped)
    proposals = [box(50, 0, 54, 5), box(200, 0, 210, 10)]  # 20 px² (dropped), 100 px² (an FP)
    result = polygon_f1(proposals, truth, min_area=20)
    assert (result.tp, result.fp, result.fn) == (0, 1, 1)
    unfiltered = polygon_f1(proposals, truth, min_area=0)
    assert (unfiltered.tp, unfiltered.fp, unfiltered.fn) == (0, 2, 2)
    old_rules = polygon_f1(proposals, truth, rules="spacenet1")
    assert (old_rules.tp, old_rules.fp, old_rules.fn) == (0, 2, 2)


def test_empty_inputs_and_scores_without_predictions() -> None:
    none = polygon_f1([], [])
    assert (none.tp, none.fp, none.fn, none.precision, none.recall, none.f1) == (0, 0, 0, 0.0, 0.0, 0.0)
    missed = polygon_f1([], [box(0, 0, 10, 10)])
    assert (missed.fn, missed.f1) == (1, 0.0)
    with pytest.raises(TypeError, match="shapely"):
        polygon_f1(["POLYGON ((0 0, 1 0, 1 1, 0 0))"], [])
    with pytest.raises(ValueError, match="rules"):
        polygon_f1([], [], rules="spacenet3")  # type: ignore[arg-type]


def test_csv_polygon_empty_means_no_buildings(tmp_path: Path) -> None:
    truth = tmp_path / "truth.csv"
    truth.write_text(
        "ImageId,BuildingId,PolygonWKT_Pix,PolygonWKT_Geo\n"
        "AOI_9_Town_img1,-1,POLYGON EMPTY,POLYGON EMPTY\n"
        'AOI_9_Town_img2,1,"POLYGON ((0 0 0, 10 0 0, 10 10 0, 0 10 0, 0 0 0))",POLYGON EMPTY\n'
    )
    preds = tmp_path / "preds.csv"
    preds.write_text(
        "ImageId,BuildingId,PolygonWKT_Pix,Confidence\n"
        'AOI_9_Town_img1,0,"POLYGON ((0 0, 10 0, 10 10, 0 10, 0 0))",0.9\n'
        "AOI_9_Town_img2,0,POLYGON EMPTY,1\n"
    )
    evaluation = evaluate_spacenet_csv(preds, truth)
    assert (evaluation.per_image["AOI_9_Town_img1"].fp, evaluation.per_image["AOI_9_Town_img1"].fn) == (1, 0)
    assert (evaluation.per_image["AOI_9_Town_img2"].fp, evaluation.per_image["AOI_9_Town_img2"].fn) == (0, 1)
    town = evaluation.per_aoi["AOI_9_Town"]
    assert (town.tp, town.fp, town.fn, town.f1) == (0, 1, 1, 0.0)
    assert aoi_from_image_id("AOI_2_Vegas_img123") == "AOI_2_Vegas" and aoi_from_image_id("solo") == "solo"
