"""Latency of .tflite files in LiteRT: the invoke alone, and the whole pipeline stage by stage.

The pipeline is what an app does per frame: decode the image file -> preprocess (scale, pad, quantize)
-> invoke -> postprocess (crop, upsample/argmax if the model returns logits, resize to the original size).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edgeseg.pipeline import fit_for, load_image, restore_size
from edgeseg.runtimes.factory import open_runtime

STAGES = ("decode", "preprocess", "invoke", "postprocess")


@dataclass
class LatencyResult:
    file: str
    threads: int | None
    runs: int
    stage_ms: dict[str, list[float]] = field(default_factory=dict)

    def total_ms(self) -> np.ndarray:
        return np.sum([self.stage_ms[s] for s in STAGES], axis=0)

    def summary(self) -> dict:
        """Returns median and p90 (ms) of the invoke alone, end to end, and the median of each stage."""
        invoke, total = np.asarray(self.stage_ms["invoke"]), self.total_ms()
        return {
            "file": self.file, "threads": self.threads, "runs": self.runs,
            "invoke_median_ms": round(float(np.median(invoke)), 2),
            "invoke_p90_ms": round(float(np.percentile(invoke, 90)), 2),
            "e2e_median_ms": round(float(np.median(total)), 2),
            "e2e_p90_ms": round(float(np.percentile(total, 90)), 2),
            **{f"{s}_median_ms": round(float(np.median(self.stage_ms[s])), 2) for s in STAGES},
        }


def benchmark_file(
    path: str | Path, image: str | Path, *, threads: int | None = None, runs: int = 20, warmup: int = 3,
    delegate: str | Path | None = None, progress: bool = False,
) -> LatencyResult:
    """Returns per-stage latencies of `runs` end-to-end passes on `image`, after `warmup` passes."""
    runtime = open_runtime(path, "litert", threads=threads, delegate=delegate)  # set_input/invoke: LiteRT's
    result = LatencyResult(str(path), threads, runs, {s: [] for s in STAGES})
    for i in tqdm(range(warmup + runs), desc=Path(path).name, disable=not progress, leave=False):
        t0 = time.perf_counter()
        pixels = load_image(image)
        t1 = time.perf_counter()
        fitted = fit_for(pixels, runtime)
        runtime.set_input(fitted)
        t2 = time.perf_counter()
        runtime.invoke()
        t3 = time.perf_counter()
        restore_size(runtime.get_labels(*fitted.shape[:2]), *pixels.shape[:2])
        t4 = time.perf_counter()
        if i >= warmup:
            for stage, seconds in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                result.stage_ms[stage].append(1000 * seconds)
    return result


def format_results(summaries: list[dict]) -> str:
    header = (f"{'file':<40} {'thr':>3} {'invoke med':>10} {'p90':>7} {'e2e med':>8} {'p90':>7}"
              f" {'decode':>7} {'pre':>6} {'post':>6} {'post/invoke':>11}")
    lines = [header]
    for s in summaries:
        lines.append(
            f"{Path(s['file']).name[:40]:<40} {s['threads'] or '-':>3} {s['invoke_median_ms']:>10.2f}"
            f" {s['invoke_p90_ms']:>7.2f} {s['e2e_median_ms']:>8.2f} {s['e2e_p90_ms']:>7.2f}"
            f" {s['decode_median_ms']:>7.2f} {s['preprocess_median_ms']:>6.2f} {s['postprocess_median_ms']:>6.2f}"
            f" {s['postprocess_median_ms'] / s['invoke_median_ms']:>10.2f}x"
        )
    note = ("(ms; e2e = decode + preprocess + invoke + postprocess to a label map at the original size; post/invoke: "
            "the host tail against the invoke of the same file, the figure that carries over to other CPUs)")
    return "\n".join([*lines, note])
