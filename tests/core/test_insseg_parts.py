"""Parts of the instance decoder on small hand-checked cases: where they equal torchvision and where they must not."""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops import batched_nms as tv_batched_nms
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from mtp_core.models.multitask.assigner_sampler import MaxIoUAssigner, RandomSampler, SamplingResult, bbox_overlaps
from mtp_core.models.multitask.bbox_head import Shared2FCBBoxHead
from mtp_core.models.multitask.fpn import FPN
from mtp_core.models.multitask.insseg import InstanceSegDecoder
from mtp_core.models.multitask.mask_head import _paste_chunk, mask_target, paste_masks
from mtp_core.models.multitask.nms import batched_nms, multiclass_nms
from mtp_core.models.multitask.rpn_head import RPNHead
from mtp_core.models.multitask.structures import Batch, ImageMeta, Sample


def random_boxes(n: int, size: float, gen: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=gen) * size
    return torch.cat([xy, xy + 4 + torch.rand(n, 2, generator=gen) * size / 4], dim=1)


def test_fpn_equals_torchvisions_under_mmdet_names() -> None:
    torch.manual_seed(0)
    ours = FPN([8, 16, 16, 32], out_channels=16, num_outs=5)
    theirs = FeaturePyramidNetwork([8, 16, 16, 32], 16, extra_blocks=LastLevelMaxPool())
    renamed = {
        k.replace("lateral_convs", "inner_blocks").replace("fpn_convs", "layer_blocks").replace(".conv.", ".0."): v
        for k, v in ours.state_dict().items()
    }
    theirs.load_state_dict(renamed)
    feats = [torch.randn(2, c, s, s) for c, s in zip([8, 16, 16, 32], [32, 16, 8, 4])]
    expected = theirs({str(i): f for i, f in enumerate(feats)})
    for mine, ref in zip(ours(feats), expected.values()):
        torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-6)
    assert [tuple(o.shape[-2:]) for o in ours(feats)] == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]


@pytest.mark.parametrize("n", [300, 2500])
def test_batched_nms_split_and_offset_paths_agree_with_torchvision(n: int) -> None:
    gen = torch.Generator().manual_seed(n)
    boxes = random_boxes(n, 200, gen)
    scores = torch.rand(n, generator=gen)
    idxs = torch.randint(0, 4, (n,), generator=gen)
    dets, keep = batched_nms(boxes, scores, idxs, 0.5)
    split_dets, split_keep = batched_nms(boxes, scores, idxs, 0.5, split_thr=1)  # mmcv's per-group loop
    assert torch.equal(keep, split_keep) and torch.equal(dets, split_dets)
    assert torch.equal(keep, tv_batched_nms(boxes, scores, idxs, 0.5))
    assert torch.equal(dets[:, 4], scores[keep]) and (dets[:-1, 4] >= dets[1:, 4]).all()
    empty = batched_nms(boxes[:0], scores[:0], idxs[:0], 0.5)
    assert empty[0].shape == (0, 5) and empty[1].shape == (0,)


def test_multiclass_nms_drops_background_and_low_scores() -> None:
    boxes = torch.tensor([[0.0, 0, 10, 10, 50, 50, 60, 60], [1, 1, 11, 11, 50, 50, 61, 61]])
    scores = torch.tensor([[0.6, 0.3, 0.1], [0.5, 0.04, 0.46]])  # columns: class 0, class 1, background
    dets, labels = multiclass_nms(boxes, scores, score_thr=0.05, iou_threshold=0.5, max_num=100)
    # class 0: the two overlapping boxes (IoU 0.68) -> one; class 1: only the first passes 0.05
    assert labels.tolist() == [0, 1] and dets[:, 4].tolist() == pytest.approx([0.6, 0.3])
    assert dets[1, :4].tolist() == [50, 50, 60, 60]
    assert multiclass_nms(boxes, scores, 0.05, 0.5, max_num=1)[1].tolist() == [0]


