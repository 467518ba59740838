"""Training-step speed of MTP's SpaceNetv1 configs: ms per image for forward + backward + AdamW (layer decay).

Builds the model, the optim wrapper (``fp32``: OptimWrapper; ``bf16``/``fp16``: AmpOptimWrapper with that dtype,
fp16 with the dynamic loss scaler) and the loss exactly as ``training.train`` does from the config, feeds random
384 px batches already on the device (the data pipeline is not measured) and reports the median step time per image
and the mean loss of the timed steps (same seed and data for every precision: the losses should agree to noise).
Attention runs through SDPA (``--attn sdpa``, what training uses) or the reference maths (``--attn reference``).
The original code on one H100 takes ViT-B 24.0 ms fp32 / 18.5 ms bf16, ViT-L 56.6 / 38.6 ms per image.

    .venv/bin/python bench/train_speed.py                       # B and L, fp32 and bf16, batch 8
    .venv/bin/python bench/train_speed.py --models tiny --steps 3 --batch 2   # CPU smoke run
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from mtp_core.device import describe_device, resolve_device
from training.builder import build_segmentor, segmentation_loss
from training.config import load_config
from training.optim_wrapper import build_optim_wrapper

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"
MODELS = {
    "b": CONFIGS / "mtp/spacenetv1/rvsa-b-upernet-384-mae-mtp-spacenetv1.py",
    "l": CONFIGS / "mtp/spacenetv1/rvsa-l-upernet-384-mae-mtp-spacenetv1.py",
    "tiny": CONFIGS / "tiny/rvsa-tiny-upernet-64.py",
}
ORIGINAL_H100_MS = {("b", "fp32"): 24.0, ("b", "bf16"): 18.5, ("l", "fp32"): 56.6, ("l", "bf16"): 38.6}
WRAPPERS = {
    "fp32": {"type": "OptimWrapper"},
    "bf16": {"type": "AmpOptimWrapper", "dtype": "bfloat16"},
    "fp16": {"type": "AmpOptimWrapper", "dtype": "float16", "loss_scale": "dynamic"},
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name: str, precision: str, batch: int, steps: int, device: torch.device, compile_model: bool,
            attn: str) -> tuple[float, float]:
    """Median ms per image of a training step, and the mean loss of the timed steps."""
    cfg = load_config(MODELS[name])
    cfg["model"]["backbone"]["pretrained"] = None
    torch.manual_seed(0)
    spec = build_segmentor(cfg["model"])
    model = spec.model.to(device).train()
    model.backbone.set_attn_impl(attn)
    wrapper = build_optim_wrapper(model, {**cfg["optim_wrapper"], **WRAPPERS[precision]}, device)
    size = spec.crop_size
    imgs = torch.randn(batch, 3, *size, device=device)
    gts = torch.randint(0, spec.model.num_classes, (batch, *size), device=device)
    forward = torch.compile(model) if compile_model else model

    def step() -> torch.Tensor:
        with wrapper.optim_context(model):
            logits, aux = forward(imgs, return_aux=True)
            loss, _ = segmentation_loss(logits, aux, gts, spec.losses)
        wrapper.update_params(loss)
        return loss.detach()

    for _ in range(3):  # warm-up: allocator, cuDNN autotune, compile
        step()
    times, losses = [], []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        losses.append(step())
        sync(device)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times) / batch, float(torch.stack(losses).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=["b", "l"])
    parser.add_argument("--precisions", nargs="+", choices=WRAPPERS, default=["fp32", "bf16"])
    parser.add_argument("--attn", choices=("sdpa", "reference"), default="sdpa",
                        help="attention implementation (training uses sdpa)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"device: {describe_device(device)}; batch {args.batch}, median of {args.steps} steps, {args.attn} "
          "attention")
    print(f"{'model':<6}{'precision':<11}{'compiled':<10}{'ms/image':>10}{'original H100':>15}{'speed-up':>10}"
          f"{'mean loss':>11}")
    for name in args.models:
        for precision in args.precisions:
            for compiled in (False, True) if args.compile else (False,):
                ms, loss = measure(name, precision, args.batch, args.steps, device, compiled, args.attn)
                ref = ORIGINAL_H100_MS.get((name, precision))
                ratio = f"{ref / ms:9.2f}x" if ref and device.type == "cuda" else f"{'-':>10}"
                print(f"{name:<6}{precision:<11}{str(compiled):<10}{ms:10.1f}{ref or '-':>15}{ratio}{loss:11.4f}")


if __name__ == "__main__":
    main()
