"""Activation ranges that minimise quantization error, refined from the quantizer's calibration.

ai-edge-quantizer calibrates each activation tensor's range as a moving average of per-image min/max.
A rare extreme value then stretches the range, and the other values get coarser steps. Here each
range is narrowed where that lowers the expected squared error of 8-bit rounding plus clipping,
measured on a histogram of the tensor's values over the calibration images (as TensorRT's and
PyTorch's histogram observers do). Ranges only shrink, and zero stays exactly representable.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

BINS = 2048
SHRINK = np.linspace(0.5, 1.0, 21)


def _histograms(float_path: Path, ranges: dict, images: list[np.ndarray], skip: set[str]) -> dict[str, np.ndarray]:
    """Returns {tensor name: histogram of its values over the images, on [min, max] of its range}."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(float_path), num_threads=2, experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    index = {d["name"]: d["index"] for d in interpreter.get_tensor_details()}
    names = [name for name in ranges if name in index and name not in skip]
    hists = {name: np.zeros(BINS) for name in names}
    bounds = {name: _bounds(ranges[name]) for name in names}
    for image in tqdm(images, desc="activation ranges", unit="img", file=sys.stderr, leave=False):
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image)
        interpreter.invoke()
        for name in names:
            low, high = bounds[name]
            values = interpreter.get_tensor(index[name]).ravel()
            # Values outside the range land in the end bins (they are clipped either way).
            bins = ((values - low) * (BINS / max(high - low, 1e-12))).astype(np.int64)
            hists[name] += np.bincount(np.clip(bins, 0, BINS - 1), minlength=BINS)
    return hists


def _bounds(qsv: dict) -> tuple[float, float]:
    return min(float(np.min(qsv["min"])), 0.0), max(float(np.max(qsv["max"])), 0.0)


def best_range(hist: np.ndarray, low: float, high: float, levels: int = 256) -> tuple[float, float]:
    """Returns the sub-range of [low, high] with the least expected squared error for this histogram."""
    centers = low + (np.arange(hist.size) + 0.5) * (high - low) / hist.size
    best, best_error = (low, high), np.inf
    for shrink_low in SHRINK if low < 0 else (1.0,):
        for shrink_high in SHRINK if high > 0 else (1.0,):
            lo, hi = low * shrink_low, high * shrink_high
            scale = max(hi - lo, 1e-12) / (levels - 1)
            zero_point = np.round(-lo / scale)
            dequantized = (np.clip(np.round(centers / scale) + zero_point, 0, levels - 1) - zero_point) * scale
            error = (hist * (dequantized - centers) ** 2).sum()
            if error < best_error:
                best, best_error = (lo, hi), error
    return best


def mse_ranges(float_path: Path, ranges: dict, images: list[np.ndarray], skip: set[str]) -> dict:
    """Returns `ranges` with every activation's [min, max] narrowed to its least-squares choice.

    `skip` names tensors to leave alone (the graph input, pinned to the pixel range; constants).
    """
    refined = dict(ranges)
    for name, hist in _histograms(float_path, ranges, images, skip).items():
        low, high = best_range(hist, *_bounds(ranges[name]))
        refined[name] = {"min": np.full_like(np.asarray(ranges[name]["min"], np.float32), low),
                         "max": np.full_like(np.asarray(ranges[name]["max"], np.float32), high)}
    return refined


def _weight_key(tensor) -> tuple:
    return tensor.shape, np.round(tensor.dequantized().astype(np.float64) * 2**20).astype(np.int64).tobytes()


def qat_ranges(float_path: Path, official_path: Path) -> dict[str, tuple[float, float]]:
    """Returns {tensor name: (min, max)} of the official QAT file, for the float file's tensors it can match.

    Quantization-aware training learned these ranges together with the weights. A conv is matched by its
    weights (the zoo imports them exactly), a residual ADD by its matched inputs; their output ranges are
    the official file's. Tensors left unmatched keep the calibrated ranges.
    """
    from edgeseg.tflite.reader import TFLiteFile

    ours, official = TFLiteFile(float_path), TFLiteFile(official_path)
    convs = ("CONV_2D", "DEPTHWISE_CONV_2D")
    by_weights = {_weight_key(official.tensors[op.inputs[1]]): op for op in official.ops if op.type in convs}
    matched: dict[int, int] = {}  # our tensor index -> official tensor index
    for op in ours.ops:
        twin = by_weights.get(_weight_key(ours.tensors[op.inputs[1]])) if op.type in convs else None
        if twin is not None:
            matched[op.outputs[0]] = twin.outputs[0]
    official_adds = {tuple(sorted(op.inputs)): op for op in official.ops if op.type == "ADD"}
    for op in ours.ops:
        if op.type == "ADD" and all(i in matched for i in op.inputs):
            twin = official_adds.get(tuple(sorted(matched[i] for i in op.inputs)))
            if twin is not None:
                matched[op.outputs[0]] = twin.outputs[0]
    ranges = {}
    for mine, theirs in matched.items():
        tensor = official.tensors[theirs]
        scale, zero_point = float(tensor.scale[0]), int(tensor.zero_point[0])
        ranges[ours.tensors[mine].name] = (-zero_point * scale, (255 - zero_point) * scale)
    return ranges
