"""The instance decoder against the original ``MTP_IS_MaskRCNN`` (``golden_pretrain_decoders_tiny.pt``).

The tiny decoder of the reference README: FPN in_channels 64, 256 channels, full-size RoI head, one dataset with
C = 5, one 256×256 image with 4 GT instances, weights rebuilt from the recipe (the sha256 of every tensor checks the
rebuild). Test path: proposals, RCNN outputs, detections, mask logits, pasted masks. Training path after
``torch.manual_seed(1234)``: the same sampled anchors and RoIs, every loss, every gradient.

Tolerances (spec §6.4): 1e-4 relative on losses and proposals; detection sets identical. The RPN scores of two
proposals are equal in the golden and one ulp apart here (FPN levels 3-4 differ by ~1e-7 from the original's
convolutions), so proposal order is compared up to such ties.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from mtp_core.models.multitask.assigner_sampler import bbox_overlaps
from mtp_core.models.multitask.framework import DatasetSpec, sum_losses
from mtp_core.models.multitask.insseg import InstanceSegDecoder
from mtp_core.models.multitask.mask_head import paste_masks
from mtp_core.models.multitask.rpn_head import Proposals
from mtp_core.models.multitask.structures import Batch, ImageMeta, Sample, bbox2roi
from mtp_tools.testing import det_init_
from tests.conftest import load_reference

SCORE_TIE = 1e-6  # proposals whose RPN scores differ by less may come in either order


@pytest.fixture(scope="module")
def golden() -> dict:
    return load_reference("reference", "mtp_pretrain", "golden_pretrain_decoders_tiny.pt")


@pytest.fixture(scope="module")
def model(golden: dict) -> tuple[InstanceSegDecoder, dict[str, nn.Module]]:
    """The decoder and dataset-1 heads with the recipe's weights: one generator per module, normal(0, 0.02) over
    state_dict order (the heads as one module, in the framework's order), then the score layers scaled."""
    decoder = InstanceSegDecoder([64] * 4)
    det_init_(decoder, seed=1)
    heads = nn.Module()
    for kind, template in decoder.head_templates.items():
        setattr(heads, template.format(k=1), decoder.new_head(kind, golden["num_classes"], background=True))
    det_init_(heads, seed=3)
    with torch.no_grad():
        decoder.rpn_head.rpn_cls.weight.mul_(10)
        heads.inssegroiboxhead_fc_cls1.weight.mul_(20)
    by_kind = {kind: getattr(heads, t.format(k=1)) for kind, t in decoder.head_templates.items()}
    return decoder, by_kind


@pytest.fixture(scope="module")
def meta(golden: dict) -> ImageMeta:
    return ImageMeta.of_size(*golden["img_shape"])


def sha256(t: Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()


def test_weight_recipe_rebuilds_the_recorded_weights(golden: dict, model: tuple) -> None:
    decoder, heads = model
    recorded = golden["weight_sha256"]
    state = {f"inssegdecoder.{k}": v for k, v in decoder.state_dict().items()}
    for kind, head in heads.items():
        template = decoder.head_templates[kind].format(k=1)
        state.update({f"{template}.{k}": v for k, v in head.state_dict().items()})
    assert list(state) == [k for k in recorded if k.startswith("insseg")]
    for key, value in state.items():
        assert list(value.shape) == recorded[key]["shape"] and sha256(value) == recorded[key]["sha256"], key


def test_fpn(golden: dict, model: tuple) -> None:
    decoder, _ = model
    with torch.no_grad():
        outs = decoder.neck(golden["features"])
    assert [tuple(o.shape[-2:]) for o in outs] == [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4)]
    for out, (total, abs_total) in zip(outs, golden["is_fpn_out_stats"]):
        assert out.sum().item() == pytest.approx(total, rel=1e-5, abs=1e-3)
        assert out.abs().sum().item() == pytest.approx(abs_total, rel=1e-6)
    torch.testing.assert_close(outs[4], golden["is_fpn_p6"], rtol=0, atol=1e-5)


def assert_same_proposals(mine: Proposals, boxes: Tensor, scores: Tensor) -> None:
    """Same scores in the same order, and the same box at every rank except among proposals of tied score."""
    assert mine.bboxes.shape == boxes.shape
    torch.testing.assert_close(mine.scores, scores, rtol=1e-4, atol=SCORE_TIE)
    close = torch.isclose(mine.bboxes, boxes, rtol=1e-4, atol=1e-3).all(dim=1)
    for i in (~close).nonzero().squeeze(1).tolist():
        tied = ((scores - scores[i]).abs() <= SCORE_TIE).nonzero().squeeze(1)
        match = torch.isclose(mine.bboxes[tied], boxes[i], rtol=1e-4, atol=1e-3).all(dim=1)
        assert match.any(), f"proposal {i} ({boxes[i].tolist()}) is not among the tied ones here"
    assert (~close).sum() <= 4


@pytest.fixture(scope="module")
def test_path(golden: dict, model: tuple, meta: ImageMeta) -> dict:
    """The whole ``predict``, and the RCNN and mask stages alone on the recorded proposals and detections."""
    decoder, heads = model
    decoder.eval()
    batch = Batch(torch.zeros(1, 3, *meta.pad_shape), [Sample(meta)])
    results = decoder.predict([golden["features"]], [batch], [heads])[0][0]
    with torch.no_grad():
        neck = decoder.neck(golden["features"])
        proposals = decoder.rpn_head.predict(*decoder.rpn_head(neck), [meta], nms_pre=1000)
        recorded = [Proposals(golden["is_test_proposals"], golden["is_test_proposal_scores"])]
        predictors = heads["fc_cls"], heads["fc_reg"]
        _, cls_score, bbox_pred = decoder.roi_head.predict_bbox(neck, recorded, [meta], *predictors)
        boxes = [golden["is_test_dets_before_mask"]["bboxes"], results.bboxes]
        logits = decoder.roi_head.predict_mask_logits(neck, [torch.cat(boxes)], heads["conv_logits"])
        recorded_logits, logits = logits.split([b.shape[0] for b in boxes])
    probs = logits[torch.arange(len(results.labels)), results.labels][:, None].sigmoid()
    return dict(proposals=proposals[0], cls_score=cls_score, bbox_pred=bbox_pred, results=results,
                recorded_logits=recorded_logits, probs=probs)


def test_proposals(golden: dict, test_path: dict) -> None:
    assert_same_proposals(test_path["proposals"], golden["is_test_proposals"], golden["is_test_proposal_scores"])


def test_rcnn_outputs_on_the_recorded_proposals(golden: dict, test_path: dict) -> None:
    torch.testing.assert_close(test_path["cls_score"], golden["is_test_cls_score"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(test_path["bbox_pred"], golden["is_test_bbox_pred"], rtol=1e-4, atol=1e-5)


def test_detections(golden: dict, test_path: dict) -> None:
    result = test_path["results"]  # at ori_shape = img_shape here (scale 1), so also the boxes before the mask stage
    ref = golden["is_test_dets_before_mask"]
    assert torch.equal(result.labels, ref["labels"])
    torch.testing.assert_close(result.scores, ref["scores"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(result.bboxes, ref["bboxes"], rtol=1e-5, atol=1e-4)


def test_mask_logits_of_the_recorded_detections(golden: dict, test_path: dict) -> None:
    labels = golden["is_test_dets_before_mask"]["labels"]
    selected = test_path["recorded_logits"][torch.arange(len(labels)), labels]
    torch.testing.assert_close(selected, golden["is_test_mask_logits_selected"], rtol=1e-4, atol=1e-6)


def test_pasted_masks(golden: dict, test_path: dict, meta: ImageMeta) -> None:
    """Identical except where the pasted probability is within 1e-5 of the 0.5 threshold: float noise flips a few
    pixels, depending on the thread count (these random-weight masks sit at 0.5 ± 0.005 everywhere)."""
    masks = test_path["results"].masks
    assert list(masks.shape) == golden["is_test_masks_shape"] and masks.dtype == torch.bool
    recorded = torch.from_numpy(np.unpackbits(golden["is_test_masks_packbits"].numpy(), axis=-1)).bool()
    assert (masks != recorded).sum() <= 10
    bboxes, probs, (h, w) = test_path["results"].bboxes, test_path["probs"], meta.ori_shape
    surely_in = paste_masks(probs, bboxes, h, w, threshold=0.5 + 1e-5)
    maybe_in = paste_masks(probs, bboxes, h, w, threshold=0.5 - 1e-5)
    assert not (surely_in & ~recorded).any() and not (recorded & ~maybe_in).any()


@pytest.fixture(scope="module")
def train_path(golden: dict, model: tuple, meta: ImageMeta) -> dict:
    """Stage by stage (sampling records), then the whole ``forward_train`` from the same seed, and its backward."""
    decoder, heads = model
    decoder.train()
    gt = golden["gt"]
    sample = Sample(meta, bboxes=gt["bboxes"], labels=gt["labels"], masks=gt["masks"])
    feats = golden["features"]
    torch.manual_seed(1234)
    with torch.no_grad():
        neck = decoder.neck(feats)
        cls_scores, bbox_preds = decoder.rpn_head(neck)
        _, rpn_sampling = decoder.rpn_head.loss(cls_scores, bbox_preds, [sample])
        proposals = decoder.rpn_head.predict(cls_scores, bbox_preds, [meta], nms_pre=2000)
        rcnn_sampling = decoder.roi_head.sample(proposals, [sample])
    torch.manual_seed(1234)
    decoder.zero_grad()
    for head in heads.values():
        head.zero_grad()
    losses = decoder.forward_train([feats], [Batch(torch.zeros(1, 3, *meta.pad_shape), [sample])], [heads])[0]
    total, _ = sum_losses({"is": [losses]}, [DatasetSpec("tiny", golden["num_classes"])])
    total.backward()
    grads = {f"inssegdecoder.{k}": p.grad for k, p in decoder.named_parameters()}
    for kind, head in heads.items():
        grads.update({f"{decoder.head_templates[kind].format(k=1)}.{k}": p.grad for k, p in head.named_parameters()})
    return dict(rpn=rpn_sampling[0], rcnn=rcnn_sampling[0], proposals=proposals[0], losses=losses, grads=grads)


@pytest.mark.parametrize("stage", ["is_rpn", "is_rcnn"])
def test_the_same_anchors_and_rois_are_sampled(golden: dict, train_path: dict, stage: str) -> None:
    ref = golden["sampling"][stage][0]
    mine = train_path["rpn" if stage == "is_rpn" else "rcnn"]
    assert torch.equal(mine.pos_inds, ref["pos_inds"])
    assert torch.equal(mine.neg_inds, ref["neg_inds"])
    assert torch.equal(mine.pos_assigned_gt_inds, ref["pos_assigned_gt_inds"])


def test_train_proposals_and_rois(golden: dict, train_path: dict) -> None:
    assert_same_proposals(train_path["proposals"], golden["is_train_proposals"], golden["is_train_proposal_scores"])
    rois = bbox2roi([train_path["rcnn"].priors])
    torch.testing.assert_close(rois, golden["is_train_rois"], rtol=1e-5, atol=1e-4)
    # the first rows are the GT boxes, prepended to the proposals
    assert torch.equal(rois[:4, 1:], golden["gt"]["bboxes"])


def test_assignment_of_all_anchors_and_proposals(golden: dict, model: tuple, meta: ImageMeta) -> None:
    decoder, _ = model
    gt = golden["gt"]
    anchors = torch.cat(decoder.rpn_head.prior_generator.grid_priors([(64, 64), (32, 32), (16, 16), (8, 8), (4, 4)]))
    rpn = decoder.rpn_head.assigner.assign(anchors, gt["bboxes"], torch.zeros_like(gt["labels"]))
    ref = golden["sampling"]["is_rpn"][0]
    assert torch.equal(rpn.gt_inds, ref["gt_inds"])
    torch.testing.assert_close(rpn.max_overlaps, ref["max_overlaps"], rtol=0, atol=1e-6)
    # RoI assignment of the recorded train proposals, GT boxes prepended as the sampler does
    rcnn = decoder.roi_head.assigner.assign(golden["is_train_proposals"], gt["bboxes"], gt["labels"])
    rcnn.add_gt_(gt["labels"])
    ref = golden["sampling"]["is_rcnn"][0]
    assert torch.equal(rcnn.gt_inds, ref["gt_inds"])
    torch.testing.assert_close(rcnn.max_overlaps, ref["max_overlaps"], rtol=0, atol=1e-6)


def test_losses(golden: dict, train_path: dict) -> None:
    losses = train_path["losses"]
    for key, value in golden["is_losses"].items():
        mine = losses[key]
        mine = sum(mine) if isinstance(mine, list) else mine
        assert mine.item() == pytest.approx(value, rel=1e-4), key
    for key, values in golden["is_losses_per_level"].items():
        assert [x.item() for x in losses[key]] == pytest.approx(values, rel=1e-4, abs=1e-7), key


def test_gradients(golden: dict, train_path: dict) -> None:
    grads = train_path["grads"]
    assert set(grads) == {k for k in golden["grad_stats"] if k.startswith("insseg")}
    for key, grad in grads.items():
        total, abs_total = golden["grad_stats"][key]
        assert grad.abs().sum().item() == pytest.approx(abs_total, rel=1e-4), key
        assert grad.sum().item() == pytest.approx(total, abs=1e-5 * abs_total), key


def test_proposal_sets_match_the_recorded_ones(golden: dict, test_path: dict) -> None:
    """Every recorded test proposal is one of ours (IoU 1), and the other way round."""
    iou = bbox_overlaps(test_path["proposals"].bboxes, golden["is_test_proposals"])
    assert (iou.max(dim=1).values > 0.9999).all() and (iou.max(dim=0).values > 0.9999).all()
