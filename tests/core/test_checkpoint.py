"""Checkpoint loading, conversion and saving, on synthetic files of every released layout.

The files are built from the reference key manifests (exact names, shapes and order of the released files) with random
weights. In-memory state dicts have distinct values everywhere, so a key mapped to the wrong tensor is caught; files
on disk share one tensor per key pattern across blocks (``torch.save`` stores a shared storage once), which keeps
their names and shapes exact but their size small, so the suite stays fast.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import subprocess
import sys
import types
import zipfile
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from mtp_core.checkpoint import (
    CheckpointError,
    InertList,
    InertObject,
    LoadReport,
    UnsafeCheckpointError,
    change_ckpt_rename,
    convert_checkpoint,
    extract_state_dict,
    load_model,
    load_weights,
    resize_pos_embed,
    resize_rel_pos,
    safe_load,
    save_checkpoint,
)
from mtp_core.cli import main
from mtp_core.models.card import ModelCard
from mtp_core.models.registry import create_model, default_card
from tests.conftest import shared_file

Weights = dict[str, Tensor]

# --------------------------------------------------------------------------------------------------------------------
# Independent references
# --------------------------------------------------------------------------------------------------------------------


def np_bicubic_axis(x: np.ndarray, out_len: int, axis: int) -> np.ndarray:
    """PyTorch's bicubic resize along one axis, re-derived: cubic convolution a = -0.75, ``align_corners=False``
    (source = (i + 0.5) * in/out - 0.5, not clamped), the four taps' indices clamped to the border. float64."""
    a = -0.75
    in_len = x.shape[axis]

    def near(s: float) -> float:  # |s| <= 1
        return ((a + 2) * s - (a + 3)) * s * s + 1

    def far(s: float) -> float:  # 1 < |s| < 2
        return ((a * s - 5 * a) * s + 8 * a) * s - 4 * a

    rows = []
    for i in range(out_len):
        src = (i + 0.5) * in_len / out_len - 0.5
        i0 = math.floor(src)
        t = src - i0
        weights = np.array([far(t + 1), near(t), near(1 - t), far(2 - t)])
        taps = np.clip(np.arange(i0 - 1, i0 + 3), 0, in_len - 1)
        rows.append(np.tensordot(weights, np.take(x, taps, axis=axis), axes=([0], [axis])))
    return np.stack(rows, axis=axis)


def expected_pos_embed(pos: Tensor, grid: int, extra: int = 0) -> Tensor:
    """(1, extra + g*g, C) -> (1, grid*grid, C) with the numpy bicubic above (rows, then columns)."""
    tokens = pos[0, extra:].double().numpy()
    g = math.isqrt(tokens.shape[0])
    image = tokens.reshape(g, g, -1)
    out = np_bicubic_axis(np_bicubic_axis(image, grid, 0), grid, 1)
    return torch.from_numpy(out.reshape(1, grid * grid, -1))


def expected_rel_pos(table: Tensor, length: int) -> Tensor:
    return torch.from_numpy(np_bicubic_axis(table.double().numpy(), length, 0))


