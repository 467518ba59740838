"""Training-step speed of MTP's SpaceNetv1 configs: ms per image for forward + backward + AdamW (layer decay).

Builds the model, optimizer and loss exactly as ``training.train`` does from the config, feeds random 384 px
batches already on the device (the data pipeline is not measured) and reports the median step time per image.
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
from training.optim import build_optimizer

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"
MODELS = {
    "b": CONFIGS / "mtp/spacenetv1/rvsa-b-upernet-384-mae-mtp-spacenetv1.py",
    "l": CONFIGS / "mtp/spacenetv1/rvsa-l-upernet-384-mae-mtp-spacenetv1.py",
    "tiny": CONFIGS / "tiny/rvsa-tiny-upernet-64.py",
}
ORIGINAL_H100_MS = {("b", "fp32"): 24.0, ("b", "bf16"): 18.5, ("l", "fp32"): 56.6, ("l", "bf16"): 38.6}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name: str, precision: str, batch: int, steps: int, device: torch.device, compile_model: bool) -> float:
    cfg = load_config(MODELS[name])
    cfg["model"]["backbone"]["pretrained"] = None
    spec = build_segmentor(cfg["model"])
    model = spec.model.to(device).train()
    optimizer = build_optimizer(model, cfg["optim_wrapper"])
    size = spec.crop_size
    imgs = torch.randn(batch, 3, *size, device=device)
    gts = torch.randint(0, spec.model.num_classes, (batch, *size), device=device)
    amp = precision == "bf16"
    forward = torch.compile(model) if compile_model else model

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits, aux = forward(imgs, return_aux=True)
        loss, _ = segmentation_loss(logits, aux, gts, spec.losses)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up: allocator, cuDNN autotune, compile
        step()
    times = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times) / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=["b", "l"])
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"device: {describe_device(device)}; batch {args.batch}, median of {args.steps} steps")
    print(f"{'model':<6}{'precision':<11}{'compiled':<10}{'ms/image':>10}{'original H100':>15}{'speed-up':>10}")
    for name in args.models:
        for precision in args.precisions:
            for compiled in (False, True) if args.compile else (False,):
                ms = measure(name, precision, args.batch, args.steps, device, compiled)
                ref = ORIGINAL_H100_MS.get((name, precision))
                ratio = f"{ref / ms:9.2f}x" if ref and device.type == "cuda" else f"{'-':>10}"
                print(f"{name:<6}{precision:<11}{str(compiled):<10}{ms:10.1f}{ref or '-':>15}{ratio}")


if __name__ == "__main__":
    main()
