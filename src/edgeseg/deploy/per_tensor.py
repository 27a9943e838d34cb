"""Per-tensor asymmetric uint8: the format of the official QAT files, and what NPUs such as the
i.MX 8M Plus (VeriSilicon VIP8000 through the VX delegate) run natively.

TFLite's int8 scheme forces weights to be symmetric (zero point 0). With one scale per tensor, that
cannot hold the official weights: they lie on asymmetric grids (zero points 50..202), and folded
depthwise kernels whose channels differ widely lose most of a symmetric range to one side. The
older uint8 scheme allows a weight zero point, so edgeseg quantizes the graph in int8 (activation
ranges from calibration), then rewrites it to uint8: activations shift by 128 (same scale), and each
conv weight is re-quantized with its own scale and zero point, chosen by `asymmetric_params`.
"""

from __future__ import annotations

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from edgeseg.tflite.reader import builtin_code, decoded_name

_OPS = schema.BuiltinOperator
_CONVS = (_OPS.CONV_2D, _OPS.DEPTHWISE_CONV_2D)


def grid_params(values: np.ndarray, levels: int = 256) -> tuple[float, int] | None:
    """Returns (scale, zero point) that re-quantize `values` exactly onto `levels` integers, or None.

    Weights dequantized from a uint8 QAT file are s * (q - z): their smallest gap is s (or a multiple
    of it), and every value is an integer multiple of it.
    """
    flat = np.unique(values.astype(np.float64))
    gaps = np.diff(flat)
    gaps = gaps[gaps > 1e-12]
    if gaps.size == 0:
        return None
    scale = gaps.min()
    # The smallest gap is measured between two float32 values: refit the scale to all of them.
    multiples = np.round(flat / scale)
    scale = float((flat * multiples).sum() / (multiples * multiples).sum())
    steps = flat / scale
    if np.abs(steps - np.round(steps)).max() > 1e-3:
        return None
    low, high = int(np.round(steps.min())), int(np.round(steps.max()))
    if high - low > levels - 1:
        return None
    # Any zero point that keeps low..high inside 0..255 is exact; centre the span in the range.
    zero_point = int(np.clip(-low + (levels - 1 - (high - low)) // 2, 0, levels - 1))
    if not (0 <= low + zero_point and high + zero_point <= levels - 1):
        return None
    return float(scale), zero_point


def _range_params(low: float, high: float, levels: int = 256) -> tuple[float, int]:
    """Returns the scale and zero point of [low, high] stretched to include 0 (0 must be exact)."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = max(high - low, 1e-12) / (levels - 1)
    return scale, int(np.clip(np.round(-low / scale), 0, levels - 1))


def mse_params(values: np.ndarray, levels: int = 256) -> tuple[float, int]:
    """Returns the (scale, zero point) among clipped min/max ranges with the least squared rounding error."""
    flat = values.astype(np.float64).ravel()
    low, high = flat.min(), flat.max()
    best, best_error = None, np.inf
    for shrink_low in np.linspace(0.5, 1.0, 21):
        for shrink_high in np.linspace(0.5, 1.0, 21):
            scale, zero_point = _range_params(low * shrink_low, high * shrink_high, levels)
            q = np.clip(np.round(flat / scale) + zero_point, 0, levels - 1)
            error = (((q - zero_point) * scale - flat) ** 2).sum()
            if error < best_error:
                best, best_error = (scale, zero_point), error
    return best


def minmax_params(values: np.ndarray) -> tuple[float, int]:
    return _range_params(float(values.min()), float(values.max()))


def quantize_uint8(values: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return np.clip(np.round(values.astype(np.float64) / scale) + zero_point, 0, 255).astype(np.uint8)


def _set_quantization(tensor: schema.TensorT, scale: float, zero_point: int) -> None:
    tensor.quantization = schema.QuantizationParametersT()
    tensor.quantization.scale, tensor.quantization.zeroPoint = [float(scale)], [int(zero_point)]


def to_uint8(model: schema.ModelT, float_weights: dict[str, np.ndarray], *,
             exact_grids: bool = True) -> tuple[int, list[str]]:
    """Rewrites an int8 model (per-tensor activations) to per-tensor asymmetric uint8, in place.

    `float_weights` maps each conv's weight and bias tensor name to its float values (from the float
    model the int8 one was quantized from). Weight ranges: each weight's exact grid where it has one,
    else the least-squares range (`exact_grids`), or plain min/max. Returns the number of convs and the
    output names of those whose weights had to be rounded (no exact grid).
    """
    graph = model.subgraphs[0]
    tensors, buffers = graph.tensors, model.buffers
    rewritten: set[int] = set()
    rounded: list[str] = []
    for op in graph.operators:
        if builtin_code(model.operatorCodes[op.opcodeIndex]) not in _CONVS:
            continue
        act, weight, bias = (tensors[i] for i in op.inputs[:3])
        w = float_weights[decoded_name(weight.name)]
        grid = grid_params(w) if exact_grids else None
        if grid is None:
            rounded.append(decoded_name(tensors[op.outputs[0]].name))
        scale, zero_point = grid or (mse_params(w) if exact_grids else minmax_params(w))
        weight.type = schema.TensorType.UINT8
        _set_quantization(weight, scale, zero_point)
        buffers[weight.buffer].data = quantize_uint8(w, scale, zero_point).ravel().view(np.uint8)
        bias_scale = float(act.quantization.scale[0]) * scale
        b = np.round(float_weights[decoded_name(bias.name)].astype(np.float64) / bias_scale).astype(np.int32)
        _set_quantization(bias, bias_scale, 0)
        buffers[bias.buffer].data = b.view(np.uint8)
        rewritten |= {op.inputs[1], op.inputs[2]}
    for index, tensor in enumerate(tensors):
        if index in rewritten or tensor.type != schema.TensorType.INT8:
            continue
        # Activations (and any int8 constant): q_uint8 = q_int8 + 128 with the same scale is the same real value.
        tensor.type = schema.TensorType.UINT8
        tensor.quantization.zeroPoint = [int(z) + 128 for z in tensor.quantization.zeroPoint]
        data = buffers[tensor.buffer].data if tensor.buffer < len(buffers) else None
        if data is not None and len(data):
            buffers[tensor.buffer].data = (np.asarray(data).view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    return len(rewritten) // 2, rounded

