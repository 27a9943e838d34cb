"""`edgeseg benchmark`: LiteRT latency stage by stage, or Vela's i.MX 93 estimate."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgeseg.cli.options import _thread_list, add_command, int_in, positive_int

DEFAULT_BENCH_IMAGE = Path(__file__).parents[1] / "assets" / "voc_sized_500x375.jpg"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "benchmark", "LiteRT latency: invoke alone and the whole pipeline, per stage")
    p.add_argument("files", nargs="+", type=Path, help=".tflite files")
    p.add_argument("--threads", type=_thread_list, metavar="N[,N...]", default=[1, 2],
                   help="LiteRT CPU threads, comma-separated, e.g. 1,2,4 (default 1,2)")
    p.add_argument("--runs", type=positive_int, metavar="N", default=30, help="timed passes per file and thread count")
    p.add_argument("--warmup", type=int_in(0, 1000), metavar="N", default=5, help="untimed passes before them")
    p.add_argument("--delegate", type=Path, help="external delegate library, e.g. /usr/lib/libvx_delegate.so")
    p.add_argument("--vela", action="store_true",
                   help="print Arm Vela's estimate for the i.MX 93 NPU (NXP's settings: NPU ms, SRAM, DRAM, ops left "
                        "on the CPU) instead of timing LiteRT on this CPU (extra npu)")
    p.add_argument("--image", type=Path, default=DEFAULT_BENCH_IMAGE,
                   help="image for the end-to-end pipeline (default: a VOC-sized 500x375 photo)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from edgeseg.evaluation.benchmark import benchmark_file, format_results
    from edgeseg.io.files import check_output_file, write_json
    from edgeseg.pipeline import load_image

    if args.json:
        check_output_file(args.json)
    if args.vela:
        _benchmark_vela(args.files, args.json)
        return
    load_image(args.image)  # a bad image fails here, before any model is loaded
    summaries = []
    for path in args.files:
        for threads in args.threads:
            result = benchmark_file(path, args.image, threads=threads, runs=args.runs, warmup=args.warmup,
                                    delegate=args.delegate, progress=True)
            summaries.append(result.summary())
    print(format_results(summaries))
    if args.json:
        write_json(args.json, summaries)


def _benchmark_vela(files: list[Path], json_path: Path | None) -> None:
    """Vela's i.MX 93 estimate of each file, in place of LiteRT timings on this CPU."""
    from edgeseg.deploy.vela import compile_for_ethos_u
    from edgeseg.io.files import write_json

    estimates = []
    for path in files:
        estimate = compile_for_ethos_u(path)
        print(f"{path}: {estimate.summary()}")
        print(f"  reproduce: {estimate.command}")
        estimates.append(estimate.as_dict())
    if json_path:
        write_json(json_path, estimates)
