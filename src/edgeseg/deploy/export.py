"""Export a DeepLabV3 torch model to deployable FP32 or INT8 TFLite (litert-torch + ai-edge-quantizer).

The exported graph is NHWC end to end (no TRANSPOSE). INT8 is full-integer static quantization,
calibrated on training images. Options for NPUs such as the i.MX 8M Plus (VX delegate):
- input `uint8` (default): raw pixels, scale 1/128 and zero point 128 as in the official files, so the
  app feeds pixels and the graph has no float preprocessing; `int8`: the same with zero point 0.
- output `argmax`: a full-resolution label map (int32); `logits`: the small logits, for delegates
  without ARG_MAX, upsampled and argmaxed on the host by edgeseg.
- weights `per-channel` (int8, accurate on CPUs and GPUs) or `per-tensor` (uint8 with a zero point per
  tensor, as the official QAT files: what VeriSilicon NPUs run natively; see per_tensor.py).
- `target`: a named preset for one device, e.g. `imx8mp`.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from edgeseg.deploy.targets import TARGET_DEFAULTS, TARGETS, VELA_TARGETS
from edgeseg.deploy.vela import VELA_VERSION, compile_for_ethos_u, compiled_path, vela_available
from edgeseg.errors import EdgesegError, warn
from edgeseg.io.files import atomic_path, check_output_file
from edgeseg.logs import discarded_stderr, native_stderr, progress_stream, status, third_party_output
from edgeseg.models.deeplabv3 import merge_classes
from edgeseg.pipeline import (
    DEEPLAB,
    PACKED_CHANNELS,
    Size,
    input_hw,
    load_image,
    normalize_and_pad,
    pack_space_to_depth,
    packed_size,
)
from edgeseg.tflite.reader import (
    CLASSES_METADATA,
    INPUT_LAYOUT_METADATA,
    INPUT_SIZE_METADATA,
    SPACE_TO_DEPTH_LAYOUT,
    UPSCALE_METADATA,
    TFLiteFile,
)

PRECISIONS, INPUTS, OUTPUTS, GRANULARITIES = ("fp32", "int8"), ("uint8", "int8", "float32"), \
    ("argmax", "logits"), ("per-channel", "per-tensor")
STEMS = ("conv", "space-to-depth")

# Chosen by pixel agreement with FP32 on held-out train images (bench/ptq_sweep.py; see docs/export.md).
DEFAULT_ACTIVATION_RANGES = {"per-channel": "ema", "per-tensor": "mse"}


@dataclass(frozen=True)
class ExportOptions:
    precision: str = "int8"
    input: str | None = None  # default: uint8 for int8, float32 for fp32
    output: str | None = None  # the graph's tail; default: the target's (TARGET_DEFAULTS), else argmax
    granularity: str | None = None  # default per-channel; int8 only
    calib_root: Path | None = None
    calib_split: str | None = None  # default train (int8 only)
    calib_count: int | None = None  # default 64 (int8 only)
    input_size: Size = 513
    upscale: bool = False  # the model was trained on enlarged frames; recorded in the file, used in calibration
    weight_ranges: str | None = None  # int8 weight scales: "mse" (default; exact QAT grids) or "minmax"
    activation_ranges: str | None = None  # "ema" (the quantizer's moving min/max) or "mse"; default by granularity
    target: str | None = None  # a TARGETS preset
    stem: str | None = None  # "space-to-depth": the host packs 2x2 pixel blocks (models/stem.py); default conv
    # Per-tensor only: empirical bias correction of every conv (True), none (False), or (None, the default)
    # of the convs whose weights had no exact grid, as a fine-tuned model's (bias_correction.py).
    bias_correction: bool | None = None
    # The official QAT file the weights came from: `qat` activation ranges read it (the per-tensor default then).
    qat_file: Path | None = None

    def resolved(self) -> ExportOptions:
        """Returns the options with defaults filled in, or raises on a conflicting combination."""
        options = self._with_target()
        for option, value, allowed in (("precision", options.precision, PRECISIONS),
                                       ("input", options.input, INPUTS), ("output", options.output, OUTPUTS),
                                       ("granularity", options.granularity, GRANULARITIES),
                                       ("stem", options.stem, STEMS),
                                       ("weight-ranges", options.weight_ranges, ("mse", "minmax")),
                                       ("activation-ranges", options.activation_ranges, ("ema", "mse", "qat"))):
            if value is not None and value not in allowed:
                raise EdgesegError(f"--{option} must be one of {', '.join(allowed)}, got {value!r}")
        defaults = TARGET_DEFAULTS.get(options.target or "", {})
        options = replace(options, input_size=input_hw(options.input_size),
                          stem=options.stem or defaults.get("stem", "conv"),
                          output=options.output or defaults.get("output", "argmax"))
        if options.precision == "fp32":
            if options.input not in (None, "float32"):
                raise EdgesegError(f"--input {options.input} needs --precision int8 (an FP32 model takes float32)")
            int8_only = {"granularity": options.granularity, "activation-ranges": options.activation_ranges,
                         "bias-correction": options.bias_correction, "data": options.calib_root,
                         "split": options.calib_split, "calib-count": options.calib_count,
                         "weight-ranges": options.weight_ranges}
            given = [f"--{flag}" for flag, value in int8_only.items() if value is not None]
            if given:  # an FP32 export would ignore them silently
                raise EdgesegError(f"{', '.join(given)} apply to int8 only (an FP32 export is not calibrated)")
            return replace(options, input="float32")
        options = replace(options, calib_split=options.calib_split or "train",
                          calib_count=64 if options.calib_count is None else options.calib_count,
                          weight_ranges=options.weight_ranges or "mse")
        if options.calib_root is None:
            raise EdgesegError("INT8 export needs calibration images: --data DIR (a folder of images, "
                               "images/ + masks/, or a VOC folder)")
        if options.calib_count < 1:
            raise EdgesegError("--calib-count must be at least 1")
        if options.granularity == "per-tensor" and options.input == "int8":
            raise EdgesegError("--granularity per-tensor files are uint8 throughout: use --input uint8 or float32")
        granularity = options.granularity or "per-channel"
        if options.activation_ranges == "qat" and options.qat_file is None:
            raise EdgesegError("--activation-ranges qat needs the official QAT file the weights came from: "
                               "a zoo model (not --weights or --tflite)")
        if options.bias_correction and granularity != "per-tensor":
            raise EdgesegError("--bias-correction applies to per-tensor files (--granularity per-tensor or a --target)")
        activation_ranges = options.activation_ranges or DEFAULT_ACTIVATION_RANGES[granularity]
        if options.activation_ranges is None and granularity == "per-tensor" and options.qat_file is not None:
            activation_ranges = "qat"  # the learned ranges, where the weights are the official file's
        return replace(options, input=options.input or "uint8", granularity=granularity,
                       activation_ranges=activation_ranges,
                       bias_correction=False if granularity == "per-channel" else options.bias_correction)

    def _with_target(self) -> ExportOptions:
        """Returns the options with the target's preset applied; an explicit conflicting option is an error."""
        if self.target is None:
            return self
        if self.target not in TARGETS:
            raise EdgesegError(f"unknown --target {self.target!r}; known targets: {', '.join(TARGETS)}")
        preset = TARGETS[self.target]
        explicit = {"precision": self.precision if self.precision != "int8" else None, "input": self.input,
                    "granularity": self.granularity}
        for option, value in explicit.items():
            if value is not None and value != preset[option]:
                raise EdgesegError(f"--target {self.target} means --{option} {preset[option]}; "
                                   f"it conflicts with --{option} {value}")
        return replace(self, **preset)


