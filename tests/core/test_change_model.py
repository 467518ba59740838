"""MTP's change detector (Open-CD 1.1.0 ``SiamEncoderDecoder`` + MTP's ``UNetHead``) against the specification
(``mtp_multitask_spec.md`` §5.1), the backbone goldens of the original code and an independent computation of the
head; loading of MTP encoder, MAE and Open-CD files."""
from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from mtp_core.checkpoint import extract_state_dict, load_model, load_weights
from mtp_core.models import SiamEncoderDecoder, create_model, default_card
from tests.conftest import load_reference, shared_file

B_IN, B_SKIP, B_OUT = [768, 512, 256, 128], [768, 768, 768, 0], [512, 256, 128, 64]


def manifest(name: str) -> list[dict]:
    return json.loads(shared_file("reference", "mtp", name).read_text())["state_dict"]


@pytest.fixture(scope="module")
def tiny() -> SiamEncoderDecoder:
    torch.manual_seed(3)
    model = create_model("mtp_vit_tiny_rvsa_unet_cd", img_size=128).eval()
    with torch.no_grad():  # BN statistics and affine terms away from the identity, so the check sees them
        for m in model.decode_head.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1, 0.2)
                m.bias.normal_(0, 0.2)
    return model


def pair(seed: int, size: int = 128, batch: int = 2) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=gen), torch.randn(batch, 3, size, size, generator=gen)


def test_vit_b_keys_and_shapes_are_open_cds() -> None:
    with torch.device("meta"):
        model = create_model("mtp_vit_b_rvsa_unet_cd")
    state = model.state_dict()
    backbone = [(k.removeprefix("backbone."), tuple(v.shape)) for k, v in state.items() if k.startswith("backbone.")]
    # The CD copy of RVSA_MTP keeps norm and fpn1..4 (in the checkpoints, unused in forward): the encoder's key list,
    # at 256 px (16x16 tokens, full-attention tables of 2*16-1 rows).
    expected = []
    for e in manifest("mtp_encoder_ckpt_vitb224_keys.json"):
        shape = tuple(e["shape"])
        if e["key"] == "pos_embed":
            shape = (1, 256, 768)
        elif "full_attn_rel_pos" in e["key"]:
            shape = (31, 64)
        expected.append((e["key"], shape))
    assert backbone == expected
    head = [(k, tuple(v.shape)) for k, v in state.items() if k.startswith("decode_head.")]
    want = [("decode_head.conv_seg.weight", (2, 64, 1, 1)), ("decode_head.conv_seg.bias", (2,))]
    for i, (cin, skip, cout) in enumerate(zip(B_IN, B_SKIP, B_OUT)):
        for conv, width in (("conv1", cin + skip), ("conv2", cout)):
            want.append((f"decode_head.blocks.{i}.{conv}.0.weight", (cout, width, 3, 3)))
            want += [(f"decode_head.blocks.{i}.{conv}.1.{n}", (cout,))
                     for n in ("weight", "bias", "running_mean", "running_var")]
            want.append((f"decode_head.blocks.{i}.{conv}.1.num_batches_tracked", ()))
    assert head == want
    assert len(state) == len(backbone) + len(head)  # no neck, centre or attention parameters


def test_vit_l_head_reads_the_1024_channel_maps() -> None:
    with torch.device("meta"):
        model = create_model("mtp_vit_l_rvsa_unet_cd")
    state = model.state_dict()
    assert state["decode_head.blocks.0.conv1.0.weight"].shape == (512, 2048, 3, 3)
    assert state["decode_head.blocks.2.conv1.0.weight"].shape == (128, 256 + 1024, 3, 3)
    assert model.backbone.out_indices == (7, 11, 15, 23) and state["backbone.pos_embed"].shape == (1, 256, 1024)


def test_cd_backbone_returns_block_maps_at_stride_16() -> None:
    """The golden of the original backbone: the CD copy returns the blocks' token maps, without fpn."""
    golden = load_reference("reference", "mtp", "golden_tiny_s256_b2.pt")
    model = create_model("mtp_vit_tiny_rvsa_unet_cd", img_size=256).backbone
    model.set_attn_impl("reference")
    report = load_weights(model, golden["state_dict"])
    assert report.missing == ["norm.weight", "norm.bias"]  # the segmentation copy has no norm
    with torch.no_grad():
        maps = model.eval()(golden["input"])
    assert [tuple(m.shape) for m in maps] == [(2, 192, 16, 16)] * 4
    for i, out in enumerate(maps):
        ref = golden["intermediates"][f"block_out.{i}"].permute(0, 2, 1).reshape(2, 192, 16, 16)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=2e-5)


