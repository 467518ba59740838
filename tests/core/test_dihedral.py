"""Test-time augmentation over the square's eight symmetries: views, boxes and masks turn together, and a segmentor
with instances averages what each view sees back onto the tile."""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import roi_align

from mtp_core.models import create_model
from mtp_core.models.dihedral import IDENTITY, VIEWS, View
from mtp_core.models.multitask.rpn_head import Proposals

SIZE = 40
BOXES = torch.tensor([[3.0, 5.0, 17.0, 12.0], [20.0, 2.0, 27.0, 30.0], [0.0, 33.0, 40.0, 40.0]])


def _asymmetric(h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand((h, w), generator=torch.Generator().manual_seed(seed))


def test_the_eight_views_are_distinct_and_undo_turns_back() -> None:
    x = _asymmetric(SIZE, SIZE)[None, None].repeat(2, 3, 1, 1)
    seen = [view.apply(x) for view in VIEWS]
    assert VIEWS[0] == IDENTITY and len(set(VIEWS)) == 8
    assert all(not torch.equal(a, b) for i, a in enumerate(seen) for b in seen[i + 1:])
    for view, y in zip(VIEWS, seen):
        assert torch.equal(view.undo(y), x)


@pytest.mark.parametrize("view", VIEWS)
def test_a_box_and_its_mask_land_where_the_view_puts_them(view: View) -> None:
    """A mask pasted into its box, the tile then turned, equals the turned mask pasted into the turned box."""
    for i, (x1, y1, x2, y2) in enumerate(BOXES.long().tolist()):
        mask = _asymmetric(y2 - y1, x2 - x1, seed=i)
        tile = torch.zeros(SIZE, SIZE)
        tile[y1:y2, x1:x2] = mask
        vx1, vy1, vx2, vy2 = view.boxes(BOXES[i : i + 1], SIZE)[0].long().tolist()
        expected = torch.zeros(SIZE, SIZE)
        expected[vy1:vy2, vx1:vx2] = view.apply(mask)
        assert torch.equal(view.apply(tile), expected)


def _model_reading_masks_off_the_image():
    """The tiny segmentor with instances, its learned parts replaced by exact rules that commute with turning the
    image: the encoder passes the image on, a pixel > 0.5 is building, the proposals are ``BOXES`` (of the identity
    view), the box head keeps each box as it is with a score of its own, and a box's mask is the image under it
    (RoIAlign). Test-time augmentation must then give the identity view's detections, masks and probabilities,
    whatever a wrong turn of a box or a mask would do to them."""
    model = create_model("mtp_vit_tiny_rvsa_upernet_maskrcnn", img_size=64).eval()
    model.backbone.forward = lambda x: [x[:, :1]]
    model.decode_head.forward = lambda maps: torch.cat([10 * (0.5 - maps[0]), 10 * (maps[0] - 0.5)], 1)
    model.neck.forward = lambda maps: maps
    model.rpn_head.forward = lambda feats: (None, None)
    model.rpn_head.predict = lambda cls_scores, bbox_preds, metas, nms_pre: [
        Proposals(BOXES.clone(), torch.ones(len(BOXES)))] * len(metas)

    def bbox_outputs(feats, rois, fc_cls, fc_reg):  # noqa: ANN001, ANN202
        logits = torch.linspace(3.0, 1.0, len(BOXES)).repeat(len(rois) // len(BOXES))
        return torch.stack([logits, -logits], 1), torch.zeros(len(rois), 4)  # building first, background last

    def mask_logits(feats, boxes, conv_logits):  # noqa: ANN001, ANN202
        rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)])
        probs = roi_align(feats[0], rois, 28, 1.0, 0, True).clamp(1e-4, 1 - 1e-4)
        return torch.logit(probs)

    model.roi_head.bbox_outputs = bbox_outputs
    model.roi_head.predict_mask_logits = mask_logits
    return model


def test_instance_tta_turns_each_view_back_onto_the_tile() -> None:
    model = _model_reading_masks_off_the_image()
    x = torch.stack([_asymmetric(SIZE, SIZE, seed=7), _asymmetric(SIZE, SIZE, seed=8)])[:, None].repeat(1, 3, 1, 1)
    with torch.no_grad():
        logits, plain = model.predict_with_instances(x)
        probs, averaged = model.predict_with_instances_tta(x)
        _, identity_only = model.predict_with_instances_tta(x, views=(IDENTITY,))
    torch.testing.assert_close(probs, torch.softmax(logits, 1), atol=1e-5, rtol=0)
    for a, b, c in zip(plain, averaged, identity_only):
        assert len(a.bboxes) == len(BOXES) and torch.equal(a.labels, b.labels)
        torch.testing.assert_close(b.bboxes, a.bboxes, atol=1e-4, rtol=0)
        torch.testing.assert_close(b.scores, a.scores, atol=1e-6, rtol=0)
        torch.testing.assert_close(b.mask_probs, a.mask_probs, atol=1e-4, rtol=0)
        torch.testing.assert_close(c.mask_probs, a.mask_probs, atol=0, rtol=0)


def test_view_inverse_turns_boxes_back() -> None:
    for view in VIEWS:
        assert torch.equal(view.inverse.apply(view.apply(torch.arange(12.0).view(3, 4))), torch.arange(12.0).view(3, 4))
        torch.testing.assert_close(view.inverse.boxes(view.boxes(BOXES, SIZE), SIZE), BOXES, atol=0, rtol=0)


def test_instance_tta_refuses_what_it_cannot_turn() -> None:
    model = _model_reading_masks_off_the_image()
    with pytest.raises(ValueError, match="square tiles"):
        model.predict_with_instances_tta(torch.zeros(1, 3, 40, 32))
    with pytest.raises(ValueError, match="identity"):
        model.predict_with_instances_tta(torch.zeros(1, 3, 40, 40), views=VIEWS[1:])


def test_instance_tta_without_proposals_finds_nothing() -> None:
    model = create_model("mtp_vit_tiny_rvsa_upernet_maskrcnn", img_size=64).eval()  # its own heads but the RPN's
    model.rpn_head.predict = lambda cls_scores, bbox_preds, metas, nms_pre: [
        Proposals(torch.zeros(0, 4), torch.zeros(0))] * len(metas)
    with torch.no_grad():
        probs, found = model.predict_with_instances_tta(torch.rand(2, 3, 64, 64))
    assert probs.shape == (2, 2, 64, 64)
    assert [len(f.bboxes) for f in found] == [0, 0] and all(f.mask_probs.shape == (0, 28, 28) for f in found)
