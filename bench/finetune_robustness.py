"""How much a short fine-tune of the VOC model on VOC itself keeps: learning rate x batch size, defaults otherwise.

Every run starts from deeplabv3_mnv2_dm05_voc, trains --steps steps (40) at crop 321 on the VOC train images
with `edgeseg train`'s defaults (`--bn auto`: frozen, as the VOC model already predicts VOC's classes; or --bn),
and is scored on the val images it never saw. Training on the model's own domain should lose nothing, so the figure
measures what the recipe destroys. The rows, the baseline and the command go to --json (docs/ reads them);
a markdown table is printed.

    EDGESEG_MIRROR=../shared/models .venv/bin/python bench/finetune_robustness.py   # about 8 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _results import print_grid, write_record

from edgeseg.training import run_training
from edgeseg.training.checkpoints import read_log
from edgeseg.training.config import BN_TRAIN_BATCH, new_config

VOC = Path(__file__).resolve().parents[2] / "shared" / "voc" / "VOC2012"
INIT = "deeplabv3_mnv2_dm05_voc"


def fine_tune(data: Path, out: Path, lr: float | None, batch: int, steps: int, crop: int, bn: str,
              baseline: bool = False) -> dict:
    given = {"data": str(data), "batch_size": batch, "crop": crop, "max_steps": steps, "epochs": 1, "init": INIT,
             "bn": bn}
    if lr is not None:
        given["lr"] = lr
    config = new_config(given, out)
    start = time.perf_counter()
    summary = run_training(config, progress=False, baseline=baseline)
    row = {"baseline_miou": read_log(out / "log.jsonl")[0]["baseline_miou"]} if baseline else {}
    return {**row, "lr": config.lr, "lr_given": lr, "batch": batch, "bn": config.bn,
            "val_miou": summary["best_miou"],
            "train_loss": round(summary["train_loss"], 4),
            "seconds": round(time.perf_counter() - start, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=VOC)
    parser.add_argument("--lrs", default="0.0001,0.001,0.007,default",
                        help="comma-separated rates; 'default' runs with no --lr")
    parser.add_argument("--batches", default="2,4,8")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--crop", type=int, default=321)
    parser.add_argument("--bn", default="auto", choices=("auto", "frozen", "train"), help="as edgeseg train's")
    parser.add_argument("--json", type=Path, help="write the results here (e.g. docs/finetune_robustness.json)")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"{args.data}: no such folder (the VOC subset of ../shared)")
    lrs = [None if value == "default" else float(value) for value in args.lrs.split(",")]
    batches = [int(value) for value in args.batches.split(",")]

    baseline = None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for lr in lrs:
            for batch in batches:
                out = Path(tmp, f"lr{lr}-b{batch}")
                row = fine_tune(args.data, out, lr, batch, args.steps, args.crop, args.bn, baseline=baseline is None)
                baseline = row.pop("baseline_miou", baseline)
                rows.append(row)
                shutil.rmtree(out, ignore_errors=True)
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    print_grid("lr \\ batch", [str(b) for b in batches],
               [("default" if lr is None else f"{lr:g}",
                 [f"{row['val_miou']:.2f}" for row in rows if row["lr_given"] == lr]) for lr in lrs])
    print(f"baseline (no fine-tune): {baseline:.2f}")
    if args.json:
        options = {"lrs": args.lrs, "batches": args.batches, "steps": args.steps, "crop": args.crop, "bn": args.bn}
        write_record(args.json, "finetune_robustness.py", options, init=INIT,
                     data="../shared/voc (330 train, 166 val images)", steps=args.steps, crop=args.crop, bn=args.bn,
                     bn_train_batch=BN_TRAIN_BATCH, baseline_val_miou=baseline, rows=rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
