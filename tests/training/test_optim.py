"""Layer-wise LR decay groups (MTP's LayerDecayOptimizerConstructor_ViT), the optimizer builder and the schedule."""
from __future__ import annotations

import math
from typing import Callable

import pytest
import torch

from mtp_core.models import create_model
from training.optim import build_optimizer, build_scheduler, layer_decay_param_groups

BASE_LR = 6e-5
MTP_OPTIM_WRAPPER = dict(
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=BASE_LR, betas=(0.9, 0.999), weight_decay=0.05),
    constructor="LayerDecayOptimizerConstructor_ViT",
    paramwise_cfg=dict(num_layers=12, layer_decay_rate=0.9),
)
MTP_PARAM_SCHEDULER = [
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type="CosineAnnealingLR", eta_min=0.0, T_max=78500, begin=1500, end=80000, by_epoch=False),
]
MAX_ITERS = 80000


def _tiny_config() -> dict:
    return {**MTP_OPTIM_WRAPPER, "paramwise_cfg": dict(num_layers=4, layer_decay_rate=0.9)}


@pytest.fixture(scope="module")
def vit_b_groups() -> tuple[torch.nn.Module, list[dict]]:
    with torch.device("meta"):
        model = create_model("mtp_vit_b_rvsa_upernet")
    return model, layer_decay_param_groups(model, BASE_LR, 0.05, num_layers=12, layer_decay_rate=0.9)


def _layer_of(group: dict) -> int:
    return int(group["group_name"].split("_")[1])


# ----------------------------------------------------------------------------------------------- groups


def test_vit_b_has_14_layer_ids_with_mtp_scales(vit_b_groups) -> None:
    model, groups = vit_b_groups
    assert sorted({_layer_of(g) for g in groups}) == list(range(14))  # L = num_layers + 2
    assert len(groups) == 28 and len({g["group_name"] for g in groups}) == 28
    assert groups[0]["group_name"] == "layer_0_no_decay"  # the group MMEngine logs as `lr`
    scale_of = {name: g["lr_scale"] for g in groups for name in g["param_names"]}
    assert scale_of["backbone.pos_embed"] == pytest.approx(0.2541865828, abs=1e-10)
    assert scale_of["backbone.patch_embed.proj.weight"] == pytest.approx(0.9**13, rel=1e-15)
    for i in range(12):
        assert scale_of[f"backbone.blocks.{i}.mlp.fc1.weight"] == pytest.approx(0.9 ** (12 - i), rel=1e-15)
    for name, scale in scale_of.items():
        if name.startswith(("backbone.fpn", "decode_head.")):
            assert scale == 1.0, name
    for g in groups:
        assert g["lr"] == pytest.approx(g["lr_scale"] * BASE_LR, rel=1e-15)
        assert g["lr_scale"] == pytest.approx(0.9 ** (13 - _layer_of(g)), rel=1e-15)


def test_vit_b_weight_decay_split(vit_b_groups) -> None:
    model, groups = vit_b_groups
    decay_of = {name: g["weight_decay"] for g in groups for name in g["param_names"]}
    for g in groups:
        assert g["weight_decay"] == (0.0 if g["group_name"].endswith("no_decay") else 0.05)
    shapes = dict(model.named_parameters())
    for name, decay in decay_of.items():
        expect_no_decay = shapes[name].ndim == 1 or name.endswith(".bias") or "pos_embed" in name
        assert decay == (0.0 if expect_no_decay else 0.05), name
    assert decay_of["backbone.pos_embed"] == 0.0  # 3-D, excluded by name
    assert decay_of["backbone.blocks.0.norm1.weight"] == 0.0
    assert decay_of["decode_head.fpn_bottleneck.bn.weight"] == 0.0
    assert decay_of["backbone.fpn1.1.ln.weight"] == 0.0
    assert decay_of["decode_head.conv_seg.bias"] == 0.0
    for name in ("rel_pos_h", "rel_pos_w", "relative_position_bias_table"):  # 2-D tables ARE decayed
        assert decay_of[f"backbone.blocks.0.attn.{name}"] == 0.05, name
    assert decay_of["backbone.patch_embed.proj.weight"] == 0.05
    assert decay_of["decode_head.conv_seg.weight"] == 0.05