class DeployModel(nn.Module):
    """NHWC float input (x*2/255-1) -> argmax labels [1, S, S] or logits [1, h, w, C].

    The input permute is cancelled by litert-torch's layout pass, and the argmax is taken over the last
    (channel) axis of an NHWC tensor, so the graph has no TRANSPOSE. With a space-to-depth stem the input
    is the packed [1, Hb, Wb, 12] (pipeline.pack_space_to_depth) and `input_size` the image size it holds.
    """

    def __init__(self, model: nn.Module, output: str, input_size: tuple[int, int]) -> None:
        super().__init__()
        self.model, self.output, self.input_size = model, output, input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model.forward_logits(x.permute(0, 3, 1, 2))
        groups = getattr(self.model, "class_groups", None)
        if self.output == "logits":
            # A merged head merges at output stride here (the host upsamples), not after upsampling as in torch:
            # bilinear resizing and max do not commute, so boundary pixels may differ (docs/training.md).
            return (logits if groups is None else merge_classes(logits, groups)).permute(0, 2, 3, 1)
        up = F.interpolate(logits, size=self.input_size, mode="bilinear", align_corners=True)
        if groups is not None:
            up = merge_classes(up, groups)
        return up.permute(0, 2, 3, 1).argmax(dim=-1)


def _deploy_model(model: nn.Module, options: ExportOptions) -> tuple[nn.Module, torch.Tensor]:
    """Returns the graph to convert and a sample input for it."""
    import copy

    if options.stem == "space-to-depth":
        from edgeseg.models.stem import with_space_to_depth_stem

        try:
            model = with_space_to_depth_stem(copy.deepcopy(model))
        except ValueError as exc:
            raise EdgesegError(f"--stem space-to-depth: {exc}") from None
        sample = torch.zeros(1, *packed_size(options.input_size), PACKED_CHANNELS)
    else:
        sample = torch.zeros(1, *options.input_size, 3)
    return DeployModel(model.eval(), options.output, options.input_size).eval(), sample


