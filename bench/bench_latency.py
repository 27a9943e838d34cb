"""Latency of edgeseg's FP32 and INT8 exports against the official INT8 file, measured in one run.

    .venv/bin/python bench/bench_latency.py [--model deeplabv3_mnv2_dm05_voc] [--runs 40] [--exports DIR]

Exports missing files first (needs the `export` extra and ../shared/voc for calibration), then times
each file at 1 and 2 threads on a VOC-sized image, interleaving files so that machine noise hits all
of them alike, and prints every latency as a ratio of the official file's at the same thread count.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edgeseg.cli import DEFAULT_BENCH_IMAGE
from edgeseg.deploy.export import ExportOptions, export_tflite
from edgeseg.evaluation.benchmark import benchmark_file, format_results
from edgeseg.zoo.build import create_model, official_tflite
from edgeseg.zoo.registry import get_entry

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="deeplabv3_mnv2_dm05_voc")
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; results pool all rounds")
    parser.add_argument("--exports", type=Path, default=REPO / "exports")
    parser.add_argument("--data", type=Path, metavar="DIR", default=REPO.parent / "shared" / "voc" / "VOC2012",
                        help="calibration data for the INT8 exports")
    parser.add_argument("--calib-voc-root", dest="data", type=Path, default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)  # old name
    parser.add_argument("--image", type=Path, default=DEFAULT_BENCH_IMAGE)
    args = parser.parse_args()

    entry = get_entry(args.model)
    files = {"official int8": official_tflite(entry.name)}
    variants = {
        "edgeseg fp32": ExportOptions(precision="fp32"),
        "edgeseg int8": ExportOptions(precision="int8", calib_root=args.data),
        "edgeseg int8 logits": ExportOptions(precision="int8", output="logits", calib_root=args.data),
        "edgeseg int8 imx8mp": ExportOptions(target="imx8mp", output="argmax", calib_root=args.data),
    }
    model = None
    for label, options in variants.items():
        path = args.exports / f"{entry.name}_{label.split(' ', 1)[1].replace(' ', '_')}.tflite"
        if not path.is_file():
            model = model or create_model(entry.name)
            export_tflite(model, entry.class_names, path, options)
        files[label] = path

    pooled: dict[tuple[str, int], dict] = {}
    for _ in range(args.rounds):
        for threads in (1, 2):
            for label, path in files.items():
                result = benchmark_file(path, args.image, threads=threads, runs=args.runs, warmup=3)
                key = (label, threads)
                if key in pooled:
                    for stage, values in result.stage_ms.items():
                        pooled[key].stage_ms[stage].extend(values)
                else:
                    pooled[key] = result
    summaries = {key: result.summary() for key, result in pooled.items()}
    print(format_results(list(summaries.values())))
    print(f"\nratios against the official INT8 file at the same thread count (< 1 is faster), "
          f"{args.rounds} x {args.runs} runs each")
    print(f"{'file':<22} {'threads':>7} {'invoke':>8} {'end-to-end':>11}")
    for (label, threads), s in summaries.items():
        ref = summaries[("official int8", threads)]
        print(f"{label:<22} {threads:>7} {s['invoke_median_ms'] / ref['invoke_median_ms']:>8.2f}"
              f" {s['e2e_median_ms'] / ref['e2e_median_ms']:>11.2f}")


if __name__ == "__main__":
    main()
