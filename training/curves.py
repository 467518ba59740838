"""Loss / learning-rate / mIoU curves of a training log (``log.jsonl``) as one PNG.

matplotlib is optional: QGIS installs pull it in (Debian's python3-qgis depends on it), a bare cluster venv may
lack it, and then only the PNG is skipped.
"""
from __future__ import annotations

import json
from pathlib import Path

from mtp_core.io import atomic_path


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_training_log(log_path: Path, png_path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(log_path)
    train = [r for r in records if r.get("mode") == "train"]
    val = [r for r in records if r.get("mode") == "val"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot([r["iter"] for r in train], [r["loss"] for r in train])
    axes[0].set(title="training loss", xlabel="iteration", yscale="log")
    axes[1].plot([r["iter"] for r in train], [r.get("base_lr", r["lr"]) for r in train], label="base_lr")
    axes[1].plot([r["iter"] for r in train], [r["lr"] for r in train], label="lr (first group, after layer decay)")
    axes[1].set(title="learning rate", xlabel="iteration")
    axes[1].legend()
    axes[2].plot([r["iter"] for r in val], [r["mIoU"] for r in val], marker="o")
    axes[2].set(title="validation mIoU", xlabel="iteration")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return png_path
