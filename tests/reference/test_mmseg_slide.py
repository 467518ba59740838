"""Parity of ``EncoderDecoder`` whole/slide inference with MMSeg 1.0.0 (``golden_slide*.pt``, two toy models)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mtp_core.models.segmentor import EncoderDecoder, slide_windows
from tests.conftest import load_reference
from tests.reference.toy_models import build_toy

CASES = {
    "golden_slide.pt": ["upernet/spacenet_438x406"],
    "golden_slide_toyconv.pt": ["toyconv/spacenet_438x406"],
    "golden_slide_small.pt": [
        f"{model}/{case}"
        for case in ("grid_200x300", "short_120x250", "batch2_100x150")
        for model in ("upernet", "toyconv")
    ],
    "golden_slide_valresize.pt": ["upernet/valresize_384_to_438x406"],
}
TOL = {"upernet": dict(rtol=1e-4, atol=1e-5), "toyconv": dict(rtol=1e-5, atol=1e-4)}  # README tolerances
MAX_NEAR_TIES = 5  # argmax pixels allowed to differ, only where the two reference logits (nearly) tie
PARAMS = [(file, key) for file, keys in CASES.items() for key in keys]


def load_case(file: str, key: str) -> tuple[EncoderDecoder, torch.Tensor, dict, dict]:
    golden = load_reference("reference", "mmseg", file)
    model_name, case = key.split("/")
    model = build_toy(model_name, golden["meta"]).eval()
    state = golden["state_dicts"][model_name]
    model.load_state_dict(state, strict=True)
    assert list(model.state_dict()) == list(state)
    return model, golden["inputs"][case].float(), golden["meta"]["cases"][case], golden["results"][key]


def assert_argmax_matches(logits: torch.Tensor, ref_logits: torch.Tensor, ref_pred: torch.Tensor) -> None:
    pred = logits.argmax(dim=1, keepdim=True)
    assert pred.shape == ref_pred.shape
    wrong = pred != ref_pred.long()
    assert int(wrong.sum()) <= MAX_NEAR_TIES
    top2 = ref_logits.topk(2, dim=1).values
    assert bool(((top2[:, :1] - top2[:, 1:])[wrong] < 1e-4).all()), "an argmax difference away from a near-tie"


@pytest.mark.parametrize("file", list(CASES))
def test_every_golden_case_is_checked(file: str) -> None:
    assert sorted(load_reference("reference", "mmseg", file)["results"]) == sorted(CASES[file])


@pytest.mark.parametrize("file, key", PARAMS)
def test_slide_and_whole_match_mmseg(file: str, key: str) -> None:
    model, x, case, ref = load_case(file, key)
    tol = TOL[key.split("/")[0]]
    cfg = case["test_cfg_slide"]
    h, w = x.shape[-2:]

    assert [list(win) for win in slide_windows(h, w, cfg["crop_size"], cfg["stride"])] == ref["slide_windows"]
    with torch.no_grad():
        slide = model.predict(x, mode="slide", crop_size=cfg["crop_size"], stride=cfg["stride"])
        torch.testing.assert_close(slide, ref["slide_logits"], **tol)
        if "whole_logits" in ref:
            torch.testing.assert_close(model.predict(x, mode="whole"), ref["whole_logits"], **tol)

    ori_shape = tuple(case["predict_metainfo"]["ori_shape"])
    seg_logits = F.interpolate(slide, size=ori_shape, mode="bilinear", align_corners=False)
    if "predict_seg_logits" in ref:
        torch.testing.assert_close(seg_logits, ref["predict_seg_logits"], **tol)
        ref_seg_logits = ref["predict_seg_logits"]
    else:
        assert ref["predict_equals_slide"] and ori_shape == (h, w)
        ref_seg_logits = ref["slide_logits"]
    assert_argmax_matches(seg_logits, ref_seg_logits, ref["predict_pred_sem_seg"])

    with torch.no_grad():  # several windows per forward pass: same sums, same order
        batched = model.predict(x, mode="slide", crop_size=cfg["crop_size"], stride=cfg["stride"], batch_size=4)
    torch.testing.assert_close(batched, slide, rtol=0, atol=1e-5)

