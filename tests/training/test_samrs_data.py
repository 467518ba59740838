"""SAMRS data for multi-task pretraining: the reader (MTP's parse rules, RLE, the +1 semantic wrap), MTP's
augmentations on boxes, masks and labels, the redraw, the preprocessor's padding quirks, the zipped loaders, and the
fixtures made from the SpaceNet chips and from ``mtp synth``."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from mtp_core.cli import main as mtp_main
from mtp_tools.samrs import LabelledImage, encode_mask, spacenet_images, synthetic_images, write_samrs
from tests.conftest import SHARED
from training.data.instance_transforms import (
    FilterInstances,
    InstanceRandomCrop,
    InstanceRandomFlip,
    InstanceResize,
    flip_boxes,
    masks_to_boxes,
    mtp_pipelines,
    shift_semantic_label,
)
from training.data.multitask_preprocess import MultiTaskDataPreprocessor
from training.data.samrs import SAMRSDataset
from training.data.transforms import Transform
from training.data.zipped import ZippedBatchSampler, distributed_indices, epoch_iterations


def rectangles(size: int, boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    """Instance ids 1..n of axis-aligned rectangles ``(x1, y1, x2, y2)`` (later ones win)."""
    labels = np.zeros((size, size), np.int32)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        labels[y1:y2, x1:x2] = i + 1
    return labels


@pytest.fixture(scope="module")
def boxes_set(tmp_path_factory) -> Path:
    """Two 64 px images: two classes of rectangles (background 255 in the gray PNG)."""
    root = tmp_path_factory.mktemp("samrs_boxes")
    rng = np.random.default_rng(0)
    images = [
        LabelledImage("a", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8),
                      rectangles(64, [(4, 6, 20, 30), (30, 30, 60, 50)]), [0, 1]),
        LabelledImage("b", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8),
                      rectangles(64, [(10, 10, 40, 20)]), [1]),
    ]
    write_samrs(root, images, classes=("roof", "pool"))
    return root


def test_semantic_label_wrap_and_the_written_set(boxes_set: Path) -> None:
    assert shift_semantic_label(np.array([255, 0, 17], np.uint8)).tolist() == [0, 1, 18]
    _, valid = mtp_pipelines(64)
    dataset = SAMRSDataset(str(boxes_set), "instances.json", valid)
    sample = dataset[0]
    seg = sample["sem_seg"].numpy()
    assert dataset.classes == ("roof", "pool") and set(np.unique(seg)) == {0, 1, 2}  # background 0, class i as i+1
    assert (seg[6:30, 4:20] == 1).all() and (seg[30:50, 30:60] == 2).all()
    np.testing.assert_array_equal(sample["bboxes"].numpy(), [[4, 6, 20, 30], [30, 30, 60, 50]])
    assert sample["labels"].tolist() == [0, 1] and sample["masks"].shape == (2, 64, 64)
    without = SAMRSDataset(str(boxes_set), "instances.json", valid, background=False)[0]["sem_seg"].numpy()
    assert set(np.unique(without)) == {255, 0, 1}  # SAMRS's own ids, 255 ignored


def test_reader_follows_mtps_parse_rules(tmp_path: Path) -> None:
    """ignore, outside, no area, under a pixel, other category: dropped; crowd: loaded, left out when packed;
    polygons and uncompressed RLE decode too; labels number the classes in the file's category order."""
    write_samrs(tmp_path, [LabelledImage("x", np.zeros((32, 32, 3), np.uint8), rectangles(32, [(2, 2, 10, 10)]),
                                         [1])], classes=("a", "b"))
    coco = json.loads((tmp_path / "instances.json").read_text())
    coco["categories"].append({"id": 7, "name": "c"})
    square = np.zeros((32, 32), np.uint8)
    square[20:30, 20:30] = 1
    runs = [int(v) for v in _runs(square)]
    base = dict(image_id=0, iscrowd=0, area=100.0, bbox=[20.0, 20.0, 10.0, 10.0])
    coco["annotations"] += [
        dict(base, id=10, category_id=0, segmentation=[[12, 12, 18, 12, 18, 18, 12, 18]], bbox=[12, 12, 6, 6]),
        dict(base, id=11, category_id=0, segmentation={"size": [32, 32], "counts": runs}),
        dict(base, id=12, category_id=1, segmentation=encode_mask(square), iscrowd=1),
        dict(base, id=13, category_id=0, segmentation=encode_mask(square), ignore=True),
        dict(base, id=14, category_id=0, segmentation=encode_mask(square), bbox=[40.0, 40.0, 5.0, 5.0]),
        dict(base, id=15, category_id=0, segmentation=encode_mask(square), area=0.0),
        dict(base, id=16, category_id=0, segmentation=encode_mask(square), bbox=[1.0, 1.0, 0.5, 8.0]),
        dict(base, id=17, category_id=7, segmentation=encode_mask(square)),
    ]
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    _, valid = mtp_pipelines(32)
    dataset = SAMRSDataset(str(tmp_path), "instances.json", valid, classes=["a", "b"])
    info = dataset.data_info(0)
    assert [i["bbox_label"] for i in info["instances"]] == [1, 0, 0, 1]
    assert [i["ignore_flag"] for i in info["instances"]] == [0, 0, 0, 1]
    sample = dataset[0]
    assert sample["labels"].tolist() == [1, 0, 0]  # the crowd instance is not a training target
    masks = sample["masks"].numpy().astype(bool)
    assert masks[0][2:10, 2:10].all() and masks[0].sum() == 64
    assert masks[1][12:18, 12:18].all()  # the polygon
    np.testing.assert_array_equal(masks[2], square.astype(bool))  # uncompressed RLE


