"""The instance decoder's ops against mmcv 2.0 / mmdet 3.1 outputs
(``shared/reference/mtp_pretrain/golden_pretrain_ops.pt``).

Tolerances from the reference README / spec §6.4: RoIAlign 2e-5, coders 1e-5, anchors and mask targets exact, NMS
identical keep. (The rotated ops of the file belong to the rotated-detection decoder.)
"""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import roi_align

from mtp_core.models.multitask.anchors import AnchorGenerator
from mtp_core.models.multitask.box_coder import DeltaXYWHBBoxCoder
from mtp_core.models.multitask.mask_head import mask_target
from mtp_core.models.multitask.nms import batched_nms
from mtp_core.models.multitask.roi_extractor import SingleRoIExtractor
from tests.conftest import load_reference

FEATMAP_SIZES_256 = [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4)]


@pytest.fixture(scope="module")
def ops() -> dict:
    return load_reference("reference", "mtp_pretrain", "golden_pretrain_ops.pt")["ops"]


@pytest.mark.parametrize(("key", "size"), [("roi_align", 7), ("roi_align_mask14", 14)])
def test_roi_align(ops: dict, key: str, size: int) -> None:
    ref = ops["roi_align"]
    assert (ref["sampling_ratio"], ref["aligned"], ref["spatial_scale"]) == (0, True, 0.25)
    out = roi_align(ref["feat"], ref["rois"], size, ref["spatial_scale"], sampling_ratio=0, aligned=True)
    torch.testing.assert_close(out, ops[key]["out"], rtol=0, atol=2e-5)


def test_roi_extractor_on_one_level_is_roi_align(ops: dict) -> None:
    """Small RoIs map to the stride-4 level: the extractor then is exactly mmcv's RoIAlign(7, 1/4)."""
    ref = ops["roi_align"]
    extractor = SingleRoIExtractor(7, featmap_strides=(4, 8))
    rois = ref["rois"]
    small = (rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]) < 112**2
    assert small.sum() >= 10 and (extractor.map_roi_levels(rois[small]) == 0).all()
    feats = [ref["feat"], ref["feat"][:, :, ::2, ::2]]
    torch.testing.assert_close(extractor(feats, rois[small]), ops["roi_align"]["out"][small], rtol=0, atol=2e-5)


def test_anchors_and_valid_flags(ops: dict) -> None:
    generator = AnchorGenerator()
    for mine, ref in zip(generator.grid_priors(FEATMAP_SIZES_256), ops["anchors_256"], strict=True):
        assert torch.equal(mine, ref)
    flags = generator.valid_flags(FEATMAP_SIZES_256, (256, 256))
    for mine, ref in zip(flags, ops["anchor_valid_flags_pad256"], strict=True):
        assert torch.equal(mine, ref)


def test_delta_xywh_coder(ops: dict) -> None:
    ref = ops["delta_xywh"]
    rpn, rcnn = DeltaXYWHBBoxCoder(), DeltaXYWHBBoxCoder(stds=(0.1, 0.1, 0.2, 0.2))
    tol = dict(rtol=0, atol=1e-5)
    torch.testing.assert_close(rpn.encode(ref["proposals"], ref["gt"]), ref["enc_std1"], **tol)
    torch.testing.assert_close(rcnn.encode(ref["proposals"], ref["gt"]), ref["enc_std01"], **tol)
    dec = rcnn.decode(ref["proposals"], ref["deltas"], max_shape=(180, 200))
    torch.testing.assert_close(dec, ref["dec_std01"], **tol)
    # the std-1 case was recorded with the deltas tripled, which drives dw/dh into the ±log(1000/16) clamp and most
    # boxes into the (180, 200) clip
    dec = rpn.decode(ref["proposals"], 3 * ref["deltas"], max_shape=(180, 200))
    torch.testing.assert_close(dec, ref["dec_std1"], **tol)
    assert (3 * ref["deltas"][:, 2:]).abs().max() > rpn.max_ratio


def test_batched_nms_keeps_the_same_boxes(ops: dict) -> None:
    ref = ops["batched_nms_0.7"]
    scores = ops["nms_rotated_inputs"]["scores"]
    labels = ops["batched_nms_rotated_0.1"]["labels"]
    dets, keep = batched_nms(ref["boxes"], scores, labels, 0.7)
    assert torch.equal(keep, ref["keep"])
    torch.testing.assert_close(dets, ref["dets"], rtol=0, atol=0)


def test_mask_target(ops: dict) -> None:
    ref = ops["mask_target"]
    out = mask_target([ref["proposals"]], [ref["assigned"]], [ref["masks"]], 28)
    assert torch.equal(out, ref["target"])
