"""Parity of ``UPerHead`` with MMSeg 1.0.0 (goldens of shared/reference/mmseg, key manifest of shared/reference/mtp)."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from mtp_core.models.upernet import UPerHead
from tests.conftest import load_reference, shared_file

GOLDENS = ["golden_upernet_tiny.pt", "golden_upernet_in48.pt", "golden_upernet_s384.pt", "golden_upernet_odd.pt"]
TOL = dict(rtol=1e-4, atol=1e-5)  # reference/mmseg/README.md, UPerHead logits and intermediates


def build_from_golden(golden: dict) -> UPerHead:
    args = {k: v for k, v in golden["meta"]["constructor"].items() if k not in ("type", "norm_cfg")}
    assert golden["meta"]["constructor"]["norm_cfg"]["type"] == "BN"
    head = UPerHead(**args).eval()
    head.load_state_dict(golden["state_dict"], strict=True)
    return head


def manifest_entries(name: str, prefix: str) -> list[tuple[str, tuple[int, ...]]]:
    data = json.loads(shared_file("reference", "mtp", "upernet_keys_spacenetv1.json").read_text())
    return [
        (e["key"][len(prefix) :], tuple(e["shape"])) for e in data[name]["state_dict"] if e["key"].startswith(prefix)
    ]


def meta_head(**kwargs) -> UPerHead:
    """A full-size head without allocating or initialising its weights."""
    with torch.device("meta"):
        return UPerHead(**kwargs)


@pytest.mark.parametrize("name", GOLDENS)
def test_golden_logits_and_intermediates(name: str) -> None:
    golden = load_reference("reference", "mmseg", name)
    head = build_from_golden(golden)
    assert list(head.state_dict()) == list(golden["state_dict"]) == golden["meta"]["state_dict_keys"]

    captured: dict[str, torch.Tensor] = {}
    hooks = [
        head.get_submodule(key).register_forward_hook(lambda m, a, out, key=key: captured.__setitem__(key, out))
        for key in golden["intermediates"]
    ]
    with torch.no_grad():
        logits = head(golden["inputs"])
    for hook in hooks:
        hook.remove()

    torch.testing.assert_close(logits, golden["logits"], **TOL)
    assert set(captured) == set(golden["intermediates"])
    for key, ref in golden["intermediates"].items():
        torch.testing.assert_close(captured[key], ref, **TOL, msg=lambda m, key=key: f"{key}: {m}")
    if "logits_img" in golden:
        size = tuple(golden["meta"]["image_shape"])
        logits_img = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        torch.testing.assert_close(logits_img, golden["logits_img"], **TOL)


def test_forward_is_classifier_on_features_in_eval() -> None:
    golden = load_reference("reference", "mmseg", "golden_upernet_tiny.pt")
    head = build_from_golden(golden)
    with torch.no_grad():
        feats = head.forward_features(golden["inputs"])
        torch.testing.assert_close(feats, golden["intermediates"]["fpn_bottleneck"], **TOL)
        torch.testing.assert_close(head(golden["inputs"]), head.conv_seg(feats), rtol=0, atol=0)


@pytest.mark.parametrize("variant, in_ch", [("decode_head_vitb", 768), ("decode_head_vitl", 1024)])
def test_spacenet_head_matches_manifest(variant: str, in_ch: int) -> None:
    head = meta_head(in_channels=[in_ch] * 4, channels=512, num_classes=2)
    expected = manifest_entries(variant, "decode_head.")
    assert [(k, tuple(v.shape)) for k, v in head.state_dict().items()] == expected
    data = json.loads(shared_file("reference", "mtp", "upernet_keys_spacenetv1.json").read_text())
    assert sum(p.numel() for p in head.parameters()) == data[variant]["n_params"]


@pytest.mark.parametrize("variant, in_ch", [("mtp_pretrain_semseg_vitb", 768), ("mtp_pretrain_semseg_vitl", 1024)])
def test_pretraining_head_matches_manifest(variant: str, in_ch: int) -> None:
    head = meta_head(in_channels=[in_ch] * 4, channels=256, num_classes=1)
    expected = manifest_entries(variant, "semsegdecoder.decode_head.")
    assert [(k, tuple(v.shape)) for k, v in head.state_dict().items()] == expected
