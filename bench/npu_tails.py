"""Graph tails and stems for the NPUs, compared: Vela's i.MX 93 estimate, what is left to the host, and mIoU.

For each .tflite given: Vela's NPU milliseconds and the ops it leaves to the CPU (NXP's i.MX 93 settings,
deterministic); the host tail (crop, upsample and argmax of logits) as a ratio to the invoke of the same
file, both single-threaded on this CPU and interleaved so that they see the same load (the ratio carries
over to a Cortex-A55, the milliseconds do not); and mIoU on --data.

    .venv/bin/python bench/npu_tails.py FILE.tflite [FILE.tflite ...] --data ../shared/voc/VOC2012 \
        [--class-map cityscapes-to-camvid --zoo-classes deeplab_edgetpu_slim_cityscapes] [--runs 20] [--json F]

The files come from `edgeseg export` (docs/npu.md lists the commands) or the official zoo files.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from edgeseg.data.datasets import open_dataset
from edgeseg.deploy.vela import compile_for_ethos_u
from edgeseg.evaluation.benchmark import benchmark_file
from edgeseg.evaluation.evaluate import evaluate
from edgeseg.runtimes.factory import open_runtime, tflite_class_names
from edgeseg.tflite.reader import CLASSES_METADATA, read_metadata
from edgeseg.zoo.registry import get_entry

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BENCH_IMAGE = REPO / "src" / "edgeseg" / "assets" / "voc_sized_500x375.jpg"  # a 500x375 VOC-sized frame
os.environ.setdefault("EDGESEG_MIRROR", str(REPO.parent / "shared" / "models"))


def host_ratio(path: Path, image: Path, runs: int) -> tuple[float, float, float]:
    """Median invoke ms, median host-tail ms (crop, upsample and argmax, resize back), and the median of their
    per-frame ratio: `edgeseg benchmark`'s stages, one thread, each frame timing both."""
    stages = benchmark_file(path, image, threads=1, runs=runs, warmup=3).stage_ms
    invoke, tail = stages["invoke"], stages["postprocess"]
    return statistics.median(invoke), statistics.median(tail), statistics.median(t / i for t, i in zip(tail, invoke))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="dataset for mIoU")
    parser.add_argument("--split", default="val")
    parser.add_argument("--class-map", help="score the model's classes as the data's, e.g. cityscapes-to-camvid")
    parser.add_argument("--zoo-classes", help="a zoo entry whose class names files without edgeseg metadata (the "
                                              "official files) predict, e.g. deeplab_edgetpu_slim_cityscapes")
    parser.add_argument("--image", type=Path, default=DEFAULT_BENCH_IMAGE, help="frame for the host timing")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args()

    rows = []
    for path in args.files:
        vela = compile_for_ethos_u(path)
        invoke_ms, tail_ms, ratio = host_ratio(path, args.image, args.runs)
        runtime = open_runtime(path, "litert", threads=2)
        names = tflite_class_names(path, runtime.num_classes)
        if args.zoo_classes and not read_metadata(path).get(CLASSES_METADATA):
            names = get_entry(args.zoo_classes).class_names
        dataset = open_dataset(args.data, args.split)
        if args.class_map:
            from edgeseg.data.labelsets import MappedRuntime, load_mapping, mapping_lut

            mapping = load_mapping(args.class_map)
            runtime = MappedRuntime(runtime, mapping_lut(mapping, names), len(mapping.dataset_classes))
            names = mapping.dataset_classes
        miou = 100 * evaluate(runtime, dataset, names, progress=False).miou
        rows.append({"file": path.name, "vela_npu_ms": vela.npu_ms, "cpu_ops": vela.cpu_ops,
                     "invoke_ms_1thread": round(invoke_ms, 2), "host_tail_ms_1thread": round(tail_ms, 2),
                     "host_over_invoke": round(ratio, 3), "miou": round(miou, 2)})
    print("| file | Vela ms (i.MX 93) | ops on the CPU | host tail / invoke (1 thread) | mIoU |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        cpu = ", ".join(row["cpu_ops"]) or "none"
        print(f"| {row['file']} | {row['vela_npu_ms']:.1f} | {cpu} | {row['host_over_invoke']:.2f}x "
              f"({row['host_tail_ms_1thread']:.1f} / {row['invoke_ms_1thread']:.1f} ms) | {row['miou']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
