"""MMEngine's OptimWrapper/AmpOptimWrapper semantics: clipping, accumulation, fp16 loss scaling, bf16 autocast."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mtp_core.models import create_model
from training.optim_wrapper import AmpOptimWrapper, OptimWrapper, build_optim_wrapper

CPU = torch.device("cpu")


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Linear(16, 3))


def sgd(model: nn.Module, lr: float = 0.5) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr)


def loss_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).square().mean()


@pytest.mark.parametrize("clip", [dict(max_norm=0.05), dict(max_norm=0.05, norm_type=float("inf")),
                                  dict(type="value", clip_value=0.01)])
def test_clipping_equals_torch_on_the_same_gradients(clip: dict) -> None:
    model, x = mlp(), torch.randn(4, 6)
    reference = copy.deepcopy(model)
    wrapper = OptimWrapper(sgd(model), clip_grad=clip)
    wrapper.update_params(loss_of(model, x))

    loss_of(reference, x).backward()
    options = {k: v for k, v in clip.items() if k != "type"}
    if clip.get("type") == "value":
        torch.nn.utils.clip_grad_value_(reference.parameters(), **options)
    else:
        expected_norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), **options)
        assert torch.equal(wrapper.grad_norm, expected_norm) and expected_norm > clip["max_norm"]  # it did clip
    sgd(reference).step()
    for got, want in zip(model.parameters(), reference.parameters()):
        assert torch.equal(got, want)


def test_accumulating_two_batches_of_one_equals_one_batch_of_two() -> None:
    """A model without BatchNorm (the RVSA backbone: LayerNorm only); MMEngine divides each loss by the count."""
    torch.manual_seed(0)
    backbone = create_model("mtp_vit_tiny_rvsa", img_size=32, drop_path_rate=0.0)
    x = torch.randn(2, 3, 32, 32)

    def loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return sum(f.square().mean() for f in model(batch))

    once = copy.deepcopy(backbone)
    OptimWrapper(sgd(once, 0.1)).update_params(loss(once, x))
    twice = copy.deepcopy(backbone)
    wrapper = OptimWrapper(sgd(twice, 0.1), accumulative_counts=2)
    wrapper.initialize_count_status(twice, 0, 2)
    before = [p.detach().clone() for p in twice.parameters()]
    assert wrapper.update_params(loss(twice, x[:1])) is False  # accumulated only
    assert all(torch.equal(p, b) for p, b in zip(twice.parameters(), before))
    assert wrapper.update_params(loss(twice, x[1:])) is True
    changed = 0
    for got, want, old in zip(twice.parameters(), once.parameters(), before):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
        changed += not torch.equal(got, old)
    assert changed > 10


def test_accumulation_counts_and_the_short_last_group_as_mmengine() -> None:
    model = mlp()
    wrapper = OptimWrapper(sgd(model), accumulative_counts=3)
    wrapper.initialize_count_status(model, 0, 7)  # groups 3 + 3 + 1
    factors, updates = [], []
    for _ in range(7):
        loss = torch.ones((), requires_grad=True)
        scaled = wrapper.scale_loss(loss)
        factors.append(round(float(loss.detach() / scaled.detach())))
        wrapper.backward(scaled)
        updates.append(wrapper.should_update())
    assert factors == [3, 3, 3, 3, 3, 3, 1]
    assert updates == [False, False, True, False, False, True, True]
    with pytest.raises(ValueError, match="accumulative_counts must be an integer >= 1"):
        OptimWrapper(sgd(model), accumulative_counts=0)


def test_fp16_scales_the_loss_unscales_before_clipping_and_skips_overflowing_steps() -> None:
    model, x = mlp(), torch.randn(4, 6)
    reference = copy.deepcopy(model)
    wrapper = AmpOptimWrapper(sgd(model), CPU, dtype="float16", clip_grad=dict(max_norm=0.05))
    assert wrapper.loss_scaler is not None and wrapper.loss_scaler.get_scale() == 2.0**16
    with wrapper.optim_context(model):
        out = model(x)
        assert out.dtype == torch.float16
        loss = out.float().square().mean()
    wrapper.backward(loss)
    loss_of(reference, x).backward()
    for got, want in zip(model.parameters(), reference.parameters()):  # scaled gradients (fp16 forward)
        torch.testing.assert_close(got.grad / 2.0**16, want.grad, rtol=2e-2, atol=1e-5)
    wrapper.step()
    expected_norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.05)
    torch.testing.assert_close(wrapper.grad_norm, expected_norm, rtol=2e-2, atol=0)  # the unscaled norm
    sgd(reference).step()
    for got, want in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-4)

    before = [p.detach().clone() for p in model.parameters()]
    wrapper.zero_grad()
    wrapper.backward(loss_of(model, x) * float("inf"))
    wrapper.step()  # an inf gradient: the step is skipped and the dynamic scale halves
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert wrapper.loss_scaler.get_scale() == 2.0**15

    state = wrapper.state_dict()
    fresh = AmpOptimWrapper(sgd(mlp()), CPU, dtype="float16")
    fresh.load_state_dict(state)
    assert fresh.loss_scaler.get_scale() == 2.0**15 and "loss_scaler" in state


def test_static_loss_scale_and_bf16() -> None:
    model, x = mlp(), torch.randn(4, 6)
    static = AmpOptimWrapper(sgd(model), CPU, dtype="float16", loss_scale=512.0)
    static.backward(loss_of(model, x) * float("inf"))
    static.step()
    assert static.loss_scaler.get_scale() == 512.0  # a static scale never changes
    bf16 = AmpOptimWrapper(sgd(model), CPU, dtype="bfloat16")
    with bf16.optim_context(model):
        assert model(x).dtype == torch.bfloat16
    assert bf16.loss_scaler is None  # bf16 has float32's range: no scaling
    assert AmpOptimWrapper(sgd(model), CPU).cast_dtype == torch.bfloat16  # dtype=None: bf16 where supported


def test_wrapper_config_errors_are_explained() -> None:
    model = mlp()
    base = dict(optimizer=dict(type="SGD", lr=0.1))
    assert type(build_optim_wrapper(model, {**base, "type": "AmpOptimWrapper"}, CPU)) is AmpOptimWrapper
    cases = [
        ({"type": "ApexOptimWrapper"}, r"'ApexOptimWrapper' is not supported; valid: \['OptimWrapper', 'AmpOpt"),
        ({"dtype": "float16"}, r"\['dtype'\] only apply to type='AmpOptimWrapper' \(or pass --amp\)"),
        ({"clip_grad": dict(type="l1", max_norm=1)}, "clip_grad type 'l1' is not supported"),
        ({"clip_grad": dict(norm_type=2)}, "'max_norm' required"),
        ({"clip_grad": dict(max_norm=1, max_value=2)}, r"got \['max_norm', 'max_value'\]"),
        ({"type": "AmpOptimWrapper", "dtype": "float8"}, "dtype 'float8' is not supported"),
        ({"type": "AmpOptimWrapper", "dtype": "float16", "loss_scale": "auto"}, "loss_scale must be 'dynamic'"),
    ]
    for extra, message in cases:
        with pytest.raises(ValueError, match=message):
            build_optim_wrapper(model, {**base, **extra}, CPU)
