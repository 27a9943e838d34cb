"""`edgeseg predict`: images, folders, standard input, videos and cameras (see edgeseg.predict)."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgeseg.cli.options import add_command, add_model_args, camera_arg, positive_int
from edgeseg.errors import EdgesegError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "predict", "segment images, folders, videos or a camera: label maps and overlays",
                description="Images give <name>_labels.png (class indices) and <name>_overlay.png; "
                            "videos give <name>_overlay.mp4 (needs pip install 'edgeseg[video]'); "
                            "a folder keeps its layout under the output folder.")
    p.add_argument("inputs", nargs="*", type=Path, metavar="INPUT",
                   help="image or video files, folders, or - for an image on standard input")
    add_model_args(p)
    p.add_argument("-o", "--output", type=Path, metavar="DIR", default=Path("predictions"), help="output folder")
    p.add_argument("--recursive", action="store_true", help="folders: include their subfolders")
    p.add_argument("--json", type=Path, metavar="FILE",
                   help="also write per-file class shares, model and backend as JSON")
    p.add_argument("--camera", metavar="N|DEVICE|URL", type=camera_arg,
                   help="segment a camera (0 = /dev/video0, a device path or a stream URL) until Ctrl-C "
                        "or --max-frames; writes camera<N>_overlay.mp4")
    p.add_argument("--every", type=positive_int, default=1, help="videos: segment every N-th frame")
    p.add_argument("--max-frames", type=positive_int, help="videos: stop after this many segmented frames")
    p.add_argument("--frame-labels", action="store_true",
                   help="videos: also write each frame's label map as <name>_labels/<frame>.png")
    p.add_argument("--no-progress", action="store_true", help="videos: no progress bar on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from edgeseg.api import Segmenter
    from edgeseg.io.files import check_output_file, ensure_writable_dir, removing_new_folders
    from edgeseg.predict import Job, check_no_input_overwritten, plan_jobs, run_predict

    if not args.inputs and args.camera is None:
        raise EdgesegError("nothing to segment: name images, folders or videos, or --camera N")
    jobs = plan_jobs(args.inputs, args.output, recursive=args.recursive)
    check_no_input_overwritten(jobs, [args.json] if args.json else [])
    folders = [args.output, *(job.out_dir for job in jobs), *([args.json.parent] if args.json else [])]
    with removing_new_folders(folders):  # a failed predict leaves no empty folder it created
        if args.json:
            check_output_file(args.json)  # before the work, not after
        out_dir = ensure_writable_dir(args.output)
        if args.camera is not None:
            from edgeseg.io.video import camera_device

            jobs.append(Job(camera_device(args.camera), out_dir, "camera", camera=True))
        seg = Segmenter(args.model, tflite=args.tflite, weights=args.weights, backend=args.backend,
                        threads=args.threads, input_size=args.input_size, upscale=args.upscale,
                        delegate=args.delegate)
        run_predict(seg, jobs, json_path=args.json, every=args.every, max_frames=args.max_frames,
                    frame_labels=args.frame_labels, progress=not args.no_progress)