def _packed_images(images: list[np.ndarray], input_size: tuple[int, int]) -> list[np.ndarray]:
    """Calibration images (1, S, S, 3) as a space-to-depth graph takes them; 0.0 is the padding value."""
    return [pack_space_to_depth(image[0], input_size, 0.0)[None] for image in images]


def calibration_images(root: Path, split: str, count: int, input_size: Size,
                       upscale: bool = False) -> list[np.ndarray]:
    """Returns up to `count` preprocessed images (1, S, S, 3) from a dataset or a plain folder of images (no
    masks needed); warns if fewer exist."""
    from edgeseg.data.datasets import open_images
    from edgeseg.pipeline import fit_to_input

    if split == "val":
        warn("calibrating on the val split: its mIoU is then no longer an independent measure")
    paths, description = open_images(root, split, limit=count)  # a dataset's split, or a plain image folder
    if not paths:
        raise EdgesegError(f"{description}: no calibration images")
    if len(paths) < count:
        warn(f"asked for {count} calibration images, {description} has {len(paths)}; using {len(paths)}")
    images = []
    for path in tqdm(paths, desc="calibration images", unit="img", file=sys.stderr, leave=False):
        pixels = fit_to_input(load_image(path), input_size, upscale)
        images.append(normalize_and_pad(pixels, input_size, DEEPLAB)[None])
    return images


def channel_scales(weights: np.ndarray, axis: int, qmax: int = 127) -> np.ndarray:
    """Returns per-channel symmetric scales that minimise the weights' squared rounding error.

    Candidates: max|w|/127, the same shrunk down to 0.6x (clipping), and, when the weights already lie on
    a value grid (weights dequantized from a QAT model do), small integer multiples of that grid, which
    re-quantize them exactly. Plain min/max scales add rounding noise the QAT model never saw: on dm 1.0
    that cost 1.8 mIoU points.
    """
    values = weights.astype(np.float64)
    rows = np.moveaxis(values, axis, 0).reshape(weights.shape[axis], -1)
    steps = np.diff(np.unique(np.abs(values)))
    steps = steps[steps > 1e-9]
    grid = steps.min() if steps.size else None
    if grid is not None and np.abs(np.abs(values) / grid - np.round(np.abs(values) / grid)).max() > 0.01:
        grid = None  # an ordinary float model: clipping search only
    scales = np.empty(rows.shape[0])
    for channel, row in enumerate(rows):
        amax = np.abs(row).max()
        if amax == 0:
            scales[channel] = 1e-9
            continue
        candidates = list(amax / qmax * np.linspace(0.6, 1.0, 41))
        if grid is not None:
            k = max(1, int(np.ceil(amax / grid / qmax - 1e-6)))
            candidates += [grid * m for m in range(max(1, k - 1), k + 3)]
        errors = [((np.clip(np.round(row / c), -qmax, qmax) * c - row) ** 2).sum() for c in candidates]
        scales[channel] = candidates[int(np.argmin(errors))]
    return scales


def _weight_ranges(float_path: Path) -> dict:
    """Returns calibration entries {weight name: {min, max}} that make the quantizer use channel_scales."""
    tfl = TFLiteFile(float_path)
    ranges = {}
    for op in tfl.ops:
        if op.type not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            continue
        weight = tfl.tensors[op.inputs[1]]
        axis = 0 if op.type == "CONV_2D" else 3  # OHWI / 1HWC
        shape = [1] * weight.data.ndim
        shape[axis] = weight.data.shape[axis]
        bound = (channel_scales(weight.data, axis) * 127).reshape(shape).astype(np.float32)
        ranges[weight.name] = {"min": -bound, "max": bound}
    return ranges


def _quantizer(float_path: Path, granularity: str):
    """ai-edge-quantizer's static int8 recipe (static_wi8_ai8) with the weight granularity chosen."""
    from ai_edge_quantizer import qtyping, quantizer

    q = quantizer.Quantizer(str(float_path))
    q.add_static_config(".*", qtyping.TFLOperationName.ALL_SUPPORTED, activation_num_bits=8, weight_num_bits=8,
                        weight_granularity=qtyping.QuantGranularity.CHANNELWISE if granularity == "per-channel"
                        else qtyping.QuantGranularity.TENSORWISE)
    return q


