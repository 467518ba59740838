"""Change-detection training as MTP runs it with Open-CD 1.1.0: the LEVIR-CD/WHU-CD/CDD/OSCD layouts, the MultiImg
pipeline, the configs named as MTP's, the epoch-based schedule, F1 of "changed", and the same loop, resume and test
command as segmentation."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mtp_core.checkpoint import load_model, safe_load
from mtp_core.models import SiamEncoderDecoder
from tests.training.conftest import _write_png
from training.builder import BuildError, build_segmentor, model_card
from training.config import apply_overrides, load_config, merge
from training.data import DATASETS, SegDataPreProcessor, build_dataset, build_pipeline
from training.data.cd_transforms import MultiImgPhotoMetricDistortion, _rotate
from training.data.transforms import PhotoMetricDistortion
from training.dist import DistInfo
from training.loop import DEFAULTS, OPTIONAL_KEYS, Trainer
from training.optim import build_scheduler

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "training" / "configs"
TINY_CD = CONFIGS / "tiny" / "rvsa-tiny-unet-64-cd.py"
MTP_CD = sorted(p for d in ("levir", "whu", "cdd", "oscd") for p in (CONFIGS / "mtp" / d).glob("*.py"))


def make_pair(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grass with roofs; some roofs only in the second date. Label 255 where a roof appeared."""
    a = np.clip(rng.normal((70, 110, 60), 12, (size, size, 3)), 0, 255).astype(np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-6, 7, a.shape), 0, 255).astype(np.uint8)
    in_a, in_b = np.zeros((size, size), bool), np.zeros((size, size), bool)
    for i in range(4):
        h, w = rng.integers(8, 20, 2)
        y, x = rng.integers(0, size - h), rng.integers(0, size - w)
        roof = rng.normal((200, 190, 180), 8, (h, w, 3)).clip(0, 255).astype(np.uint8)
        b[y:y + h, x:x + w] = roof
        in_b[y:y + h, x:x + w] = True
        if i % 2:
            a[y:y + h, x:x + w] = roof
            in_a[y:y + h, x:x + w] = True
    return a, b, (in_b & ~in_a).astype(np.uint8) * 255


@pytest.fixture(scope="session")
def levir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("levir")
    rng = np.random.default_rng(1)
    for split, count, size in (("train", 6, 80), ("val", 2, 64)):
        for i in range(count):
            for sub, array in zip(("A", "B", "label"), make_pair(rng, size)):
                (root / split / sub).mkdir(parents=True, exist_ok=True)
                _write_png(array, root / split / sub / f"{i}.png")
    return root


def cd_cfg(root: Path, *options: str) -> dict:
    cfg = merge(DEFAULTS, load_config(TINY_CD))
    roots = [f"{k}.dataset.data_root={root}" for k in ("train_dataloader", "val_dataloader", "test_dataloader")]
    return apply_overrides(cfg, [*roots, *options], OPTIONAL_KEYS)


def dataset(root: Path, pipeline: list, split: str = "train", **kwargs) -> object:
    prefix = dict(img_path_from=f"{split}/A", img_path_to=f"{split}/B", seg_map_path=f"{split}/label")
    return build_dataset(dict(type="LEVIR_CD_Dataset", data_root=str(root), data_prefix=prefix, pipeline=pipeline,
                              **kwargs))


# ------------------------------------------------------------------------------------------------ data


def test_levir_layout_pairs_dates_and_binarises_labels(levir: Path) -> None:
    ds = dataset(levir, [dict(type="MultiImgLoadImageFromFile"), dict(type="MultiImgLoadAnnotations"),
                         dict(type="MultiImgPackSegInputs")])
    assert len(ds) == 6 and ds.classes == ("unchanged", "changed")
    sample = ds[0]
    assert sample["img"].shape == (6, 80, 80) and sample["img"].dtype == torch.uint8
    assert sample["meta"]["paths"] == [str(levir / "train" / "A" / "0.png"), str(levir / "train" / "B" / "0.png")]
    raw = np.asarray(__import__("osgeo.gdal").gdal.Open(str(levir / "train" / "label" / "0.png")).ReadAsArray())
    assert set(np.unique(sample["gt"].numpy())) <= {0, 1}
    assert np.array_equal(sample["gt"].numpy(), (raw >= 128).astype(np.uint8))


