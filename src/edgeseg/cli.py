"""The `edgeseg` command line. A failure is one `edgeseg: error:` line on stderr and exit code 2
(argparse's own usage errors also exit 2, after the usage text)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from edgeseg.deploy.targets import TARGETS
from edgeseg.errors import EdgesegError

if TYPE_CHECKING:
    from edgeseg.runtimes.factory import OpenedModel

# numpy, Pillow, LiteRT and the rest are imported where they are used, inside main(), whose Ctrl-C handling
# then covers them: this module itself adds nothing heavy to what the `edgeseg` script imports before main.


def __getattr__(name: str):
    if name == "tflite_class_names":  # re-exported: old import path
        from edgeseg.runtimes.factory import tflite_class_names

        return tflite_class_names
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

# Optional packages, and the extra that installs each.
EXTRAS = {"torch": "torch", "safetensors": "torch", "litert_torch": "export", "ai_edge_quantizer": "export",
          "matplotlib": "plot", "av": "video"}
DEFAULT_BENCH_IMAGE = Path(__file__).parent / "assets" / "voc_sized_500x375.jpg"


def add_source_args(parser: argparse.ArgumentParser, *, tflite: bool = True, model_help: str | None = None) -> None:
    """Adds the mutually exclusive model sources: --model NAME, --weights CHECKPOINT (and --tflite FILE)."""
    from edgeseg.runtimes.factory import DEFAULT_MODEL

    model_help = model_help or f"zoo model name (default {DEFAULT_MODEL}; see `edgeseg models`)"
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help=model_help)
    if tflite:
        source.add_argument("--tflite", type=Path, help="any segmentation .tflite file (runs with LiteRT)")
    source.add_argument("--weights", type=Path, help="a fine-tuned checkpoint (.safetensors from `edgeseg train`)")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    add_source_args(parser)
    parser.add_argument("--backend", choices=["litert", "torch"],
                        help="litert (default: a zoo model runs its official INT8 .tflite) or torch (FP32)")
    parser.add_argument("--threads", type=threads_int, metavar="N", default=None,
                        help="LiteRT CPU threads (default: LiteRT's; the torch backend ignores it)")
    parser.add_argument("--delegate", type=Path, metavar="PATH",
                        help="external LiteRT delegate library that runs the .tflite on an NPU, e.g. "
                             "/usr/lib/libvx_delegate.so (i.MX 8M Plus) or /usr/lib/libethosu_delegate.so (i.MX 93, "
                             "for a *_vela.tflite)")
    parser.add_argument("--input-size", type=size_arg, metavar="N|HxW",
                        help="run the PyTorch model at this input, e.g. 721x961 (default: the model's; a .tflite "
                             "runs at the size it was exported at)")
    parser.add_argument("--upscale", action=argparse.BooleanOptionalAction, default=None,
                        help="enlarge frames smaller than the input to fit it, or not (default: as the model "
                             "was trained; see `edgeseg train --upscale`)")


def open_model(args: argparse.Namespace) -> OpenedModel:
    """Opens what --model / --tflite / --weights, --backend, --threads, --delegate, --input-size and --upscale
    name."""
    from edgeseg.runtimes.factory import open_model as open_source

    return open_source(args.model, tflite=args.tflite, weights=args.weights, backend=args.backend,
                       threads=args.threads, input_size=args.input_size, upscale=args.upscale,
                       delegate=args.delegate)


# Commands --------------------------------------------------------------------------------------------

def cmd_models(args: argparse.Namespace) -> None:
    from edgeseg.zoo.registry import get_entry, list_models
    from edgeseg.zoo.weights import local_weights

    print(f"{'name':<32} {'classes':>7} {'published mIoU fp32/int8':>25}  weights")
    for name in list_models(args.pattern):
        entry = get_entry(name)
        local = local_weights(entry.weights)
        where = f"present ({local})" if local else f"not downloaded ({entry.weights.url})"
        published = f"{entry.published.get('miou_fp32', '-')}/{entry.published.get('miou_int8', '-')}"
        print(f"{name:<32} {entry.num_classes:>7} {published:>25}  {where}")


def cmd_predict(args: argparse.Namespace) -> None:
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


def cmd_evaluate(args: argparse.Namespace) -> None:
    from edgeseg.data.datasets import check_model_classes, open_dataset, remap_for
    from edgeseg.data.labelsets import MappedRuntime, load_mapping, mapping_lut
    from edgeseg.evaluation.evaluate import evaluate, format_table
    from edgeseg.io.files import check_output_file, write_json

    if args.json:
        check_output_file(args.json)  # before the work, not after
    dataset = open_dataset(args.data, args.split, args.limit, allow_missing=args.skip_bad)
    mapping = load_mapping(args.class_map) if args.class_map else None
    opened = open_model(args)
    runtime, class_names = opened.runtime, opened.class_names
    if mapping is not None:  # score the model's classes as the dataset's
        runtime = MappedRuntime(runtime, mapping_lut(mapping, class_names), len(mapping.dataset_classes))
        class_names = mapping.dataset_classes
    else:
        check_model_classes(class_names, args.data)
        dataset = remap_for(dataset, class_names, args.data)
    result = evaluate(runtime, dataset, class_names, skip_bad=args.skip_bad)
    print(f"{opened.description} on {dataset.description}")
    print(format_table(result))
    if args.json:
        write_json(args.json, {"model": opened.description, "data": dataset.description, **result.to_dict()})


def load_torch_model(args: argparse.Namespace):
    """Returns (torch model, entry) for --model NAME or --weights CHECKPOINT (see edgeseg.runtimes.factory)."""
    from edgeseg.runtimes.factory import torch_available

    if not torch_available():
        raise EdgesegError("this command needs PyTorch: pip install 'edgeseg[export]'")
    from edgeseg.runtimes.factory import load_torch_model as load

    return load(args.model, getattr(args, "weights", None))


def cmd_export(args: argparse.Namespace) -> None:
    from edgeseg.deploy.export import ExportOptions, export_tflite
    from edgeseg.pipeline import parse_size

    preprocess = _model_preprocess(args)  # a checkpoint trained for another input size brings its own
    options = ExportOptions(
        precision=args.precision, input=args.input, output=args.output_kind, granularity=args.granularity,
        calib_root=args.data, calib_split=args.split, calib_count=args.calib_count,
        weight_ranges=args.weight_ranges, activation_ranges=args.activation_ranges, target=args.target,
        bias_correction=args.bias_correction, upscale=preprocess.upscale,
        input_size=parse_size(args.input_size) if args.input_size else preprocess.input_size,
        qat_file=_qat_file(args), stem=args.stem,
    ).resolved()  # conflicting options fail here, before the model is built
    calibration = ""
    if options.precision == "int8":  # so does missing calibration data
        from edgeseg.data.datasets import open_images

        calibration = open_images(options.calib_root, options.calib_split, options.calib_count)[1]
    model, entry = load_torch_model(args)
    default_name = "_".join([entry.name, options.precision, *export_suffixes(options)])
    path = args.output or Path("exports") / f"{default_name}.tflite"
    report = export_tflite(model, entry.class_names, path, options)
    print(f"wrote {path} ({report['bytes']} bytes) in {report['seconds']} s")
    print(f"  input  {report['input']['dtype']} {report['input']['shape']} scale {report['input']['scale']} "
          f"zero point {report['input']['zero_point']}")
    print(f"  output {report['output']['dtype']} {report['output']['shape']}")
    if options.upscale:
        print("  upscale: frames smaller than the input are to be enlarged to fit it (recorded in the file)")
    print("  ops    " + ", ".join(f"{k} {v}" for k, v in report["ops"].items()))
    print("  tensor types " + ", ".join(f"{k} {v}" for k, v in report["tensor_types"].items()))
    if options.precision == "int8":
        print(f"  float compute ops: {report['float_compute_ops'] or 'none'}; "
              f"calibrated on {report['calibration_images']} images of {calibration}; "
              f"activation ranges {options.activation_ranges}")
    if report["exact_weights"]:
        print(f"  per-tensor uint8 weights: {report['exact_weights']} convs re-quantized exactly on their QAT grid")
    if "vela" in report:
        _print_vela(report["vela"], f"wrote {report['vela']['compiled']}, for the NPU: ")


def _print_vela(vela: dict, prefix: str = "") -> None:
    """Vela's estimate in two lines: the figures, and the command that reproduces them."""
    from edgeseg.deploy.vela import VelaEstimate

    print(prefix + VelaEstimate(**vela).summary())
    print(f"  reproduce: {vela['command']}")