def test_max_iou_assigner_rules() -> None:
    gts = torch.tensor([[0.0, 0, 10, 10], [100, 100, 120, 120]])
    priors = torch.tensor([
        [0.0, 0, 10, 10],  # IoU 1 with GT 0
        [0, 0, 10, 20],  # 0.5 with GT 0
        [200, 200, 210, 210],  # nothing
        [100, 100, 140, 140],  # 0.25 with GT 1: below pos 0.7, but GT 1's best -> low-quality match
        [100, 100, 140, 140],  # the same box: every tied best prior is taken
    ])
    rpn = MaxIoUAssigner(0.7, 0.3, 0.3).assign(priors, gts, torch.tensor([4, 7]))
    assert rpn.gt_inds.tolist() == [1, -1, 0, 0, 0]  # 0.25: negative, below min_pos_iou 0.3 for a low-quality match
    rcnn = MaxIoUAssigner(0.7, 0.3, 0.2).assign(priors, gts, torch.tensor([4, 7]))
    assert rcnn.gt_inds.tolist() == [1, -1, 0, 2, 2] and rcnn.labels.tolist() == [4, -1, -1, 7, 7]
    nothing = MaxIoUAssigner(0.7, 0.3, 0.3).assign(priors, gts[:0], torch.tensor([], dtype=torch.long))
    assert nothing.gt_inds.tolist() == [0] * 5
    # degenerate boxes give IoU 0 (mmdet's eps), not NaN
    assert bbox_overlaps(torch.tensor([[5.0, 5, 5, 5]]), torch.tensor([[5.0, 5, 5, 5]])).item() == 0.0


def test_random_sampler_draws_like_mmdet() -> None:
    """randperm on the default generator only when there are more candidates than wanted; indices sorted; GT boxes
    prepended as priors assigned to themselves."""
    gen = torch.Generator().manual_seed(0)
    priors = random_boxes(400, 100, gen)
    gts = torch.tensor([[10.0, 10, 40, 40], [50, 50, 90, 80]])
    assign = MaxIoUAssigner(0.5, 0.5, 0.5).assign(priors, gts, torch.tensor([1, 0]))
    sampler = RandomSampler(64, 0.25, add_gt_as_proposals=True)
    torch.manual_seed(7)
    result: SamplingResult = sampler.sample(assign, priors, gts, torch.tensor([1, 0]))
    positives = torch.nonzero(assign.gt_inds > 0).squeeze(1)  # after add_gt_: the 2 GT rows come first
    negatives = torch.nonzero(assign.gt_inds == 0).squeeze(1)
    assert 2 <= positives.numel() <= 16 and negatives.numel() > 64
    torch.manual_seed(7)  # all positives are taken without a draw; one randperm picks the negatives
    expected_neg = negatives[torch.randperm(negatives.numel())[: 64 - positives.numel()]].unique()
    assert torch.equal(result.pos_inds, positives) and torch.equal(result.neg_inds, expected_neg)
    assert torch.equal(result.pos_priors[:2], gts) and result.pos_assigned_gt_inds[:2].tolist() == [0, 1]
    assert torch.equal(result.pos_gt_bboxes, gts[result.pos_assigned_gt_inds])
    assert result.avg_factor == result.pos_inds.numel() + result.neg_inds.numel()


def test_rcnn_box_loss_reproduces_mtps_target_bug_unless_fixed() -> None:
    """MTP passes the box weights (ones) as the L1 target: loss = Σ|δ - 1| / n_sampled over the positives."""
    head = Shared2FCBBoxHead(in_channels=4, roi_feat_size=1, fc_out_channels=8)
    prior, gt = torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([[1.0, 1, 12, 12]])
    sampling = [SamplingResult(pos_inds=torch.tensor([0]), neg_inds=torch.tensor([1, 2, 3]), pos_priors=prior,
                               neg_priors=torch.zeros(3, 4), pos_assigned_gt_inds=torch.tensor([0]),
                               pos_gt_labels=torch.tensor([1]), pos_gt_bboxes=gt)]
    cls_score = torch.zeros(4, 3)
    bbox_pred = torch.arange(32, dtype=torch.float32).view(4, 8) / 100
    predicted = bbox_pred[0, 4:8]  # class 1's deltas of the positive
    buggy = head.loss(cls_score, bbox_pred, sampling, num_classes=2)
    assert buggy["loss_bbox"].item() == pytest.approx((predicted - 1).abs().sum().item() / 4, rel=1e-6)
    fixed = head.loss(cls_score, bbox_pred, sampling, num_classes=2, fix_bbox_target=True)
    target = head.bbox_coder.encode(prior, gt)[0]
    assert fixed["loss_bbox"].item() == pytest.approx((predicted - target).abs().sum().item() / 4, rel=1e-6)
    # uniform logits: CE log 3 per RoI; top-1 of a tie is class 0, which no RoI has (labels 1, then background 2)
    assert buggy["loss_cls"].item() == pytest.approx(torch.log(torch.tensor(3.0)).item(), rel=1e-6)
    assert buggy["acc"].item() == 0.0


