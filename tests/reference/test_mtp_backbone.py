"""Parity of the RVSA backbone with the original ``RVSA_MTP`` (goldens and key manifests of shared/reference/mtp)."""
from __future__ import annotations

import json

import pytest
import timm
import torch

import mtp_core.models  # noqa: F401  (registers the models with timm)
from mtp_core.models import create_model
from mtp_core.models.rvsa import FullAttention, RVSAViT
from tests.conftest import load_reference, shared_file

GOLDENS = ["golden_tiny_s256_b2.pt", "golden_tiny_s384_b1.pt"]
TOL = dict(rtol=1e-4, atol=2e-5)  # reference/mtp/README.md, tiny goldens


def manifest(name: str) -> dict:
    return json.loads(shared_file("reference", "mtp", name).read_text())


def build_from_golden(golden: dict, impl: str) -> RVSAViT:
    args = {k: v for k, v in golden["meta"]["constructor_args"].items() if k != "use_abs_pos_emb"}
    model = RVSAViT(**args, attn_impl=impl).eval()
    model.load_state_dict(golden["state_dict"], strict=True)
    return model


def run_with_intermediates(model: RVSAViT, x: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], dict]:
    captured: dict[str, torch.Tensor] = {}
    hooks = [model.patch_embed.register_forward_hook(lambda m, i, o: captured.__setitem__("patch_embed_out", o[0]))]
    for i, blk in enumerate(model.blocks):
        hooks.append(blk.attn.register_forward_hook(lambda m, a, o, i=i: captured.__setitem__(f"attn_out.{i}", o)))
        hooks.append(blk.register_forward_hook(lambda m, a, o, i=i: captured.__setitem__(f"block_out.{i}", o)))
    with torch.no_grad():
        outputs = model(x)
    for h in hooks:
        h.remove()
    return outputs, captured


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
@pytest.mark.parametrize("name", GOLDENS)
def test_tiny_golden_outputs_and_intermediates(name: str, impl: str) -> None:
    golden = load_reference("reference", "mtp", name)
    model = build_from_golden(golden, impl)
    assert list(model.state_dict()) == list(golden["state_dict"])
    outputs, captured = run_with_intermediates(model, golden["input"])
    assert len(outputs) == 4
    for out, ref in zip(outputs, golden["outputs"]):
        torch.testing.assert_close(out, ref, **TOL)
    assert set(captured) == set(golden["intermediates"])
    for key, ref in golden["intermediates"].items():
        torch.testing.assert_close(captured[key], ref, **TOL, msg=lambda m, key=key: f"{key}: {m}")


def test_tiny_golden_block_types() -> None:
    golden = load_reference("reference", "mtp", GOLDENS[0])
    model = build_from_golden(golden, "reference")
    kinds = ["full" if isinstance(b.attn, FullAttention) else "RVSA" for b in model.blocks]
    assert kinds == golden["meta"]["block_types"]


def assert_matches_manifest(model: torch.nn.Module, spec: dict) -> None:
    state = model.state_dict()
    got = [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()]
    want = [(e["key"], e["shape"], e["dtype"]) for e in spec["state_dict"]]
    assert got == want
    assert sum(p.numel() for p in model.parameters()) == spec["n_params"]
    kinds = ["full" if isinstance(b.attn, FullAttention) else "RVSA" for b in model.blocks]
    assert kinds == [b["attn"] for b in spec["blocks"]]


@pytest.mark.parametrize(
    ("model_name", "manifest_name"),
    [
        ("mtp_vit_b_rvsa", "vitb_rvsa_keys.json"),
        ("mtp_vit_l_rvsa", "vitl_rvsa_keys.json"),
        ("mtp_vit_b_rvsa_pretrain", "mtp_encoder_ckpt_vitb224_keys.json"),
        ("mtp_vit_l_rvsa_pretrain", "mtp_encoder_ckpt_vitl448_keys.json"),
    ],
)
def test_state_dict_equals_manifest(model_name: str, manifest_name: str) -> None:
    with torch.device("meta"):  # shapes and order only: no memory, no init cost
        model = timm.create_model(model_name)
    assert_matches_manifest(model, manifest(manifest_name))


def test_timm_vit_b_is_the_spacenet_backbone() -> None:
    spec = manifest("vitb_rvsa_keys.json")
    model = timm.create_model("mtp_vit_b_rvsa").eval()
    assert isinstance(model, RVSAViT)
    args = spec["constructor_args"]
    assert model.img_size == args["img_size"] and model.out_indices == tuple(args["out_indices"])
    assert_matches_manifest(model, spec)
    # drop path as in the config (0.3 at the last block), inactive in eval
    assert model.blocks[-1].drop_path.drop_prob == pytest.approx(args["drop_path_rate"])
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 384, 384))
    assert [tuple(f.shape) for f in feats] == [(1, 768, 96, 96), (1, 768, 48, 48), (1, 768, 24, 24), (1, 768, 12, 12)]
    assert [i["reduction"] for i in model.feature_info] == [4, 8, 16, 32]


def test_segmentor_keys_equal_mmseg() -> None:
    heads = manifest("upernet_keys_spacenetv1.json")
    for name, backbone_manifest, head_key in [
        ("mtp_vit_b_rvsa_upernet", "vitb_rvsa_keys.json", "decode_head_vitb"),
        ("mtp_vit_l_rvsa_upernet", "vitl_rvsa_keys.json", "decode_head_vitl"),
    ]:
        with torch.device("meta"):
            model = create_model(name)
        want = ["backbone." + e["key"] for e in manifest(backbone_manifest)["state_dict"]]
        want += [e["key"] for e in heads[head_key]["state_dict"]]
        got = {k: list(v.shape) for k, v in model.state_dict().items()}
        assert list(got) == want
        assert all(got[e["key"]] == e["shape"] for e in heads[head_key]["state_dict"])
