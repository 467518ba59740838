"""Loss / learning-rate / mIoU curves of a training log (``log.jsonl``) as one PNG; a pretraining log's loss terms
(``task/dataset/loss_*``) get a second row, one panel per task.

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
    terms = list(dict.fromkeys(k for r in train for k in r if k.count("/") == 2 and "loss" in k.rsplit("/", 1)[1]))
    tasks = list(dict.fromkeys(k.split("/", 1)[0] for k in terms))
    columns = max(3, len(tasks))
    fig, grid = plt.subplots(2 if tasks else 1, columns, figsize=(5 * columns, 8 if tasks else 4), squeeze=False)
    axes = grid[0]
    axes[0].plot([r["iter"] for r in train], [r["loss"] for r in train])
    axes[0].set(title="training loss", xlabel="iteration", yscale="log")
    axes[1].plot([r["iter"] for r in train], [r.get("base_lr", r["lr"]) for r in train], label="base_lr")
    axes[1].plot([r["iter"] for r in train], [r["lr"] for r in train], label="lr (first group, after layer decay)")
    axes[1].set(title="learning rate", xlabel="iteration")
    axes[1].legend()
    metric = "mIoU" if any("mIoU" in r for r in val) or not val else "average"  # pretraining: MTP's average
    axes[2].plot([r["iter"] for r in val if metric in r], [r[metric] for r in val if metric in r], marker="o")
    axes[2].set(title=f"validation {metric}", xlabel="iteration")
    for ax, task in zip(grid[1] if tasks else (), tasks):
        for term in (t for t in terms if t.startswith(task + "/")):
            points = [(r["iter"], r[term]) for r in train if r.get(term, 0) > 0]
            ax.plot([p[0] for p in points], [p[1] for p in points], label=term.split("/", 1)[1])
        ax.set(title=f"{task} losses", xlabel="iteration", yscale="log")
        ax.legend(fontsize=7)
    for ax in grid[1][len(tasks):] if tasks else ():
        ax.axis("off")
    for ax in grid.flat:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return png_path
