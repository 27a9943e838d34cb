"""One `Segmenter` shared by worker threads: throughput against one thread, and the results compared.

LiteRT's interpreter holds one input and one output, so `LiteRTRuntime.predict` takes a lock from writing
the input to copying the output; the preprocessing and the host tail run outside it, so threads overlap
there. Each round times N calls on one thread, then the same N calls spread over --workers threads, and
checks that every threaded result equals the sequential one. Target (issue 20): throughput with 2 threads on
2 cores at least that of one thread.

    .venv/bin/python bench/bench_threads.py [--tflite FILE] [--workers 2] [--calls 40] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

import edgeseg

REPO = Path(__file__).resolve().parents[1]
VOC = REPO.parent / "shared" / "voc" / "VOC2012"
os.environ.setdefault("EDGESEG_MIRROR", str(REPO.parent / "shared" / "models"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tflite", help="a .tflite (default: the dm 0.5 zoo model's official file)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--lite-threads", type=int, default=1, help="LiteRT threads per invoke")
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    seg = edgeseg.Segmenter(args.tflite or "deeplabv3_mnv2_dm05_voc", threads=args.lite_threads)
    ids = (VOC / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[:8]
    images = [np.asarray(Image.open(VOC / "JPEGImages" / f"{i}.jpg").convert("RGB")) for i in ids]
    calls = [images[i % len(images)] for i in range(args.calls)]
    reference = [seg(image).labels for image in images]
    ratios = []
    print(f"{seg.model}, {args.lite_threads} LiteRT thread(s) per invoke, {args.calls} calls, "
          f"{os.cpu_count()} CPUs")
    print(f"round  one thread (calls/s)  {args.workers} threads (calls/s)  ratio  identical")
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        for round_ in range(1, args.rounds + 1):
            start = time.perf_counter()
            for image in calls:
                seg(image)
            single = args.calls / (time.perf_counter() - start)
            start = time.perf_counter()
            results = list(pool.map(lambda image: seg(image).labels, calls))
            threaded = args.calls / (time.perf_counter() - start)
            same = all(np.array_equal(r, reference[i % len(images)]) for i, r in enumerate(results))
            ratios.append(threaded / single)
            print(f"{round_:>5}  {single:>20.2f}  {threaded:>19.2f}  {threaded / single:>5.2f}  {same}")
    print(f"median ratio {statistics.median(ratios):.2f} (target >= 1.00)")


if __name__ == "__main__":
    main()