def test_head_output_is_twice_the_input_and_the_model_resizes_it(tiny: SiamEncoderDecoder) -> None:
    a, b = pair(1)
    with torch.no_grad():
        raw = tiny.decode_head(tiny.extract_feat(torch.cat([a, b], 1)))
        logits = tiny(torch.cat([a, b], 1))
    assert raw.shape == (2, 2, 256, 256)  # 8 -> 16 -> 32 -> 64 -> 128 -> 256 for a 128 px input
    assert logits.shape == (2, 2, 128, 128)
    torch.testing.assert_close(logits, F.interpolate(raw, size=(128, 128), mode="bilinear", align_corners=False))


def test_both_dates_run_through_one_backbone(tiny: SiamEncoderDecoder) -> None:
    a, b = pair(2)
    calls: list[Tensor] = []
    handle = tiny.backbone.register_forward_hook(lambda m, inp, out: calls.append(inp[0]))
    try:
        with torch.no_grad():
            fused = tiny.extract_feat(torch.cat([a, b], 1))
    finally:
        handle.remove()
    assert len(calls) == 2 and torch.equal(calls[0], a) and torch.equal(calls[1], b)
    with torch.no_grad():
        fa, fb = tiny.backbone(a), tiny.backbone(b)
    for f, x, y in zip(fused, fa, fb):
        torch.testing.assert_close(f, (x - y).abs())
    # one set of weights: both dates' gradients land in the same parameters
    model = create_model("mtp_vit_tiny_rvsa_unet_cd", img_size=128).train()
    only_a = torch.autograd.grad(model.backbone(a)[3].sum(), model.backbone.patch_embed.proj.weight)[0]
    loss = model(torch.cat([a, b], 1)).sum()
    both = torch.autograd.grad(loss, model.backbone.patch_embed.proj.weight)[0]
    assert only_a.abs().sum() > 0 and both.abs().sum() > 0
    assert sum(1 for _ in model.backbone.parameters()) == sum(1 for n, _ in model.named_parameters()
                                                               if n.startswith("backbone."))


def test_exchanging_the_dates_gives_the_same_change(tiny: SiamEncoderDecoder) -> None:
    """``abs_diff`` fusion is symmetric, which is why MTP's ExchangeTime augmentation keeps the label."""
    a, b = pair(3)
    with torch.no_grad():
        ab, ba = tiny(torch.cat([a, b], 1)), tiny(torch.cat([b, a], 1))
        same = tiny(torch.cat([a, a], 1))
    torch.testing.assert_close(ab, ba, rtol=0, atol=0)
    assert not torch.allclose(ab, same)


def _conv_bn_relu(x: Tensor, state: dict[str, Tensor], prefix: str) -> Tensor:
    x = F.conv2d(x, state[f"{prefix}.0.weight"], padding=1)
    x = F.batch_norm(x, state[f"{prefix}.1.running_mean"], state[f"{prefix}.1.running_var"],
                     state[f"{prefix}.1.weight"], state[f"{prefix}.1.bias"], training=False, eps=1e-5)
    return torch.clamp(x, min=0)


