"""GPU check of ViT-B+RVSA+UperNet (384 px tiles, random weights): correctness first, then model-only throughput.

Correctness: the SDPA path equals the reference path in float32 on the GPU, and bf16 autocast stays close.
Throughput (tiles/s, best of 3 timed runs after warm-up, CUDA synchronized): the original test setting (fp32,
batch 1), fp32 batch 16, bf16 batch 64, bf16 + channels-last, and torch.compile (goal >= 1,000 tiles/s on an H100;
the original code runs 34 in its fp32 slide test and 874 compiled).

    python bench/gpu_model_check.py [--model mtp_vit_b_rvsa_upernet] [--no-compile]
"""
from __future__ import annotations

import argparse
import time

import torch

from mtp_core.device import describe_device
from mtp_core.models import create_model
from mtp_tools.testing import det_init_


def tiles_per_s(model, batch: int, dtype, channels_last: bool, steps: int = 10) -> float:
    x = torch.randn(batch, 3, 384, 384, device="cuda")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    best = float("inf")
    with torch.inference_mode(), torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
        for _ in range(3):
            model(x)
        for _ in range(3):
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(steps):
                model(x)
            torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
    return batch * steps / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mtp_vit_b_rvsa_upernet")
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda")
    print(f"device: {describe_device(device)}; torch {torch.__version__}")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = create_model(args.model)
    det_init_(model)
    model = model.to(device).eval()
    x = torch.randn(2, 3, 384, 384, device=device)
    with torch.inference_mode():
        model.backbone.set_attn_impl("reference")
        ref = model(x)
        model.backbone.set_attn_impl("sdpa")
        fast = model(x)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = model(x).float()
    print(f"correctness: sdpa vs reference fp32 max |diff| {(fast - ref).abs().max():.2e} "
          f"(logit scale {ref.abs().max():.2e}); bf16 vs fp32 relative error {(low - ref).norm() / ref.norm():.2e}, "
          f"argmax agreement {(low.argmax(1) == ref.argmax(1)).float().mean():.4%}")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    rows = [("original setting: fp32, batch 1", 1, None, False), ("fp32, batch 16", 16, None, False),
            ("bf16, batch 64", 64, torch.bfloat16, False), ("bf16, batch 64, channels-last", 64, torch.bfloat16, True)]
    cl_model = model.to(memory_format=torch.channels_last)
    for name, batch, dtype, cl in rows:
        print(f"{name:<42}{tiles_per_s(cl_model if cl else model, batch, dtype, cl):10.1f} tiles/s", flush=True)
    if not args.no_compile:
        compiled = torch.compile(cl_model, dynamic=False)
        print(f"{'torch.compile, bf16, batch 64, channels-last':<42}"
              f"{tiles_per_s(compiled, 64, torch.bfloat16, True):10.1f} tiles/s")


if __name__ == "__main__":
    main()
