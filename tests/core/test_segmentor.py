"""EncoderDecoder (whole/slide inference, auxiliary outputs) and the MMSeg-layout heads, on small hand-checked cases."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtp_core.models.segmentor import EncoderDecoder, slide_windows
from mtp_core.models.upernet import ConvModule, FCNHead, UPerHead

BN_KEYS = ["bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"]


class IdentityBackbone(nn.Module):
    def forward(self, x: Tensor) -> tuple[Tensor]:
        return (x,)


class LocalCoordHead(nn.Module):
    """Logits = the row / column index *inside the crop*, read from an image whose channels hold global row / column."""

    num_classes = 2
    align_corners = False

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        coords = inputs[0][:, :2]
        return coords - coords.amin(dim=(2, 3), keepdim=True)


class PyramidBackbone(nn.Module):
    """Four maps at strides 4, 8, 16, 32, as the ViT backbone's FPN gives."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(3, channels, 1) for _ in range(4))

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(conv(F.avg_pool2d(x, 2 ** (i + 2))) for i, conv in enumerate(self.convs))


def coord_image(batch: int, h: int, w: int) -> Tensor:
    rows = torch.arange(h, dtype=torch.float32).view(h, 1).expand(h, w)
    cols = torch.arange(w, dtype=torch.float32).view(1, w).expand(h, w)
    return torch.stack([rows, cols]).expand(batch, 2, h, w).clone()


def coord_model() -> EncoderDecoder:
    return EncoderDecoder(IdentityBackbone(), LocalCoordHead())


# --- slide inference ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 2, 3, 4, 10])
def test_slide_averages_logits_of_overlapping_windows(batch_size: int) -> None:
    # 10x7 image, crop 6x5, stride 4x3: rows [0,6) and [4,10), columns [0,5) and [2,7).
    # Row r is seen at local row r (first window) and r-4 (second); column c at c and c-2.
    expected_row = np.array([0, 1, 2, 3, (4 + 0) / 2, (5 + 1) / 2, 2, 3, 4, 5], dtype=np.float32)
    expected_col = np.array([0, 1, (2 + 0) / 2, (3 + 1) / 2, (4 + 2) / 2, 3, 4], dtype=np.float32)
    expected = np.stack([np.broadcast_to(expected_row[:, None], (10, 7)), np.broadcast_to(expected_col, (10, 7))])

    x = coord_image(2, 10, 7)
    out = coord_model().predict(x, mode="slide", crop_size=(6, 5), stride=(4, 3), batch_size=batch_size)
    assert out.shape == (2, 2, 10, 7)
    for b in range(2):
        np.testing.assert_array_equal(out[b].numpy(), expected)


def test_slide_on_image_smaller_than_crop_is_one_whole_crop() -> None:
    assert slide_windows(5, 7, (8, 8), (4, 4)) == [(0, 5, 0, 7)]
    model, x = coord_model(), coord_image(1, 5, 7)
    torch.testing.assert_close(model.predict(x, "slide", (8, 8), (4, 4)), model.predict(x, "whole"), rtol=0, atol=0)


def test_windows_are_clamped_inside_the_image() -> None:
    assert slide_windows(438, 406, (384, 384), (256, 256)) == [
        (0, 384, 0, 384),
        (0, 384, 22, 406),
        (54, 438, 0, 384),
        (54, 438, 22, 406),
    ]
    assert slide_windows(120, 250, (128, 128), (96, 96)) == [(0, 120, 0, 128), (0, 120, 96, 224), (0, 120, 122, 250)]
    assert slide_windows(384, 384, (384, 384), (256, 256)) == [(0, 384, 0, 384)]
    for h, w in [(1, 1), (33, 100), (385, 640), (1000, 257)]:
        windows = slide_windows(h, w, (64, 128), (48, 96))
        covered = np.zeros((h, w), dtype=int)
        for y1, y2, x1, x2 in windows:
            assert 0 <= y1 < y2 <= h and 0 <= x1 < x2 <= w
            assert (y2 - y1, x2 - x1) == (min(64, h), min(128, w))
            covered[y1:y2, x1:x2] += 1
        assert covered.min() >= 1
        assert len(set(windows)) == len(windows)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(mode="sliding"), "unknown inference mode"),
        (dict(mode="slide", crop_size=(0, 8)), "crop_size must be two positive integers"),
        (dict(mode="slide", crop_size=(8,)), "crop_size must be two positive integers"),
        (dict(mode="slide", crop_size=8), "crop_size must be two positive integers"),
        (dict(mode="slide", crop_size=(8.5, 8)), "crop_size must be two positive integers"),
        (dict(mode="slide", stride=(4, -1)), "stride must be two positive integers"),
        (dict(mode="slide", crop_size=(8, 8), stride=(4, 9)), "gaps"),
        (dict(mode="slide", batch_size=0), "batch_size must be >= 1"),
    ],
)
def test_bad_predict_arguments_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        coord_model().predict(coord_image(1, 16, 16), **kwargs)


