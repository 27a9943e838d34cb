"""`edgeseg predict`: images, folders, video files and cameras, through one `Segmenter`.

Outputs, under the output folder (a folder input keeps its relative layout there):
- an image gives `<stem>_labels.png` (palette PNG, values are class indices) and `<stem>_overlay.png`;
- a video or camera gives `<stem>_overlay.mp4` (as shown: upright, the same size and the source's frame times,
  those of the kept frames with `every`) and, with `frame_labels`, `<stem>_labels/<frame>.png` for each
  segmented frame.
Every file is written under a temp name and renamed when complete.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ImageOps

from edgeseg.api import Segmenter
from edgeseg.errors import EdgesegError
from edgeseg.io.files import atomic_path, atomic_paths, check_output_file, ensure_writable_dir, write_json
from edgeseg.io.video import VIDEO_SUFFIXES, is_video

STDIN = "-"  # an input named "-" is an image read from standard input, written as stdin_*.png
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


@dataclass(frozen=True)
class Job:
    """One input and where its outputs go: out_dir / f"{stem}_..."."""

    source: str  # a file path, or a camera device / index
    out_dir: Path
    stem: str
    camera: bool = False


STDIN_LIMIT = 256 * 2**20  # bytes: larger than any photo, and a `cat /dev/zero` stops here, not at MemoryError


def job_outputs(job: Job) -> list[Path]:
    """The files and folders a job writes (a video's per-frame label folder included)."""
    if is_video(Path(job.source)):
        return [job.out_dir / f"{job.stem}_overlay.mp4", job.out_dir / f"{job.stem}_labels"]
    return [job.out_dir / f"{job.stem}_labels.png", job.out_dir / f"{job.stem}_overlay.png"]


def check_no_input_overwritten(jobs: list[Job], extra_outputs: list[Path] = ()) -> None:
    """Raises if an output of the run would replace one of its inputs (e.g. `predict photos/ -o photos/` next to
    a user's own `a_labels.png`, or `--json photo.jpg`): the input would be lost, and then segmented as a photo."""
    inputs = {Path(job.source).resolve(): job.source for job in jobs if job.source != STDIN and not job.camera}
    for output in [*(p for job in jobs for p in job_outputs(job)), *extra_outputs]:
        source = inputs.get(Path(output).resolve())
        if source is not None:
            raise EdgesegError(f"{output} is an input of this run ({source}) and would be overwritten by an output; "
                               "write the outputs elsewhere (-o DIR)")


def plan_jobs(inputs: list[Path], out_dir: Path, *, recursive: bool = False) -> list[Job]:
    """Returns one job per image or video. A folder contributes its images and videos (its subfolders
    too with `recursive`), each written at its path relative to that folder under `out_dir`."""
    jobs = []
    for path in inputs:
        if str(path) == STDIN:
            jobs.append(Job(STDIN, out_dir, "stdin"))
            continue
        if not path.is_dir():
            jobs.append(Job(str(path), out_dir, path.stem))
            continue
        found = sorted(p for p in folder_files(path, recursive=recursive) if not p.name.startswith(".")
                       and p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
        if not found:
            where = "in it or its subfolders" if recursive else "in it (add --recursive for subfolders)"
            raise EdgesegError(f"{path}: no images or videos {where}")
        jobs += [Job(str(p), out_dir / p.parent.relative_to(path), p.stem) for p in found]
    seen: dict[tuple[Path, str], str] = {}
    for job in jobs:
        key = (job.out_dir, job.stem)
        if key in seen:
            raise EdgesegError(f"several images are named {job.stem!r}: their outputs would overwrite each other "
                               f"({seen[key]} and {job.source})")
        seen[key] = job.source
    return jobs


def folder_files(folder: Path, *, recursive: bool = False) -> list[Path]:
    """Returns the files in `folder` (with `recursive`, in its subfolders too, following symbolic links to
    folders, each folder once per path so that a link back to a parent is no loop). A folder that cannot be
    listed (permission denied) is an error naming it, before any work: skipping it would lose its images
    without a word."""
    files: list[Path] = []
    pending: list[tuple[Path, frozenset[tuple[int, int]]]] = [(folder, frozenset())]
    while pending:
        current, parents = pending.pop()
        try:
            info = current.stat()
            here = parents | {(info.st_dev, info.st_ino)}
            with os.scandir(current) as entries:
                listed = [(Path(entry.path), entry.is_dir(), entry.is_file()) for entry in entries]
        except OSError as exc:
            raise EdgesegError(f"{current}: cannot read this folder ({exc.strerror or exc}); "
                               "fix its permissions or move it out of the input") from None
        for path, is_dir, is_file in listed:
            if is_file:
                files.append(path)
            elif is_dir and recursive:
                try:
                    info = path.stat()
                except OSError:
                    continue  # vanished since it was listed
                if (info.st_dev, info.st_ino) not in here:  # a link to a folder above it would never end
                    pending.append((path, here))
    return files


def _shares_text(shares: dict[str, float]) -> str:
    from edgeseg.visualize import legend_percent

    return ", ".join(f"{name} {legend_percent(share)}" for name, share in shares.items())


def read_stdin_image() -> np.ndarray:
    """Returns the image piped to standard input as uint8 RGB."""
    from PIL import Image, UnidentifiedImageError

    from edgeseg.pipeline import to_rgb

    data = sys.stdin.buffer.read(STDIN_LIMIT + 1)
    if len(data) > STDIN_LIMIT:
        raise EdgesegError(f"standard input: more than {STDIN_LIMIT // 2**20} MiB, not an image")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return to_rgb(ImageOps.exif_transpose(img))
    except UnidentifiedImageError:
        raise EdgesegError(f"standard input: cannot read image ({len(data)} bytes, no known image format)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise EdgesegError(f"standard input: cannot read image ({exc})") from None


def predict_image(seg: Segmenter, job: Job) -> dict:
    """Segments one image file and writes its label map and overlay; returns its JSON record."""
    result = seg(read_stdin_image() if job.source == STDIN else job.source)
    ensure_writable_dir(job.out_dir)
    outputs = [job.out_dir / f"{job.stem}_labels.png", job.out_dir / f"{job.stem}_overlay.png"]
    with atomic_paths(outputs) as (labels_tmp, overlay_tmp):  # both files or neither
        result.label_image().save(labels_tmp, format="PNG")
        result.overlay().save(overlay_tmp, format="PNG")
    shares = result.shares()
    print(f"{job.source}: {_shares_text(shares)} [{seg.model}, {seg.backend}]", flush=True)
    return {"input": job.source, "outputs": [str(p) for p in outputs], "width": result.labels.shape[1],
            "height": result.labels.shape[0], "shares": {k: round(v, 6) for k, v in shares.items()}}


def predict_video(seg: Segmenter, job: Job, *, every: int = 1, max_frames: int | None = None,
                  frame_labels: bool = False, progress: bool = True) -> dict:
    """Segments a video file or camera into `<stem>_overlay.mp4`; prints fps and stage medians.

    On Ctrl-C the frames done so far are kept in a playable file, then KeyboardInterrupt is re-raised.
    """
    from edgeseg.io.video import open_video, output_name, segment_video
    from edgeseg.visualize import label_image

    with open_video(job.source, camera=job.camera) as video:
        stem = output_name(video.source, True) if job.camera else job.stem
        target = check_output_file(job.out_dir / f"{stem}_overlay.mp4")
        on_frame, labels_dir = None, job.out_dir / f"{stem}_labels"
        created = frame_labels and not labels_dir.exists()
        if frame_labels:
            ensure_writable_dir(labels_dir)

            def on_frame(index, labels):
                with atomic_path(labels_dir / f"{index:06d}.png") as tmp:
                    label_image(labels, class_names=seg.class_names).save(tmp, format="PNG")

        try:
            stats = segment_video(video, seg.runtime, target, seg.class_names, every=every,
                                  max_frames=max_frames, progress=progress, on_frame=on_frame)
        except EdgesegError:
            if created:  # no half-written results: the label maps go with the video
                shutil.rmtree(labels_dir, ignore_errors=True)
            raise
    shares = stats.shares
    status = "interrupted: " if stats.interrupted else ""
    print(f"{job.source}: {status}{stats.summary()} [{seg.model}, {seg.backend}] -> {stats.output}", flush=True)
    print(f"{job.source}: {_shares_text(shares)} (all frames)", flush=True)
    record = {"input": job.source, "outputs": [str(stats.output)], "frames": stats.frames,
              "fps": round(stats.fps, 3), "seconds": round(stats.seconds, 3),
              "median_ms": {k: round(v, 3) for k, v in stats.medians().items()}, "shares": shares,
              "interrupted": stats.interrupted}
    if stats.interrupted:
        raise _Interrupted(record)
    return record


class _Interrupted(KeyboardInterrupt):
    """Ctrl-C after a video was saved: carries its record so the JSON report can still be written."""

    def __init__(self, record: dict) -> None:
        super().__init__()
        self.record = record


def run_predict(seg: Segmenter, jobs: list[Job], *, json_path: Path | None = None, every: int = 1,
                max_frames: int | None = None, frame_labels: bool = False, progress: bool = True) -> None:
    """Runs every job; one bad input does not stop the others (it is reported and counted at the end)."""
    from edgeseg.io.files import interrupts_held_after_first

    with interrupts_held_after_first():  # after a first Ctrl-C, the video and the JSON report are still finished
        _run_jobs(seg, jobs, json_path, every=every, max_frames=max_frames, frame_labels=frame_labels,
                  progress=progress)


def _run_jobs(seg: Segmenter, jobs: list[Job], json_path: Path | None, **options) -> None:
    records, failures = [], []
    try:
        for job in jobs:
            try:
                if job.camera or is_video(job.source):
                    records.append(predict_video(seg, job, **options))
                else:
                    records.append(predict_image(seg, job))
            except EdgesegError as exc:
                if len(jobs) == 1:
                    raise
                print(f"edgeseg: error: {exc}", file=sys.stderr, flush=True)
                failures.append({"input": job.source, "error": str(exc)})
    except _Interrupted as exc:
        records.append(exc.record)
        raise
    finally:
        if json_path is not None and (records or failures):
            write_json(json_path, {"model": seg.model, "backend": seg.backend, "description": seg.description,
                                   "class_names": list(seg.class_names), "files": records,
                                   "failures": failures})
    if failures:
        noun = "images" if not any(job.camera or is_video(job.source) for job in jobs) else "inputs"
        raise EdgesegError(f"{len(failures)} of {len(jobs)} {noun} could not be read")