def change_ckpt_reference(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """MTP's scripts/change_ckpt.py loop, restated from mtp_spec.md §6."""
    out = {}
    for k, v in state.items():
        if "encoder" in k:
            out[k.replace("encoder", "backbone")] = v
        elif "rotdetdecoder" in k:
            out[k.replace("rotdetdecoder.", "")] = v
        else:
            out[k] = v
    return out


def assert_bicubic(actual: Tensor, expected: Tensor) -> None:
    """float32 torch vs the float64 reference: 3e-5 covers rounding; a wrong kernel or grid is off by ~1e-2."""
    torch.testing.assert_close(actual.double(), expected, rtol=0, atol=3e-5)


def swin_relative_position_index(ws: int = 7) -> Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
    return rel[..., 0] * (2 * ws - 1) + rel[..., 1]


# --------------------------------------------------------------------------------------------------------------------
# Synthetic weights from the manifests
# --------------------------------------------------------------------------------------------------------------------


def manifest(name: str) -> dict[str, Any]:
    return json.loads(shared_file("reference", "mtp", name).read_text())


def random_weights(entries: list[dict[str, Any]], seed: int, share_blocks: bool = False) -> Weights:
    """Random tensors for manifest entries, in manifest order; buffers get their real values.

    ``share_blocks`` reuses one tensor per (key pattern, shape) across blocks: exact names and shapes, small files.
    """
    gen = torch.Generator().manual_seed(seed)
    shared: dict[tuple[str, tuple[int, ...]], Tensor] = {}
    out: Weights = {}
    for e in entries:
        key, shape = e["key"], tuple(e["shape"])
        pattern = (re.sub(r"blocks\.\d+\.", "blocks.*.", key), shape)
        if share_blocks and pattern in shared:
            out[key] = shared[pattern]
        elif key.endswith("relative_position_index"):
            out[key] = swin_relative_position_index()
        elif e["dtype"] == "int64":
            out[key] = torch.full(shape, 1234, dtype=torch.int64)
        else:
            out[key] = torch.randn(shape, generator=gen)
        shared.setdefault(pattern, out[key])
    return out


def encoder_file_object(state: Weights) -> dict[str, Any]:
    """What Multi-Task_Pretrain/main_pretrain.py writes (mtp_spec.md §5.3)."""
    return {
        "epoch": 3,
        "iteration": 80000,
        "state_dict": state,
        "optimizer": {"state": {}, "param_groups": [{"lr": 6e-5, "weight_decay": 0.05, "params": [0, 1, 2]}]},
        "scheduler": {"T_max": 80000, "eta_min": 0, "base_lrs": [6e-5], "last_epoch": 80000},
        "loss_pretrain": np.array([2.5, 1.25, 0.75], dtype=np.float64),
    }


PRETRAIN_DETECTION_KEYS = {  # a few of the instance-segmentation / rotated-detection decoder tensors (§5.1)
    "inssegdecoder.neck.lateral_convs.0.conv.weight": (256, 768, 1, 1),
    "inssegdecoder.rpn_head.rpn_conv.weight": (256, 256, 3, 3),
    "inssegdecoder.roi_head.bbox_head.shared_fcs.1.weight": (1024, 1024),
    "inssegroiboxhead_fc_cls1.weight": (19, 1024),
    "inssegroimaskhead_conv1.weight": (18, 256, 1, 1),
    "rotdetdecoder.neck.fpn_convs.0.conv.weight": (256, 256, 3, 3),
    "rotdetdecoder.rpn_head.rpn_conv.weight": (256, 256, 3, 3),
    "rotdetdecoder.roi_head.bbox_head.shared_fcs.1.weight": (1024, 1024),
    "rotdetroiboxhead_fc_cls1.weight": (19, 1024),
    "rotdetroiboxhead_fc_reg1.weight": (5, 1024),
}


def full_pretraining_state(encoder: Weights, semseg: Weights) -> Weights:
    """model.module.state_dict() of the multi-task framework: encoder.*, the UperNet, dataset heads, detectors."""
    gen = torch.Generator().manual_seed(7)
    state = {f"encoder.{k}": v for k, v in encoder.items()}
    state.update(semseg)
    state.update({k: torch.randn(s, generator=gen) for k, s in PRETRAIN_DETECTION_KEYS.items()})
    return state


def head_weights(entries: list[dict[str, Any]], seed: int, num_classes: int) -> Weights:
    """decode_head.* of the manifest, with the classifier resized to ``num_classes``."""
    out = random_weights(entries, seed)
    out["decode_head.conv_seg.weight"] = torch.randn(num_classes, out["decode_head.conv_seg.weight"].shape[1], 1, 1)
    out["decode_head.conv_seg.bias"] = torch.randn(num_classes)
    return out


# Classes named like MMEngine's. They are importable only while a file is written; loading must never import them.
class MessageHub:
    def __init__(self, scalars: dict[str, Any], info: dict[str, Any]) -> None:
        self._log_scalars = OrderedDict(scalars)
        self._runtime_info = OrderedDict(info)


class HistoryBuffer:
    def __init__(self, values: list[float]) -> None:
        self._log_history = np.array(values)
        self._count_history = np.ones(len(values), dtype=np.int64)
        self.max_length = 1000000


class ConfigDict(dict):
    """A dict subclass with addict's pickling, as mmengine.config.ConfigDict."""

    def __getstate__(self) -> dict[str, Any]:
        return self

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.update(state)


FAKE_CLASSES = {
    "mmengine.logging.message_hub": MessageHub,
    "mmengine.logging.history_buffer": HistoryBuffer,
    "mmengine.config.config": ConfigDict,
}


@contextmanager
def fake_mmengine() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        for module_name, cls in FAKE_CLASSES.items():
            parts = module_name.split(".")
            for i in range(1, len(parts) + 1):
                name = ".".join(parts[:i])
                if name not in sys.modules:
                    mp.setitem(sys.modules, name, types.ModuleType(name))
            mp.setattr(sys.modules[module_name], cls.__name__, cls, raising=False)
            mp.setattr(cls, "__module__", module_name)
        yield
    assert "mmengine" not in sys.modules


def mmengine_file_object(state: Weights) -> dict[str, Any]:
    """An MMEngine CheckpointHook file: {'meta', 'state_dict', 'message_hub', 'optimizer', 'param_schedulers'}."""
    hub = MessageHub(
        {"train/loss": HistoryBuffer([0.41, 0.39]), "train/lr": HistoryBuffer([6e-5])},
        {"iter": 80000, "max_iters": 80000, "seed": np.int64(2023), "loss_scale": np.float64(1.0)},
    )
    return {
        "meta": {
            "cfg": ConfigDict(model=ConfigDict(type="EncoderDecoder"), crop_size=(384, 384)),
            "dataset_meta": {"classes": ("background", "building"), "palette": [[0, 0, 0], [255, 255, 255]]},
            "mmengine_version": "0.8.4",
            "iter": 80000,
        },
        "state_dict": state,
        "message_hub": hub,
        "optimizer": {"state": {}, "param_groups": [{"lr": 6e-7, "params": [0]}]},
        "param_schedulers": [{"start_factor": 1e-6, "by_epoch": False}, {"eta_min": 0.0, "T_max": 78500}],
    }


# --------------------------------------------------------------------------------------------------------------------
# Module fixtures: weights, files, models (full-size models take seconds to build: once each)
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def fsync_recorder() -> Iterator[list[int]]:
    """Records instead of flushing: the checkpoint writer's fsync would wait for the hundreds of MB of other test
    files still in the page cache (10+ s here). Durability is the kernel's job; the calls are checked below."""
    calls: list[int] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "fsync", calls.append)
        yield calls


@pytest.fixture(scope="module")
def b_encoder() -> Weights:
    """The released ViT-B encoder's state_dict (224 px, norm.*), distinct random values."""
    return random_weights(manifest("mtp_encoder_ckpt_vitb224_keys.json")["state_dict"], seed=1)


@pytest.fixture(scope="module")
def b_finetune(b_encoder: Weights) -> Weights:
    """The 384-px fine-tuning backbone: the encoder's tensors where shapes agree, new pos_embed / rel-pos tables."""
    fresh = random_weights(manifest("vitb_rvsa_keys.json")["state_dict"], seed=2, share_blocks=True)
    return {k: b_encoder[k] if k in b_encoder and b_encoder[k].shape == v.shape else v for k, v in fresh.items()}


