"""The MTP backbones as timm models: built by timm's builder, so features_only, the pretrained config and both ways
of loading released weights (a custom loader for ``pretrained=True``, key remapping for ``checkpoint_path=``) work."""
from __future__ import annotations

import pytest
import timm
import torch

import mtp_core.models  # noqa: F401  (registers the models with timm)
from mtp_core.checkpoint import load_weights
from mtp_tools.testing import det_init_
from tests.core.test_checkpoint import fake_mmengine, mmengine_file_object


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    """A pretraining encoder in MTP's released layout (224 px, with the final norm), tiny size."""
    encoder = timm.create_model("mtp_vit_tiny_rvsa", img_size=224, with_norm=True)
    det_init_(encoder, seed=3)
    path = tmp_path_factory.mktemp("weights") / "tiny_encoder.pth"
    torch.save(encoder.state_dict(), path)
    return path


def test_features_only_gives_the_four_maps_with_their_strides():
    model = timm.create_model("mtp_vit_tiny_rvsa", features_only=True).eval()
    assert model.feature_info.channels() == [192] * 4 and model.feature_info.reduction() == [4, 8, 16, 32]
    x = torch.randn(1, 3, 384, 384)
    with torch.no_grad():
        maps = model(x)
        reference = model.model(x)  # the backbone's own forward
    assert all(torch.equal(a, b) for a, b in zip(maps, reference))
    picked = timm.create_model("mtp_vit_tiny_rvsa", features_only=True, out_indices=(1, 3))
    assert picked.feature_info.reduction() == [8, 32] and picked.model.out_indices == (0, 1, 2, 3)


def test_the_pretrained_config_describes_the_model():
    model = timm.create_model("mtp_vit_b_rvsa", pretrained=False)
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 384, 384) and cfg["first_conv"] == "patch_embed.proj"
    assert cfg["mean"] == pytest.approx((0.485, 0.456, 0.406), abs=1e-3)
    assert timm.create_model("mtp_vit_b_rvsa_pretrain").pretrained_cfg["input_size"] == (3, 224, 224)


def test_checkpoint_path_remaps_and_resizes_a_released_encoder(encoder_file):
    loaded = timm.create_model("mtp_vit_tiny_rvsa", checkpoint_path=str(encoder_file))
    expected = timm.create_model("mtp_vit_tiny_rvsa")
    load_weights(expected, encoder_file)  # pos_embed 14x14 -> 24x24, the pretraining norm dropped
    assert _same(loaded, expected)


def test_pretrained_file_goes_through_the_safe_loader(encoder_file, tmp_path):
    """An MMSeg training file (MMEngine objects inside) loads with pretrained=True and a file: the custom loader
    reads it weights-only with inert stand-ins, never importing mmengine."""
    segmentor_state = {f"backbone.{k}": v for k, v in torch.load(encoder_file, weights_only=True).items()
                       if not k.startswith("norm.")}
    path = tmp_path / "iter_80000.pth"
    with fake_mmengine():
        torch.save(mmengine_file_object(segmentor_state), path)
    model = timm.create_model("mtp_vit_tiny_rvsa", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    expected = timm.create_model("mtp_vit_tiny_rvsa")
    load_weights(expected, encoder_file)
    assert _same(model, expected)


def test_pretrained_without_a_file_says_where_weights_come_from():
    with pytest.raises(ValueError, match="pretrained_cfg_overlay=dict\\(file=PATH\\)"):
        timm.create_model("mtp_vit_b_rvsa", pretrained=True)