def _model_preprocess(args: argparse.Namespace):
    """The preprocessing of --weights CHECKPOINT (its metadata) or --model NAME, read without building it."""
    if getattr(args, "weights", None) is not None:
        from edgeseg.zoo.build import checkpoint_entry

        return checkpoint_entry(args.weights).preprocess
    from edgeseg.runtimes.factory import DEFAULT_MODEL
    from edgeseg.zoo.registry import get_entry

    return get_entry(args.model or DEFAULT_MODEL).preprocess


def _qat_file(args: argparse.Namespace) -> Path | None:
    """The official QAT file of a zoo model when its learned activation ranges are asked for: explicitly
    (`--activation-ranges qat`), or by default where the entry chose them for per-tensor files."""
    if args.activation_ranges not in (None, "qat") or getattr(args, "weights", None) is not None:
        return None
    from edgeseg.runtimes.factory import DEFAULT_MODEL
    from edgeseg.zoo.build import official_tflite
    from edgeseg.zoo.registry import get_entry

    entry = get_entry(args.model or DEFAULT_MODEL)
    if args.activation_ranges is None and entry.per_tensor_activations != "qat":
        return None
    return official_tflite(entry.name)


def export_suffixes(options) -> list[str]:
    """Returns file-name parts for every export option that differs from its default."""
    from edgeseg.deploy.export import DEFAULT_ACTIVATION_RANGES
    from edgeseg.deploy.targets import TARGET_DEFAULTS

    defaults = {"output": "argmax", "stem": "conv", **TARGET_DEFAULTS.get(options.target or "", {})}
    parts = [] if options.output == defaults["output"] else [options.output]
    parts += [] if options.stem == defaults["stem"] else [options.stem.replace("-", "_")]
    parts += [] if options.input_size == (513, 513) else ["x".join(map(str, options.input_size))]
    if options.target is not None:
        return [options.target, *parts]
    if options.precision == "int8":
        parts += [] if options.input == "uint8" else [f"{options.input}_input"]
        parts += [] if options.granularity == "per-channel" else ["per_tensor"]
        parts += [] if options.weight_ranges == "mse" else [f"{options.weight_ranges}_weights"]
        defaults = {DEFAULT_ACTIVATION_RANGES[options.granularity]} | ({"qat"} if options.qat_file else set())
        parts += [] if options.activation_ranges in defaults else [f"{options.activation_ranges}_activations"]
    return parts