# --- segmentor --------------------------------------------------------------------------------------------------------


def test_forward_and_auxiliary_outputs_are_at_input_size() -> None:
    model = EncoderDecoder(PyramidBackbone(8), UPerHead([8] * 4, 16, 3), FCNHead(8, 4, 3, in_index=2)).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        logits = model(x)
        both = model(x, return_aux=True)
    assert model.num_classes == 3
    assert logits.shape == (2, 3, 64, 96)
    assert isinstance(both, tuple) and both[0].shape == both[1].shape == (2, 3, 64, 96)
    torch.testing.assert_close(both[0], logits, rtol=0, atol=0)
    torch.testing.assert_close(model.predict(x), logits, rtol=0, atol=0)
    prefixes = [k.split(".")[0] for k in model.state_dict()]
    assert sorted(set(prefixes), key=prefixes.index) == ["backbone", "decode_head", "auxiliary_head"]

    plain = EncoderDecoder(PyramidBackbone(8), UPerHead([8] * 4, 16, 3)).eval()
    with torch.no_grad():
        logits, aux = plain(x, return_aux=True)
    assert logits.shape == (2, 3, 64, 96) and aux is None
    assert not any(k.startswith("auxiliary_head") for k in plain.state_dict())


# --- heads ------------------------------------------------------------------------------------------------------------


def test_conv_module_layout_and_init() -> None:
    module = ConvModule(64, 256, 3, padding=1)
    assert list(module.state_dict()) == ["conv.weight"] + BN_KEYS
    assert module.conv.bias is None and module.bn.eps == 1e-5 and module.bn.momentum == 0.1
    assert isinstance(module.activate, nn.ReLU)
    torch.testing.assert_close(module.bn.weight.data, torch.ones(256))
    torch.testing.assert_close(module.bn.bias.data, torch.zeros(256))
    fan_out_std = (2.0 / (256 * 3 * 3)) ** 0.5  # kaiming normal, mode fan_out, ReLU
    assert abs(module.conv.weight.std().item() / fan_out_std - 1) < 0.03


def test_fcn_head_key_names_and_output() -> None:
    head = FCNHead(16, 8, 2, num_convs=2, concat_input=True)
    convs = [f"convs.{i}.{k}" for i in range(2) for k in ["conv.weight"] + BN_KEYS]
    assert list(head.state_dict()) == ["conv_seg.weight", "conv_seg.bias"] + convs + [
        f"conv_cat.{k}" for k in ["conv.weight"] + BN_KEYS
    ]
    assert head.conv_cat.conv.weight.shape == (8, 24, 3, 3)

    aux = FCNHead(768, 256, 2)  # the usual auxiliary head: one conv, no concat, map 2
    assert list(aux.state_dict()) == ["conv_seg.weight", "conv_seg.bias", "convs.0.conv.weight"] + [
        f"convs.0.{k}" for k in BN_KEYS
    ]
    feats = [torch.randn(1, 16, 20 // 2**i, 24 // 2**i) for i in range(4)]
    assert head.eval()(feats).shape == (1, 2, 5, 6)
    with pytest.raises(ValueError, match="in_channels == channels"):
        FCNHead(16, 8, 2, num_convs=0)


def test_classifier_init_reset_and_dropout() -> None:
    head = UPerHead([8] * 4, 256, 2)
    keys = list(head.state_dict())
    head.reset_classifier(40)
    assert list(head.state_dict()) == keys and head.num_classes == 40
    assert head.conv_seg.weight.shape == (40, 256, 1, 1)
    assert abs(head.conv_seg.weight.std().item() / 0.01 - 1) < 0.05
    torch.testing.assert_close(head.conv_seg.bias.data, torch.zeros(40))
    with pytest.raises(ValueError, match="num_classes"):
        head.reset_classifier(0)

    assert isinstance(head.dropout, nn.Dropout2d) and head.dropout.p == 0.1
    no_dropout = UPerHead([8] * 4, 16, 2, dropout_ratio=0.0)
    assert no_dropout.dropout is None and len(no_dropout.state_dict()) == 74


def test_sync_batchnorm_conversion_keeps_keys() -> None:
    head = UPerHead([8] * 4, 16, 2)
    keys = [(k, v.shape) for k, v in head.state_dict().items()]
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(head)
    assert isinstance(synced.bottleneck.bn, nn.SyncBatchNorm)
    assert [(k, v.shape) for k, v in synced.state_dict().items()] == keys