def _runs(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts (column-major runs, starting with zeros)."""
    flat = mask.flatten(order="F")
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return np.diff(np.concatenate([[0], edges])).tolist()


def test_bad_sets_are_one_clear_line(boxes_set: Path, tmp_path: Path) -> None:
    train, _ = mtp_pipelines(64)
    with pytest.raises(ValueError, match="another order than the classes"):
        SAMRSDataset(str(boxes_set), "instances.json", train, classes=["pool", "roof"])
    with pytest.raises(ValueError, match="not a SAMRS subset"):
        SAMRSDataset(str(boxes_set), "instances.json", train, classes="dota")
    with pytest.raises(ValueError, match="none of the classes"):
        SAMRSDataset(str(boxes_set), "instances.json", train, classes="sota")
    with pytest.raises(FileNotFoundError, match="instance annotation file not found"):
        SAMRSDataset(str(boxes_set), "missing.json", train)
    coco = json.loads((boxes_set / "instances.json").read_text())
    coco["images"][1]["file_name"] = "gone.png"
    (tmp_path / "images").mkdir()
    (tmp_path / "bad.json").write_text(json.dumps(coco))
    with pytest.raises(FileNotFoundError, match="2 image"):
        SAMRSDataset(str(tmp_path), "bad.json", train)


def _results(size: int, boxes: list[tuple[int, int, int, int]]) -> dict:
    labels = rectangles(size, boxes)
    masks = np.stack([(labels == i + 1) for i in range(len(boxes))] or [labels[:0]]).astype(np.uint8)
    masks = masks.reshape(len(boxes), size, size)
    seg = np.where(labels > 0, 1, 0).astype(np.uint8)
    img = np.zeros((size, size, 3), np.uint8)
    img[..., 0] = np.arange(size)[None]
    return {"img": img, "gt_bboxes": np.array(boxes, np.float32).reshape(-1, 4),
            "gt_bboxes_labels": np.arange(len(boxes)), "gt_masks": masks, "gt_ignore_flags": np.zeros(len(boxes), bool),
            "gt_seg_map": seg, "img_shape": (size, size), "ori_shape": (size, size)}


@pytest.mark.parametrize("direction", ["horizontal", "vertical", "diagonal"])
def test_flips_move_boxes_masks_and_labels_together(direction: str) -> None:
    results = _results(32, [(2, 3, 9, 20), (15, 0, 32, 6)])
    flip = InstanceRandomFlip(prob=1.0, direction=direction)
    out = flip(dict(results), np.random.default_rng(0))
    assert out["flip_direction"] == direction
    np.testing.assert_array_equal(out["gt_bboxes"], flip_boxes(results["gt_bboxes"], (32, 32), direction))
    np.testing.assert_array_equal(masks_to_boxes(out["gt_masks"]), out["gt_bboxes"])  # boxes stay tight
    np.testing.assert_array_equal(out["gt_seg_map"], out["gt_masks"].max(axis=0))


def test_resize_keeps_the_ratio_and_scales_everything() -> None:
    results = _results(40, [(4, 8, 20, 24)])
    results["img"] = np.zeros((40, 80, 3), np.uint8)
    results["gt_masks"] = np.pad(results["gt_masks"], ((0, 0), (0, 0), (0, 40)))
    results["gt_seg_map"] = np.pad(results["gt_seg_map"], ((0, 0), (0, 40)))
    out = InstanceResize(32, keep_ratio=True)(results, None)  # long side 80 -> 32: factor 0.4
    assert out["img"].shape == (16, 32, 3) and out["img_shape"] == (16, 32) and out["scale_factor"] == (0.4, 0.4)
    np.testing.assert_allclose(out["gt_bboxes"], [[1.6, 3.2, 8.0, 9.6]], rtol=1e-6)
    assert out["gt_masks"].shape == (1, 16, 32) and out["gt_seg_map"].shape == (16, 32)
    np.testing.assert_array_equal(out["gt_seg_map"], out["gt_masks"][0])


def test_crop_clips_drops_and_recomputes_boxes_from_masks() -> None:
    """Rectangle 0 half in the window: clipped and recomputed from its mask; rectangle 1 outside: dropped; the
    label is cropped with the image (offsets drawn height first)."""
    results = _results(64, [(20, 2, 40, 30), (50, 50, 60, 60)])
    rng = np.random.default_rng(3)
    first = np.random.default_rng(3)
    oy, ox = int(first.integers(0, 33)), int(first.integers(0, 33))
    out = InstanceRandomCrop(32, allow_negative_crop=True, recompute_bbox=True)(results, rng)
    window = rectangles(64, [(20, 2, 40, 30), (50, 50, 60, 60)])[oy:oy + 32, ox:ox + 32]
    kept = [k for k in (1, 2) if (window == k).any()]
    assert out["img"].shape == (32, 32, 3) and int(out["img"][0, 0, 0]) == ox
    assert out["gt_bboxes_labels"].tolist() == [k - 1 for k in kept]
    np.testing.assert_array_equal(out["gt_masks"], np.stack([(window == k) for k in kept]).astype(np.uint8))
    np.testing.assert_array_equal(out["gt_bboxes"], masks_to_boxes(out["gt_masks"]))
    np.testing.assert_array_equal(out["gt_seg_map"], (window > 0).astype(np.uint8))
    empty = InstanceRandomCrop(8, allow_negative_crop=False)(_results(64, [(60, 60, 64, 64)]),
                                                             np.random.default_rng(0))
    assert empty is None  # a window without any box is refused unless negative crops are allowed


def test_filter_and_the_redraw(boxes_set: Path) -> None:
    results = _results(16, [(2, 2, 2, 9)])  # zero width
    assert FilterInstances((1e-5, 1e-5), by_mask=True)(dict(results), None) is None
    empty = _results(16, [])
    assert FilterInstances((1e-5, 1e-5), by_mask=True)(empty, None) is empty  # no instance at all: kept

    class DropFirst(Transform):
        def __call__(self, results: dict, rng) -> dict | None:
            return None if results["sample_idx"] == 0 else results

    train, _ = mtp_pipelines(64)
    dataset = SAMRSDataset(str(boxes_set), "instances.json", [train[0], train[1], DropFirst(), train[-1]])
    first, again = dataset[(0, (1, 2))], dataset[(0, (1, 2))]
    assert first["meta"]["sample_idx"] == 1  # image 0 is always dropped: another one is drawn from the sample's rng
    assert torch.equal(first["img"], again["img"])
    with pytest.raises(ValueError, match="dropped"):
        SAMRSDataset(str(boxes_set), "instances.json", [train[0], DropFirst()], test_mode=True)[0]


def test_training_samples_are_a_function_of_their_seed(boxes_set: Path) -> None:
    train, _ = mtp_pipelines(64)
    dataset = SAMRSDataset(str(boxes_set), "instances.json", train)
    a, b = dataset[(0, (5, 1))], dataset[(0, (5, 1))]
    assert all(torch.equal(a[k], b[k]) for k in ("img", "bboxes", "masks", "sem_seg"))
    shapes = {tuple(dataset[(0, (5, i))]["img"].shape) for i in range(8)}
    assert len(shapes) > 1 and all(max(s[1:]) <= 64 for s in shapes)  # random resize, crop to 64 at most


def test_preprocessor_pads_as_the_original() -> None:
    """/32 per image (pad_shape) and per batch; masks 0, labels 255; a batch under S padded to S, its pad_shape S;
    the label padded to S, or (faithful) left at the batch size, as the original's BatchFixedSizePad does."""
    samples = []
    for h, w in ((40, 50), (70, 33)):
        samples.append({"img": torch.full((3, h, w), 200, dtype=torch.uint8),
                        "bboxes": torch.tensor([[1.0, 2.0, 5.0, 6.0]]), "labels": torch.tensor([0]),
                        "masks": torch.ones(1, h, w, dtype=torch.uint8), "sem_seg": torch.ones(h, w, dtype=torch.uint8),
                        "meta": {"img_shape": (h, w), "ori_shape": (2 * h, 2 * w), "scale_factor": (0.5, 0.5)}})
    pre = MultiTaskDataPreprocessor(fixed_size=(128, 128))
    batch = pre(samples, "cpu", training=True)
    assert batch.inputs.shape == (2, 3, 128, 128)
    expected = (200 - torch.tensor([123.675, 116.28, 103.53])) / torch.tensor([58.395, 57.12, 57.375])
    torch.testing.assert_close(batch.inputs[0, :, 0, 0], expected)
    assert (batch.inputs[0, :, 40:] == 0).all() and (batch.inputs[1, :, :, 33:] == 0).all()
    assert [s.meta.pad_shape for s in batch.samples] == [(128, 128)] * 2
    assert batch.samples[1].masks.shape == (1, 128, 128) and batch.samples[1].masks[0, 70:].sum() == 0
    seg = batch.samples[0].sem_seg
    assert seg.shape == (128, 128) and (seg[40:] == 255).all() and (seg[:40, :50] == 1).all()
    faithful = MultiTaskDataPreprocessor(fixed_size=(128, 128), faithful_seg_pad=True)(samples, "cpu")
    assert faithful.samples[0].sem_seg.shape == (96, 64)  # the batch's /32 size, not S: the original's quirk
    unpadded = MultiTaskDataPreprocessor(fixed_size=(128, 128))(samples, "cpu", training=False)
    assert unpadded.inputs.shape == (2, 3, 96, 64)
    assert [s.meta.pad_shape for s in unpadded.samples] == [(64, 64), (96, 64)]
    assert unpadded.samples[0].masks.shape == (1, 40, 50)  # ground truth stays as read for evaluation


def test_zipped_loaders_are_the_originals_distributed_samplers() -> None:
    """Two ranks, datasets of 11 and 7 images, batches 2 and 1: each rank's batches equal DistributedSampler +
    DataLoader(drop_last) + zip over two epochs (set_epoch), for a sampler started at any iteration."""
    sizes, batches, world, seed = (11, 7), (2, 1), 2, 5
    length = epoch_iterations(sizes, batches, world)
    assert length == min(6 // 2, 4 // 1) == 3
    for rank in range(world):
        expected = []
        for epoch in range(2):
            loaders = []
            for n, b in zip(sizes, batches):
                sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed)
                sampler.set_epoch(epoch)
                assert list(sampler) == distributed_indices(n, epoch, seed, rank, world)
                loaders.append(DataLoader(range(n), batch_size=b, sampler=sampler, drop_last=True))
            expected += [[t.tolist() for t in step] for step in zip(*loaders)]
        for start in (0, 2, 4):
            streams = [iter(ZippedBatchSampler(n, b, length, k, seed, rank, world, start=start))
                       for k, (n, b) in enumerate(zip(sizes, batches))]
            got = [[[i for i, _ in next(s)] for s in streams] for _ in range(2 * length - start)]
            assert got == expected[start:]
    keys = {key for _, key in next(iter(ZippedBatchSampler(11, 4, 2, 0, seed)))}
    assert len(keys) == 4  # one augmentation seed per sample


def test_fixture_from_the_spacenet_chips_and_geojson(tmp_path: Path) -> None:
    """Real building instances: every SpaceNet 1 chip with buildings and the SpaceNet 4 chip in 300 px tiles; each
    instance mask is a polygon's pixels, the gray PNG their union (class 0) on 255."""
    images = spacenet_images(SHARED / "realdata", tile=300)
    assert [i.name for i in images[:7]] == [f"sn1_img{k}" for k in range(4, 11)]
    assert len(images) == 16 and sum(len(i.classes) for i in images) >= 162  # 119 + 43 (more where tiles cut one)
    path = write_samrs(tmp_path, images)
    coco = json.loads(path.read_text())
    ann = coco["annotations"][0]
    mask = mask_utils.decode(ann["segmentation"])
    assert mask.sum() == ann["area"] and ann["bbox"] == [float(v) for v in mask_utils.toBbox(ann["segmentation"])]
    _, valid = mtp_pipelines(128)
    sample = SAMRSDataset(str(tmp_path), path.name, valid, classes=["building"])[0]
    union = sample["masks"].any(0)
    assert torch.equal(sample["sem_seg"] == 1, union) and sample["masks"].shape[0] == len(images[0].classes)


def test_mtp_synth_writes_a_samrs_set(tmp_path: Path, capsys) -> None:
    assert mtp_main(["synth", str(tmp_path), "--layout", "samrs", "--size", "64", "--count", "2", "--seed", "4"]) == 0
    assert "instances.json: 2 scenes" in capsys.readouterr().out
    coco = json.loads((tmp_path / "instances.json").read_text())
    assert [i["file_name"] for i in coco["images"]] == ["scene_4.png", "scene_5.png"]
    expected = synthetic_images(2, 64, 4)
    assert len(coco["annotations"]) == sum(int((np.unique(i.instances) > 0).sum()) for i in expected)
