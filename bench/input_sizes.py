"""Input size against accuracy and CPU latency: the first speed lever on an NPU, measured in one run.

    .venv/bin/python bench/input_sizes.py [--model deeplabv3_mnv2_dm05_voc] [--sizes 513,385,321,257]

For each size: export the i.MX 8M Plus file (`--target imx8mp`, calibrated on 64 train images), evaluate
it on the VOC12 val subset (images resized so they fit the input, labels compared at the original size),
then time the invoke alone at 2 threads, interleaving sizes so that machine noise hits all alike, and print
each latency as a ratio of the largest size's. About 6 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from edgeseg.checks import parse_size
from edgeseg.cli import DEFAULT_BENCH_IMAGE
from edgeseg.data.datasets import voc
from edgeseg.deploy.export import ExportOptions, export_tflite
from edgeseg.evaluation.benchmark import benchmark_file
from edgeseg.evaluation.evaluate import evaluate
from edgeseg.runtimes.litert import LiteRTRuntime
from edgeseg.zoo.build import create_model
from edgeseg.zoo.registry import get_entry

VOC_ROOT = Path(__file__).resolve().parents[2] / "shared" / "voc" / "VOC2012"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="deeplabv3_mnv2_dm05_voc")
    parser.add_argument("--sizes", default="513,385,321,257", help="comma-separated N or HxW")
    parser.add_argument("--data", type=Path, metavar="DIR", default=VOC_ROOT,
                        help="VOCdevkit folder: train split to calibrate, val split to score")
    parser.add_argument("--voc-root", dest="data", type=Path, default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)  # old name
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    entry = get_entry(args.model)
    model = create_model(entry.name)
    val = voc(args.data, "val")
    with tempfile.TemporaryDirectory() as tmp:
        files, miou = {}, {}
        for text in args.sizes.split(","):
            size = parse_size(text)
            files[text] = Path(tmp) / f"{text}.tflite"
            export_tflite(model, entry.class_names, files[text],
                          ExportOptions(target="imx8mp", output="argmax", calib_root=args.data, input_size=size))
            miou[text] = 100 * evaluate(LiteRTRuntime(files[text], num_threads=2), val, entry.class_names,
                                        progress=False).miou
        invoke = {text: [] for text in files}
        for _ in range(args.rounds):
            for text, path in files.items():
                result = benchmark_file(path, DEFAULT_BENCH_IMAGE, threads=2, runs=args.runs, warmup=3)
                invoke[text] += result.stage_ms["invoke"]
    reference = np.median(invoke[next(iter(files))])
    print(f"{entry.name}, --target imx8mp, LiteRT CPU at 2 threads, {args.rounds} x {args.runs} runs each")
    print(f"{'input':>9} {'val mIoU':>9} {'invoke ms':>10} {'ratio':>6}")
    for text in files:
        median = np.median(invoke[text])
        print(f"{text:>9} {miou[text]:>9.2f} {median:>10.2f} {median / reference:>6.2f}")


if __name__ == "__main__":
    main()
