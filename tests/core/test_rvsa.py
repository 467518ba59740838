"""Behaviour of the RVSA backbone beyond the goldens: fast path = reference path, checkpointing, clear errors."""
from __future__ import annotations

import pytest
import torch

from mtp_core.models import create_model
from mtp_core.models.rvsa import RVSAViT
from mtp_tools.testing import det_init_, stress_scale_


def tiny(img_size: int, impl: str = "reference", **kwargs) -> RVSAViT:
    model = create_model("mtp_vit_tiny_rvsa", img_size=img_size, attn_impl=impl, **kwargs)
    det_init_(model, seed=3)
    stress_scale_(model)  # non-trivial RVSA geometry, as in the goldens
    return model.eval()


@pytest.mark.parametrize(("img_size", "batch"), [(128, 3), (224, 2), (320, 1), (384, 2)])
def test_sdpa_path_equals_reference_path(img_size: int, batch: int) -> None:
    model = tiny(img_size)
    x = torch.randn(batch, 3, img_size, img_size)
    with torch.no_grad():
        ref = model(x)
        model.set_attn_impl("sdpa")
        fast = model(x)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_sdpa_path_gradients_equal_reference_path() -> None:
    x = torch.randn(2, 3, 128, 128)
    grads = []
    for impl in ("reference", "sdpa"):
        model = tiny(128, impl)
        sum(f.square().mean() for f in model(x)).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for key in grads[0]:
        torch.testing.assert_close(grads[1][key], grads[0][key], rtol=1e-4, atol=1e-6, msg=key)


def test_activation_checkpointing_gives_the_same_gradients() -> None:
    x = torch.randn(1, 3, 128, 128)
    results = []
    for use_checkpoint in (False, True):
        model = tiny(128, "sdpa", use_checkpoint=use_checkpoint, drop_path_rate=0.0).train()
        loss = sum(f.mean() for f in model(x))
        loss.backward()
        results.append((loss.detach(), model.blocks[0].attn.qkv.weight.grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


def test_drop_path_is_active_only_in_training() -> None:
    model = tiny(128, "sdpa", drop_path_rate=0.5)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        eval_out = model.eval()(x)[2]
        assert torch.equal(eval_out, model(x)[2])
        torch.manual_seed(1)
        train_out = model.train()(x)[2]
    assert not torch.allclose(train_out, eval_out)


def test_bf16_autocast_runs_and_stays_close() -> None:
    model = tiny(128, "sdpa")
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    for a, b in zip(low, ref):
        assert torch.isfinite(a).all()
        rel = (a.float() - b).norm() / b.norm()
        assert rel < 0.05


def test_wrong_input_size_says_what_to_do() -> None:
    model = tiny(128)
    with pytest.raises(ValueError, match=r"built for img_size=128.*predict\(mode='slide'\)"):
        model(torch.randn(1, 3, 256, 256))


def test_inputs_under_one_window_do_not_produce_nan() -> None:
    # 96 px = 6x6 tokens: the original divides the offsets by 6 // 7 = 0 and returns NaN; we clamp the divisor.
    model = tiny(96)
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 96, 96))
    assert all(torch.isfinite(o).all() for o in outs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(out_indices=(0, 1, 2)), "out_indices"),
        (dict(out_indices=(3, 2, 1, 0)), "out_indices"),
        (dict(patch_size=8), "patch_size"),
        (dict(embed_dim=100, num_heads=3), "divisible"),
        (dict(attn_impl="flash"), "attn_impl"),
    ],
)
def test_bad_constructor_arguments_are_explained(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_model("mtp_vit_tiny_rvsa", **kwargs)


def test_sdpa_path_compiles_as_one_graph() -> None:
    # fullgraph=True fails on any graph break; aot_eager traces forward through AOTAutograd without codegen
    # (inductor codegen itself is exercised on the GPU bench, it takes minutes on 2 CPU cores).
    model = tiny(128, "sdpa")
    x = torch.randn(2, 3, 128, 128)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=False)
    with torch.no_grad():
        for a, b in zip(compiled(x), model(x)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