def cmd_card(args: argparse.Namespace) -> None:
    from edgeseg.data.datasets import open_dataset, open_images, remap_for
    from edgeseg.evaluation.card import CardModel, measure, plot_charts, write_card
    from edgeseg.io.files import ensure_writable_dir
    from edgeseg.zoo.build import official_tflite
    from edgeseg.zoo.registry import get_entry, list_models

    out_dir = ensure_writable_dir(args.output)
    dataset = open_dataset(args.data, args.split, args.limit)
    calib_root = args.calib_data or args.data
    open_images(calib_root, "train", args.calib_count)  # calibration data, checked before any work
    if args.weights is not None:
        model, entry = load_torch_model(args)
        items = [CardModel(entry, model)]
        dataset = remap_for(dataset, entry.class_names, args.data)
    else:
        names = [args.model] if args.model else [n for n in list_models() if _scores_on(get_entry(n), args.class_map)]
        items = []
        for name in names:
            model, entry = load_torch_model(argparse.Namespace(model=name, weights=None))
            items.append(CardModel(entry, model, official_tflite(get_entry(name).name)))
    if args.class_map:  # a bad map fails now, not after minutes of exports
        from edgeseg.data.labelsets import load_mapping, mapping_lut

        mapping = load_mapping(args.class_map)
        for item in items:
            mapping_lut(mapping, item.entry.class_names)
    data = f"{dataset.description}, {len(dataset)} images"
    facts = []
    for item in items:
        fact = measure(item, dataset, out_dir, calib_root=calib_root,
                       calib_count=args.calib_count, threads=args.threads, reuse_exports=args.reuse_exports,
                       class_map=args.class_map)
        facts.append(fact)
        for path in plot_charts(item.entry, fact, out_dir):
            print(f"wrote {path}", file=sys.stderr)
    path = write_card([item.entry for item in items], facts, data, out_dir)
    print(path.read_text())


