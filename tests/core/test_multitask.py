"""The multi-task framework: built from a task spec, one encoder pass per step, the task plug-ins' losses and
predictions, MTP's loss sum, and loading released pretraining files (tiny models; one full-size ViT-B file)."""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import mtp_core.checkpoint as ckpt
from mtp_core.checkpoint import CheckpointError, load_weights
from mtp_core.models import create_model, list_models
from mtp_core.models.multitask import (
    Batch,
    DatasetSpec,
    ImageMeta,
    InstanceResult,
    MultiTaskModel,
    Sample,
    sum_losses,
    task_of_key,
)
from tests.conftest import shared_file

SIZE = 128
DATASETS = [("alpha", 3), ("beta", 2)]
IS_KEYS = {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "acc", "loss_bbox", "loss_mask"}


def make_sample(num_classes: int, gen: torch.Generator, size: int = SIZE) -> Sample:
    """Two or three rectangles: boxes, labels, bitmaps, and the semantic label they paint (background 0, class i as
    i+1, a band of 255 = ignored), as the SAMRS readers give them."""
    n = int(torch.randint(2, 4, (1,), generator=gen))
    xy = torch.randint(0, size - 48, (n, 2), generator=gen).float()
    wh = torch.randint(16, 48, (n, 2), generator=gen).float()
    bboxes = torch.cat([xy, xy + wh], dim=1)
    labels = torch.randint(0, num_classes, (n,), generator=gen)
    masks = torch.zeros(n, size, size, dtype=torch.uint8)
    sem_seg = torch.zeros(size, size, dtype=torch.long)
    for i, (x1, y1, x2, y2) in enumerate(bboxes.long().tolist()):
        masks[i, y1:y2, x1:x2] = 1
        sem_seg[y1:y2, x1:x2] = int(labels[i]) + 1
    sem_seg[:, :4] = 255
    return Sample(ImageMeta.of_size(size, size), bboxes=bboxes, labels=labels, masks=masks, sem_seg=sem_seg)


def make_batches(datasets: list[tuple[str, int]], per_dataset: int = 1, seed: int = 0) -> list[Batch]:
    gen = torch.Generator().manual_seed(seed)
    return [
        Batch(torch.randn(per_dataset, 3, SIZE, SIZE, generator=gen), [make_sample(c, gen) for _ in range(per_dataset)])
        for _, c in datasets
    ]


@pytest.fixture(scope="module")
def tiny() -> MultiTaskModel:
    torch.manual_seed(0)
    return create_model("mtp_vit_tiny_rvsa_multitask", datasets=DATASETS)


def test_registered_frameworks() -> None:
    assert list_models("multitask") == [
        "mtp_vit_b_rvsa_multitask", "mtp_vit_l_rvsa_multitask", "mtp_vit_tiny_rvsa_multitask"
    ]


