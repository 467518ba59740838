"""Test-time augmentation (MMSeg's --tta) and the notes printed next to the test metrics."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.test import metric_notes
from training.tta import TtaView, predict_tta, tta_views

MMSEG_TTA_PIPELINE = [  # as MMSeg's configs/_base_/datasets/*.py write it
    dict(type="LoadImageFromFile", backend_args=None),
    dict(type="TestTimeAug", transforms=[
        [dict(type="Resize", scale_factor=r, keep_ratio=True) for r in (0.5, 1.0, 1.5)],
        [dict(type="RandomFlip", prob=0.0, direction="horizontal"),
         dict(type="RandomFlip", prob=1.0, direction="horizontal")],
        [dict(type="LoadAnnotations")],
        [dict(type="PackSegInputs")],
    ]),
]


def test_views_of_an_mmseg_tta_pipeline() -> None:
    views = tta_views(MMSEG_TTA_PIPELINE)
    assert views == [TtaView(r, f) for r in (0.5, 1.0, 1.5) for f in (None, "horizontal")]
    assert len(tta_views(None)) == 12  # MMSeg's 6 ratios x flip when the config has none
    bad = [dict(type="TestTimeAug", transforms=[[dict(type="RandomCrop", crop_size=64)]])]
    with pytest.raises(ValueError, match="RandomCrop.*not supported"):
        tta_views(bad)


def _normalize(img: torch.Tensor) -> torch.Tensor:
    return img.float()[None] / 255


def test_tta_undoes_flips_and_rescaling() -> None:
    """A per-pixel 'model' gives the same probabilities through any flip; rescaled views differ only by resampling."""
    img = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 20, 16), dtype=np.uint8))
    weight = torch.tensor([[1.0, -2.0, 0.5], [-1.0, 1.5, 2.0]])[:, :, None, None]
    seen = []

    def predict(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape[-2:]))
        return F.conv2d(x, weight)

    plain = predict_tta(img, _normalize, (20, 16), [TtaView()], predict, crop=(8, 8))
    expected = torch.softmax(F.conv2d(_normalize(img), weight), 1)[0]
    torch.testing.assert_close(plain, expected)
    for flip in ("horizontal", "vertical", "diagonal"):
        torch.testing.assert_close(predict_tta(img, _normalize, (20, 16), [TtaView(flip=flip)], predict, (8, 8)),
                                   expected)
    seen.clear()
    scaled = predict_tta(img, _normalize, (20, 16), [TtaView(0.25), TtaView(2.0, "horizontal")], predict, (8, 8))
    assert seen == [(8, 8), (40, 32)]  # 5x4 padded to the 8x8 crop; 40x32 as mmcv rounds 20x16 x 2
    assert scaled.shape == (2, 20, 16) and torch.allclose(scaled.sum(0), torch.ones(20, 16))
    assert (scaled.argmax(0) == expected.argmax(0)).float().mean() > 0.5


def test_notes_explain_nan_averaging_of_mfscore() -> None:
    metrics = {"per_class": {"Fscore": np.array([0.9026, np.nan], np.float32),
                             "Dice": np.array([0.9026, 0.0], np.float32)}}
    notes = metric_notes(metrics, ("background", "building"))
    assert notes == ["note: class 'building' is never predicted or absent from the labels: its F-score is NaN and "
                     "left out of mFscore (MMSeg's nanmean), while its Dice 0.00 counts in mDice"]
    assert metric_notes({"per_class": {"Fscore": np.ones(2), "Dice": np.ones(2)}}, ("a", "b")) == []
