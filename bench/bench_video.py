"""Streaming throughput: frames per second of `edgeseg predict clip.mp4` against 1000 / median invoke ms.

Builds a 480x360 clip from consecutive CamVid frames (../shared/camvid, 0016E5 sequence), then alternates,
for --rounds rounds: the invoke alone (one interpreter, --threads threads, --runs invokes on a clip frame),
and the whole pipelined video (decode -> preprocess -> invoke -> postprocess -> overlay -> encode to .mp4).
Interleaving keeps both measurements under the same machine load. Target (issue 10): fps >= 0.9 x 1000 /
invoke ms, for the dm 0.5 INT8 file at 2 threads.

    .venv/bin/python bench/bench_video.py [--tflite FILE] [--threads 2] [--frames 120] [--rounds 3]
    .venv/bin/python bench/bench_video.py --save-clip clip.mp4   # or --clip clip.mp4 where CamVid is absent
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from PIL import Image

from edgeseg.data.voc import VOC_CLASSES
from edgeseg.io.video import open_video, segment_video
from edgeseg.runtimes.factory import open_runtime
from edgeseg.zoo.build import official_tflite

REPO = Path(__file__).resolve().parents[1]
CAMVID = REPO.parent / "shared" / "camvid" / "train" / "images"
os.environ.setdefault("EDGESEG_MIRROR", str(REPO.parent / "shared" / "models"))


def build_clip(path: Path, count: int) -> list[np.ndarray]:
    names = sorted(CAMVID.glob("0016E5_*.jpg"))
    frames = [np.asarray(Image.open(names[i % len(names)]).convert("RGB")) for i in range(count)]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 480, 360, "yuv420p"
        for pixels in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return frames


def read_clip(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def invoke_ms(runtime, pixels: np.ndarray, runs: int, warmup: int = 5) -> float:
    runtime.set_input(pixels)
    for _ in range(warmup):
        runtime.invoke()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        runtime.invoke()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tflite", type=Path, help="default: the official dm 0.5 INT8 file")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--runs", type=int, default=40, help="invokes per invoke-alone measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clip", type=Path, help="use this clip instead of building one from CamVid")
    parser.add_argument("--save-clip", type=Path, help="only build the CamVid clip, at this path")
    args = parser.parse_args()
    if args.save_clip:
        build_clip(args.save_clip, args.frames)
        return
    path = args.tflite or official_tflite("deeplabv3_mnv2_dm05_voc")
    work = Path(tempfile.mkdtemp(prefix="bench-video-"))
    clip = args.clip or work / "clip.mp4"
    frames = read_clip(clip) if args.clip else build_clip(clip, args.frames)
    runtime = open_runtime(path, "litert", threads=args.threads)
    cpus = len(os.sched_getaffinity(0))
    print(f"{path.name}, {args.threads} threads, {len(frames)}-frame 480x360 clip, {cpus} CPUs usable")
    print(f"{'round':>5} {'invoke ms':>10} {'1000/invoke':>12} {'stream fps':>11} {'ratio':>6}  stream medians (ms)")
    ratios, fps_all, limits = [], [], []
    for round_ in range(1, args.rounds + 1):
        alone = invoke_ms(runtime, frames[0], args.runs)
        with open_video(clip) as video:
            stats = segment_video(video, runtime, work / "out.mp4", VOC_CLASSES, progress=False)
        assert stats.frames == len(frames), stats.frames
        ratio = stats.fps / (1000 / alone)
        ratios.append(ratio)
        fps_all.append(stats.fps)
        limits.append(1000 / alone)
        stages = " ".join(f"{k} {v:.1f}" for k, v in stats.medians().items())
        print(f"{round_:>5} {alone:>10.2f} {1000 / alone:>12.1f} {stats.fps:>11.1f} {ratio:>6.2f}  {stages}")
    print(f"median: stream {statistics.median(fps_all):.1f} fps, 1000/invoke {statistics.median(limits):.1f}, "
          f"ratio {statistics.median(ratios):.2f} (target >= 0.90)")


if __name__ == "__main__":
    main()