@pytest.fixture(scope="module")
def upernet() -> dict[str, Any]:
    return manifest("upernet_keys_spacenetv1.json")


@pytest.fixture(scope="module")
def b_semseg(upernet: dict[str, Any]) -> Weights:
    """semsegdecoder.decode_head.* (256 channels) + semseghead_{1,2,3}.* of the full pretraining file."""
    return random_weights(upernet["mtp_pretrain_semseg_vitb"]["state_dict"], seed=3)


@pytest.fixture(scope="module")
def b_pretrain(b_encoder: Weights, b_semseg: Weights) -> Weights:
    return full_pretraining_state(b_encoder, b_semseg)


@pytest.fixture(scope="module")
def l_encoder() -> Weights:
    return random_weights(manifest("mtp_encoder_ckpt_vitl448_keys.json")["state_dict"], seed=4, share_blocks=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, upernet: dict[str, Any], l_encoder: Weights) -> dict[str, Path]:
    """Released-style files on disk (block-shared tensors: exact keys and shapes, small files)."""
    root = tmp_path_factory.mktemp("released")
    b_enc = random_weights(manifest("mtp_encoder_ckpt_vitb224_keys.json")["state_dict"], seed=11, share_blocks=True)
    b_ft = random_weights(manifest("vitb_rvsa_keys.json")["state_dict"], seed=12, share_blocks=True)
    semseg = random_weights(upernet["mtp_pretrain_semseg_vitb"]["state_dict"], seed=13)
    head = head_weights(upernet["decode_head_vitb"]["state_dict"], seed=14, num_classes=5)
    paths = {name: root / f"{name}.pth" for name in ("encoder_b", "encoder_l", "pretrain_b", "mmseg_b")}
    torch.save(encoder_file_object(b_enc), paths["encoder_b"])
    torch.save(encoder_file_object(l_encoder), paths["encoder_l"])
    torch.save(encoder_file_object(full_pretraining_state(b_enc, semseg)), paths["pretrain_b"])
    with fake_mmengine():
        mmseg_state = {**{f"backbone.{k}": v for k, v in b_ft.items()}, **head}
        torch.save(mmengine_file_object(mmseg_state), paths["mmseg_b"])
    return paths


@pytest.fixture(scope="module")
def seg_b() -> nn.Module:
    return create_model("mtp_vit_b_rvsa_upernet")  # 512 channels, 2 classes: the SpaceNet model


@pytest.fixture(scope="module")
def seg_b256() -> nn.Module:
    return create_model("mtp_vit_b_rvsa_upernet", decode_channels=256)


@pytest.fixture(scope="module")
def encoder_b_model() -> nn.Module:
    return create_model("mtp_vit_b_rvsa_pretrain")


def full_attn_blocks(depth: int, interval: int) -> list[int]:
    return [i for i in range(depth) if (i + 1) % interval == 0]


def assert_loaded(model: nn.Module, source: Weights, mapping: dict[str, str]) -> None:
    """Every model key -> its source key holds exactly the source tensor."""
    state = model.state_dict()
    for target_key, source_key in mapping.items():
        assert torch.equal(state[target_key], source[source_key]), target_key


# --------------------------------------------------------------------------------------------------------------------
# Resizing
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("src_grid, dst_grid, extra", [(14, 24, 0), (28, 24, 0), (24, 14, 0), (14, 24, 1), (14, 14, 1)])
def test_resize_pos_embed_matches_independent_bicubic(src_grid: int, dst_grid: int, extra: int) -> None:
    pos = torch.randn(1, extra + src_grid * src_grid, 6)
    out = resize_pos_embed(pos, dst_grid * dst_grid, extra)
    assert out.shape == (1, dst_grid * dst_grid, 6) and out.dtype == torch.float32
    assert_bicubic(out, expected_pos_embed(pos, dst_grid, extra))


@pytest.mark.parametrize("src_len, dst_len", [(27, 47), (55, 47), (47, 27)])
def test_resize_rel_pos_matches_independent_bicubic(src_len: int, dst_len: int) -> None:
    table = torch.randn(src_len, 64)
    out = resize_rel_pos(table, dst_len)
    assert out.shape == (dst_len, 64)
    assert_bicubic(out, expected_rel_pos(table, dst_len))


def test_resize_pos_embed_refuses_non_square_grids() -> None:
    with pytest.raises(CheckpointError, match="square grids"):
        resize_pos_embed(torch.zeros(1, 200, 8), 576)


# --------------------------------------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------------------------------------


def test_mtp_encoder_into_finetuning_segmentor(seg_b: nn.Module, b_encoder: Weights) -> None:
    report = load_weights(seg_b, {"state_dict": b_encoder, "loss_pretrain": np.zeros(2)})
    assert report.layout == "mtp_encoder"
    assert report.dropped == ["norm.weight", "norm.bias"]
    full = full_attn_blocks(12, 3)
    expected_resized = [("backbone.pos_embed", (1, 196, 768), (1, 576, 768))] + [
        (f"backbone.blocks.{i}.attn.full_attn_rel_pos_{a}", (27, 64), (47, 64)) for i in full for a in "hw"
    ]
    assert sorted(report.resized) == sorted(expected_resized)
    assert report.missing == [k for k in seg_b.state_dict() if k.startswith("decode_head.")]
    assert len(report.loaded) == 243 and report.reinitialized == []
    state = seg_b.state_dict()
    assert_bicubic(state["backbone.pos_embed"], expected_pos_embed(b_encoder["pos_embed"], 24))
    for i in full:
        key = f"blocks.{i}.attn.full_attn_rel_pos_w"
        assert_bicubic(state[f"backbone.{key}"], expected_rel_pos(b_encoder[key], 47))
    resized = {k for k, _, _ in report.resized}
    kept = {f"backbone.{k}": k for k in b_encoder if f"backbone.{k}" not in resized and not k.startswith("norm.")}
    assert_loaded(seg_b, b_encoder, kept)
    summary = report.summary()
    assert "layout: mtp_encoder" in summary and "backbone.pos_embed (1, 196, 768) -> (1, 576, 768)" in summary
    assert "dropped (not used by this model): 2 tensors: norm.weight, norm.bias" in summary


