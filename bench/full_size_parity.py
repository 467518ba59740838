"""Full-size parity check of the RVSA backbone (not run in CI: ViT-L needs ~10 GB and minutes on a CPU).

Rebuilds the exact weights of the reference README's recipe from the key manifest, runs the 384 px golden input
through both attention paths, and reports the max difference against a golden file when one is given
(``golden_vitb_s384_b1.pt`` with outputs, or ViT-L statistics), plus float64-vs-float32 of our own model.

    .venv/bin/python bench/full_size_parity.py --model b [--golden PATH]
    .venv/bin/python bench/full_size_parity.py --model l --golden golden_vitl_s384_b1_stats.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

from mtp_core.models import create_model
from mtp_tools.testing import det_init_tensors, golden_input

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "mtp"
MODELS = {"b": ("mtp_vit_b_rvsa", "vitb_rvsa_keys.json"), "l": ("mtp_vit_l_rvsa", "vitl_rvsa_keys.json")}
STAT_FIELDS = ("sum", "mean", "std", "min", "max")


def load_golden(path: Path) -> dict:
    if path.suffix == ".json":
        return json.loads(path.read_text())
    return torch.load(path, map_location="cpu", weights_only=True)


def sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()


def stats_diff(out: torch.Tensor, stats: dict) -> float:
    """Largest relative difference over the summary statistics and the sampled values."""
    flat = out.double().flatten()
    mine = {"sum": flat.sum(), "mean": flat.mean(), "std": flat.std(), "min": flat.min(), "max": flat.max()}
    worst = max(abs(float(mine[k]) - stats[k]) / max(abs(stats[k]), 1e-12) for k in STAT_FIELDS if k in stats)
    sampled = flat[torch.tensor(stats["sample_idx"])]
    ref = torch.tensor(stats["sample_vals"], dtype=torch.float64)
    return max(worst, float(((sampled - ref).abs() / ref.abs().clamp_min(1e-6)).max()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=MODELS, default="b")
    parser.add_argument("--golden", type=Path, default=None, help="golden .pt (outputs) or stats .json/.pt")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    name, manifest_name = MODELS[args.model]
    manifest = json.loads((REFERENCE / manifest_name).read_text())["state_dict"]
    weights = det_init_tensors(manifest)
    golden = load_golden(args.golden) if args.golden else None

    if golden and "weight_stats" in golden:
        same = sum(sha256(weights[k]) == s["sha256"] for k, s in golden["weight_stats"].items() if k in weights)
        print(f"weights rebuilt from {manifest_name}: {same}/{len(weights)} tensors match the golden sha256")

    x = golden_input((1, 3, 384, 384))
    results = {}
    for impl in ("reference", "sdpa"):
        model = create_model(name, attn_impl=impl).eval()
        model.load_state_dict(weights, strict=False)
        start = time.perf_counter()
        with torch.no_grad():
            results[impl] = model(x)
        print(f"{name} {impl:<9} forward {time.perf_counter() - start:6.2f} s")
    model = create_model(name, attn_impl="reference").double().eval()
    model.load_state_dict({k: v.double() for k, v in weights.items()}, strict=False)
    with torch.no_grad():
        results["float64"] = model(x.double())

    print(f"{'output':<8}{'shape':<22}{'sdpa-ref':>11}{'f32-f64':>11}{'vs golden':>12}")
    ok = True
    for i, (ref, fast, f64) in enumerate(zip(results["reference"], results["sdpa"], results["float64"])):
        sdpa_diff, f64_diff = (fast - ref).abs().max(), (ref.double() - f64).abs().max()
        line = f"{i:<8}{str(tuple(ref.shape)):<22}{sdpa_diff:11.2e}{f64_diff:11.2e}"
        if golden is not None and golden.get("outputs"):
            diff = max(float((out - golden["outputs"][i]).abs().max()) for out in (ref, fast))
            ok &= all(torch.allclose(out, golden["outputs"][i], rtol=1e-4, atol=5e-5) for out in (ref, fast))
            line += f"{diff:12.2e}"
        elif golden is not None:
            diff = max(stats_diff(out, golden["output_stats"][i]) for out in (ref, fast))
            ok &= diff < 1e-4
            line += f"{diff:11.2e}r"
        print(line)
    if golden is not None:
        print("PARITY OK" if ok else "PARITY FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