def test_layout_errors_name_the_files(levir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    for sub in ("A", "B", "label"):
        (broken / "train" / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    a, b, label = make_pair(rng, 32)
    _write_png(a, broken / "train" / "A" / "x.png")
    _write_png(b, broken / "train" / "B" / "y.png")
    with pytest.raises(FileNotFoundError, match="only in A"):
        dataset(broken, [])
    _write_png(b, broken / "train" / "B" / "x.png")
    (broken / "train" / "B" / "y.png").unlink()
    with pytest.raises(FileNotFoundError, match="without a label"):
        dataset(broken, [])
    assert {"LEVIR_CD_Dataset", "WHU_CD_Dataset", "SVCD_Dataset", "OSCD_RGB_CD_Dataset"} <= set(DATASETS)
    whu = build_dataset(dict(type="WHU_CD_Dataset", data_root=str(levir), pipeline=[],
                             data_prefix=dict(img_path_from="val/A", img_path_to="val/B", seg_map_path="val/label")))
    assert len(whu) == 2 and whu.samples[0][1].endswith("val/label/0.png")  # suffix '': the label of the same name


def test_rotation_is_mmcv_imrotate() -> None:
    """Clockwise about ((w-1)/2, (h-1)/2); quarter turns equal np.rot90; corners get the border value."""
    a = np.arange(7 * 7 * 3, dtype=np.uint8).reshape(7, 7, 3)
    np.testing.assert_array_equal(_rotate(a, 90.0, 0, nearest=False), np.rot90(a, -1))
    np.testing.assert_array_equal(_rotate(a[..., 0], -90.0, 255, nearest=True), np.rot90(a[..., 0], 1))
    spot = np.zeros((9, 9), np.uint8)
    spot[4, 8] = 200  # right of the centre
    turned = _rotate(spot, 45.0, 0, nearest=True)
    assert turned[4 + round(4 / math.sqrt(2)) + 0, 4 + round(4 * math.cos(math.pi / 4))] == 200  # down-right
    corners = _rotate(np.full((9, 9), 7, np.uint8), 45.0, 255, nearest=True)
    assert corners[0, 0] == corners[8, 8] == 255 and corners[4, 4] == 7


def test_geometric_steps_move_both_dates_and_the_label_together(levir: Path) -> None:
    """Date B's roofs that are changes stay under label 1 through rotation, quarter turns, flips and crops."""
    pipeline = [dict(type="MultiImgLoadImageFromFile"), dict(type="MultiImgLoadAnnotations"),
                dict(type="MultiImgRandomRotFlip", rotate_prob=0.5, flip_prob=0.5, degree=(-20, 20)),
                dict(type="MultiImgRandomCrop", crop_size=(48, 48), cat_max_ratio=0.75),
                dict(type="MultiImgPackSegInputs")]
    ds = dataset(levir, pipeline)
    agree = changed = 0
    for index in range(6):
        for seed in range(6):
            sample = ds[(index, (0, seed))]
            img, gt = sample["img"].numpy().astype(int), sample["gt"].numpy()
            assert img.shape == (6, 48, 48) and gt.shape == (48, 48)
            new_roof = (img[3] > 150) & (img[4] > 150) & ~((img[0] > 150) & (img[1] > 150))
            inner = gt == 1  # away from the borders, which resampling blurs: the label's 3x3 interior
            for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (-1, -1), (1, -1), (-1, 1)):
                inner &= np.roll(gt, (dy, dx), (0, 1)) == 1
            changed += int(inner.sum())
            agree += int((new_roof & inner).sum())
    assert changed > 1000 and agree / changed > 0.99


def test_exchange_time_swaps_the_dates_and_keeps_the_label(levir: Path) -> None:
    steps = [dict(type="MultiImgLoadImageFromFile"), dict(type="MultiImgLoadAnnotations")]
    pack = [dict(type="MultiImgPackSegInputs")]
    swapped = dataset(levir, steps + [dict(type="MultiImgExchangeTime", prob=1.0)] + pack)[(0, (0, 0))]
    kept = dataset(levir, steps + [dict(type="MultiImgExchangeTime", prob=0.0)] + pack)[(0, (0, 0))]
    assert torch.equal(swapped["img"][:3], kept["img"][3:]) and torch.equal(swapped["img"][3:], kept["img"][:3])
    assert torch.equal(swapped["gt"], kept["gt"])


def test_photometric_distortion_draws_each_date_in_turn() -> None:
    """Open-CD: date A's brightness/contrast/saturation/hue draws, then date B's, from one stream."""
    rng = np.random.default_rng(3)
    a, b = (rng.integers(0, 256, (16, 16, 3)).astype(np.uint8) for _ in range(2))
    multi = MultiImgPhotoMetricDistortion(10, (0.8, 1.2), (0.8, 1.2), 10)
    out = multi({"img": [a, b]}, np.random.default_rng(11))["img"]
    single = PhotoMetricDistortion(10, (0.8, 1.2), (0.8, 1.2), 10)
    stream = np.random.default_rng(11)
    np.testing.assert_array_equal(out[0], single.distort(a, stream))
    np.testing.assert_array_equal(out[1], single.distort(b, stream))


def test_two_date_preprocessor_normalises_each_date_and_pads_to_the_divisor(levir: Path) -> None:
    pack = build_pipeline([dict(type="MultiImgPackSegInputs")])
    img = [np.full((40, 50, 3), (10, 20, 30), np.uint8), np.full((40, 50, 3), (40, 50, 60), np.uint8)]
    sample = pack({"img": img, "gt_seg_map": np.ones((40, 50), np.uint8), "img_path": ["a", "b"],
                   "ori_shape": (40, 50)}, None)
    mean, std = [1.0, 2.0, 3.0] * 2, [2.0, 2.0, 2.0] * 2
    imgs, gts = SegDataPreProcessor(mean, std, size_divisor=32)([sample], "cpu")
    assert imgs.shape == (1, 6, 64, 64) and gts.shape == (1, 64, 64)
    assert imgs[0, :, 0, 0].tolist() == [4.5, 9.0, 13.5, 19.5, 24.0, 28.5] and imgs[0, 0, 50, 50] == 0
    assert gts[0, 0, 0] == 1 and gts[0, 63, 63] == 255
    bgr, _ = SegDataPreProcessor(mean, std, bgr_to_rgb=False)([sample], "cpu")
    assert bgr[0, :, 0, 0].tolist() == [14.5, 9.0, 3.5, 29.5, 24.0, 18.5]  # each date reversed on its own
    with pytest.raises(ValueError, match="6 channels"):
        SegDataPreProcessor([1.0, 2.0, 3.0], [1.0, 1.0, 1.0])([sample], "cpu")


# ------------------------------------------------------------------------------------------------ configs


def test_the_sixteen_mtp_change_detection_configs() -> None:
    names = {p.name for p in MTP_CD}
    for ds in ("levir", "whu", "cdd"):
        assert {f"rvsa-{s}-unet-256-mae{m}_{ds}.py" for s in "bl" for m in ("", "-mtp")} <= names
    assert {f"rvsa-{s}-unet-96-mae{m}_oscd_rgb.py" for s in "bl" for m in ("", "-mtp")} <= names
    assert len(MTP_CD) == 16


@pytest.mark.parametrize("path", MTP_CD, ids=lambda p: p.stem)
def test_mtp_change_configs_have_the_original_values(path: Path) -> None:
    cfg = load_config(path)
    large, oscd = "rvsa-l" in path.name, "oscd" in path.name
    with torch.device("meta"):
        spec = build_segmentor(cfg["model"])
    model = spec.model
    assert isinstance(model, SiamEncoderDecoder) and not model.backbone.apply_fpn
    assert model.backbone.img_size == (224 if oscd else 256) and model.neck.policy == "abs_diff"
    assert (model.backbone.embed_dim, len(model.backbone.blocks)) == ((1024, 24) if large else (768, 12))
    assert [b.conv2[0].out_channels for b in model.decode_head.blocks] == [512, 256, 128, 64]
    assert model.decode_head.num_classes == 2 and spec.sync_bn and spec.test_mode == "whole"
    assert ("mae-mtp" in path.name) == ("pretrn_model_encoder" in spec.pretrained)
    assert cfg["optim_wrapper"]["paramwise_cfg"] == dict(num_layers=24 if large else 12, layer_decay_rate=0.9)
    assert cfg["train_dataloader"]["batch_size"] == 4 and cfg["train_cfg"]["type"] == "EpochBasedTrainLoop"
    epochs = 100 if oscd else 150 if "levir" in path.name else 200
    assert cfg["train_cfg"]["max_epochs"] == epochs and cfg["param_scheduler"][1]["T_max"] == epochs - 5
    dataset_type = {"levir": "LEVIR_CD_Dataset", "whu": "WHU_CD_Dataset", "cdd": "SVCD_Dataset",
                    "oscd": "OSCD_RGB_CD_Dataset"}[path.parent.name]
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        assert cfg[loader]["dataset"]["type"] == dataset_type
    if oscd:
        assert cfg["train_dataloader"]["dataset"]["pipeline"][1] == dict(type="MultiImgResize", scale=(224, 224),
                                                                           keep_ratio=True)
        assert cfg["val_dataloader"]["dataset"]["data_prefix"]["img_path_from"] == "test/A"
    card = model_card(spec, cfg["model"]["data_preprocessor"], ("unchanged", "changed"))
    assert card.architecture == "mtp_rvsa_unet_cd" and len(card.mean) == 3 and card.overlap == card.tile // 4


def test_unsupported_change_detector_settings_are_explained() -> None:
    cfg = load_config(TINY_CD)["model"]
    with pytest.raises(BuildError, match="attention_type"):
        build_segmentor({**cfg, "decode_head": {**cfg["decode_head"], "attention_type": "scse"}})
    with pytest.raises(BuildError, match="n_blocks=3"):
        build_segmentor({**cfg, "decode_head": {**cfg["decode_head"], "n_blocks": 3}})
    with pytest.raises(BuildError, match="FeatureFusionNeck"):
        build_segmentor({**cfg, "neck": None})


# ------------------------------------------------------------------------------------------------ schedule


def mmengine_epoch_schedule(base: float, ipe: int, epochs: int) -> list[float]:
    """MMEngine's chained recursion, stepped as its runner steps: LinearLR (converted to iterations) after every
    iteration, CosineAnnealingLR (by epoch) after every epoch."""
    warm_iters, t_max = 5 * ipe, epochs - 5
    lr, rates = base * 1e-6, []
    for it in range(epochs * ipe):
        rates.append(lr)
        step = it + 1
        if step < warm_iters:  # LinearLR: factor ratio recursion
            prev = 1e-6 + (1 - 1e-6) * (step - 1) / (warm_iters - 1)
            lr = lr * (1e-6 + (1 - 1e-6) * step / (warm_iters - 1)) / prev
        if step % ipe == 0 and step // ipe > 5:  # cosine, its own step = epochs since it began
            k = step // ipe - 5
            lr = (1 + math.cos(math.pi * k / t_max)) / (1 + math.cos(math.pi * (k - 1) / t_max)) * lr
        elif step % ipe == 0 and step // ipe == 5:
            lr = base  # the warm-up reached its end factor 1: the cosine starts from the base rate
    return rates


def test_epoch_based_schedule_equals_mmengines_stepping() -> None:
    ipe, epochs = 7, 20
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=6e-5)
    cfg = [dict(type="LinearLR", start_factor=1e-6, by_epoch=True, begin=0, end=5, convert_to_iter_based=True),
           dict(type="CosineAnnealingLR", T_max=epochs - 5, by_epoch=True, begin=5, end=epochs)]
    scheduler = build_scheduler(optimizer, cfg, epochs * ipe, iters_per_epoch=ipe)
    ours = [scheduler.lr_at(t, 6e-5) for t in range(epochs * ipe)]
    np.testing.assert_allclose(ours, mmengine_epoch_schedule(6e-5, ipe, epochs), rtol=1e-9, atol=1e-18)
    assert ours[5 * ipe + 3] == ours[5 * ipe] == pytest.approx(6e-5)  # constant within an epoch
    with pytest.raises(ValueError, match="EpochBasedTrainLoop"):
        build_scheduler(optimizer, cfg, 100)