def test_mtp_encoder_into_pretraining_encoder_is_one_to_one(encoder_b_model: nn.Module, b_encoder: Weights) -> None:
    report = load_weights(encoder_b_model, {"state_dict": b_encoder})
    assert (report.resized, report.missing, report.dropped) == ([], [], [])
    assert report.loaded == list(b_encoder)
    assert_loaded(encoder_b_model, b_encoder, {k: k for k in b_encoder})


def test_finetuned_weights_resize_down_into_pretraining_encoder(
    encoder_b_model: nn.Module, b_finetune: Weights, upernet: dict[str, Any]
) -> None:
    head = head_weights(upernet["decode_head_vitb"]["state_dict"], seed=5, num_classes=2)
    mmseg = {**{f"backbone.{k}": v for k, v in b_finetune.items()}, **head}
    report = load_weights(encoder_b_model, {"state_dict": mmseg})
    assert report.layout == "mmseg"
    assert ("pos_embed", (1, 576, 768), (1, 196, 768)) in report.resized
    assert ("blocks.11.attn.full_attn_rel_pos_h", (47, 64), (27, 64)) in report.resized
    assert report.missing == ["norm.weight", "norm.bias"]
    assert sorted(report.dropped) == sorted(head)
    assert_bicubic(encoder_b_model.state_dict()["pos_embed"], expected_pos_embed(b_finetune["pos_embed"], 14))


def test_full_pretraining_model_without_decoder_reuse(
    seg_b: nn.Module, b_pretrain: Weights, b_encoder: Weights
) -> None:
    report = load_weights(seg_b, {"state_dict": b_pretrain})
    assert report.layout == "mtp_pretrain"
    expected_dropped = {"encoder.norm.weight", "encoder.norm.bias"} | {
        k for k in b_pretrain if not k.startswith("encoder.")
    }
    assert set(report.dropped) == expected_dropped
    assert len(report.resized) == 9 and len(report.loaded) == 243
    assert any("reuse_decoder='semseg'" in n for n in report.notes)
    assert_loaded(seg_b, b_encoder, {f"backbone.{k}": k for k in ("blocks.7.mlp.fc2.weight", "fpn1.1.ln.bias")})


def test_semseg_decoder_reuse_loads_the_pretrained_upernet(seg_b256: nn.Module, b_pretrain: Weights) -> None:
    report = load_weights(seg_b256, {"state_dict": b_pretrain}, reuse_decoder="semseg")
    head_keys = [k for k in seg_b256.state_dict() if k.startswith("decode_head.")]
    assert report.reinitialized == ["decode_head.conv_seg.weight", "decode_head.conv_seg.bias"]
    assert report.missing == []
    assert "semsegdecoder.decode_head.conv_seg.weight" in report.dropped
    assert {k for k in b_pretrain if k.startswith(("semseghead_", "insseg", "rotdet"))} <= set(report.dropped)
    reused = {k: "semsegdecoder." + k for k in head_keys if ".conv_seg." not in k}
    assert len(reused) == 72
    assert_loaded(seg_b256, b_pretrain, reused)
    conv_seg = seg_b256.decode_head.conv_seg.weight
    assert conv_seg.shape == (2, 256, 1, 1) and 0.005 < conv_seg.std().item() < 0.02  # MMSeg's Normal(0, 0.01)


def test_semseg_decoder_reuse_needs_a_256_channel_head(seg_b: nn.Module, b_pretrain: Weights) -> None:
    with pytest.raises(CheckpointError, match="decode_channels=256"):
        load_weights(seg_b, {"state_dict": b_pretrain}, reuse_decoder="semseg")


def test_semseg_decoder_reuse_needs_the_full_pretraining_file(seg_b256: nn.Module, b_encoder: Weights) -> None:
    with pytest.raises(CheckpointError, match=r"\*_pretrn_model.pth"):
        load_weights(seg_b256, {"state_dict": b_encoder}, reuse_decoder="semseg")


def test_rotdet_is_a_conversion_not_a_load(seg_b: nn.Module, b_pretrain: Weights) -> None:
    with pytest.raises(CheckpointError, match="convert_checkpoint"):
        load_weights(seg_b, {"state_dict": b_pretrain}, reuse_decoder="rotdet")


def test_change_ckpt_rename_equals_the_original_rule(b_pretrain: Weights) -> None:
    renamed = change_ckpt_rename(b_pretrain)
    expected = change_ckpt_reference(b_pretrain)
    assert list(renamed) == list(expected)
    assert all(renamed[k] is expected[k] for k in expected)
    assert "backbone.norm.weight" in renamed and "neck.fpn_convs.0.conv.weight" in renamed
    assert "roi_head.bbox_head.shared_fcs.1.weight" in renamed
    assert "semsegdecoder.decode_head.conv_seg.weight" in renamed


def test_change_ckpt_output_loads_its_backbone(seg_b: nn.Module, b_pretrain: Weights, b_encoder: Weights) -> None:
    report = load_weights(seg_b, {"state_dict": change_ckpt_reference(b_pretrain)})
    assert report.layout == "change_ckpt"
    assert ("backbone.pos_embed", (1, 196, 768), (1, 576, 768)) in report.resized
    assert {"backbone.norm.weight", "neck.fpn_convs.0.conv.weight", "semseghead_1.1.weight"} <= set(report.dropped)
    assert report.missing == [k for k in seg_b.state_dict() if k.startswith("decode_head.")]
    assert_loaded(seg_b, b_encoder, {"backbone.blocks.0.attn.qkv.weight": "blocks.0.attn.qkv.weight"})


