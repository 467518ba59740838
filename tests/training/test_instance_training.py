"""Training a segmentor with instances with the fine-tuning CLI: SpaceNet / COCO / synthetic instance data, the
step, checkpoints and bit-exact resume, the test metrics, and the whole chain a new user runs (a multi-task
pretraining file converted, fine-tuned, a touching scene predicted, a roof in the row clicked)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import shapely
import torch

from mtp_core.checkpoint import load_model, load_weights, safe_load
from mtp_core.cli import main as mtp
from mtp_core.click_instances import segmenter_for
from mtp_core.inference import InstancePredictor, Predictor
from mtp_core.io import read_vector
from mtp_core.models import InstanceSegmentor
from mtp_tools.samrs import synthetic_images, write_samrs
from mtp_tools.synthetic import write_scene
from mtp_tools.synthetic.touching import render_touching_scene
from tests.conftest import SHARED
from tests.training.test_preemption import _assert_same_weights
from tests.training.test_train_loop import REPO
from training.config import load_config
from training.data.spacenet_instances import build_dataset, build_pipeline
from training.instances import build_instance_segmentor
from training.test import main as mtp_test
from training.train import main as train_main

CONFIG = REPO / "training" / "configs" / "tiny" / "rvsa-tiny-upernet-maskrcnn-64.py"
PRETRAIN = REPO / "training" / "configs" / "tiny" / "pretrain-tiny-64-ss-is.py"
CHIPS = SHARED / "realdata" / "spacenet1_AOI_0_TEST" / "AOI_0_TEST"
LOSSES = {"decode.loss_ce", "loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask"}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """Touching synthetic scenes in SpaceNet's layout (one polygon per house), as ``mtp synth --touching``."""
    root = tmp_path_factory.mktemp("instance_scenes")
    for split, seeds in (("train", (1, 2, 3)), ("val", (7,))):
        for i, seed in enumerate(seeds, 1):
            scene = render_touching_scene(96, 96, seed, 0.6)
            write_scene(scene, root / split / "3band" / f"3band_s_img{i}.tif",
                        root / split / "vectorData" / "geoJson" / f"s_img{i}_Geo.geojson")
    return root


def _options(scenes: Path, *extra: str) -> list[str]:
    return ["--cfg-options", f"train_dataloader.dataset.data_root={scenes / 'train'}",
            f"val_dataloader.dataset.data_root={scenes / 'val'}", *extra]


def test_spacenet_chips_give_one_instance_per_polygon_part():
    pipeline = [dict(type="MTP_LoadImageFromFile"), dict(type="LoadGeoJSONInstances"), dict(type="MTP_PackInputs")]
    dataset = build_dataset(dict(type="SpaceNetInstanceDataset", data_root=str(CHIPS), nodata=0, pipeline=pipeline))
    by_chip = {Path(dataset.samples[i][0]).stem.split("_")[-1]: dataset[i] for i in range(len(dataset))}
    assert len(by_chip["img1"]["masks"]) == 0 and by_chip["img1"]["sem_seg"].max() == 255  # empty chip, nodata
    sample = by_chip["img9"]  # 27 features, one a MultiPolygon of 2 parts, one part too small to hold a pixel centre
    assert len(sample["masks"]) == 27 and set(sample["labels"].tolist()) == {0}
    union = sample["masks"].any(0).numpy()
    sem = sample["sem_seg"].numpy()
    assert np.array_equal(union, sem == 1) and (sem == 255).any()
    boxes = sample["bboxes"].numpy()
    ys, xs = np.nonzero(sample["masks"][0].numpy())
    assert boxes[0].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_the_demo_and_rio_configs_bring_their_images_to_the_demo_models_025_m(tmp_path):
    """The demo instance model works at 0.25 m (its card): its second- and third-stage configs and the Rio fine-tune
    resample the 0.5 m images 2x, the labels with them (nearest: every polygon part still one instance)."""
    demo = REPO / "training" / "configs" / "demo"
    x2 = load_config(demo / "rvsa-tiny-upernet-maskrcnn-256-synthetic-x2.py")
    rio = load_config(demo / "rvsa-tiny-upernet-maskrcnn-256-spacenet-rio.py")
    assert x2["model_card"]["gsd_m"] == rio["model_card"]["gsd_m"] == 0.25
    assert x2["load_from"] == "work_dirs/demo_instances_0.5m.pth"
    more = load_config(demo / "rvsa-tiny-upernet-maskrcnn-256-synthetic-x2-more.py")  # the third stage
    assert more["model_card"] == x2["model_card"] and more["load_from"] == "work_dirs/demo_instances_x2.pth"
    assert more["train_dataloader"]["dataset"]["data_root"] == "data/instances/train_more"
    assert more["train_dataloader"]["dataset"]["pipeline"] == x2["train_dataloader"]["dataset"]["pipeline"]
    assert rio["load_from"] == "mtp_core/weights/mtp_demo_instances.pth"
    scene = render_touching_scene(512, 512, 7, 0.5)  # the size of the demo's scenes
    write_scene(scene, tmp_path / "3band" / "3band_s_img1.tif",
                tmp_path / "vectorData" / "geoJson" / "s_img1_Geo.geojson")
    synthetic = build_dataset({**x2["val_dataloader"]["dataset"], "data_root": str(tmp_path)})[0]
    assert tuple(synthetic["img"].shape[1:]) == (1024, 1024)
    assert len(synthetic["masks"]) == len(scene.buildings)
    chips = build_dataset({**rio["val_dataloader"]["dataset"], "data_root": str(CHIPS), "split_file": None})
    by_chip = {Path(chips.samples[i][0]).stem.split("_")[-1]: chips[i] for i in range(len(chips))}
    chip = by_chip["img9"]
    assert tuple(chip["img"].shape[1:]) == (812, 878) and len(chip["masks"]) == 27
    assert tuple(chip["sem_seg"].shape) == (812, 878)
    train = build_dataset({**rio["train_dataloader"]["dataset"], "data_root": str(CHIPS), "split_file": None})
    crop = train.pipeline(train.data_info(0), np.random.default_rng(0))
    assert tuple(crop["img"].shape[1:]) == (256, 256)


