"""The `edgeseg` command line. A failure is one `edgeseg: error:` line on stderr and exit code 2
(argparse's own usage errors also exit 2, after the usage text)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeseg.errors import EdgesegError

DEFAULT_MODEL = "deeplabv3_mnv2_dm05_voc"
# Optional packages, and the extra that installs each.
EXTRAS = {"torch": "torch", "safetensors": "torch", "litert_torch": "export", "ai_edge_quantizer": "export",
          "matplotlib": "plot"}
DEFAULT_BENCH_IMAGE = Path(__file__).parent / "assets" / "voc_sized_500x375.jpg"


@dataclass
class OpenedModel:
    runtime: object
    class_names: tuple[str, ...]
    description: str


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def tflite_class_names(path: str | Path, num_classes: int) -> tuple[str, ...]:
    """Returns the class names stored in an edgeseg export, else VOC's for 21 classes, else class_<i>."""
    from edgeseg.tflite_file import CLASSES_METADATA, TFLiteFile
    from edgeseg.voc import VOC_CLASSES

    stored = TFLiteFile(path).metadata(CLASSES_METADATA)
    if stored:
        return tuple(json.loads(stored.decode()))
    if num_classes in (0, len(VOC_CLASSES)):
        return VOC_CLASSES
    return tuple(f"class_{i}" for i in range(num_classes))