def test_mae_checkpoint_into_bare_backbone(seg_b: nn.Module, b_encoder: Weights) -> None:
    """MAE: cls-token pos_embed (197 tokens), no RVSA tables, sampling convs or fpn: those are reported missing."""
    gen = torch.Generator().manual_seed(9)
    common = ("norm1.", "attn.qkv.", "attn.proj.", "norm2.", "mlp.fc1.", "mlp.fc2.")
    mae = {"cls_token": torch.randn(1, 1, 768, generator=gen), "pos_embed": torch.randn(1, 197, 768, generator=gen)}
    mae.update({k: v for k, v in b_encoder.items() if k.startswith("patch_embed.") or k.startswith("norm.")})
    in_block = [k for k in b_encoder if re.match(r"blocks\.\d+\.", k) and k.split(".", 2)[2].startswith(common)]
    mae.update({k: b_encoder[k] for k in in_block})
    mae.update({
        "mask_token": torch.zeros(1, 1, 512),
        "decoder_embed.weight": torch.zeros(512, 768),
        "decoder_pos_embed": torch.zeros(1, 197, 512),
        "decoder_blocks.0.norm1.weight": torch.ones(512),
        "decoder_pred.weight": torch.zeros(768, 512),
    })
    backbone = seg_b.backbone
    report = load_weights(backbone, {"model": mae, "epoch": 1599})
    assert report.layout == "mae"
    assert report.resized == [("pos_embed", (1, 197, 768), (1, 576, 768))]
    assert set(report.dropped) == {"cls_token", "norm.weight", "norm.bias", "mask_token", "decoder_embed.weight",
                                   "decoder_pos_embed", "decoder_blocks.0.norm1.weight", "decoder_pred.weight"}
    assert set(report.missing) == set(backbone.state_dict()) - set(mae)
    assert all(re.search(r"rel_pos|relative_position|sampling_|^fpn[12]\.", k) for k in report.missing)
    assert_bicubic(backbone.pos_embed.detach(), expected_pos_embed(mae["pos_embed"], 24, extra=1))


def test_raw_state_dict_with_module_prefix(seg_b: nn.Module, b_finetune: Weights) -> None:
    report = load_weights(seg_b.backbone, {f"module.{k}": v for k, v in b_finetune.items()})
    assert report.layout == "backbone"
    assert (report.resized, report.missing, report.dropped) == ([], [], [])
    assert_loaded(seg_b.backbone, b_finetune, {k: k for k in b_finetune})


def test_extract_state_dict_layouts(b_encoder: Weights, b_pretrain: Weights) -> None:
    assert extract_state_dict({"state_dict": b_encoder})[1] == "mtp_encoder"
    assert extract_state_dict({"state_dict": b_pretrain})[1] == "mtp_pretrain"
    assert extract_state_dict({"state_dict": change_ckpt_reference(b_pretrain)})[1] == "change_ckpt"
    backbone_only = {f"backbone.{k}": v for k, v in b_encoder.items()}
    assert extract_state_dict({"state_dict": backbone_only})[1] == "backbone_prefixed"
    state, layout = extract_state_dict({f"module.{k}": v for k, v in b_encoder.items()})
    assert layout == "mtp_encoder" and list(state) == list(b_encoder)
    with pytest.raises(CheckpointError, match="no weights found"):
        extract_state_dict({"epoch": 3, "optimizer": {}})


# --------------------------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------------------------


def test_vit_l_weights_into_vit_b_name_the_mismatch(seg_b: nn.Module, l_encoder: Weights) -> None:
    with pytest.raises(CheckpointError) as info:
        load_weights(seg_b, {"state_dict": l_encoder})
    message = str(info.value)
    assert "another architecture" in message
    assert "backbone.patch_embed.proj.weight: file (1024, 3, 16, 16) vs model (768, 3, 16, 16)" in message
    assert "ViT-L backbone (embed_dim 1024, 24 blocks)" in message and "mtp_vit_l_rvsa_upernet" in message


def test_class_count_mismatch_says_how_to_reinit(
    seg_b: nn.Module, b_finetune: Weights, upernet: dict[str, Any]
) -> None:
    head = head_weights(upernet["decode_head_vitb"]["state_dict"], seed=6, num_classes=7)
    ckpt = {"state_dict": {**{f"backbone.{k}": v for k, v in b_finetune.items()}, **head}}
    with pytest.raises(CheckpointError) as info:
        load_weights(seg_b, ckpt)
    message = str(info.value)
    assert "decode_head.conv_seg.weight is trained for 7 classes but the model has 2" in message
    assert "reinit_classifier=True" in message and "--num-classes 2" in message and "num_classes=7" in message

    report = load_weights(seg_b, ckpt, reinit_classifier=True)
    assert report.reinitialized == ["decode_head.conv_seg.weight", "decode_head.conv_seg.bias"]
    assert report.missing == [] and "decode_head.conv_seg.weight" in report.dropped
    assert seg_b.decode_head.conv_seg.weight.shape == (2, 512, 1, 1)
    assert_loaded(seg_b, head, {"decode_head.fpn_bottleneck.conv.weight": "decode_head.fpn_bottleneck.conv.weight"})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint file not found"):
        safe_load(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="not a file"):
        safe_load(tmp_path)