def test_a_multipolygon_is_one_instance_per_part(tmp_path):
    from mtp_core.io import write_vector
    from training.data.spacenet_instances import rasterize_instances
    from training.data.transforms import Georef

    parts = shapely.MultiPolygon([shapely.box(0, -4, 4, 0), shapely.box(6, -4, 9, 0)])
    write_vector(tmp_path / "labels.geojson", [parts, shapely.box(0, -9, 9, -6)], {"id": [1, 2]}, "EPSG:32633")
    ids = rasterize_instances(str(tmp_path / "labels.geojson"), (10, 10), Georef((0, 1, 0, 0, 0, -1), ""))
    assert [int((ids == k).sum()) for k in (1, 2, 3)] == [16, 12, 27]


def test_id_map_pipeline_equals_the_mask_stack_pipeline(scenes):
    cfg = load_config(CONFIG)
    steps = [dict(s) for s in cfg["train_pipeline"]]
    dataset = build_dataset({**cfg["train_dataloader"]["dataset"], "data_root": str(scenes / "train")})
    stack = build_pipeline([dict(type="LoadGeoJSONInstances") if s["type"] == "LoadGeoJSONInstances" else s
                            for s in steps if s["type"] != "InstancesFromIds"])
    for i in range(len(dataset)):
        a = dataset.pipeline(dataset.data_info(i), np.random.default_rng(i))
        b = stack(dataset.data_info(i), np.random.default_rng(i))
        for key in ("img", "bboxes", "labels", "masks", "sem_seg"):
            assert torch.equal(a[key], b[key]), key


def test_coco_instances_paint_the_semantic_label_as_samrs_does(tmp_path):
    root = tmp_path / "coco"
    write_samrs(root, synthetic_images(2, 64, seed=3))
    steps = [dict(type="MTP_LoadImageFromFile"), dict(type="MTP_LoadAnnotations"), dict(type="SemanticFromInstances"),
             dict(type="MTP_PackInputs")]
    coco = build_dataset(dict(type="CocoInstanceDataset", data_root=str(root), ann_file="instances.json",
                              pipeline=steps))
    samrs = build_dataset(dict(type="CocoInstanceDataset", data_root=str(root), ann_file="instances.json",
                               seg_prefix="gray", pipeline=steps))
    for i in range(2):
        assert len(coco[i]["masks"]) > 0 and torch.equal(coco[i]["sem_seg"], samrs[i]["sem_seg"])