def _scores_on(entry, class_map: str | None) -> bool:
    """True if the entry's classes are the data's: VOC's without a class map, else those the map covers."""
    from edgeseg.data.labelsets import load_mapping
    from edgeseg.data.voc import VOC_CLASSES

    if class_map is None:
        return entry.class_names == VOC_CLASSES
    return set(entry.class_names) <= set(load_mapping(class_map).pairs)


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (`edgeseg: error: ...`, exit 2), without the usage."""

    def error(self, message: str):
        # A required option with hidden old spellings is a group: say "required", as for any other option.
        message = re.sub(r"^one of the arguments (\S+) is required$", r"the following arguments are required: \1",
                         message)
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


class DefaultsFormatter(argparse.HelpFormatter):
    """Adds "(default: X)" to an option's help when it has a real default the help text does not mention
    (argparse's ArgumentDefaultsHelpFormatter would also print "(default: None)" and "(default: False)")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or action.default in (None, False, argparse.SUPPRESS)
                or "default" in text.lower()):
            return text
        return f"{text} (default: %(default)s)"


class RawDefaultsFormatter(DefaultsFormatter, argparse.RawDescriptionHelpFormatter):
    """DefaultsFormatter for parsers whose description is laid out by hand (kept as written)."""


def add_data_arg(parser: argparse.ArgumentParser, help: str, *, required: bool = False, flag: str = "--data",
                 old: tuple[str, ...] = ()) -> None:
    """Adds a dataset-folder option (`--data DIR` in every command), with its `old` spellings as hidden aliases."""
    dest = flag.lstrip("-").replace("-", "_")
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument(flag, type=Path, metavar="DIR", help=help)
    for alias in old:  # still accepted, not shown
        group.add_argument(alias, dest=dest, type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


OUTPUT_KINDS = ("argmax", "logits")


class ExportOutput(argparse.Action):
    """export's -o/--output FILE. Before every command's output became -o/--output, export's --output was
    what is now --output-kind (argmax|logits): `--output argmax` and `--output logits` still set the kind, so
    old command lines keep working (an output file named just `argmax` or `logits`, with no .tflite, is not a
    plausible choice; `-o argmax` and `--output ./argmax` still name a file)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string == "--output" and values in OUTPUT_KINDS:
            namespace.output_kind = values
        else:
            setattr(namespace, self.dest, Path(values))


def int_in(low: int, high: int):
    """Returns an argparse type: a whole number in low..high, the range named in the error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number in {low}..{high}, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low}..{high}, got {value}")
        return value

    return parse


positive_int = int_in(1, 10**9)  # counts: at least 1, and bounded so that no option can overflow
threads_int = int_in(1, 256)  # LiteRT segfaults on absurd thread counts