@pytest.mark.parametrize(
    "content, what",
    [
        (b"epoch 12 loss 0.3\n", "text file"),
        (b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "PNG image"),
        (b"<!DOCTYPE html><html><body>Download</body></html>", "HTML page"),
        (bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "not a known checkpoint format"),
        (b"", "empty"),
    ],
)
def test_not_a_checkpoint(tmp_path: Path, content: bytes, what: str) -> None:
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint") as info:
        safe_load(path)
    assert what in str(info.value)


def test_zip_archive_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError, match="zip archive but not a PyTorch checkpoint"):
        safe_load(path)


def test_truncated_file(files: dict[str, Path], tmp_path: Path) -> None:
    data = files["encoder_b"].read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt.*download it again"):
        safe_load(cut)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(cut)


# --------------------------------------------------------------------------------------------------------------------
# Safe loading
# --------------------------------------------------------------------------------------------------------------------


class RunsShell:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (self.command,)


class CallsEval:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return eval, ("__import__('os').system('touch MARKER')",)


class StartsProcess:
    def __reduce__(self) -> tuple[Any, tuple[list[str]]]:
        return subprocess.Popen, (["touch", "MARKER"],)


PAYLOADS = {  # payload -> the global it makes the unpickler call
    "shell": (lambda marker: RunsShell(f"touch {marker}"), f"{os.system.__module__}.system"),  # posix.system on Linux
    "eval": (lambda marker: CallsEval(), "builtins.eval"),
    # Protocol 2 (torch.save's) writes Python 2 module names: subprocess.Popen is stored as commands.Popen.
    "subprocess": (lambda marker: StartsProcess(), "commands.Popen"),
}


@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_code_running_pickle_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, payload: str) -> None:
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "MARKER"
    make, name = PAYLOADS[payload]
    evil = make(marker)
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "x": evil}, path)
    with pytest.raises(UnsafeCheckpointError) as info:
        safe_load(path)
    message = str(info.value)
    assert name in message and "can run code" in message and "not loaded" in message
    assert "weights_only=False" not in message
    with pytest.raises(UnsafeCheckpointError):
        load_model(path)
    assert not marker.exists()