def add_source_args(parser: argparse.ArgumentParser, *, tflite: bool = True,
                    model_help: str = f"zoo model name (default {DEFAULT_MODEL}; see `edgeseg models`)") -> None:
    """Adds the mutually exclusive model sources: --model NAME, --weights CHECKPOINT (and --tflite FILE)."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help=model_help)
    if tflite:
        source.add_argument("--tflite", type=Path, help="any segmentation .tflite file (runs with LiteRT)")
    source.add_argument("--weights", type=Path, help="a fine-tuned checkpoint (.safetensors from `edgeseg train`)")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    add_source_args(parser)
    parser.add_argument("--backend", choices=["torch", "litert"],
                        help="torch (FP32) or litert; default torch for --model when installed")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="LiteRT CPU threads (default: LiteRT's; the torch backend ignores it)")


def open_model(args: argparse.Namespace) -> OpenedModel:
    """Returns the runtime and class names that --model / --tflite / --weights and --backend ask for."""
    from edgeseg.registry import get_entry
    from edgeseg.runtimes.litert import LiteRTRuntime

    if args.tflite is not None:
        if args.backend == "torch":
            raise EdgesegError("--tflite runs with LiteRT; drop --backend torch or use --model/--weights")
        runtime = LiteRTRuntime(args.tflite, num_threads=args.threads)
        return OpenedModel(runtime, tflite_class_names(args.tflite, runtime.num_classes), str(args.tflite))
    if args.weights is not None:
        if args.backend == "litert":
            raise EdgesegError("--weights is a PyTorch checkpoint; export it to .tflite to run it with LiteRT")
        from edgeseg.runtimes.torch import TorchRuntime
        from edgeseg.zoo import load_checkpoint

        model, entry = load_checkpoint(args.weights)
        runtime = TorchRuntime(model, num_classes=entry.num_classes, name=f"torch:{args.weights.name}")
        return OpenedModel(runtime, entry.class_names, str(args.weights))
    entry = get_entry(args.model or DEFAULT_MODEL)
    backend = args.backend or ("torch" if _torch_available() else "litert")
    if backend == "litert":
        from edgeseg.zoo import official_tflite

        runtime = LiteRTRuntime(official_tflite(entry.name), num_threads=args.threads)
        return OpenedModel(runtime, entry.class_names, f"{entry.name} (official INT8 TFLite)")
    if not _torch_available():
        raise EdgesegError("the torch backend needs PyTorch: pip install 'edgeseg[torch]'")
    from edgeseg.runtimes.torch import TorchRuntime
    from edgeseg.zoo import create_model

    runtime = TorchRuntime(create_model(entry.name), num_classes=entry.num_classes, name=f"torch:{entry.name}")
    return OpenedModel(runtime, entry.class_names, f"{entry.name} (PyTorch FP32)")


# Commands --------------------------------------------------------------------------------------------

def cmd_models(args: argparse.Namespace) -> None:
    from edgeseg.registry import get_entry, list_models
    from edgeseg.weights import local_weights

    print(f"{'name':<26} {'classes':>7} {'published mIoU fp32/int8':>25}  weights")
    for name in list_models(args.pattern):
        entry = get_entry(name)
        local = local_weights(entry.weights)
        where = f"present ({local})" if local else f"not downloaded ({entry.weights.url})"
        published = f"{entry.published.get('miou_fp32', '-')}/{entry.published.get('miou_int8', '-')}"
        print(f"{name:<26} {entry.num_classes:>7} {published:>25}  {where}")


def with_names_for(labels: np.ndarray, class_names: tuple[str, ...]) -> tuple[str, ...]:
    """Returns the class names, extended with class_<i> if the model predicts indices beyond them."""
    top = int(labels.max(initial=0))
    return class_names + tuple(f"class_{i}" for i in range(len(class_names), top + 1))


def cmd_predict(args: argparse.Namespace) -> None:
    from edgeseg.files import atomic_path, ensure_writable_dir
    from edgeseg.pipeline import load_image, segment
    from edgeseg.visualize import class_shares, label_image, overlay

    out_dir = ensure_writable_dir(args.output)
    stems = [Path(p).stem for p in args.images]
    repeated = sorted({s for s in stems if stems.count(s) > 1})
    if repeated:
        raise EdgesegError(f"several images are named {repeated[0]!r}: their outputs would overwrite each other")
    opened = open_model(args)
    failures = 0
    for path in args.images:
        try:
            pixels = load_image(path)
        except EdgesegError as exc:
            if len(args.images) == 1:
                raise
            # Keep going: one bad file should not cost the others their results.
            print(f"edgeseg: error: {exc}", file=sys.stderr)
            failures += 1
            continue
        labels = segment(pixels, opened.runtime)
        names = with_names_for(labels, opened.class_names)
        stem = Path(path).stem
        with atomic_path(out_dir / f"{stem}_labels.png") as tmp:
            label_image(labels).save(tmp, format="PNG")
        with atomic_path(out_dir / f"{stem}_overlay.png") as tmp:
            overlay(pixels, labels, names).save(tmp, format="PNG")
        shares = ", ".join(f"{name} {100 * share:.1f}%" for name, share in class_shares(labels, names))
        print(f"{path}: {shares}")
    if failures:
        raise EdgesegError(f"{failures} of {len(args.images)} images could not be read")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from edgeseg.data import open_dataset, remap_for
    from edgeseg.evaluate import evaluate, format_table
    from edgeseg.files import check_output_file, write_json

    if args.json:
        check_output_file(args.json)  # before the work, not after
    dataset = open_dataset(args.voc_root, args.split, args.limit)
    opened = open_model(args)
    dataset = remap_for(dataset, opened.class_names, args.voc_root)
    result = evaluate(opened.runtime, dataset, opened.class_names, skip_bad=args.skip_bad)
    print(f"{opened.description} on {dataset.description}")
    print(format_table(result))
    if args.json:
        write_json(args.json, {"model": opened.description, "data": dataset.description, **result.to_dict()})


def load_torch_model(args: argparse.Namespace):
    """Returns (torch model, entry) for --model NAME or --weights CHECKPOINT."""
    if not _torch_available():
        raise EdgesegError("this command needs PyTorch: pip install 'edgeseg[export]'")
    from edgeseg.registry import get_entry
    from edgeseg.zoo import create_model, load_checkpoint

    if getattr(args, "weights", None) is not None:
        return load_checkpoint(args.weights)
    entry = get_entry(args.model or DEFAULT_MODEL)
    return create_model(entry.name), entry


def cmd_export(args: argparse.Namespace) -> None:
    from edgeseg.export import ExportOptions, export_tflite

    options = ExportOptions(
        precision=args.precision, input=args.input, output=args.output_kind, granularity=args.granularity,
        calib_root=args.calib_voc_root, calib_split=args.calib_split, calib_count=args.calib_count,
        weight_ranges=args.weight_ranges,
    ).resolved()  # conflicting options fail here, before the model is built
    model, entry = load_torch_model(args)
    default_name = "_".join([entry.name, options.precision, *export_suffixes(options)])
    path = args.o or Path("exports") / f"{default_name}.tflite"
    report = export_tflite(model, entry.class_names, path, options)
    print(f"wrote {path} ({report['bytes']} bytes) in {report['seconds']} s")
    print(f"  input  {report['input']['dtype']} {report['input']['shape']} scale {report['input']['scale']} "
          f"zero point {report['input']['zero_point']}")
    print(f"  output {report['output']['dtype']} {report['output']['shape']}")
    print("  ops    " + ", ".join(f"{k} {v}" for k, v in report["ops"].items()))
    print("  tensor types " + ", ".join(f"{k} {v}" for k, v in report["tensor_types"].items()))
    if options.precision == "int8":
        print(f"  float compute ops: {report['float_compute_ops'] or 'none'}; "
              f"calibrated on {report['calibration_images']} {options.calib_split} images")


def export_suffixes(options) -> list[str]:
    """Returns file-name parts for every export option that differs from its default."""
    parts = [] if options.output == "argmax" else [options.output]
    if options.precision == "int8":
        parts += [] if options.input == "uint8" else [f"{options.input}_input"]
        parts += [] if options.granularity == "per-channel" else ["per_tensor"]
        parts += [] if options.weight_ranges == "mse" else [f"{options.weight_ranges}_weights"]
    return parts


def cmd_card(args: argparse.Namespace) -> None:
    from edgeseg.card import CardModel, measure, plot_charts, write_card
    from edgeseg.data import open_dataset, remap_for
    from edgeseg.files import ensure_writable_dir
    from edgeseg.registry import get_entry, list_models
    from edgeseg.zoo import official_tflite

    out_dir = ensure_writable_dir(args.output)
    dataset = open_dataset(args.voc_root, args.split, args.limit)
    open_dataset(args.calib_voc_root or args.voc_root, "train")  # calibration data, checked before any work
    if args.weights is not None:
        model, entry = load_torch_model(args)
        items = [CardModel(entry, model)]
        dataset = remap_for(dataset, entry.class_names, args.voc_root)
    else:
        names = [args.model] if args.model else list_models()
        items = []
        for name in names:
            model, entry = load_torch_model(argparse.Namespace(model=name, weights=None))
            items.append(CardModel(entry, model, official_tflite(get_entry(name).name)))
    data = f"{dataset.description}, {len(dataset)} images"
    facts = []
    for item in items:
        fact = measure(item, dataset, out_dir, calib_root=args.calib_voc_root or args.voc_root,
                       calib_count=args.calib_count, threads=args.threads, reuse_exports=args.reuse_exports)
        facts.append(fact)
        for path in plot_charts(item.entry, fact, out_dir):
            print(f"wrote {path}", file=sys.stderr)
    path = write_card([item.entry for item in items], facts, data, out_dir)
    print(path.read_text())


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _thread_list(text: str) -> list[int]:
    try:
        threads = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated thread counts, got {text!r}") from None
    if not threads or min(threads) < 1:
        raise argparse.ArgumentTypeError(f"thread counts must be positive, got {text!r}")
    return threads


def cmd_benchmark(args: argparse.Namespace) -> None:
    from edgeseg.benchmark import benchmark_file, format_results
    from edgeseg.files import check_output_file, write_json
    from edgeseg.pipeline import load_image

    if args.json:
        check_output_file(args.json)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeseg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list zoo models and whether their weights are present")
    p.add_argument("pattern", nargs="?", default="*", help="wildcard filter, e.g. '*dm05*'")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("predict", help="segment images: palette label map + overlay PNG per image")
    p.add_argument("images", nargs="+", type=Path)
    add_model_args(p)
    p.add_argument("-o", "--output", type=Path, default=Path("predictions"), help="output folder")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="VOC mIoU over a split (one confusion matrix, 255 ignored)")
    p.add_argument("--voc-root", type=Path, required=True,
                   help="VOCdevkit/VOC2012-style folder, or a folder with images/ and masks/")
    p.add_argument("--split", default="val")
    add_model_args(p)
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N images of the split")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images/masks with a warning")
    p.add_argument("--json", type=Path, help="also write the metrics as JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="export FP32 or INT8 .tflite (litert-torch + ai-edge-quantizer)")
    add_source_args(p, tflite=False)
    p.add_argument("--precision", choices=["fp32", "int8"], default="int8")
    p.add_argument("-o", type=Path, help="output .tflite (default exports/<model>_<precision>.tflite)")
    p.add_argument("--input", choices=["uint8", "int8", "float32"],
                   help="int8 models: uint8 raw pixels (default; scale 1/128, zero point 128), int8, or float32")
    p.add_argument("--output", dest="output_kind", choices=["argmax", "logits"], default="argmax",
                   help="argmax: full-resolution labels; logits: small logits, upsampled on the host")
    p.add_argument("--granularity", choices=["per-channel", "per-tensor"],
                   help="int8 weight quantization (default per-channel)")
    p.add_argument("--weight-ranges", choices=["mse", "minmax"], default="mse",
                   help="per-channel weight scales: mse (re-quantizes QAT weights exactly; default) or minmax")
    p.add_argument("--calib-voc-root", type=Path, help="calibration data (VOC folder or images/ + masks/)")
    p.add_argument("--calib-split", default="train", help="calibration split (default train; val warns)")
    p.add_argument("--calib-count", type=positive_int, default=64, help="number of calibration images")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("card", help="measure and write the model card (mIoU FP32/INT8, OPS, params, sizes)")
    p.add_argument("--voc-root", type=Path, required=True, help="evaluation data (VOC folder)")
    p.add_argument("--split", default="val")
    add_source_args(p, tflite=False, model_help="one zoo model (default: every zoo entry)")
    p.add_argument("-o", "--output", type=Path, default=Path("card_out"), help="folder for card, exports, charts")
    p.add_argument("--calib-voc-root", type=Path, help="calibration data (default: --voc-root, train split)")
    p.add_argument("--calib-count", type=positive_int, default=64)
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--limit", type=positive_int, help="only the first N evaluation images")
    p.add_argument("--reuse-exports", action="store_true", help="reuse .tflite files already in the folder")
    p.set_defaults(func=cmd_card)

    p = sub.add_parser("benchmark", help="LiteRT latency: invoke alone and the whole pipeline, per stage")
    p.add_argument("files", nargs="+", type=Path, help=".tflite files")
    p.add_argument("--threads", type=_thread_list, default=[1, 2], help="comma-separated, e.g. 1,2,4")
    p.add_argument("--runs", type=positive_int, default=30)
    p.add_argument("--warmup", type=int, choices=range(0, 1000), metavar="N", default=5)
    p.add_argument("--delegate", type=Path, help="external delegate library, e.g. /usr/lib/libvx_delegate.so")
    p.add_argument("--image", type=Path, default=DEFAULT_BENCH_IMAGE,
                   help="image for the end-to-end pipeline (default: a VOC-sized 500x375 photo)")
    p.add_argument("--json", type=Path, help="also write the results as JSON")
    p.set_defaults(func=cmd_benchmark)

    from edgeseg.train import add_train_parser  # imports torch lazily, inside the command

    add_train_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
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
    except KeyboardInterrupt:
        print("edgeseg: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
