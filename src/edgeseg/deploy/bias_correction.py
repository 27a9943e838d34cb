"""Empirical bias correction (Nagel et al., ICCV 2019, "Data-Free Quantization", section 4.2).

Rounding weights and activations to 8 bits shifts the mean of each conv output channel. The shift
passes unchanged through the following layers and adds up over a deep network, most of all with
per-tensor weights, whose coarse steps hit small channels hardest. Here the quantized file and the
float file run on the same calibration images; each conv channel's mean output error is measured and
subtracted from its int32 bias, one conv after another in graph order.

Only the pre-activation error can be moved into the bias, and fused ReLU/ReLU6 outputs show it only
where the float output lies strictly inside the activation's linear range (and inside the quantized
output range): the mean is taken over those positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ai_edge_litert import schema_py_generated as schema
from tqdm import tqdm

from edgeseg.logs import progress_stream
from edgeseg.tflite.reader import builtin_code, decoded_name

_OPS = schema.BuiltinOperator
_CONVS = (_OPS.CONV_2D, _OPS.DEPTHWISE_CONV_2D)
# Upper end of each fused activation's linear range (lower end 0); NONE: no limit.
_LINEAR_UPPER = {schema.ActivationFunctionType.RELU: np.inf, schema.ActivationFunctionType.RELU6: 6.0}
MIN_POSITIONS = 16  # channels seen at fewer linear positions keep their bias
IMAGES = 8  # calibration images measured: each conv's correction reruns the model on all of them


@dataclass
class _Conv:
    output: str  # tensor name, shared by the float and quantized files
    bias: schema.TensorT
    buffer: schema.BufferT
    activation: int


def _convs(model: schema.ModelT) -> list[_Conv]:
    graph = model.subgraphs[0]
    convs = []
    for op in graph.operators:
        if builtin_code(model.operatorCodes[op.opcodeIndex]) not in _CONVS or len(op.inputs) < 3:
            continue
        bias = graph.tensors[op.inputs[2]]
        activation = getattr(op.builtinOptions, "fusedActivationFunction", schema.ActivationFunctionType.NONE)
        convs.append(_Conv(decoded_name(graph.tensors[op.outputs[0]].name), bias, model.buffers[bias.buffer],
                           activation))
    return convs


def _interpreter(content: bytes | Path):
    from ai_edge_litert.interpreter import Interpreter

    kwargs = {"model_path": str(content)} if isinstance(content, Path) else {"model_content": content}
    interpreter = Interpreter(**kwargs, num_threads=2, experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    return interpreter


def _tensor_details(interpreter) -> dict[str, dict]:
    return {d["name"]: d for d in interpreter.get_tensor_details()}


def _run(interpreter, image: np.ndarray) -> None:
    """Runs on a float image (x*2/255-1), quantized first if the file takes integers."""
    from edgeseg.runtimes.litert import _quantize_values

    detail = interpreter.get_input_details()[0]
    if np.issubdtype(detail["dtype"], np.integer):
        image = _quantize_values(image, *detail["quantization"], detail["dtype"])
    interpreter.set_tensor(detail["index"], image)
    interpreter.invoke()


def _float_outputs(float_path: Path, convs: list[_Conv], images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    interpreter = _interpreter(float_path)
    details = _tensor_details(interpreter)
    outputs = []
    for image in tqdm(images, desc="bias correction: float model", unit="img", file=progress_stream(),
                      leave=False):
        _run(interpreter, image)
        outputs.append({c.output: interpreter.get_tensor(details[c.output]["index"]).copy()
                        for c in convs if c.output in details})
    return outputs


def _mean_error(quantized: bytes, conv: _Conv, images: list[np.ndarray],
                float_outputs: list[dict[str, np.ndarray]]) -> np.ndarray | None:
    """Returns the per-channel mean (quantized - float) of one conv output at its linear positions."""
    interpreter = _interpreter(quantized)
    detail = _tensor_details(interpreter).get(conv.output)
    if detail is None or any(conv.output not in floats for floats in float_outputs):
        return None
    scale, zero_point = detail["quantization"]
    q_low, q_high = (np.array([0.0, 255.0]) - zero_point) * scale
    lower = max(0.0 if conv.activation in _LINEAR_UPPER else -np.inf, q_low)
    upper = min(_LINEAR_UPPER.get(conv.activation, np.inf), q_high)
    total, count = 0.0, 0
    for image, floats in zip(images, float_outputs):
        _run(interpreter, image)
        f = floats[conv.output]
        dequantized = (interpreter.get_tensor(detail["index"]).astype(np.float32) - zero_point) * scale
        linear = ((f > lower) & (f < upper)).reshape(-1, f.shape[-1])
        total = total + np.where(linear, (dequantized - f).reshape(linear.shape), 0.0).sum(0, dtype=np.float64)
        count = count + linear.sum(0)
    return np.where(count >= MIN_POSITIONS, total / np.maximum(count, 1), 0.0)


def correct_biases(model: schema.ModelT, float_path: Path, images: list[np.ndarray], count: int = IMAGES,
                   only: set[str] | None = None) -> None:
    """Corrects the int32 conv biases of a per-tensor quantized `model` in place, against the float file.

    Convs are corrected one at a time in graph order, each measured with the ones before it corrected
    (as AIMET's empirical bias correction does): correcting all at once would also "correct" errors that
    only came from upstream, and over-correct. `only` names the conv outputs to correct (default: all).
    """
    from edgeseg.tflite.edit import serialize

    convs, images = [c for c in _convs(model) if only is None or c.output in only], images[:count]
    float_outputs = _float_outputs(float_path, convs, images)
    for conv in tqdm(convs, desc="bias correction", unit="conv", file=progress_stream(), leave=False):
        error = _mean_error(serialize(model), conv, images, float_outputs)
        if error is None:
            continue
        bias_scale = float(conv.bias.quantization.scale[0])
        bias = np.frombuffer(bytes(np.asarray(conv.buffer.data, np.uint8)), np.int32).astype(np.int64)
        corrected = np.clip(bias - np.round(error / bias_scale).astype(np.int64),
                            np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)
        conv.buffer.data = corrected.view(np.uint8)


def _labels(interpreter, image: np.ndarray) -> np.ndarray:
    _run(interpreter, image)
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    return out if np.issubdtype(out.dtype, np.integer) and out.ndim == 3 else out.argmax(-1)


def agreement(float_path: Path, quantized: bytes, images: list[np.ndarray]) -> float:
    """Returns the share of image pixels whose label (the argmax output, or the argmax of the logits) the
    quantized file and the float file agree on, over `images`.

    Padding is left out: its labels mean nothing, and it is a third of a 480x360 frame padded to 513.
    Padded pixels are exactly 0 in all channels (the mean pixel), which no real pixel is: x*2/255-1 = 0
    would need x = 127.5.
    """
    float_interp, quant_interp = _interpreter(float_path), _interpreter(quantized)
    same = total = 0
    for image in images:
        a, b = _labels(float_interp, image), _labels(quant_interp, image)
        real = np.any(image != 0, axis=-1)
        if real.shape != a.shape:  # logits: one cell per 16 pixels; count them all
            real = np.ones(a.shape, bool)
        same, total = same + int((a == b)[real].sum()), total + int(real.sum())
    return same / max(total, 1)
