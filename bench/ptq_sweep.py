"""INT8 post-training quantization choices, measured: calibration count, granularity, weight and activation ranges.

    .venv/bin/python bench/ptq_sweep.py [--models deeplabv3_mnv2_dm05_voc,deeplabv3_mnv2_dm10_voc]

For each setting: export INT8 (calibrated on the first N train images), then report pixel agreement with
the PyTorch FP32 model on 40 held-out train images (the last 40 of the split, never used to calibrate:
this is what choices were made on), and val mIoU and agreement (reported, never used to choose).
Takes about 15 minutes on 2 quiet CPU cores.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from edgeseg.data.datasets import SegmentationFolder, voc
from edgeseg.deploy.export import ExportOptions, export_tflite
from edgeseg.evaluation.evaluate import evaluate
from edgeseg.runtimes.litert import LiteRTRuntime
from edgeseg.runtimes.torch import TorchRuntime
from edgeseg.zoo.build import create_model, official_tflite
from edgeseg.zoo.registry import get_entry

VOC_ROOT = Path(__file__).resolve().parents[2] / "shared" / "voc" / "VOC2012"
SETTINGS = [  # (calibration images, granularity, weight ranges, activation ranges, bias correction)
    (64, "per-channel", "mse", "ema", False), (64, "per-channel", "mse", "mse", False),
    (64, "per-tensor", "mse", "ema", False), (64, "per-tensor", "mse", "mse", False),
    (64, "per-tensor", "mse", "mse", True), (64, "per-tensor", "mse", "qat", None),
]


def predictions(runtime, dataset: SegmentationFolder, class_names):
    preds = []
    result = evaluate(runtime, dataset, class_names, predictions=preds, progress=False)
    return result, preds


def agreement(a, b) -> float:
    return sum(int((x == y).sum()) for x, y in zip(a, b)) / sum(x.size for x in a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="deeplabv3_mnv2_dm05_voc,deeplabv3_mnv2_dm10_voc")
    parser.add_argument("--data", type=Path, metavar="DIR", default=VOC_ROOT,
                        help="VOCdevkit folder: train split to calibrate and hold out, val split to score")
    parser.add_argument("--voc-root", dest="data", type=Path, default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)  # old name
    parser.add_argument("--official", action="store_true", help="also measure the official QAT file")
    parser.add_argument("--settings", help="comma-separated indices into SETTINGS to run (default all)")
    args = parser.parse_args()
    settings = SETTINGS if not args.settings else [SETTINGS[int(i)] for i in args.settings.split(",")]
    train = voc(args.data, "train")
    holdout = SegmentationFolder(train.samples[-40:], "VOC train, last 40 images")
    val = voc(args.data, "val")
    print(f"{'model':<26} {'calib':>5} {'weights':<12} {'w rng':<6} {'a rng':<5} {'bc':<3} {'train agree':>11} "
          f"{'val agree':>9} {'val mIoU':>8}")
    for name in args.models.split(","):
        model = create_model(name)
        fp32 = TorchRuntime(model, num_classes=21)
        classes = get_entry(name).class_names
        _, fp32_holdout = predictions(fp32, holdout, classes)
        fp32_val_result, fp32_val = predictions(fp32, val, classes)
        print(f"{name:<26} {'fp32':>5} {'-':<12} {'-':<6} {'-':<5} {'-':<3} {'100.00%':>11} {'100.00%':>9} "
              f"{100 * fp32_val_result.miou:>8.2f}")
        if args.official:
            official = LiteRTRuntime(official_tflite(name), num_threads=2)
            _, holdout_preds = predictions(official, holdout, classes)
            val_result, val_preds = predictions(official, val, classes)
            print(f"{name:<26} {'QAT':>5} {'official':<12} {'-':<6} {'-':<5} {'-':<3} "
                  f"{100 * agreement(holdout_preds, fp32_holdout):>10.2f}% "
                  f"{100 * agreement(val_preds, fp32_val):>8.2f}% {100 * val_result.miou:>8.2f}", flush=True)
        for count, granularity, ranges, activations, bias_correction in settings:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "int8.tflite"
                export_tflite(model, classes, path, ExportOptions(
                    precision="int8", calib_root=args.data, calib_count=count, granularity=granularity,
                    weight_ranges=ranges, activation_ranges=activations, bias_correction=bias_correction,
                    qat_file=official_tflite(name) if activations == "qat" else None))
                runtime = LiteRTRuntime(path, num_threads=2)
                _, holdout_preds = predictions(runtime, holdout, classes)
                val_result, val_preds = predictions(runtime, val, classes)
            print(f"{name:<26} {count:>5} {granularity:<12} {ranges:<6} {activations:<5} "
                  f"{'yes' if bias_correction else 'no':<3} "
                  f"{100 * agreement(holdout_preds, fp32_holdout):>10.2f}% "
                  f"{100 * agreement(val_preds, fp32_val):>8.2f}% {100 * val_result.miou:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