def test_mask_targets_are_clipped_aligned_crops() -> None:
    masks = torch.zeros(2, 40, 60, dtype=torch.uint8)
    masks[0, 10:30, 20:40] = 1
    masks[1, :, :30] = 1
    proposals = torch.tensor([[20.0, 10, 40, 30], [-10, -10, 30, 50]])  # the GT box; a box sticking out of the image
    targets = mask_target([proposals], [torch.tensor([0, 1])], [masks], mask_size=8)
    assert targets.shape == (2, 8, 8) and targets.dtype == torch.float32
    assert targets[0].all()  # the exact box: all foreground
    assert targets[1].all()  # clipped to (0, 0, 30, 40): all inside the left 30 columns
    assert mask_target([proposals[:0]], [torch.tensor([], dtype=torch.long)], [masks], 8).shape == (0, 8, 8)


def test_paste_masks_windowed_equals_whole_image() -> None:
    """CPU pastes each mask in its box's window (mmdet's skip_empty); the GPU path pastes over the whole image."""
    gen = torch.Generator().manual_seed(1)
    probs = torch.rand(6, 1, 28, 28, generator=gen)
    boxes = random_boxes(6, 50, gen)
    windowed = paste_masks(probs, boxes, 70, 80)
    whole, _ = _paste_chunk(probs, boxes, 70, 80, skip_empty=False)
    assert torch.equal(windowed, whole >= 0.5)
    full = paste_masks(torch.ones(1, 1, 28, 28), torch.tensor([[10.0, 20, 30, 25]]), 40, 40)[0]
    assert full[20:25, 10:30].all() and full.sum() == 100


def test_rpn_proposals() -> None:
    torch.manual_seed(0)
    head = RPNHead(8, 8)
    feats = [torch.randn(1, 8, 64 // s, 64 // s) for s in (1, 2, 4, 8, 16)]
    meta = ImageMeta(img_shape=(60, 50), pad_shape=(64, 64), ori_shape=(60, 50))
    cls_scores, bbox_preds = head(feats)
    proposals = head.predict(cls_scores, bbox_preds, [meta], nms_pre=100, max_per_img=50)[0]
    boxes = proposals.bboxes
    assert 0 < boxes.shape[0] <= 50 and not boxes.requires_grad
    assert (proposals.scores[:-1] >= proposals.scores[1:]).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert (boxes[:, 0::2] <= 50).all() and (boxes[:, 1::2] <= 60).all() and (boxes >= 0).all()


def test_images_without_instances_train() -> None:
    """An image with no instance: every anchor and RoI negative, zero box and mask losses, finite gradients."""
    torch.manual_seed(0)
    decoder = InstanceSegDecoder([8] * 4, channels=8, fc_out_channels=16)
    heads = {kind: decoder.new_head(kind, 3, background=True) for kind in decoder.head_templates}
    feats = [torch.randn(1, 8, 64 // s, 64 // s) for s in (4, 8, 16, 32)]
    empty = Sample(ImageMeta.of_size(64, 64), bboxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long),
                   masks=torch.zeros(0, 64, 64, dtype=torch.uint8))
    losses = decoder.forward_train([feats], [Batch(torch.zeros(1, 3, 64, 64), [empty])], [heads])[0]
    assert sum(losses["loss_rpn_bbox"]).item() == 0 and losses["loss_bbox"].item() == 0
    assert losses["loss_mask"].item() == 0 and losses["loss_cls"].item() > 0
    total = sum(sum(v) if isinstance(v, list) else v.sum() for k, v in losses.items() if "loss" in k)
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in decoder.parameters() if p.grad is not None)
