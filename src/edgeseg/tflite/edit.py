"""Small, explicit rewrites of .tflite flatbuffers (object API from ai-edge-litert's schema).

Used after quantization for what the converters cannot express: a uint8 or float32 graph input in
front of an int8 model, ARG_MAX fed int8 directly, and edgeseg metadata (class names).
"""

from __future__ import annotations

import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.tools import flatbuffer_utils

from edgeseg.tflite.reader import builtin_code, decoded_name, parse_model

_OPS = schema.BuiltinOperator


def read_model(data: bytes) -> schema.ModelT:
    """Returns the model object, every buffer held inline (quantizer output appends them by offset)."""
    return parse_model(data)


def serialize(model: schema.ModelT) -> bytes:
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _opcode(model: schema.ModelT, op: schema.OperatorT) -> int:
    return builtin_code(model.operatorCodes[op.opcodeIndex])


def _opcode_index(model: schema.ModelT, builtin: int, version: int = 1) -> int:
    for i, code in enumerate(model.operatorCodes):
        if builtin_code(code) == builtin:
            return i
    code = schema.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), version
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _renumber(model: schema.ModelT, graph: schema.SubGraphT, mapping) -> None:
    for op in graph.operators:
        op.inputs = [mapping(i) if i >= 0 else i for i in op.inputs]
        op.outputs = [mapping(i) for i in op.outputs]
    graph.inputs = [mapping(i) for i in graph.inputs]
    graph.outputs = [mapping(i) for i in graph.outputs]
    for signature in model.signatureDefs or []:
        for tensor in (*(signature.inputs or []), *(signature.outputs or [])):
            tensor.tensorIndex = mapping(tensor.tensorIndex)


def feed_argmax_integers(model: schema.ModelT) -> int:
    """Removes DEQUANTIZE ops whose only users are ARG_MAX (argmax is the same on int8); returns how many."""
    graph = model.subgraphs[0]
    removed = 0
    for deq in [op for op in graph.operators if _opcode(model, op) == _OPS.DEQUANTIZE]:
        out = deq.outputs[0]
        users = [op for op in graph.operators if out in list(op.inputs)]
        if not users or out in list(graph.outputs) or any(_opcode(model, op) != _OPS.ARG_MAX for op in users):
            continue
        for op in users:
            op.inputs = [deq.inputs[0] if i == out else i for i in op.inputs]
        graph.operators.remove(deq)
        del graph.tensors[out]
        _renumber(model, graph, lambda i, out=out: i - 1 if i > out else i)
        removed += 1
    return removed


def retype_input(model: schema.ModelT, dtype: str) -> None:
    """Puts a `dtype` ('uint8' or 'float32') graph input and a QUANTIZE op in front of the int8 input.

    uint8 keeps the int8 input's scale with zero point + 128 (the QUANTIZE is an integer shift), as
    TF's inference_input_type=uint8 does; float32 leaves quantization to the model's first op.
    """
    graph = model.subgraphs[0]
    old = graph.inputs[0]
    int8_input = graph.tensors[old]
    new_input = schema.TensorT()
    new_input.shape, new_input.name = list(int8_input.shape), int8_input.name
    int8_input.name = decoded_name(int8_input.name) + "_int8"
    if dtype == "uint8":
        new_input.type = schema.TensorType.UINT8
        new_input.quantization = schema.QuantizationParametersT()
        new_input.quantization.scale = list(int8_input.quantization.scale)
        new_input.quantization.zeroPoint = [int(int8_input.quantization.zeroPoint[0]) + 128]
    elif dtype == "float32":
        new_input.type = schema.TensorType.FLOAT32
    else:
        raise ValueError(f"unsupported input type {dtype}")
    model.buffers.append(schema.BufferT())
    new_input.buffer = len(model.buffers) - 1
    graph.tensors.append(new_input)
    new = len(graph.tensors) - 1
    quantize = schema.OperatorT()
    quantize.opcodeIndex, quantize.inputs, quantize.outputs = _opcode_index(model, _OPS.QUANTIZE, 2), [new], [old]
    graph.operators.insert(0, quantize)
    graph.inputs = [new]
    for signature in model.signatureDefs or []:
        for tensor in signature.inputs or []:
            if tensor.tensorIndex == old:
                tensor.tensorIndex = new


def add_metadata(model: schema.ModelT, name: str, data: bytes) -> None:
    """Adds (or replaces) a named metadata entry; LiteRT ignores names it does not know."""
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(data, np.uint8).copy()
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = name, len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if decoded_name(m.name) != name]
    model.metadata.append(entry)