def size_arg(text: str) -> tuple[int, int]:
    """argparse type for --input-size: N or HxW (see `parse_size`)."""
    from edgeseg.pipeline import parse_size

    try:
        return parse_size(text)
    except EdgesegError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def camera_arg(text: str) -> str:
    """argparse type for --camera: an index, a device path or a URL; an empty name is refused (it would be
    read as the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("the camera name is empty: give an index (0 = /dev/video0), a device path "
                                         "or a stream URL")
    return text


def _thread_list(text: str) -> list[int]:
    try:
        threads = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated thread counts in 1..256, got {text!r}") from None
    if not threads or min(threads) < 1 or max(threads) > 256:
        raise argparse.ArgumentTypeError(f"thread counts must be 1..256, got {text!r}")
    return threads


def cmd_benchmark(args: argparse.Namespace) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    from edgeseg import __version__

    parser = OneLineErrorParser(prog="edgeseg", description=__doc__, formatter_class=RawDefaultsFormatter)
    parser.add_argument("--version", action="version", version=f"edgeseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show other libraries' output (converter and quantizer logs, warnings); by default "
                             "it is silenced and only edgeseg's own lines and progress bars are printed")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, formatter_class=DefaultsFormatter, **kwargs)

    p = command("models", "list zoo models and whether their weights are present")
    p.add_argument("pattern", nargs="?", default="*", help="wildcard filter, e.g. '*dm05*'")
    p.set_defaults(func=cmd_models)

    p = command("predict", "segment images, folders, videos or a camera: label maps and overlays",
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
    p.set_defaults(func=cmd_predict)

    p = command("evaluate", "VOC mIoU over a split (one confusion matrix, 255 ignored)")
    add_data_arg(p, "dataset: a VOCdevkit/VOC2012-style folder, a folder with images/ + masks/, or one with "
                    "<split>/images/ + <split>/masks/", required=True, old=("--voc-root",))
    p.add_argument("--split", default="val", help="split to evaluate")
    add_model_args(p)
    p.add_argument("--limit", type=positive_int, metavar="N", default=None, help="only the first N images of the split")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images/masks with a warning")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the metrics as JSON")
    p.add_argument("--class-map", metavar="NAME|FILE.json",
                   help="score the model's classes as the dataset's through a mapping, e.g. cityscapes-to-camvid")
    p.set_defaults(func=cmd_evaluate)

    p = command("export", "export FP32 or INT8 .tflite (litert-torch + ai-edge-quantizer)")
    add_source_args(p, tflite=False)
    p.add_argument("--precision", choices=["fp32", "int8"], default="int8",
                   help="fp32, or int8 (full-integer, calibrated on --data)")
    p.add_argument("-o", "--output", action=ExportOutput, metavar="FILE",
                   help="output .tflite (default exports/<model>_<precision>[_<options>].tflite)")
    p.add_argument("--output-kind", choices=OUTPUT_KINDS, default=None,
                   help="the graph's tail: argmax (full-resolution labels) or logits (the output-stride logits, "
                        "upsampled and argmaxed exactly on the host); default: logits with a --target, else argmax")
    p.add_argument("--input", choices=["uint8", "int8", "float32"],
                   help="int8 models: uint8 raw pixels (default; scale 1/128, zero point 128), int8, or float32")
    p.add_argument("--target", choices=sorted(TARGETS),
                   help="device preset: imx8mp = i.MX 8M Plus NPU (per-tensor uint8, raw uint8 pixels in); "
                        "imx93 = i.MX 93 Ethos-U65 NPU (the same, a space-to-depth stem, and the file compiled by "
                        "Vela as <name>_vela.tflite; extra npu)")
    p.add_argument("--stem", choices=["conv", "space-to-depth"], default=None,
                   help="the first conv as trained (conv) or as an exact 2x2 conv on 2x2 pixel blocks packed into "
                        "12 channels by the host (space-to-depth; faster on NPUs); default: the target's, else conv")
    p.add_argument("--granularity", choices=["per-channel", "per-tensor"],
                   help="weights: per-channel int8 (default; CPUs, GPUs) or per-tensor uint8 (NPUs)")
    p.add_argument("--weight-ranges", choices=["mse", "minmax"], default=None,
                   help="weight scales: mse (re-quantizes QAT weights exactly; default) or minmax")
    p.add_argument("--activation-ranges", choices=["ema", "mse", "qat"],
                   help="activation ranges: ema (moving min/max), mse (least squared error), or qat (a zoo "
                        "model's ranges learned by quantization-aware training, read from its official file; "
                        "mse for tensors it has no twin of); default: per-tensor qat for zoo models, mse for "
                        "checkpoints; per-channel ema")
    p.add_argument("--bias-correction", action=argparse.BooleanOptionalAction, default=None,
                   help="per-tensor files: move each conv channel's mean quantization error into its bias, "
                        "measured on 8 calibration images; default: for the convs whose weights had to be "
                        "rounded (a fine-tuned model's), not for weights on their exact QAT grid")
    p.add_argument("--input-size", metavar="N|HxW",
                   help="model input, square N or HxW, e.g. 321 or 360x480 (default: the model's, 513 for the "
                        "zoo; a checkpoint trained with --input-size brings its own)")
    add_data_arg(p, "calibration data (int8): a folder of images (no masks needed), a folder with images/, "
                    "or a VOCdevkit folder", old=("--calib-voc-root", "--calib-data"))
    p.add_argument("--split", default=None, help="split of --data to calibrate on, where it has splits (default train; "
                                                    "val warns: its mIoU would no longer be independent)")
    p.add_argument("--calib-split", dest="split", default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # old name
    p.add_argument("--calib-count", type=positive_int, metavar="N", default=None,
                   help="calibration images: the first N of the split or folder, sorted by name (default 64)")
    p.set_defaults(func=cmd_export)

    p = command("card", "measure and write the model card (mIoU FP32/INT8, OPS, params, sizes)")
    add_data_arg(p, "evaluation data: a VOCdevkit folder, or images/ + masks/ (as for evaluate)", required=True,
                 old=("--voc-root",))
    p.add_argument("--split", default="val", help="split of --data to evaluate")
    add_source_args(p, tflite=False, model_help="one zoo model (default: every zoo entry)")
    p.add_argument("-o", "--output", type=Path, metavar="DIR", default=Path("card_out"),
                   help="folder for card, exports, charts")
    add_data_arg(p, "calibration data: a folder of images, or a dataset whose train split is used "
                    "(default: --data, train split)", flag="--calib-data", old=("--calib-voc-root",))
    p.add_argument("--calib-count", type=positive_int, metavar="N", default=64,
                   help="calibration images per INT8 export")
    p.add_argument("--threads", type=threads_int, metavar="N", default=2, help="LiteRT CPU threads for the evaluations")
    p.add_argument("--limit", type=positive_int, metavar="N", help="only the first N evaluation images")
    p.add_argument("--reuse-exports", action="store_true", help="reuse .tflite files already in the folder")
    p.add_argument("--class-map", metavar="NAME|FILE.json",
                   help="score the models' classes as the data's, e.g. cityscapes-to-camvid")
    p.set_defaults(func=cmd_card)

    p = command("benchmark", "LiteRT latency: invoke alone and the whole pipeline, per stage")
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
    p.set_defaults(func=cmd_benchmark)

    from edgeseg.training.command import add_train_parser  # imports torch lazily, inside the command

    add_train_parser(sub)
    for command_parser in sub.choices.values():  # -v also after the command: `edgeseg export ... -v`
        command_parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                                    help="show other libraries' output (see edgeseg --help)")
    return parser


def _output_folders(args: argparse.Namespace) -> list[Path]:
    """The folders a command writes in (-o/--output, --out, and that of --json)."""
    folders = [getattr(args, name, None) for name in ("output", "out")]  # export's -o FILE: parents count too
    folders += [args.json.parent] if isinstance(getattr(args, "json", None), Path) else []
    return [folder for folder in folders if isinstance(folder, Path)]


def main(argv: list[str] | None = None) -> int:
    """The `edgeseg` command; returns its exit code: 0, 2 after an error, 130 after Ctrl-C.

    Ctrl-C at any point once main runs, while it imports the libraries too, is the one line
    `edgeseg: interrupted` and exit code 130, never a traceback; after the first, further Ctrl-C wait for
    the cleanup it started (a video keeps the frames done so far, the JSON report is written)."""
    try:
        from edgeseg.io.files import interrupts_held_after_first

        with interrupts_held_after_first(exiting=argv is None):  # None: run as the `edgeseg` program
            try:
                return _main(argv)
            except KeyboardInterrupt:
                print("edgeseg: interrupted", file=sys.stderr)
                return 130
    except KeyboardInterrupt:  # before the handler was in place
        print("edgeseg: interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    from edgeseg.io.files import removing_new_folders
    from edgeseg.logs import set_verbose

    args = build_parser().parse_args(argv)
    set_verbose(args.verbose)
    try:
        with removing_new_folders(_output_folders(args)):  # a failed command leaves no empty folder it made
            args.func(args)
    except EdgesegError as exc:
        print(f"edgeseg: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        extra = EXTRAS.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        if args.command in ("export", "card"):
            extra = "export,plot" if args.command == "card" else "export"
        print(f"edgeseg: error: `edgeseg {args.command}` needs {exc.name}: pip install 'edgeseg[{extra}]'",
              file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. a full disk or an unreadable file outside the places that say more
        where = f" {exc.filename}" if exc.filename else ""
        print(f"edgeseg: error: {exc.strerror or exc}{':' if where else ''}{where}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