@third_party_output("quantization")  # the quantizer's logs go to a log file (edgeseg -v shows them)
def _quantize(float_path: Path, images: list[np.ndarray], options: ExportOptions):
    """Returns the quantized model (flatbuffer object) and, for per-tensor files, how many conv weights
    were re-quantized exactly onto their QAT grid ("n of m")."""
    from edgeseg.deploy.activation_ranges import mse_ranges
    from edgeseg.deploy.per_tensor import to_uint8
    from edgeseg.tflite.edit import read_model

    float_file = TFLiteFile(float_path)
    input_name = float_file.inputs[0].name
    samples = tqdm([{"args_0": x} for x in images], desc="calibration", unit="img", file=progress_stream(),
                   leave=False)
    with discarded_stderr(), native_stderr():
        ranges = _quantizer(float_path, options.granularity).calibrate({"serving_default": samples}, num_threads=2)
    # Pin the input range to [-1, 127/128]: int8 scale exactly 1/128, zero point 0, so that uint8 raw
    # pixels map onto it with zero point 128, as in the official files.
    ranges[input_name] = {k: np.full_like(np.asarray(v, np.float32), -1.0 if k == "min" else 127 / 128)
                          for k, v in ranges[input_name].items()}
    learned = {}
    if options.activation_ranges == "qat":
        from edgeseg.deploy.activation_ranges import qat_ranges

        learned = qat_ranges(float_path, options.qat_file)
    if options.activation_ranges in ("mse", "qat"):
        constants = {t.name for t in float_file.tensors if t.data is not None}
        ranges = mse_ranges(float_path, ranges, images, skip=constants | {input_name} | set(learned))
    for name, (low, high) in learned.items():
        ranges[name] = {k: np.full_like(np.asarray(v, np.float32), low if k == "min" else high)
                        for k, v in ranges[name].items()}
    if options.granularity == "per-channel" and options.weight_ranges == "mse":
        ranges.update(_weight_ranges(float_path))
    with discarded_stderr():
        result = _quantizer(float_path, options.granularity).quantize(ranges, enable_progress_report=False)
    model = read_model(bytes(result.quantized_model))
    if options.granularity != "per-tensor":
        return model, None
    floats = {t.name: t.data for t in float_file.tensors if t.data is not None}
    convs, rounded = to_uint8(model, floats, exact_grids=options.weight_ranges == "mse")
    if options.bias_correction is not False and (options.bias_correction or rounded):
        model = _correct_biases(model, float_path, images, None if options.bias_correction else set(rounded))
    return model, f"{convs - len(rounded)} of {convs}"


def _correct_biases(model, float_path: Path, images: list[np.ndarray], only: set[str] | None):
    """Bias correction (bias_correction.py) of the convs in `only` (None: all, as asked explicitly).

    By default only convs whose weights were rounded are corrected: weights on their exact QAT grid add no
    error, and correcting them anyway lowered agreement with FP32 on held-out train images (ptq_sweep.py).
    It helps most where one scale per tensor rounds small channels coarsely, but not always (CamVid
    checkpoints: +3.6 and -0.7 mIoU), so by default the correction is kept only if the file then agrees
    with the float file on more pixels of calibration images it was not measured on.
    """
    from edgeseg.deploy.bias_correction import IMAGES, agreement, correct_biases
    from edgeseg.tflite.edit import read_model, serialize

    before = serialize(model)
    correct_biases(model, float_path, images, only=only)
    held_out = images[IMAGES: 2 * IMAGES]
    if only is None or not held_out:
        return model
    was, now = agreement(float_path, before, held_out), agreement(float_path, serialize(model), held_out)
    verdict = "kept" if now >= was else "dropped"
    print(f"bias correction {verdict}: agreement with FP32 {100 * was:.2f}% -> {100 * now:.2f}% on "
          f"{len(held_out)} calibration images it was not measured on", file=progress_stream())
    return model if now >= was else read_model(before)


