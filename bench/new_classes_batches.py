"""New classes at small batches: batch norm mode x learning rate x batch size, on CamVid from the VOC model.

Each run is the 3-epoch CamVid check of docs/training.md (`edgeseg train --data ../shared/camvid --label-map none
--crop 321 --class-weights median-frequency --classes <CamVid's 11> --epochs 3`) at one batch size, one `--bn`
and one `--lr`, scored on CamVid val (101 frames) after each epoch. It measures what `--bn auto` and the default
rate should pick when a run learns classes the init model does not know. The rows and the command go to --json
(docs/ reads them); a markdown table of the last epoch's figures is printed.

    EDGESEG_MIRROR=../shared/models .venv/bin/python bench/new_classes_batches.py \
        --json docs/new_classes_batches.json                  # 9 runs, about 15 minutes on 2 cores
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

from edgeseg.data.labelsets import CAMVID_CLASSES
from edgeseg.training import run_training
from edgeseg.training.checkpoints import read_log
from edgeseg.training.config import new_config

CAMVID = Path(__file__).resolve().parents[2] / "shared" / "camvid"
INIT = "deeplabv3_mnv2_dm05_voc"


def train_new_classes(data: Path, out: Path, bn: str, lr: float, batch: int, epochs: int, crop: int) -> dict:
    given = {"data": str(data), "init": INIT, "label_map": "none", "classes": ",".join(CAMVID_CLASSES),
             "class_weights": "median-frequency", "crop": crop, "batch_size": batch, "epochs": epochs, "bn": bn,
             "lr": lr}
    config = new_config(given, out)
    start = time.perf_counter()
    run_training(config, progress=False)
    curve = [round(row["val_miou"], 4) for row in read_log(out / "log.jsonl") if "val_miou" in row]
    return {"bn": bn, "lr": lr, "batch": batch, "val_miou_per_epoch": curve,
            "seconds": round(time.perf_counter() - start, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=CAMVID)
    parser.add_argument("--settings", default="frozen:0.001,frozen:0.007,train:0.007",
                        help="comma-separated BN:LR (BN: frozen or train)")
    parser.add_argument("--batches", default="2,4,8")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--crop", type=int, default=321)
    parser.add_argument("--json", type=Path, help="write the results here (e.g. docs/new_classes_batches.json)")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"{args.data}: no such folder (CamVid in ../shared)")
    settings = [(bn, float(lr)) for bn, lr in (item.split(":") for item in args.settings.split(","))]
    batches = [int(value) for value in args.batches.split(",")]

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for batch in batches:
            for bn, lr in settings:
                out = Path(tmp, f"{bn}-{lr}-b{batch}")
                rows.append(train_new_classes(args.data, out, bn, lr, batch, args.epochs, args.crop))
                shutil.rmtree(out, ignore_errors=True)
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    print_grid("batch", [f"--bn {bn}, lr {lr:g}" for bn, lr in settings],
               [(str(batch), [f"{row['val_miou_per_epoch'][-1]:.2f}" for row in rows if row["batch"] == batch])
                for batch in batches])
    if args.json:
        options = {"settings": args.settings, "batches": args.batches, "epochs": args.epochs, "crop": args.crop}
        write_record(args.json, "new_classes_batches.py", options, init=INIT,
                     data="../shared/camvid (367 train, 101 val frames)", epochs=args.epochs, crop=args.crop,
                     rows=rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
