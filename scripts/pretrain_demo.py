"""Multi-task pretraining shown working on CPU (issue 12, part 6): data, the pretraining command, held-out numbers.

    python scripts/pretrain_demo.py OUT_DIR [--iters 300]

1. SAMRS-format building sets under OUT_DIR/data: 128 px synthetic suburbs (training seeds 0..63, held-out seeds
   9000..9007) and the real SpaceNet 4 chip of ../shared/realdata in 150 px tiles (four held out), so that buildings
   keep the size the 128 px model sees them at;
2. ``python -m training.pretrain training/configs/demo/pretrain-tiny-128-buildings.py`` with the held-out sets as
   its ``val_data``: it trains and, as MTP's main_pretrain.py, validates after the last iteration;
3. prints every loss term's mean over the first and the last 20 iterations (``curves.png`` is beside the log), the
   held-out metrics (building IoU of the SS head; COCO AP and mask F1 at IoU 0.5 of the IS head), and writes
   ``heldout.png`` (a held-out scene, its semantic prediction and its instances).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mtp_core.checkpoint import load_weights, safe_load  # noqa: E402
from mtp_core.models import create_model  # noqa: E402
from mtp_tools.samrs import spacenet_images, synthetic_images, write_samrs  # noqa: E402
from training.data.instance_transforms import mtp_pipelines  # noqa: E402
from training.data.multitask_preprocess import MultiTaskDataPreprocessor  # noqa: E402
from training.data.samrs import SAMRSDataset  # noqa: E402

CONFIG = REPO / "training" / "configs" / "demo" / "pretrain-tiny-128-buildings.py"
HELD_OUT_REAL = ("sn4_0_750", "sn4_300_450", "sn4_600_150", "sn4_750_600")
WINDOW = 20


def make_data(root: Path, shared: Path) -> dict[str, Path]:
    real = spacenet_images(shared / "realdata", tile=150, spacenet1=False)
    sets = {
        "synth": synthetic_images(64, 128, seed=0),
        "spacenet": [i for i in real if i.name not in HELD_OUT_REAL],
        "synth_heldout": synthetic_images(8, 128, seed=9000),
        "spacenet_heldout": [i for i in real if i.name in HELD_OUT_REAL],
    }
    for name, images in sets.items():
        write_samrs(root / name, images)
    return {name: root / name for name in sets}


def loss_table(log: Path) -> list[tuple[str, float, float]]:
    train = [json.loads(line) for line in log.read_text().splitlines() if '"mode": "train"' in line]
    terms = ["loss"] + [k for k in train[0] if k.count("/") == 2 and "loss" in k.rsplit("/", 1)[1]]
    end = train[-1]["iter"]
    first = [r for r in train if r["iter"] <= WINDOW]  # each record: the mean since the previous one
    last = [r for r in train if r["iter"] > end - WINDOW]
    return [(t, float(np.mean([r[t] for r in first])), float(np.mean([r[t] for r in last]))) for t in terms]


def overlay(work: Path, data: Path, out: Path) -> None:
    """The held-out synthetic scene with the most buildings, the SS head's building mask and the IS head's instances,
    side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    state = safe_load(work / "last_vit_tiny_rvsa_ss_is_pretrn_model.pth")
    meta = state["meta"]
    model = create_model(f"mtp_{meta['backbone']}_multitask", datasets=[tuple(d) for d in meta["datasets"]],
                         tasks=meta["tasks"], img_size=meta["image_size"])
    load_weights(model, state)
    model.eval()
    _, valid = mtp_pipelines(meta["image_size"])
    dataset = SAMRSDataset(str(data), "instances.json", valid)
    sample = dataset[max(range(len(dataset)), key=lambda i: len(dataset.annotations[i]))]
    batch = MultiTaskDataPreprocessor()([sample], "cpu", training=False)
    with torch.no_grad():
        feats = list(model.encoder(batch.inputs))
        logits = model.decoder("ss").predict([feats], [batch], [model.dataset_heads("ss", 0)])[0][0]
        result = model.decoder("is").predict([feats], [batch], [model.dataset_heads("is", 0)])[0][0]
    from osgeo import gdal

    image = gdal.Open(sample["meta"]["path"]).ReadAsArray().transpose(1, 2, 0)
    instances = np.zeros(image.shape[:2], np.int32)
    for k, mask in enumerate(result.masks[result.scores >= 0.5].numpy()):
        instances[mask] = k + 1
    fig, axes = plt.subplots(1, 3, figsize=(15, 5))
    axes[0].imshow(image)
    axes[0].set_title(f"held-out scene ({sample['masks'].shape[0]} buildings)")
    axes[1].imshow(logits.argmax(0).numpy(), cmap="gray")
    axes[1].set_title("SS head: building")
    axes[2].imshow(image)
    axes[2].imshow(np.ma.masked_equal(instances, 0), cmap="tab20", alpha=0.6)
    axes[2].set_title(f"IS head: {int(instances.max())} instances (score >= 0.5)")
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=80, bbox_inches="tight")  # titles kept inside the image


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--iters", type=int, default=600)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    args = parser.parse_args()
    sets = make_data(args.out_dir / "data", args.shared)
    work = args.out_dir / "work"
    val = {"synth": {"data_root": str(sets["synth_heldout"]), "ann_file": "instances.json", "classes": ["building"]},
           "spacenet": {"data_root": str(sets["spacenet_heldout"]), "ann_file": "instances.json",
                        "classes": ["building"]}}
    command = [sys.executable, "-m", "training.pretrain", str(CONFIG), "--work-dir", str(work), "--cfg-options",
               f"data.synth.data_root={sets['synth']}", f"data.spacenet.data_root={sets['spacenet']}",
               f"end_iter={args.iters}", f"interval={max(args.iters // 3, 1)}", f"val_data={val!r}"]
    print("$", " ".join(command[1:3] + [str(CONFIG.relative_to(REPO))] + command[4:]), flush=True)
    subprocess.run(command, cwd=REPO, check=True, env={"OMP_NUM_THREADS": "1", **os.environ})
    print(f"\nloss terms, mean of the first / last {WINDOW} iterations:")
    for term, first, last in loss_table(work / "log.jsonl"):
        print(f"  {term:28s} {first:8.4f} -> {last:8.4f}  {'falls' if last < first else 'DOES NOT FALL'}")
    record = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()][-1]
    print("\nheld-out scenes (validation after the last iteration):")
    for key, value in record.items():
        if "/" in key or key == "average":
            print(f"  {key:28s} {value:.4f}")
    overlay(work, sets["synth_heldout"], args.out_dir / "heldout.png")
    print(f"\n{work / 'curves.png'}, {args.out_dir / 'heldout.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