def test_openmmlab_named_payload_stays_inert(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A class under an OpenMMLab name is rebuilt as a placeholder: its constructor never runs."""
    monkeypatch.chdir(tmp_path)

    def run(self: Any, command: str) -> None:
        os.system(command)

    hook_class = type("Hook", (), {"__init__": run, "__module__": "mmengine.hooks"})
    hook_class.__reduce__ = lambda self: (hook_class, ("touch HOOK_MARKER",))
    with pytest.MonkeyPatch.context() as mp:
        module = types.ModuleType("mmengine.hooks")
        module.Hook = hook_class
        mp.setitem(sys.modules, "mmengine", types.ModuleType("mmengine"))
        mp.setitem(sys.modules, "mmengine.hooks", module)
        torch.save({"state_dict": {"w": torch.ones(1)}, "hook": object.__new__(hook_class)}, tmp_path / "hook.pth")
    obj = safe_load(tmp_path / "hook.pth")
    assert isinstance(obj["hook"], InertObject) and obj["hook"].args == ("touch HOOK_MARKER",)
    assert repr(obj["hook"]) == "<inert mmengine.hooks.Hook>"
    assert not (tmp_path / "HOOK_MARKER").exists() and "mmengine" not in sys.modules


def test_openmmlab_list_subclass_becomes_an_inert_list(tmp_path: Path) -> None:
    """The unpickler appends only to allow-listed list types: a list subclass gets an InertList stand-in."""
    hook_list = type("HookList", (list,), {"__module__": "mmengine.hooks"})
    with pytest.MonkeyPatch.context() as mp:
        module = types.ModuleType("mmengine.hooks")
        module.HookList = hook_list
        mp.setitem(sys.modules, "mmengine", types.ModuleType("mmengine"))
        mp.setitem(sys.modules, "mmengine.hooks", module)
        hooks = hook_list(["CheckpointHook", "LoggerHook"])
        torch.save({"state_dict": {"w": torch.ones(1)}, "hooks": hooks}, tmp_path / "h.pth")
    hooks = safe_load(tmp_path / "h.pth")["hooks"]
    assert isinstance(hooks, InertList) and list(hooks) == ["CheckpointHook", "LoggerHook"]
    assert repr(hooks) == "<inert mmengine.hooks.HookList ['CheckpointHook', 'LoggerHook']>"


def test_released_encoder_file_loads_with_its_numpy_loss(files: dict[str, Path]) -> None:
    obj = safe_load(files["encoder_b"])
    assert set(obj) == {"epoch", "iteration", "state_dict", "optimizer", "scheduler", "loss_pretrain"}
    assert isinstance(obj["loss_pretrain"], np.ndarray)
    np.testing.assert_array_equal(obj["loss_pretrain"], [2.5, 1.25, 0.75])
    assert [e["key"] for e in manifest("mtp_encoder_ckpt_vitb224_keys.json")["state_dict"]] == list(obj["state_dict"])


def test_mmengine_file_objects_become_inert_placeholders(files: dict[str, Path]) -> None:
    obj = safe_load(files["mmseg_b"])
    assert set(obj) == {"meta", "state_dict", "message_hub", "optimizer", "param_schedulers"}
    assert "mmengine" not in sys.modules
    hub = obj["message_hub"]
    assert isinstance(hub, InertObject) and repr(hub) == "<inert mmengine.logging.message_hub.MessageHub>"
    loss = hub.state["_log_scalars"]["train/loss"]
    assert isinstance(loss, InertObject) and loss.state["max_length"] == 1000000
    np.testing.assert_array_equal(loss.state["_log_history"], [0.41, 0.39])
    assert hub.state["_runtime_info"]["seed"] == 2023 and isinstance(hub.state["_runtime_info"]["seed"], np.int64)
    cfg = obj["meta"]["cfg"]  # a dict subclass: loaded as an OrderedDict holding its items
    assert cfg["crop_size"] == (384, 384) and cfg["model"]["type"] == "EncoderDecoder"
    assert obj["meta"]["dataset_meta"]["classes"] == ("background", "building")


def test_mae_args_namespace_is_inert(tmp_path: Path) -> None:
    path = tmp_path / "mae.pth"
    args = argparse.Namespace(lr=1.5e-4, mask_ratio=0.75)
    torch.save({"model": {"cls_token": torch.zeros(1, 1, 4)}, "args": args}, path)
    args = safe_load(path)["args"]
    assert isinstance(args, InertObject) and args.state == {"lr": 1.5e-4, "mask_ratio": 0.75}


def test_legacy_format_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "old.pth"
    torch.save({"state_dict": {"pos_embed": torch.arange(6.0)}}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(safe_load(path)["state_dict"]["pos_embed"], torch.arange(6.0))


# --------------------------------------------------------------------------------------------------------------------
# Whole models, saving and conversion
# --------------------------------------------------------------------------------------------------------------------


def test_load_model_infers_vit_b_and_classes_from_an_mmseg_file(files: dict[str, Path]) -> None:
    model, card, report = load_model(files["mmseg_b"])
    assert card.architecture == "mtp_vit_b_rvsa_upernet" and card.num_classes == 5
    assert model.backbone.embed_dim == 768 and model.decode_head.num_classes == 5 and not model.training
    assert report.layout == "mmseg" and (report.missing, report.resized, report.dropped) == ([], [], [])
    state = safe_load(files["mmseg_b"])["state_dict"]
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_load_model_infers_vit_l_from_the_released_encoder(files: dict[str, Path], l_encoder: Weights) -> None:
    model, card, report = load_model(files["encoder_l"])
    assert card.architecture == "mtp_vit_l_rvsa_upernet" and card.num_classes == 2
    assert model.backbone.embed_dim == 1024 and len(model.backbone.blocks) == 24
    assert report.layout == "mtp_encoder" and report.dropped == ["norm.weight", "norm.bias"]
    full = full_attn_blocks(24, 6)
    assert sorted(report.resized) == sorted(
        [("backbone.pos_embed", (1, 784, 1024), (1, 576, 1024))]
        + [(f"backbone.blocks.{i}.attn.full_attn_rel_pos_{a}", (55, 64), (47, 64)) for i in full for a in "hw"]
    )
    state = model.state_dict()
    assert_bicubic(state["backbone.pos_embed"], expected_pos_embed(l_encoder["pos_embed"], 24))
    key = "blocks.23.attn.full_attn_rel_pos_h"
    assert_bicubic(state[f"backbone.{key}"], expected_rel_pos(l_encoder[key], 47))
    assert torch.equal(state["backbone.blocks.17.mlp.fc1.weight"], l_encoder["blocks.17.mlp.fc1.weight"])


def test_save_checkpoint_round_trip_with_card(tmp_path: Path, fsync_recorder: list[int]) -> None:
    model = create_model("mtp_vit_tiny_rvsa_upernet", num_classes=3)
    card = default_card("mtp_vit_tiny_rvsa_upernet", num_classes=3).replace(gsd_m=0.3, bands=(3, 2, 1))
    path = tmp_path / "out" / "tiny.pth"
    calls_before = len(fsync_recorder)
    save_checkpoint(path, model, card, epoch=4, metrics={"mIoU": 0.5})
    assert len(fsync_recorder) == calls_before + 1  # flushed to disk before the rename
    raw = torch.load(path, map_location="cpu", weights_only=True)  # loads with plain torch, no allow-list
    assert raw["meta"]["model_card"] == card.to_dict() and raw["meta"]["epoch"] == 4
    assert raw["meta"]["mtp_core_version"] and type(raw["meta"]["torch_version"]) is str
    loaded, loaded_card, report = load_model(path)
    assert loaded_card == card and report.layout == "mtp_core"
    assert (report.missing, report.dropped, report.resized) == ([], [], [])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny.pth"]

    relabeled, relabeled_card, report = load_model(path, num_classes=2)
    assert relabeled.decode_head.num_classes == 2 and relabeled_card.classes == ("background", "building")
    assert relabeled_card.gsd_m == 0.3 and relabeled_card.arch_args["num_classes"] == 2
    assert report.reinitialized == ["decode_head.conv_seg.weight", "decode_head.conv_seg.bias"]
    with pytest.raises(ValueError, match="plain"):
        save_checkpoint(tmp_path / "bad.pth", model, card, score=np.float64(1.0))
    with pytest.raises(ValueError, match="3 classes"):
        save_checkpoint(tmp_path / "bad.pth", create_model("mtp_vit_tiny_rvsa_upernet"), card)
    with pytest.raises(ValueError, match="segmentors"):
        save_checkpoint(tmp_path / "bad.pth", model.backbone, card)
    assert not (tmp_path / "bad.pth").exists()


def test_save_checkpoint_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = create_model("mtp_vit_tiny_rvsa_upernet")
    card = default_card("mtp_vit_tiny_rvsa_upernet")
    dst = tmp_path / "model.pth"
    dst.write_bytes(b"previous checkpoint")

    def failing_save(obj: Any, f: Path, *args: Any, **kwargs: Any) -> None:
        Path(f).write_bytes(b"PK\x03\x04 half of a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(dst, model, card)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path / "new.pth", model, card)
    assert dst.read_bytes() == b"previous checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pth"]


def test_cli_converts_a_released_encoder_into_a_finetuning_checkpoint(
    files: dict[str, Path], upernet: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "vitb_spacenet_init.pth"
    assert main(["convert-ckpt", str(files["encoder_b"]), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "layout: mtp_encoder" in printed and "backbone.pos_embed (1, 196, 768) -> (1, 576, 768)" in printed
    raw = torch.load(out, map_location="cpu", weights_only=True, mmap=True)  # mmap: a quick look at 500 MB
    assert raw["meta"]["model_card"]["architecture"] == "mtp_vit_b_rvsa_upernet"
    assert raw["meta"]["source_layout"] == "mtp_encoder" and raw["meta"]["converted_from"] == "encoder_b.pth"
    source = safe_load(files["encoder_b"])["state_dict"]
    assert_bicubic(raw["state_dict"]["backbone.pos_embed"], expected_pos_embed(source["pos_embed"], 24))
    key = "blocks.4.attn.sampling_offsets.2.weight"
    assert torch.equal(raw["state_dict"][f"backbone.{key}"], source[key])
    mmseg_keys = ["backbone." + e["key"] for e in manifest("vitb_rvsa_keys.json")["state_dict"]]
    mmseg_keys += [e["key"] for e in upernet["decode_head_vitb"]["state_dict"]]
    assert list(raw["state_dict"]) == mmseg_keys  # the complete SpaceNet fine-tuning model, in MMSeg's order

    assert main(["convert-ckpt", str(tmp_path / "missing.pth"), str(out)]) == 2
    assert "checkpoint file not found" in capsys.readouterr().err


def test_cli_semseg_and_rotdet_conversions(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = safe_load(files["pretrain_b"])["state_dict"]
    semseg_out = tmp_path / "semseg.pth"
    argv = [str(files["pretrain_b"]), str(semseg_out), "--reuse-decoder", "semseg", "--num-classes", "3"]
    assert main(["convert-ckpt", *argv]) == 0
    assert "reinitialized: decode_head.conv_seg.weight" in capsys.readouterr().out
    raw = torch.load(semseg_out, map_location="cpu", weights_only=True, mmap=True)
    card = raw["meta"]["model_card"]
    assert card["arch_args"] == {"num_classes": 3, "decode_channels": 256} and len(card["classes"]) == 3
    heads = [k for k in raw["state_dict"] if k.startswith("decode_head.") and ".conv_seg." not in k]
    assert len(heads) == 72 and all(torch.equal(raw["state_dict"][k], source["semsegdecoder." + k]) for k in heads)
    assert raw["state_dict"]["decode_head.conv_seg.weight"].shape == (3, 256, 1, 1)

    rot_out = tmp_path / "pretrn_model_rot.pth"
    report = convert_checkpoint(files["pretrain_b"], rot_out, reuse_decoder="rotdet")
    assert isinstance(report, LoadReport) and report.layout == "mtp_pretrain"
    raw = torch.load(rot_out, map_location="cpu", weights_only=True, mmap=True)
    assert set(raw) == {"state_dict"}
    expected = change_ckpt_reference(source)
    assert list(raw["state_dict"]) == list(expected)
    assert all(torch.equal(raw["state_dict"][k], v) for k, v in expected.items())

    with pytest.raises(CheckpointError, match="rotdetdecoder"):
        convert_checkpoint(files["encoder_b"], tmp_path / "x.pth", reuse_decoder="rotdet")
    assert not (tmp_path / "x.pth").exists()


def test_report_log_and_load_model_arguments(files: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    missing = [f"blocks.{i}.attn.rel_pos_h" for i in range(12)]
    report = LoadReport(layout="mae", source="x.pth", loaded=["a"], missing=missing)
    with caplog.at_level(logging.INFO, logger="mtp.test"):
        report.log(logging.getLogger("mtp.test"))
    assert "missing (left as initialized): 12 tensors: blocks.*.attn.rel_pos_h (x12)" in caplog.text
    with pytest.raises(CheckpointError, match="is a backbone"):
        load_model(files["encoder_b"], architecture="mtp_vit_b_rvsa")


def test_fully_specified_segmentor_card_relabels(tmp_path: Path) -> None:
    """Training configs build ``mtp_rvsa_upernet`` from dicts; a new class count goes into its head dicts."""
    args = {
        "backbone": {"embed_dim": 192, "depth": 4, "num_heads": 3, "out_indices": [0, 1, 2, 3], "img_size": 64},
        "decode_head": {"channels": 16, "num_classes": 4},
    }
    card = ModelCard(architecture="mtp_rvsa_upernet", arch_args=args, classes=("a", "b", "c", "d"), tile=64, overlap=16)
    path = tmp_path / "trained.pth"
    save_checkpoint(path, create_model("mtp_rvsa_upernet", **args), card)
    model, loaded_card, report = load_model(path, num_classes=2)
    assert model.decode_head.num_classes == 2 and report.missing == []
    assert loaded_card.arch_args["decode_head"] == {"channels": 16, "num_classes": 2} and loaded_card.num_classes == 2
    assert load_model(path)[1] == card


def test_load_model_takes_a_finetuned_crop_size_from_pos_embed(tmp_path: Path) -> None:
    """An MMSeg model fine-tuned on other crops (LoveDA: 512) is rebuilt at its own size, not resized to 384."""
    model = create_model("mtp_vit_tiny_rvsa_upernet", num_classes=7, img_size=256)
    path = tmp_path / "iter_80000.pth"
    torch.save({"meta": {"iter": 80000}, "state_dict": model.state_dict()}, path)
    loaded, card, report = load_model(path)
    assert card.architecture == "mtp_vit_tiny_rvsa_upernet" and card.tile == 256 and card.num_classes == 7
    assert card.arch_args == {"num_classes": 7, "decode_channels": 64, "img_size": 256}
    assert loaded.backbone.img_size == 256 and (report.resized, report.missing) == ([], [])