def test_training_logs_every_term_and_resumes_bit_for_bit(scenes, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train_main([str(CONFIG), "--work-dir", str(straight), *_options(scenes, "train_cfg.val_interval=0")]) == 0
    records = [json.loads(line) for line in (straight / "log.jsonl").read_text().splitlines()]
    assert LOSSES <= set(records[0]) and all(np.isfinite(r["loss"]) for r in records if "loss" in r)
    ckpt = safe_load(straight / "iter_6.pth")
    card = ckpt["meta"]["model_card"]
    assert card["architecture"] == "mtp_rvsa_upernet_maskrcnn" and card["classes"] == ["background", "building"]
    assert card["arch_args"]["instance_decoder"] == {"channels": 16, "fc_out_channels": 64, "anchor_scale": 4}
    model, _, report = load_model(straight / "iter_6.pth")
    assert isinstance(model, InstanceSegmentor) and not report.missing
    resumed.mkdir()
    assert train_main([str(CONFIG), "--work-dir", str(resumed), "--resume", str(straight / "iter_3.pth"),
                       *_options(scenes, "train_cfg.val_interval=0")]) == 0
    _assert_same_weights(straight / "iter_6.pth", resumed / "iter_6.pth")


def test_from_pretraining_to_a_click_in_the_row(scenes, tmp_path, capsys):
    """Acceptance, as a new user: multi-task pretraining -> convert-ckpt -> fine-tune -> test -> predict -> click."""
    from training.pretrain import main as pretrain_main

    sets = tmp_path / "sets"
    write_samrs(sets / "synth", synthetic_images(4, 96, seed=0))
    write_samrs(sets / "real", synthetic_images(4, 96, seed=9))
    pre = tmp_path / "pretrain"
    assert pretrain_main([str(PRETRAIN), "--work-dir", str(pre), "--cfg-options", "end_iter=2", "interval=2",
                          f"data.synth.data_root={sets / 'synth'}", f"data.real.data_root={sets / 'real'}"]) == 0
    converted = tmp_path / "converted.pth"
    assert mtp(["convert-ckpt", str(pre / "last_vit_tiny_rvsa_ss_is_pretrn_model.pth"), str(converted),
                "--reuse-decoder", "semseg+insseg", "--dataset", "synth"]) == 0
    out = capsys.readouterr().out
    assert "neck, rpn_head and roi_head from MTP's pretrained instance decoder" in out and "missing" not in out
    model = build_instance_segmentor(load_config(CONFIG)["model"]).model
    report = load_weights(model, converted)
    assert not report.missing and not report.reinitialized  # the instance config takes every converted tensor
    work = tmp_path / "finetune"
    assert train_main([str(CONFIG), "--work-dir", str(work), *_options(scenes, f"load_from={converted}")]) == 0
    val = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines() if '"val"' in line]
    assert val[-1]["iter"] == 6 and {"mIoU", "semantic_f1", "instance_f1", "segm_mAP", "segm_mAP_50"} <= set(val[-1])

    assert mtp_test([str(CONFIG), str(work / "iter_6.pth"), "--work-dir", str(work), "--show-dir", str(work / "show"),
                      "--cfg-options", f"test_dataloader.dataset.data_root={scenes / 'val'}"]) == 0
    line = capsys.readouterr().out
    assert "polygon F1: semantic-only" in line and "instances" in line and "mask AP" in line
    assert (work / "show" / "3band_s_img1_instances.png").is_file()

    scene = render_touching_scene(128, 128, 11, 0.6)
    tif, _ = write_scene(scene, tmp_path / "row.tif", tmp_path / "row.geojson")
    assert mtp(["predict", str(tif), "--checkpoint", str(work / "iter_6.pth"), "--out", str(tmp_path / "out"),
                "--device", "cpu", "--min-area", "1"]) == 0
    assert "instances (one polygon per building)" in capsys.readouterr().out
    geoms, attrs, _ = read_vector(tmp_path / "out" / "row_buildings.gpkg")
    assert len(geoms) == len(attrs["score"]) and all(0 <= s <= 1 for s in attrs["score"])
    predictor = Predictor.from_checkpoint(work / "iter_6.pth", device="cpu")
    assert isinstance(predictor, InstancePredictor)
    segmenter = segmenter_for(predictor, tif, min_area_m2=1.0)
    x, y = shapely.get_coordinates(shapely.point_on_surface(geoms[0]))[0] if geoms else (500010.0, 4499990.0)
    click = segmenter.segment_at(x, y)
    assert click.status in ("building", "background", "small")
    if click.found:  # the building under the click is the job's polygon there
        job = next(g for g in geoms if g.contains(shapely.Point(x, y)))
        assert shapely.area(shapely.intersection(job, click.geometry)) / shapely.area(job) > 0.95