def test_built_from_the_task_spec(tiny: MultiTaskModel) -> None:
    assert tiny.tasks == ("ss", "is") and tiny.datasets == (DatasetSpec("alpha", 3), DatasetSpec("beta", 2))
    heads = dict(tiny.named_children())
    assert list(heads) == [
        "encoder", "semsegdecoder", "semseghead_1", "semseghead_2", "inssegdecoder",
        "inssegroiboxhead_fc_cls1", "inssegroiboxhead_fc_cls2", "inssegroiboxhead_fc_reg1", "inssegroiboxhead_fc_reg2",
        "inssegroimaskhead_conv1", "inssegroimaskhead_conv2",
    ]
    # background on: C+1 semantic outputs (0 = background); RCNN: C+1 scores (background last), 4·C deltas, C masks
    assert [heads[f"semseghead_{k}"][1].out_channels for k in (1, 2)] == [4, 3]
    assert [heads[f"inssegroiboxhead_fc_cls{k}"].out_features for k in (1, 2)] == [4, 3]
    assert [heads[f"inssegroiboxhead_fc_reg{k}"].out_features for k in (1, 2)] == [12, 8]
    assert [heads[f"inssegroimaskhead_conv{k}"].out_channels for k in (1, 2)] == [3, 2]
    assert tiny.dataset_heads("is", 1) == {
        "fc_cls": tiny.inssegroiboxhead_fc_cls2, "fc_reg": tiny.inssegroiboxhead_fc_reg2,
        "conv_logits": tiny.inssegroimaskhead_conv2,
    }
    without_background = create_model("mtp_vit_tiny_rvsa_multitask", datasets=DATASETS, tasks=["ss"], background=False)
    assert without_background.semseghead_1[1].out_channels == 3 and not hasattr(without_background, "inssegdecoder")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(tasks=["ss", "rd"]), "rotated-detection decoder .* not implemented"),
        (dict(tasks=["det"]), "subset of"),
        (dict(tasks=[]), "subset of"),
        (dict(datasets=[]), "at least one dataset"),
        (dict(datasets=[("a", 2), ("a", 3)]), "distinct names"),
        (dict(tasks=["ss"], decoder_args={"is": {"fc_out_channels": 8}}), "not built"),
    ],
)
def test_bad_task_specs(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_model("mtp_vit_tiny_rvsa_multitask", **kwargs)


def test_task_of_key() -> None:
    assert [task_of_key(k) for k in ("encoder.pos_embed", "semseghead_2.1.weight", "inssegroimaskhead_conv1.bias",
                                     "rotdetdecoder.neck.fpn_convs.0.conv.bias", "semsegdecoder.decode_head.x")] == [
        None, "ss", "is", "rd", "ss"]


@pytest.fixture(scope="module")
def train_step(tiny: MultiTaskModel) -> dict[str, Any]:
    """One training step of two datasets (2 + 3 images), counting encoder calls and the samplers' order. (Batch
    norm in the UperNet needs two images per dataset and process, as in the original without SyncBN peers.)"""
    tiny.train()
    batches = make_batches(DATASETS[:1], per_dataset=2, seed=1) + make_batches(DATASETS[1:], per_dataset=3, seed=2)
    encoder_inputs: list[tuple[int, ...]] = []
    hook = tiny.encoder.register_forward_hook(lambda m, args, out: encoder_inputs.append(tuple(args[0].shape)))
    stages: list[str] = []
    decoder = tiny.inssegdecoder
    rpn_loss, roi_sample = decoder.rpn_head.loss, decoder.roi_head.sample
    decoder.rpn_head.loss = lambda *a: (stages.append("rpn"), rpn_loss(*a))[1]  # type: ignore[method-assign]
    decoder.roi_head.sample = lambda *a: (stages.append("rcnn"), roi_sample(*a))[1]  # type: ignore[method-assign]
    try:
        torch.manual_seed(3)
        losses = tiny(batches)
    finally:
        hook.remove()
        del decoder.rpn_head.loss, decoder.roi_head.sample
    tiny.zero_grad()
    total, log = sum_losses(losses, tiny.datasets)
    total.backward()
    return dict(losses=losses, total=total, log=log, encoder_inputs=encoder_inputs, stages=stages)


def test_one_encoder_pass_per_step(train_step: dict[str, Any]) -> None:
    assert train_step["encoder_inputs"] == [(5, 3, SIZE, SIZE)]


def test_every_task_gives_every_dataset_its_losses(train_step: dict[str, Any]) -> None:
    losses = train_step["losses"]
    assert list(losses) == ["ss", "is"] and all(len(v) == 2 for v in losses.values())
    for entries in losses["ss"]:
        assert set(entries) == {"loss_ce", "acc_seg"} and torch.isfinite(entries["loss_ce"])
    for entries in losses["is"]:
        assert set(entries) == IS_KEYS
        assert len(entries["loss_rpn_cls"]) == len(entries["loss_rpn_bbox"]) == 5
        assert all(torch.isfinite(v).all() for key, value in entries.items()
                   for v in (value if isinstance(value, list) else [value]))
    # the original's order: every dataset's RPN (sampling, proposals), then every RoI sampling
    assert train_step["stages"] == ["rpn", "rpn", "rcnn", "rcnn"]


def test_the_total_is_mtps_unweighted_sum(train_step: dict[str, Any]) -> None:
    losses, log = train_step["losses"], train_step["log"]
    expected = 0.0
    for task in ("ss", "is"):
        for entries in losses[task]:
            for key, value in entries.items():
                if "loss" in key:
                    values = value if isinstance(value, list) else [value]
                    expected += sum(v.detach().mean().item() for v in values)
    assert train_step["total"].item() == pytest.approx(expected, rel=1e-6)
    assert set(log) == {f"{t}/{d}/{k}" for t in ("ss", "is") for d in ("alpha", "beta")
                        for k in (IS_KEYS if t == "is" else {"loss_ce", "acc_seg"})}
    assert log["is/beta/loss_rpn_cls"].item() == pytest.approx(sum(x.item() for x in losses["is"][1]["loss_rpn_cls"]))


def test_gradients_reach_the_encoder_and_each_datasets_heads(tiny: MultiTaskModel, train_step: dict) -> None:
    for name in (
        "encoder.patch_embed.proj.weight", "encoder.fpn1.0.weight", "semsegdecoder.decode_head.bottleneck.conv.weight",
        "semseghead_1.1.weight", "semseghead_2.1.weight", "inssegdecoder.neck.lateral_convs.0.conv.weight",
        "inssegdecoder.rpn_head.rpn_cls.weight", "inssegroiboxhead_fc_cls1.weight", "inssegroiboxhead_fc_cls2.weight",
    ):
        grad = tiny.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    # the pretraining encoder's final norm exists (it is in the released files) but forward never uses it
    assert tiny.encoder.norm.weight.grad is None


def test_predict(tiny: MultiTaskModel) -> None:
    tiny.eval()
    batches = make_batches(DATASETS, per_dataset=1, seed=5)
    out = tiny(batches)
    assert list(out) == ["ss", "is"]
    assert [tuple(r[0].shape) for r in out["ss"]] == [(4, SIZE, SIZE), (3, SIZE, SIZE)]
    for results, (_, num_classes) in zip(out["is"], DATASETS):
        result = results[0]
        assert isinstance(result, InstanceResult)
        n = result.bboxes.shape[0]
        assert 0 < n <= 100 and result.scores.shape == (n,) and result.masks.shape == (n, SIZE, SIZE)
        assert result.masks.dtype == torch.bool and int(result.labels.max()) < num_classes
        assert (result.scores[:-1] >= result.scores[1:]).all() and (result.scores > 0.05).all()


def test_predictions_at_the_original_size(tiny: MultiTaskModel) -> None:
    """A 96×112 image resized ×1.25 and padded to 128: boxes and masks come back at 96×112, semantic logits too."""
    tiny.eval()
    meta = ImageMeta(img_shape=(120, 128), pad_shape=(SIZE, SIZE), ori_shape=(96, 112), scale_factor=(128 / 112, 1.25))
    batches = make_batches(DATASETS, seed=6)
    for batch in batches:
        batch.samples[0] = Sample(meta)
    out = tiny(batches)
    assert tuple(out["ss"][0][0].shape) == (4, 96, 112)
    result = out["is"][0][0]
    assert result.masks.shape[1:] == (96, 112)
    assert (result.bboxes[:, 0::2] <= 112 + 1e-3).all() and (result.bboxes[:, 1::2] <= 96 + 1e-3).all()


# --------------------------------------------------------------------------------------------------------------------
# Loading released pretraining files
# --------------------------------------------------------------------------------------------------------------------


def shared_random(shapes: list[tuple[str, list[int]]], seed: int) -> dict[str, Tensor]:
    """Random tensors, one per distinct shape (shared storage keeps the files small)."""
    gen = torch.Generator().manual_seed(seed)
    by_shape: dict[tuple[int, ...], Tensor] = {}
    out = {}
    for key, shape in shapes:
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(7)
        elif key.endswith("relative_position_index"):
            out[key] = torch.randint(0, 169, shape, generator=gen)
        else:
            out[key] = by_shape.setdefault(tuple(shape), torch.randn(shape, generator=gen))
    return out


def released_file(model: nn.Module, rotdet: dict[str, Tensor]) -> dict[str, Any]:
    """What main_pretrain.py writes for this framework plus the rotated decoder: {'state_dict', ..., numpy loss}."""
    state = shared_random([(k, list(v.shape)) for k, v in model.state_dict().items()], seed=11)
    return {"epoch": 1, "iteration": 80000, "state_dict": {**state, **rotdet}, "optimizer": {}, "scheduler": {},
            "loss_pretrain": np.array([3.0, 2.5])}


def rotdet_state(channels: int, heads: list[tuple[str, list[int]]] | None = None) -> dict[str, Tensor]:
    keys = json.loads(shared_file("reference", "mtp_pretrain", "mtp_pretrain_decoder_keys.json").read_text())
    entries = keys["rotdetdecoder_vitb_C768"] if channels == 768 else keys["rotdetdecoder_vitl_C1024"]
    shapes = [(e["key"], e["shape"]) for e in entries]
    shapes += heads or [(e["key"], e["shape"]) for e in keys["rotdet_heads"]]
    return shared_random(shapes, seed=12)


def test_released_vit_b_file_loads_strictly_with_rotdet_kept_unused(tmp_path) -> None:
    model = create_model("mtp_vit_b_rvsa_multitask")
    obj = released_file(model, rotdet_state(768))
    path = tmp_path / "last_vit_b_rvsa_ss_is_rd_pretrn_model.pth"
    torch.save(obj, path)
    report = load_weights(model, path)
    assert report.layout == "mtp_pretrain"
    assert report.loaded == list(model.state_dict()) and not report.missing and not report.dropped
    assert report.unused == [k for k in obj["state_dict"] if k.startswith("rotdet")] and len(report.unused) == 26 + 12
    state = model.state_dict()
    assert all(torch.equal(state[k], obj["state_dict"][k]) for k in state)
    assert "unused (kept in the file; this model builds no such decoder): 38 tensors" in report.summary()


def test_tasks_left_out_are_unused_too(tiny: MultiTaskModel) -> None:
    obj = released_file(tiny, rotdet_state(768, heads=[("rotdetroiboxhead_fc_cls1.weight", [4, 1024])]))
    semantic = create_model("mtp_vit_tiny_rvsa_multitask", datasets=DATASETS, tasks=["ss"])
    report = load_weights(semantic, obj)
    assert not report.missing and report.loaded == list(semantic.state_dict())
    assert {task_of_key(k) for k in report.unused} == {"is", "rd"}


def test_an_encoder_file_initialises_the_encoder_only(tiny: MultiTaskModel) -> None:
    encoder_state = shared_random([(k, list(v.shape)) for k, v in tiny.encoder.state_dict().items()], seed=13)
    model = create_model("mtp_vit_tiny_rvsa_multitask", datasets=DATASETS)
    report = load_weights(model, {"state_dict": encoder_state, "loss_pretrain": np.zeros(2)})
    assert report.layout == "mtp_encoder"
    assert report.loaded == [f"encoder.{k}" for k in encoder_state]
    assert report.missing == [k for k in model.state_dict() if not k.startswith("encoder.")]


def test_a_file_for_other_datasets_is_refused(tiny: MultiTaskModel) -> None:
    obj = released_file(tiny, {})
    other = create_model("mtp_vit_tiny_rvsa_multitask", datasets=[("alpha", 3), ("beta", 5)])
    with pytest.raises(CheckpointError, match=r"semseghead_2.1.weight: file \(3, 64, 1, 1\) vs model \(6, 64, 1, 1\)"):
        load_weights(other, obj)
    fewer = create_model("mtp_vit_tiny_rvsa_multitask", datasets=[("alpha", 3)])
    with pytest.raises(CheckpointError, match="semseghead_2.1.weight: not in the model"):
        load_weights(fewer, obj)
    with pytest.raises(CheckpointError, match="loads its decoders by name"):
        ckpt.load_weights(tiny, obj, reuse_decoder="semseg")  # decoder reuse is for segmentors
