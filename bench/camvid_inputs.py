"""Which input to deploy a CamVid model at: accuracy, OPS, CPU latency and the i.MX 93 NPU's cost, per input size.

    .venv/bin/python bench/camvid_inputs.py [--model deeplab_edgetpu_slim_camvid] \
        [--sizes 721x961,545x721,369x481] [--exports DIR] [--json docs/camvid_inputs.json]

For each size, with the same weights and CamVid's 480x360 frames enlarged to fit it: PyTorch FP32 mIoU on CamVid
val; OPS; the `--target imx93` file (per-tensor uint8, logits tail, exported into --exports unless it is there)
with its mIoU under LiteRT and Vela's estimate under NXP's i.MX 93 settings; and the LiteRT CPU invoke of that
file at 2 threads as a ratio of the official Cityscapes file's (513x513), files interleaved over --rounds so that
machine noise hits all alike. About 20 minutes on 2 CPU cores with nothing exported yet.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from edgeseg.checks import parse_size
from edgeseg.data.datasets import open_dataset
from edgeseg.deploy.export import ExportOptions, export_tflite
from edgeseg.deploy.vela import compile_for_ethos_u
from edgeseg.evaluation.benchmark import benchmark_file
from edgeseg.evaluation.complexity import count_ops
from edgeseg.evaluation.evaluate import evaluate
from edgeseg.runtimes.factory import open_runtime
from edgeseg.zoo.build import create_model, official_tflite
from edgeseg.zoo.registry import Preprocess, get_entry

REPO = Path(__file__).resolve().parents[1]
CAMVID = REPO.parent / "shared" / "camvid"
FRAME = CAMVID / "val" / "images" / "0016E5_07959.jpg"
REFERENCE = "deeplab_edgetpu_slim_cityscapes"  # the official file the latency ratios are taken against
os.environ.setdefault("EDGESEG_MIRROR", str(REPO.parent / "shared" / "models"))


def measure_size(model, entry, text: str, exports: Path, data: Path) -> tuple[dict, Path]:
    """The accuracy and cost figures of one input size, and its `--target imx93` file."""
    size = parse_size(text)
    val = open_dataset(data, "val")
    torch_runtime = open_runtime(model, "torch", num_classes=entry.num_classes, name=text,
                                 preprocess=Preprocess(input_size=size, upscale=True))
    fp32 = 100 * evaluate(torch_runtime, val, entry.class_names, progress=False).miou
    path = exports / f"{entry.name}_{text}_imx93.tflite"
    if not path.is_file():
        export_tflite(model, entry.class_names, path, ExportOptions(target="imx93", input_size=size, upscale=True,
                                                                     calib_root=data))
    per_tensor = 100 * evaluate(open_runtime(path, "litert", threads=2), val, entry.class_names, progress=False).miou
    vela = compile_for_ethos_u(path)
    row = {"input": text, "ops_g": round(count_ops(model, size).total / 1e9, 2), "miou_fp32": round(fp32, 2),
           "miou_imx93_file": round(per_tensor, 2), "vela_npu_ms": vela.npu_ms, "vela_cpu_ops": vela.cpu_ops}
    return row, path


def interleaved_invoke(files: dict[str, Path], rounds: int, runs: int) -> dict[str, float]:
    """Median LiteRT invoke ms of each file at 2 threads, the files taking turns in every round."""
    times: dict[str, list[float]] = {key: [] for key in files}
    for _ in range(rounds):
        for key, path in files.items():
            times[key] += benchmark_file(path, FRAME, threads=2, runs=runs, warmup=2).stage_ms["invoke"]
    return {key: statistics.median(values) for key, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="deeplab_edgetpu_slim_camvid")
    parser.add_argument("--sizes", default="721x961,545x721,369x481", help="comma-separated HxW")
    parser.add_argument("--data", type=Path, default=CAMVID)
    parser.add_argument("--exports", type=Path, default=REPO / "exports", help="where the .tflite files go")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args()
    entry = get_entry(args.model)
    model = create_model(entry.name).eval()
    args.exports.mkdir(parents=True, exist_ok=True)
    rows, files = [], {"reference": official_tflite(REFERENCE)}
    for text in args.sizes.split(","):
        row, files[text] = measure_size(model, entry, text, args.exports, args.data)
        rows.append(row)
    invoke = interleaved_invoke(files, args.rounds, args.runs)
    for row in rows:
        row["cpu_invoke_ms_2threads"] = round(invoke[row["input"]], 1)
        row["cpu_ratio_to_official"] = round(invoke[row["input"]] / invoke["reference"], 2)
    print(f"{entry.name} on {args.data} val; CPU: LiteRT at 2 threads, ratio to {REFERENCE}'s official file "
          f"({invoke['reference']:.1f} ms)")
    print("| input | OPS | mIoU FP32 | mIoU `--target imx93` file | CPU invoke (ratio) | i.MX 93 NPU (Vela) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        cpu = ", ".join(row["vela_cpu_ops"]) or "0 ops on the CPU"
        print(f"| {row['input']} | {row['ops_g']:.2f} G | {row['miou_fp32']:.2f} | {row['miou_imx93_file']:.2f} | "
              f"{row['cpu_invoke_ms_2threads']:.1f} ms ({row['cpu_ratio_to_official']:.2f}x) | "
              f"{row['vela_npu_ms']:.1f} ms, {cpu} |")
    if args.json:
        args.json.write_text(json.dumps({"model": entry.name, "reference": REFERENCE,
                                         "reference_invoke_ms": round(invoke["reference"], 1), "rows": rows},
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