# ------------------------------------------------------------------------------------------------ loop


def test_train_resume_and_test_a_change_detector(levir: Path, tmp_path: Path) -> None:
    """Epochs become iterations (6 pairs / batch 2 = 3 per epoch, 4 epochs), validation every 2 epochs reports the F1
    of "changed", a resumed run ends where the uninterrupted one does, and mtp-test reads the checkpoint."""
    trainer = Trainer(cd_cfg(levir), tmp_path / "full", DistInfo())
    (tmp_path / "full").mkdir()
    assert trainer.iters_per_epoch == 3 and trainer.max_iters == 12
    assert trainer.run() == 0
    log = [json.loads(line) for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    val = [r for r in log if r["mode"] == "val"]
    assert [r["iter"] for r in val] == [6, 12] and {"changed_f1", "changed_iou"} <= set(val[0])
    assert sorted(p.name for p in (tmp_path / "full").glob("iter_*.pth")) == ["iter_12.pth", "iter_6.pth"]
    reference = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    work = tmp_path / "resumed"
    work.mkdir()
    first = Trainer(cd_cfg(levir, "train_cfg.max_epochs=2"), work, DistInfo())
    assert first.run() == 0
    resumed = Trainer(cd_cfg(levir), work, DistInfo())
    assert resumed.run(resume=True) == 0 and resumed.iteration == 12
    for key, value in resumed.model.state_dict().items():
        assert torch.equal(value, reference[key]), key

    model, card, report = load_model(tmp_path / "full" / "iter_12.pth")
    assert isinstance(model, SiamEncoderDecoder) and card.classes == ("unchanged", "changed") and not report.missing
    run = subprocess.run([sys.executable, "-m", "training.test", str(TINY_CD), str(tmp_path / "full" / "iter_12.pth"),
                          "--work-dir", str(tmp_path / "test"), "--cfg-options",
                          f"test_dataloader.dataset.data_root={levir}"],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "changed: F1" in run.stdout
    results = json.loads(next((tmp_path / "test").glob("results_*.json")).read_text())
    assert 0 <= results["changed_f1"] <= 100 and results["classes"] == ["unchanged", "changed"]


def test_two_processes_train_the_change_detector_as_one(levir: Path, tmp_path: Path) -> None:
    """torchrun with 2 processes (gloo, SyncBN, the unused fpn/norm of the CD backbone) gives the weights of one
    process with the same global batch."""
    from tests.training.test_train_loop import _env, _free_port

    def cmd(work: Path, launcher: str, batch: int) -> list[str]:
        return ["-m", "training.train", str(TINY_CD), "--work-dir", str(work), "--launcher", launcher,
                "--cfg-options", f"train_dataloader.dataset.data_root={levir}", f"train_dataloader.batch_size={batch}",
                "train_cfg.max_epochs=1", "val_dataloader=None", "model.backbone.drop_path_rate=0.0",
                "model.decode_head.dropout_ratio=0.0",
                "optim_wrapper.optimizer={'type': 'SGD', 'lr': 0.01, 'momentum': 0.9, 'weight_decay': 0.0}"]

    single = subprocess.run([sys.executable, *cmd(tmp_path / "one", "none", 2)], env=_env(), capture_output=True,
                            text=True, cwd=REPO, timeout=300)
    assert single.returncode == 0, single.stdout + single.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          f"--master_port={_free_port()}", *cmd(tmp_path / "two", "pytorch", 1)], env=_env(),
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert two.returncode == 0, two.stdout + two.stderr
    reference = safe_load(tmp_path / "one" / "iter_3.pth")["state_dict"]
    weights = safe_load(tmp_path / "two" / "iter_3.pth")["state_dict"]
    for key, value in reference.items():
        if value.is_floating_point():
            torch.testing.assert_close(weights[key], value, rtol=1e-4, atol=1e-5, msg=key)