def test_every_trainable_param_in_exactly_one_group(vit_b_groups) -> None:
    model, groups = vit_b_groups
    named = dict(model.named_parameters())
    seen = [name for g in groups for name in g["param_names"]]
    assert len(seen) == len(set(seen)) == len(named) == 273
    assert set(seen) == set(named)
    for g in groups:
        assert all(p is named[name] for p, name in zip(g["params"], g["param_names"], strict=True))
    assert sum(p.numel() for g in groups for p in g["params"]) == 93_591_872 + 32_257_026


def test_frozen_params_are_skipped_and_wrong_depth_is_an_error() -> None:
    model = create_model("mtp_vit_tiny_rvsa_upernet", img_size=64)
    model.backbone.patch_embed.requires_grad_(False)
    groups = layer_decay_param_groups(model, BASE_LR, 0.05, num_layers=4, layer_decay_rate=0.9)
    names = {name for g in groups for name in g["param_names"]}
    assert not any(name.startswith("backbone.patch_embed") for name in names)
    assert "backbone.pos_embed" in names
    with pytest.raises(ValueError, match="num_layers=2"):
        layer_decay_param_groups(model, BASE_LR, 0.05, num_layers=2, layer_decay_rate=0.9)


# ----------------------------------------------------------------------------------------------- optimizer


def test_build_optimizer_from_mtp_config() -> None:
    model = create_model("mtp_vit_tiny_rvsa_upernet", img_size=64)
    optimizer = build_optimizer(model, _tiny_config())
    assert isinstance(optimizer, torch.optim.AdamW)
    assert len(optimizer.param_groups) == 12  # 6 layer ids (depth 4 + 2) x decay/no_decay
    first = optimizer.param_groups[0]
    assert first["group_name"] == "layer_0_no_decay" and first["lr"] == pytest.approx(0.9**5 * BASE_LR)
    assert first["betas"] == (0.9, 0.999) and not first["fused"]  # fused only for CUDA parameters
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.0, 0.05}


def test_plain_optimizers_and_config_errors() -> None:
    model = create_model("mtp_vit_tiny_rvsa_upernet", img_size=64)
    sgd = build_optimizer(model, dict(optimizer=dict(type="SGD", lr=0.01, momentum=0.9, weight_decay=5e-4)))
    assert isinstance(sgd, torch.optim.SGD) and len(sgd.param_groups) == 1
    assert len(sgd.param_groups[0]["params"]) == sum(1 for _ in model.parameters())
    adamw = build_optimizer(model, dict(optimizer=dict(type="AdamW", lr=1e-4)))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["lr"] == 1e-4
    with pytest.raises(ValueError, match=r"'Adam'.*\['AdamW', 'SGD'\]"):
        build_optimizer(model, dict(optimizer=dict(type="Adam", lr=1e-4)))
    with pytest.raises(ValueError, match="LayerDecayOptimizerConstructor_ViT"):
        build_optimizer(model, {**_tiny_config(), "constructor": "LearningRateDecayOptimizerConstructor"})
    with pytest.raises(ValueError, match="layer_decay_rate"):
        build_optimizer(model, {**_tiny_config(), "paramwise_cfg": dict(num_layers=4)})
    with pytest.raises(ValueError, match=r"\['grad_clip'\].*MMSeg 0.x's grad_clip is clip_grad here"):
        build_optimizer(model, {**_tiny_config(), "grad_clip": dict(max_norm=1.0)})


def test_a_real_step_changes_the_weights() -> None:
    model = create_model("mtp_vit_tiny_rvsa_upernet", img_size=64)
    model.backbone.blocks[0].requires_grad_(False)
    optimizer = build_optimizer(model, _tiny_config())
    scheduler = build_scheduler(optimizer, MTP_PARAM_SCHEDULER, MAX_ITERS)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for _ in range(2):  # step 0 has lr = base * 1e-6: take a second step at a useful rate
        optimizer.zero_grad()
        model(torch.randn(2, 3, 64, 64)).logsumexp(1).mean().backward()
        optimizer.step()
        scheduler.step()
    after = dict(model.named_parameters())
    assert not torch.equal(before["decode_head.conv_seg.weight"], after["decode_head.conv_seg.weight"])
    assert not torch.equal(before["backbone.blocks.3.attn.qkv.weight"], after["backbone.blocks.3.attn.qkv.weight"])
    assert torch.equal(before["backbone.blocks.0.attn.qkv.weight"], after["backbone.blocks.0.attn.qkv.weight"])