def test_head_equals_an_independent_computation_of_its_layers(tiny: SiamEncoderDecoder) -> None:
    """§5.1 written out with functional ops from the state dict: reverse, nearest x2 + bilinear skip + 2 convs per
    block (no skip in the last), bilinear x2, dropout (identity in eval), 1x1 classifier."""
    gen = torch.Generator().manual_seed(4)
    feats = [torch.randn(2, 192, 8, 8, generator=gen) for _ in range(4)]
    state = tiny.decode_head.state_dict()
    x, skips = feats[3], [feats[2], feats[1], feats[0], None]
    for i, skip in enumerate(skips):
        h, w = x.shape[-2] * 2, x.shape[-1] * 2
        idx_h, idx_w = torch.arange(h) // 2, torch.arange(w) // 2
        x = x[:, :, idx_h][:, :, :, idx_w]  # nearest x2
        if skip is not None:
            x = torch.cat([x, F.interpolate(skip, size=(h, w), mode="bilinear", align_corners=False)], 1)
        x = _conv_bn_relu(_conv_bn_relu(x, state, f"blocks.{i}.conv1"), state, f"blocks.{i}.conv2")
    x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    expected = F.conv2d(x, state["conv_seg.weight"], state["conv_seg.bias"])
    with torch.no_grad():
        actual = tiny.decode_head(feats)
    assert actual.shape == (2, 2, 256, 256)  # 8 -> 16 -> 32 -> 64 -> 128 -> 256
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_mtp_encoder_file_loads_into_the_cd_backbone() -> None:
    """The released encoder (224 px, with norm and fpn) fills every backbone tensor; pos/rel-pos resized to 256 px."""
    gen = torch.Generator().manual_seed(5)
    encoder = {e["key"]: (torch.randn(e["shape"], generator=gen) if e["dtype"] == "float32"
                          else create_model("mtp_vit_tiny_rvsa").blocks[0].attn.relative_position_index.clone())
               for e in manifest("mtp_encoder_ckpt_vitb224_keys.json")}
    model = create_model("mtp_vit_b_rvsa_unet_cd")
    report = load_weights(model, {"state_dict": encoder, "iteration": 80000})
    assert report.layout == "mtp_encoder" and report.dropped == []
    assert report.missing == [k for k in model.state_dict() if k.startswith("decode_head.")]
    resized = {k: (a, b) for k, a, b in report.resized}
    assert resized["backbone.pos_embed"] == ((1, 196, 768), (1, 256, 768))
    assert resized["backbone.blocks.2.attn.full_attn_rel_pos_h"] == ((27, 64), (31, 64))
    torch.testing.assert_close(model.backbone.norm.weight.detach(), encoder["norm.weight"])
    torch.testing.assert_close(model.backbone.blocks[4].mlp.fc1.weight.detach(), encoder["blocks.4.mlp.fc1.weight"])


def test_mae_file_loads_into_the_cd_backbone() -> None:
    model = create_model("mtp_vit_tiny_rvsa_unet_cd")
    src = create_model("mtp_vit_tiny_rvsa", img_size=224).state_dict()
    gen = torch.Generator().manual_seed(6)
    mae = {k: torch.randn(v.shape, generator=gen) for k, v in src.items()
           if re.match(r"(patch_embed|blocks\.\d+\.(norm|mlp|attn\.(qkv|proj)))", k)}
    mae.update(cls_token=torch.zeros(1, 1, 192), pos_embed=torch.randn(1, 197, 192, generator=gen),
               mask_token=torch.zeros(1, 1, 128), **{"norm.weight": torch.ones(192), "norm.bias": torch.zeros(192)})
    report = load_weights(model.backbone, {"model": mae})
    assert report.layout == "mae" and set(report.dropped) == {"cls_token", "mask_token"}
    assert report.resized == [("pos_embed", (1, 197, 192), (1, 256, 192))]
    assert "norm.weight" in report.loaded


def test_open_cd_checkpoint_is_recognised_and_rebuilt(tmp_path) -> None:
    """A fine-tuned Open-CD file (no model card): the architecture, head widths and crop size come from the weights."""
    source = create_model("mtp_vit_tiny_rvsa_unet_cd", img_size=128, decoder_channels=(96, 48, 24, 12), channels=12)
    path = tmp_path / "epoch_150.pth"
    torch.save({"meta": {"epoch": 150}, "state_dict": source.state_dict()}, path)
    state, layout = extract_state_dict(torch.load(path, weights_only=True))
    assert layout == "opencd"
    model, card, report = load_model(path)
    assert type(model) is SiamEncoderDecoder and card.architecture == "mtp_vit_tiny_rvsa_unet_cd"
    assert card.classes == ("unchanged", "changed") and card.tile == 128
    assert not report.missing and not report.dropped
    a, b = pair(7)
    with torch.no_grad():
        torch.testing.assert_close(model(torch.cat([a, b], 1)), source.eval()(torch.cat([a, b], 1)))


def test_default_card_of_a_change_detector() -> None:
    card = default_card("mtp_vit_b_rvsa_unet_cd")
    assert (card.tile, card.overlap, card.gsd_m, card.classes) == (256, 64, 0.5, ("unchanged", "changed"))