def export_tflite(
    model: nn.Module, class_names: tuple[str, ...], path: str | Path, options: ExportOptions,
) -> dict:
    """Writes the .tflite atomically and returns a report: options, seconds, bytes, op counts, I/O types."""
    with third_party_output("export"):  # torchao's load failures, torch's deprecation warnings
        import litert_torch

    from edgeseg.tflite.edit import add_metadata, feed_argmax_integers, read_model, retype_input, serialize

    options = options.resolved()
    path = Path(path)
    check_output_file(path)  # fail before minutes of conversion, not after
    for_vela = options.target in VELA_TARGETS
    if for_vela:
        if not vela_available():
            raise EdgesegError(f"--target {options.target} compiles the file with Arm's Vela: "
                               f"pip install 'edgeseg[npu]' (ethos-u-vela=={VELA_VERSION})")
        check_output_file(compiled_path(path))
    images = (calibration_images(options.calib_root, options.calib_split, options.calib_count, options.input_size,
                                 options.upscale) if options.precision == "int8" else [])
    start = time.perf_counter()
    wrapper, sample = _deploy_model(model, options)
    if options.stem == "space-to-depth":
        images = _packed_images(images, options.input_size)
    with tempfile.TemporaryDirectory(prefix="edgeseg-export-") as tmp:
        float_path = Path(tmp) / "float.tflite"
        # keep stdout for results; the converter logs a lot (to a log file, unless edgeseg -v)
        with contextlib.redirect_stdout(sys.stderr), third_party_output("conversion"), status("conversion"):
            litert_torch.convert(wrapper, (sample,)).export(str(float_path))
        tfl_model, exact_weights = (read_model(float_path.read_bytes()), None) if options.precision == "fp32" \
            else _quantize(float_path, images, options)
    if options.precision == "int8":
        feed_argmax_integers(tfl_model)
        native_input = "uint8" if options.granularity == "per-tensor" else "int8"
        if options.input != native_input:
            retype_input(tfl_model, options.input)
    add_metadata(tfl_model, CLASSES_METADATA, json.dumps(list(class_names)).encode())
    if options.upscale:
        add_metadata(tfl_model, UPSCALE_METADATA, b"1")
    if options.stem == "space-to-depth":
        add_metadata(tfl_model, INPUT_LAYOUT_METADATA, SPACE_TO_DEPTH_LAYOUT)
        add_metadata(tfl_model, INPUT_SIZE_METADATA, "x".join(map(str, options.input_size)).encode())
    with atomic_path(path) as tmp_path:
        tmp_path.write_bytes(serialize(tfl_model))
        report = inspect_tflite(tmp_path)
        if options.precision == "int8" and report["float_compute_ops"]:
            raise EdgesegError(f"INT8 export still computes in float: {report['float_compute_ops'][:5]}")
    if for_vela:  # the board file beside the plain one, which runs anywhere
        with status("Vela"):
            report["vela"] = compile_for_ethos_u(path, compiled_path(path)).as_dict()
    return {"file": str(path), "options": {k: str(v) for k, v in vars(options).items()},
            "calibration_images": len(images), "exact_weights": exact_weights,
            "seconds": round(time.perf_counter() - start, 1), **report}


def inspect_tflite(path: str | Path) -> dict:
    """Returns op counts, tensor type counts, I/O signature and float compute ops of a .tflite file."""
    tfl = TFLiteFile(path)
    return {
        "bytes": Path(path).stat().st_size,
        "ops": dict(sorted(tfl.op_counts().items())),
        "tensor_types": dict(Counter(tensor.dtype for tensor in tfl.tensors)),
        "input": _signature(tfl.inputs[0]),
        "output": _signature(tfl.outputs[0]),
        "float_compute_ops": tfl.float_compute_ops(),
    }


def _signature(tensor) -> dict:
    quantized = tensor.scale is not None and tensor.scale.size > 0
    return {"dtype": tensor.dtype, "shape": list(tensor.shape),
            "scale": float(tensor.scale[0]) if quantized else None,
            "zero_point": int(tensor.zero_point[0]) if quantized else None}


def default_export_path(model: str, options: ExportOptions, weights: str | Path | None = None) -> Path:
    """exports/<model>_<precision>[_<options>].tflite, naming every option that differs from its default. A
    checkpoint is named by its run folder and file (runs/crack/best.safetensors -> crack_best), so exports of
    different runs do not replace each other."""
    name = f"{Path(weights).parent.name}_{Path(weights).stem}".lstrip("_") if weights is not None else model
    return Path("exports") / ("_".join([name, options.precision, *export_suffixes(options)]) + ".tflite")


def export_suffixes(options: ExportOptions) -> list[str]:
    """File-name parts for every export option that differs from its default (the target's, where it has one)."""
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
        expected = {DEFAULT_ACTIVATION_RANGES[options.granularity]} | ({"qat"} if options.qat_file else set())
        parts += [] if options.activation_ranges in expected else [f"{options.activation_ranges}_activations"]
    return parts