# ----------------------------------------------------------------------------------------------- schedule


def _mtp_scheduler():
    model = create_model("mtp_vit_tiny_rvsa_upernet", img_size=64)
    optimizer = build_optimizer(model, _tiny_config())
    return optimizer, build_scheduler(optimizer, MTP_PARAM_SCHEDULER, MAX_ITERS)


def _spec_lr(t: int) -> float:
    """mtp_spec §3.3: the base lr used at optimizer step t."""
    if t < 1500:
        return BASE_LR * (1e-6 + (1 - 1e-6) * t / 1499)
    return BASE_LR * 0.5 * (1 + math.cos(math.pi * (t - 1500) / 78500))


@pytest.mark.parametrize("logged_iter, logged_lr, rel", [
    (50, 1.9613655770513682e-06, 1e-12),
    (100, 3.962697798532355e-06, 1e-12),
    (79950, 6.2487e-11, 1e-4),  # the log gives 5 significant digits here
    (80000, 2.4024e-14, 1e-4),
])
def test_reproduces_the_logged_learning_rates(logged_iter: int, logged_lr: float, rel: float) -> None:
    """The log's ``base_lr`` at "iter = t + 1" is the rate of optimizer step t; each group runs at lr_scale times it."""
    optimizer, scheduler = _mtp_scheduler()
    t = logged_iter - 1
    assert scheduler.lr_at(t, BASE_LR) == pytest.approx(logged_lr, rel=rel)
    scheduler.load_state_dict({**scheduler.state_dict(), "last_step": t})
    for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr(), strict=True):
        assert lr == pytest.approx(group["lr_scale"] * logged_lr, rel=rel)


def test_schedule_equals_spec_closed_form_when_stepped() -> None:
    optimizer, scheduler = _mtp_scheduler()
    scale = optimizer.param_groups[0]["lr_scale"]
    for t in range(1600):
        assert scheduler.get_last_lr()[0] == pytest.approx(scale * _spec_lr(t), rel=1e-12, abs=0), t
        scheduler.step()
    for t in (1499, 1500, 1501, 40000, 79999, 80000, 85000):  # rate holds after the last phase ends
        assert scheduler.lr_at(t, BASE_LR) == pytest.approx(_spec_lr(min(t, 79999)), rel=1e-12), t


def test_resume_restores_exactly() -> None:
    optimizer, scheduler = _mtp_scheduler()
    for _ in range(1503):
        scheduler.step()
    state = scheduler.state_dict()
    optimizer_state = optimizer.state_dict()

    resumed_optimizer, resumed = _mtp_scheduler()
    resumed_optimizer.load_state_dict(optimizer_state)
    resumed.load_state_dict(state)
    assert resumed.last_step == 1503
    assert resumed.get_last_lr() == scheduler.get_last_lr()
    for _ in range(20):
        scheduler.step()
        resumed.step()
        assert resumed.get_last_lr() == scheduler.get_last_lr()


def test_scheduler_config_errors() -> None:
    optimizer, _ = _mtp_scheduler()
    with pytest.raises(ValueError, match="by_epoch=True"):
        build_scheduler(optimizer, [dict(type="LinearLR", begin=0, end=10)], 100)
    with pytest.raises(ValueError, match="'OneCycleLR'.*CosineAnnealingLR"):
        build_scheduler(optimizer, [dict(type="OneCycleLR", by_epoch=False)], 100)
    with pytest.raises(ValueError, match="overlap"):
        build_scheduler(optimizer, [dict(type="LinearLR", by_epoch=False, end=20),
                                    dict(type="PolyLR", by_epoch=False, begin=10)], 100)
    with pytest.raises(ValueError, match="eta_min_ratio"):
        build_scheduler(optimizer, [dict(type="CosineAnnealingLR", by_epoch=False, eta_min_ratio=0.1)], 100)


