"""Plots a training run's curve from its log.jsonl: train loss (per step, and per epoch) and val mIoU per epoch.

    .venv/bin/python bench/plot_run.py runs/camvid_dm05 -o docs/camvid_dm05_curve.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from edgeseg.io.files import atomic_path  # noqa: E402
from edgeseg.training.checkpoints import read_log  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="run folder holding log.jsonl")
    parser.add_argument("-o", "--output", type=Path, required=True, help="PNG file")
    parser.add_argument("--title", help="plot title (default: the run folder's name)")
    args = parser.parse_args()
    rows = read_log(args.run / "log.jsonl")
    steps = [r for r in rows if "loss" in r]
    epochs = [r for r in rows if "val_miou" in r]
    if not epochs:
        raise SystemExit(f"{args.run / 'log.jsonl'}: no finished epoch")
    per_epoch = max(r["step"] for r in epochs) / max(r["epoch"] for r in epochs)

    fig, loss_ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    loss_ax.plot([r["step"] / per_epoch for r in steps], [r["loss"] for r in steps], color="0.75", lw=0.6,
                 label="train loss per step")
    loss_ax.plot([r["epoch"] for r in epochs], [r["train_loss"] for r in epochs], color="tab:blue", marker="o",
                 ms=3, label="train loss, epoch mean")
    loss_ax.set_xlabel("epoch")
    config = args.run / "config.json"
    distilled = config.is_file() and json.loads(config.read_text()).get("teacher")
    loss_ax.set_ylabel("cross-entropy + KL to teacher" if distilled else "cross-entropy")
    loss_ax.set_ylim(0, min(3.0, max(r["loss"] for r in steps)))
    miou_ax = loss_ax.twinx()
    miou_ax.plot([r["epoch"] for r in epochs], [r["val_miou"] for r in epochs], color="tab:red", marker="s", ms=3,
                 label="val mIoU")
    best = max(epochs, key=lambda r: r["val_miou"])
    miou_ax.annotate(f"{best['val_miou']:.2f}", (best["epoch"], best["val_miou"]), textcoords="offset points",
                     xytext=(0, 6), ha="center", color="tab:red", fontsize=8)
    miou_ax.set_ylabel("val mIoU (%)")
    miou_ax.set_ylim(0, 100)
    handles = loss_ax.get_legend_handles_labels()[0] + miou_ax.get_legend_handles_labels()[0]
    loss_ax.legend(handles, [h.get_label() for h in handles], loc="upper right", fontsize=8)
    loss_ax.set_title(args.title or args.run.name, fontsize=10)
    fig.tight_layout()
    with atomic_path(args.output) as tmp:
        fig.savefig(tmp, format="png")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
