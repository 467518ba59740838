"""The Mask R-CNN fine-tuning model and ``convert-ckpt --reuse-decoder insseg``: mmdet's names and order, training and
prediction, the pretrained instance decoder (and one dataset's predictors) moved into it, loading by layout."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mtp_core.checkpoint import (
    CheckpointError,
    change_ckpt_rename,
    convert_checkpoint,
    load_model,
    load_weights,
    safe_load,
)
from mtp_core.cli import main
from mtp_core.models import MaskRCNN, create_model
from mtp_core.models.maskrcnn import parse_losses
from mtp_core.models.multitask import SAMRS_CLASSES
from tests.conftest import shared_file
from tests.core.test_multitask import SIZE, make_batches

INSSEG_KEYS = {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "acc", "loss_bbox", "loss_mask"}


def test_mmdet_names_order_and_shapes() -> None:
    """The decoder of the ViT-B model is MTP's ``inssegdecoder`` (manifest order, prefix removed) with mmdet's
    predictors where mmdet registers them: fc_cls and fc_reg before the shared FCs, conv_logits last."""
    manifest = json.loads(shared_file("reference", "mtp_pretrain", "mtp_pretrain_decoder_keys.json").read_text())
    entries = manifest["inssegdecoder_vitb_C768"]
    expected = [(e["key"].removeprefix("inssegdecoder."), tuple(e["shape"])) for e in entries]
    first_fc = next(i for i, (k, _) in enumerate(expected) if k.startswith("roi_head.bbox_head.shared_fcs"))
    expected[first_fc:first_fc] = [("roi_head.bbox_head.fc_cls.weight", (19, 1024)),
                                   ("roi_head.bbox_head.fc_cls.bias", (19,)),
                                   ("roi_head.bbox_head.fc_reg.weight", (72, 1024)),
                                   ("roi_head.bbox_head.fc_reg.bias", (72,))]
    expected += [("roi_head.mask_head.conv_logits.weight", (18, 256, 1, 1)),
                 ("roi_head.mask_head.conv_logits.bias", (18,))]
    with torch.device("meta"):
        model = create_model("mtp_vit_b_rvsa_maskrcnn", num_classes=18)
    state = model.state_dict()
    decoder = [(k, tuple(v.shape)) for k, v in state.items() if not k.startswith("backbone.")]
    assert decoder == expected
    assert list(state)[: len(state) - len(decoder)] == [f"backbone.{k}" for k in model.backbone.state_dict()]


@pytest.fixture(scope="module")
def tiny() -> MaskRCNN:
    torch.manual_seed(0)
    return create_model("mtp_vit_tiny_rvsa_maskrcnn", num_classes=3, img_size=SIZE)


def test_trains_with_mmdets_losses_and_predicts(tiny: MaskRCNN) -> None:
    tiny.train()
    batch = make_batches([("alpha", 3)], per_dataset=2, seed=1)[0]
    torch.manual_seed(2)
    losses = tiny(batch)
    assert set(losses) == INSSEG_KEYS and len(losses["loss_rpn_cls"]) == 5
    total, log = parse_losses(losses)
    assert torch.isfinite(total) and total.item() == pytest.approx(
        sum(v.item() for k, v in log.items() if "loss" in k), rel=1e-6)
    tiny.zero_grad()
    total.backward()
    for name in ("backbone.patch_embed.proj.weight", "neck.lateral_convs.0.conv.weight", "rpn_head.rpn_reg.weight",
                 "roi_head.bbox_head.fc_reg.weight", "roi_head.mask_head.conv_logits.weight"):
        assert tiny.get_parameter(name).grad.abs().sum() > 0, name
    tiny.eval()
    result = tiny(make_batches([("alpha", 3)], seed=4)[0])[0]
    n = result.bboxes.shape[0]
    assert 0 < n <= 100 and result.masks.shape == (n, SIZE, SIZE) and int(result.labels.max()) < 3


def pretraining_file(seed: int = 0) -> tuple[dict[str, Any], torch.nn.Module]:
    """A tiny framework with SAMRS's three datasets (the released files' heads), random weights, plus rotated
    decoder keys, as main_pretrain.py saves it."""
    torch.manual_seed(seed)
    framework = create_model("mtp_vit_tiny_rvsa_multitask")
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in framework.state_dict().items()}
    state["rotdetdecoder.neck.lateral_convs.0.conv.weight"] = torch.randn(256, 192, 1, 1)
    state["rotdetdecoder.rpn_head.rpn_reg.weight"] = torch.randn(18, 256, 1, 1)
    state["rotdetroiboxhead_fc_cls1.weight"] = torch.randn(19, 1024)
    return {"epoch": 0, "iteration": 80000, "state_dict": state, "optimizer": {}, "scheduler": {},
            "loss_pretrain": np.array([2.0, 1.5])}, framework


def test_insseg_reuse_with_a_datasets_predictors(tmp_path: Path) -> None:
    obj, _ = pretraining_file()
    state = obj["state_dict"]
    src, dst = tmp_path / "last_vit_tiny_rvsa_ss_is_rd_pretrn_model.pth", tmp_path / "maskrcnn.pth"
    torch.save(obj, src)
    report = convert_checkpoint(src, dst, reuse_decoder="insseg", dataset="sior")
    assert report.layout == "mtp_pretrain" and not report.missing
    assert any("not meaningful box regressors" in note for note in report.notes)
    assert {task for task in ("semseg", "rotdet", "fc_cls1", "fc_cls3")
            if any(task in k for k in report.unused)} == {"semseg", "rotdet", "fc_cls1", "fc_cls3"}
    out = safe_load(dst)
    weights = out["state_dict"]
    assert {k.split(".", 1)[0] for k in weights} == {"backbone", "neck", "rpn_head", "roi_head"}
    for key, source in (("neck.fpn_convs.0.conv.weight", "inssegdecoder.neck.fpn_convs.0.conv.weight"),
                        ("rpn_head.rpn_reg.weight", "inssegdecoder.rpn_head.rpn_reg.weight"),
                        ("roi_head.mask_head.upsample.weight", "inssegdecoder.roi_head.mask_head.upsample.weight"),
                        ("roi_head.bbox_head.fc_cls.weight", "inssegroiboxhead_fc_cls2.weight"),
                        ("roi_head.bbox_head.fc_reg.bias", "inssegroiboxhead_fc_reg2.bias"),
                        ("roi_head.mask_head.conv_logits.weight", "inssegroimaskhead_conv2.weight"),
                        ("backbone.blocks.0.mlp.fc1.weight", "encoder.blocks.0.mlp.fc1.weight")):
        assert torch.equal(weights[key], state[source]), key
    assert out["meta"]["insseg_dataset"] == "sior" and not out["meta"]["untrained"]

    model, card, loaded = load_model(dst)
    assert isinstance(model, MaskRCNN) and model.num_classes == 20 and not loaded.missing
    assert card.architecture == "mtp_vit_tiny_rvsa_maskrcnn" and card.classes == ("background", *SAMRS_CLASSES["sior"])
    assert card.arch_args == {"num_classes": 20, "channels": 32, "fc_out_channels": 128}

    plain = tmp_path / "mmdet.pth"  # mmdet's own file: the same names, no card
    torch.save({"state_dict": weights, "meta": {}}, plain)
    model, card, loaded = load_model(plain)
    assert loaded.layout == "mmdet_maskrcnn" and model.num_classes == 20 and not loaded.missing
    relabelled, card, loaded = load_model(dst, num_classes=2)  # new predictors for the fine-tuning classes
    assert relabelled.num_classes == 2 and len(loaded.reinitialized) == 6 and card.classes[0] == "background"


def test_insseg_reuse_without_predictors_and_from_change_ckpt(tmp_path: Path) -> None:
    obj, _ = pretraining_file(seed=1)
    state = obj["state_dict"]
    model = create_model("mtp_vit_tiny_rvsa_maskrcnn", num_classes=1)
    fresh = model.roi_head.bbox_head.fc_cls.weight.detach().clone()
    report = load_weights(model, obj, reuse_decoder="insseg")
    assert sorted(report.missing) == sorted(k for k in model.state_dict()
                                            if k.startswith(("roi_head.bbox_head.fc_", "roi_head.mask_head.conv_l")))
    assert torch.equal(model.roi_head.bbox_head.fc_cls.weight, fresh)
    # change_ckpt.py's output: its top-level neck/rpn_head are the rotated decoder's, never loaded here
    renamed = {"state_dict": change_ckpt_rename(state)}
    assert "rpn_head.rpn_reg.weight" in renamed["state_dict"]
    model = create_model("mtp_vit_tiny_rvsa_maskrcnn", num_classes=18)
    report = load_weights(model, renamed, reuse_decoder="insseg", dataset=1)
    assert report.layout == "change_ckpt" and not report.missing and "rpn_head.rpn_reg.weight" in report.unused
    assert torch.equal(model.rpn_head.rpn_reg.weight, state["inssegdecoder.rpn_head.rpn_reg.weight"])
    assert [k for k, _, _ in report.resized][0] == "backbone.pos_embed"  # 128 px pretraining -> 384 px fine-tuning
    plain_backbone = create_model("mtp_vit_tiny_rvsa_maskrcnn")
    report = load_weights(plain_backbone, obj)  # without reuse only the encoder loads
    assert any("reuse_decoder='insseg' loads it" in n for n in report.notes)
    assert all(k.startswith("backbone.") for k in report.loaded)


def test_reuse_mistakes_are_one_line(tmp_path: Path) -> None:
    obj, framework = pretraining_file(seed=2)
    segmentor = create_model("mtp_vit_tiny_rvsa_upernet")
    with pytest.raises(CheckpointError, match="into a Mask R-CNN model"):
        load_weights(segmentor, obj, reuse_decoder="insseg")
    model = create_model("mtp_vit_tiny_rvsa_maskrcnn", num_classes=5)
    with pytest.raises(CheckpointError, match="predictors are for 18 classes, the model has 5"):
        load_weights(model, obj, reuse_decoder="insseg", dataset=1)
    with pytest.raises(CheckpointError, match="with reuse_decoder='insseg' only"):
        load_weights(model, obj, dataset=1)
    encoder_only = {"state_dict": {k.removeprefix("encoder."): v for k, v in obj["state_dict"].items()
                                   if k.startswith("encoder.")}}
    with pytest.raises(CheckpointError, match="needs MTP's instance decoder"):
        load_weights(model, encoder_only, reuse_decoder="insseg")
    src = tmp_path / "pretrain.pth"
    torch.save(obj, src)
    with pytest.raises(CheckpointError, match="not one of the file's pretraining datasets"):
        convert_checkpoint(src, tmp_path / "x.pth", reuse_decoder="insseg", dataset="dota")
    with pytest.raises(CheckpointError, match="goes with --reuse-decoder insseg"):
        convert_checkpoint(src, tmp_path / "x.pth", dataset="sota")
    converted = tmp_path / "maskrcnn.pth"
    convert_checkpoint(src, converted, reuse_decoder="insseg", dataset=3)
    with pytest.raises(CheckpointError, match="another number of classes"):
        load_weights(model, converted)
    assert not (tmp_path / "x.pth").exists()


def test_convert_ckpt_command(tmp_path: Path, capsys) -> None:
    obj, _ = pretraining_file(seed=3)
    src = tmp_path / "pretrain.pth"
    torch.save(obj, src)
    assert main(["convert-ckpt", str(src), str(tmp_path / "out.pth"), "--reuse-decoder", "insseg",
                 "--dataset", "sota"]) == 0
    out = capsys.readouterr().out
    assert "from pretraining dataset 1's predictors" in out and "not meaningful box regressors" in out
    assert safe_load(tmp_path / "out.pth")["meta"]["model_card"]["classes"][1:] == list(SAMRS_CLASSES["sota"])