def test_a_shortened_run_never_reaches_later_phases() -> None:
    optimizer, _ = _mtp_scheduler()  # MTP's chain: warm-up to 1500, cosine after
    scheduler = build_scheduler(optimizer, [dict(type="LinearLR", start_factor=1e-6, by_epoch=False, end=1500),
                                            dict(type="CosineAnnealingLR", T_max=78500, by_epoch=False, begin=1500,
                                                 end=80000)], 1000)  # --cfg-options train_cfg.max_iters=1000
    for _ in range(999):
        scheduler.step()
    assert scheduler.get_last_lr()[0] < optimizer.param_groups[0]["initial_lr"]


# --------------------------------------------------------- MMEngine's recursive (chainable) formulas as an oracle


def _mmengine_recursive(kind: str, begin: int, end: int, **kw) -> Callable[[float, float, int], float]:
    """``_get_value`` of MMEngine 0.8's schedulers: (current lr, base lr, own step k) -> next lr."""
    total = end - begin - 1
    if kind == "LinearLR":
        s, e = kw.get("start_factor", 1 / 3), kw.get("end_factor", 1.0)
        return lambda lr, base, k: lr * s if k == 0 else lr * (1 + (e - s) / (total * s + (k - 1) * (e - s)))
    if kind == "ConstantLR":
        f = kw.get("factor", 1 / 3)
        return lambda lr, base, k: lr * f if k == 0 else (lr / f if k == total else lr)
    if kind == "PolyLR":
        eta, p = kw.get("eta_min", 0.0), kw.get("power", 1.0)
        return lambda lr, base, k: lr if k == 0 else (lr - eta) * (1 - 1 / (total - k + 1)) ** p + eta
    t_max, eta = kw.get("T_max", end - begin), kw.get("eta_min", 0.0)
    return lambda lr, base, k: lr if k == 0 else (
        (1 + math.cos(math.pi * k / t_max)) / (1 + math.cos(math.pi * (k - 1) / t_max)) * (lr - eta) + eta)


def _oracle_lrs(config: list[dict], initial: float, steps: int) -> list[float]:
    fns = [(c["begin"], c["end"], _mmengine_recursive(c["type"], c["begin"], c["end"],
            **{k: v for k, v in c.items() if k not in ("type", "begin", "end", "by_epoch")})) for c in config]
    lr, out = initial, []
    for t in range(steps):
        for begin, end, fn in fns:
            if begin <= t < end:
                lr = fn(lr, initial, t - begin)
        out.append(lr)
    return out


@pytest.mark.parametrize("config", [
    [dict(type="ConstantLR", factor=0.5, begin=0, end=5), dict(type="PolyLR", eta_min=1e-4, power=0.9, begin=8)],
    [dict(type="LinearLR", start_factor=0.1, begin=0, end=10),
     dict(type="CosineAnnealingLR", T_max=20, eta_min=1e-5, begin=10, end=30), dict(type="ConstantLR", begin=35)],
    [dict(type="PolyLR", power=1.0, eta_min=0.0, begin=3, end=40)],
])
def test_closed_form_equals_mmengine_recursion(config: list[dict]) -> None:
    """PolyLR/ConstantLR/LinearLR/Cosine chains, gaps and tails, against MMEngine's step-by-step recursion."""
    max_iters = 50
    full = [{"by_epoch": False, **c} for c in config]
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    scheduler = build_scheduler(optimizer, full, max_iters)
    expected = _oracle_lrs([{**c, "end": c.get("end", max_iters)} for c in full], 0.01, max_iters + 5)
    for t, lr in enumerate(expected):
        assert scheduler.get_last_lr()[0] == pytest.approx(lr, rel=1e-12, abs=1e-18), t
        scheduler.step()


def test_constant_and_poly_sanity() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    constant = build_scheduler(optimizer, dict(type="ConstantLR", factor=0.5, by_epoch=False, end=5), 100)
    assert [constant.lr_at(t, 1.0) for t in range(7)] == [0.5, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0]  # restored at end - 1
    poly = build_scheduler(optimizer, dict(type="PolyLR", power=2.0, eta_min=0.1, by_epoch=False), 11)
    assert poly.lr_at(0, 1.0) == 1.0
    assert poly.lr_at(5, 1.0) == pytest.approx(0.9 * 0.5**2 + 0.1)
    assert poly.lr_at(10, 1.0) == pytest.approx(0.1) and poly.lr_at(50, 1.0) == pytest.approx(0.1)
