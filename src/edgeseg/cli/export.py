"""`edgeseg export`: a model to FP32 or INT8 .tflite, for a board when --target names one."""

from __future__ import annotations

import argparse

from edgeseg.cli.options import (
    OUTPUT_KINDS,
    ExportOutput,
    add_command,
    add_data_arg,
    add_source_args,
    load_torch_model,
    positive_int,
)
from edgeseg.deploy.targets import TARGETS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "export", "export FP32 or INT8 .tflite (litert-torch + ai-edge-quantizer)")
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
                        "16 channels by the host (space-to-depth; faster on NPUs); default: the target's, else conv")
    p.add_argument("--granularity", choices=["per-channel", "per-tensor"],
                   help="weights: per-channel int8 (default; CPUs, GPUs) or per-tensor uint8 (NPUs)")
    p.add_argument("--weight-ranges", choices=["mse", "minmax"], default=None,
                   help="weight scales: mse (re-quantizes QAT weights exactly; default) or minmax")
    p.add_argument("--activation-ranges", choices=["ema", "mse", "qat"],
                   help="activation ranges: ema (moving min/max), mse (least squared error), or qat (a zoo "
                        "model's ranges learned by quantization-aware training, read from its official file; "
                        "mse for tensors it has no twin of); default per-tensor: the zoo entry's choice (qat for "
                        "deeplabv3_mnv2_dm10_voc, mse for the others) and mse for checkpoints; per-channel: ema")
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from edgeseg.checks import parse_size
    from edgeseg.deploy.export import ExportOptions, default_export_path, export_tflite
    from edgeseg.zoo.build import model_preprocess, qat_ranges_file

    preprocess = model_preprocess(args.model, args.weights)  # a checkpoint brings its own input size
    options = ExportOptions(
        precision=args.precision, input=args.input, output=args.output_kind, granularity=args.granularity,
        calib_root=args.data, calib_split=args.split, calib_count=args.calib_count,
        weight_ranges=args.weight_ranges, activation_ranges=args.activation_ranges, target=args.target,
        bias_correction=args.bias_correction, upscale=preprocess.upscale,
        input_size=parse_size(args.input_size) if args.input_size else preprocess.input_size,
        qat_file=qat_ranges_file(args.model, args.weights, args.activation_ranges), stem=args.stem,
    ).resolved()  # conflicting options fail here, before the model is built
    calibration = ""
    if options.precision == "int8":  # so does missing calibration data
        from edgeseg.data.datasets import open_images

        calibration = open_images(options.calib_root, options.calib_split, options.calib_count)[1]
    model, entry = load_torch_model(args)
    path = args.output or default_export_path(entry.name, options, args.weights)
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
