"""Read a .tflite flatbuffer without running it: ops, tensors, quantization and constant data.

Uses the schema bindings that ship with ai-edge-litert, so no TensorFlow is needed. The in-place reads done on
every model load (`read_metadata`, `custom_codes`) need neither: they also run on a board image that has
tflite_runtime and no ai-edge-litert.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TypeVar

import numpy as np

try:
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils
except ImportError:  # a board image with tflite_runtime only: the in-place reads below still work
    schema = flatbuffer_utils = None

from edgeseg.errors import EdgesegError

T = TypeVar("T")
CLASSES_METADATA = "edgeseg_class_names"  # metadata entry where edgeseg exports keep their class names
# Present (b"1") in exports of models trained on enlarged frames: smaller frames are enlarged to fit the input.
UPSCALE_METADATA = "edgeseg_upscale"
# A packed input (models/stem.py): each 2x2 pixel block as channels (16, 12 used); the image size it holds is kept too.
INPUT_LAYOUT_METADATA = "edgeseg_input_layout"
SPACE_TO_DEPTH_LAYOUT = b"space_to_depth_2x2"
INPUT_SIZE_METADATA = "edgeseg_input_size"
VELA_CUSTOM_CODE = "ethos-u"  # the custom op Arm Vela compiles a graph's NPU part into
_OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")} if schema else {}
_TYPE_NAMES = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")} if schema else {}
_NUMPY_TYPES = {
    "FLOAT32": np.float32, "FLOAT16": np.float16, "INT32": np.int32, "UINT8": np.uint8,
    "INT64": np.int64, "INT16": np.int16, "INT8": np.int8, "BOOL": np.bool_,
}


@dataclass(frozen=True)
class TensorInfo:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str  # TFLite type name, e.g. "UINT8"
    scale: np.ndarray | None
    zero_point: np.ndarray | None
    quantized_dim: int
    data: np.ndarray | None  # constant tensors only

    def dequantized(self) -> np.ndarray:
        """Returns the constant data as float32, undoing per-tensor or per-channel quantization."""
        if self.data is None:
            raise EdgesegError(f"tensor {self.name!r} holds no constant data")
        values = self.data.astype(np.float32)
        if self.scale is None or self.scale.size == 0:
            return values
        shape = [1] * values.ndim
        if self.scale.size > 1:
            shape[self.quantized_dim] = -1
        scale = self.scale.reshape(shape).astype(np.float32)
        zero_point = self.zero_point.reshape(shape).astype(np.float32)
        return (values - zero_point) * scale


@dataclass(frozen=True)
class OpInfo:
    index: int
    type: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: dict


def builtin_code(code) -> int:
    """Returns an operator code's builtin op (newer files keep it in builtinCode, older in the deprecated field)."""
    return flatbuffer_utils.get_builtin_code_from_operator_code(code)


def decoded_name(name: bytes | str) -> str:
    """Returns a flatbuffer name (object API gives bytes) as str."""
    return name.decode() if isinstance(name, bytes) else name


def parse_model(data: bytes) -> schema.ModelT:
    """Returns the model object with every buffer inline as a uint8 array (large files keep them by offset)."""
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    for buffer in model.buffers:
        if buffer.data is not None:
            buffer.data = np.frombuffer(bytes(buffer.data), np.uint8).copy()
    return model


def _read(path: Path, parse: Callable[[bytes], T]) -> T:
    """Returns parse(the file's bytes), or raises one line: no such file, or not a valid .tflite file."""
    try:
        buf = path.read_bytes()
        if len(buf) < 8 or buf[4:8] != b"TFL3":
            raise ValueError("no TFL3 identifier")
        return parse(buf)
    except FileNotFoundError:
        raise EdgesegError(f"{path}: no such file") from None
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not a tflite model"
        raise EdgesegError(f"{path}: not a valid .tflite file ({exc})") from None


# Field numbers in LiteRT's schema.fbs, for the in-place reads (a flatbuffer walked with struct, no bindings).
_MODEL_OPERATOR_CODES, _MODEL_BUFFERS, _MODEL_METADATA = 1, 4, 6
_CODE_CUSTOM = 1  # OperatorCode.custom_code
_METADATA_NAME, _METADATA_BUFFER = 0, 1
_BUFFER_DATA, _BUFFER_OFFSET, _BUFFER_SIZE = 0, 1, 2


def _field(buf: bytes, table: int, field: int) -> int | None:
    """Returns where a table's field is stored, or None if the table leaves it out (its vtable says)."""
    vtable = table - struct.unpack_from("<i", buf, table)[0]
    slot = 4 + 2 * field
    if slot >= struct.unpack_from("<H", buf, vtable)[0]:
        return None
    offset = struct.unpack_from("<H", buf, vtable + slot)[0]
    return table + offset if offset else None


def _target(buf: bytes, pos: int) -> int:
    """Returns where the offset stored at `pos` points: a table, a vector or a string."""
    return pos + struct.unpack_from("<I", buf, pos)[0]


def _scalar(buf: bytes, table: int, field: int, fmt: str) -> int:
    pos = _field(buf, table, field)
    return struct.unpack_from(fmt, buf, pos)[0] if pos is not None else 0  # every field read here defaults to 0


def _bytes(buf: bytes, table: int, field: int) -> bytes | None:
    """Returns a string or [ubyte] field, or None if absent."""
    pos = _field(buf, table, field)
    if pos is None:
        return None
    start = _target(buf, pos)
    return bytes(buf[start + 4:start + 4 + struct.unpack_from("<I", buf, start)[0]])


def _tables(buf: bytes, table: int, field: int) -> list[int]:
    """Returns where each table of a vector-of-tables field is stored."""
    pos = _field(buf, table, field)
    if pos is None:
        return []
    start = _target(buf, pos)
    return [_target(buf, start + 4 + 4 * i) for i in range(struct.unpack_from("<I", buf, start)[0])]


def _metadata_entries(buf: bytes) -> dict[str, bytes]:
    model = _target(buf, 0)
    buffers = _tables(buf, model, _MODEL_BUFFERS)
    entries = {}
    for entry in _tables(buf, model, _MODEL_METADATA):
        name = (_bytes(buf, entry, _METADATA_NAME) or b"").decode()
        buffer = buffers[_scalar(buf, entry, _METADATA_BUFFER, "<I")]
        offset = _scalar(buf, buffer, _BUFFER_OFFSET, "<Q")
        if offset > 1:  # large files keep data after the flatbuffer
            entries[name] = buf[offset:offset + _scalar(buf, buffer, _BUFFER_SIZE, "<Q")]
        else:
            entries[name] = _bytes(buf, buffer, _BUFFER_DATA) or b""
    return entries


def _custom_codes(buf: bytes) -> set[str]:
    codes = (_bytes(buf, code, _CODE_CUSTOM) for code in _tables(buf, _target(buf, 0), _MODEL_OPERATOR_CODES))
    return {code.decode(errors="replace") for code in codes if code}


def read_metadata(path: str | Path) -> dict[str, bytes]:
    """Returns the file's metadata entries by name, read in place (no full parse: cheap for every load)."""
    return _read(Path(path), _metadata_entries)


def custom_codes(path: str | Path) -> set[str]:
    """Returns the custom codes of the file's custom ops, read in place: "ethos-u" in a file compiled by Vela."""
    return _read(Path(path), _custom_codes)


class TFLiteFile:
    """A parsed .tflite file (main subgraph only)."""

    def __init__(self, path: str | Path) -> None:
        if schema is None:
            raise EdgesegError("reading a .tflite's graph needs ai-edge-litert: pip install ai-edge-litert")
        self.path = Path(path)
        self._model = _read(self.path, parse_model)
        self._graph = self._model.subgraphs[0]

    @cached_property
    def tensors(self) -> list[TensorInfo]:
        return [self._tensor(i, t) for i, t in enumerate(self._graph.tensors)]

    def _tensor(self, index: int, t) -> TensorInfo:
        dtype = _TYPE_NAMES.get(t.type, str(t.type))
        q = t.quantization
        scale = np.asarray(q.scale) if q is not None and q.scale is not None else None
        zero_point = np.asarray(q.zeroPoint) if q is not None and q.zeroPoint is not None else None
        data = None
        raw = self._buffer_bytes(t.buffer)
        if raw:
            shape = tuple(int(s) for s in t.shape) if t.shape is not None else ()
            data = np.frombuffer(raw, dtype=_NUMPY_TYPES[dtype]).reshape(shape)
        return TensorInfo(
            index=index,
            name=t.name.decode() if isinstance(t.name, bytes) else str(t.name),
            shape=tuple(int(s) for s in t.shape) if t.shape is not None else (),
            dtype=dtype,
            scale=scale,
            zero_point=zero_point,
            quantized_dim=q.quantizedDimension if q is not None else 0,
            data=data,
        )

    def _buffer_bytes(self, index: int) -> bytes | None:
        if index >= len(self._model.buffers):
            return None
        data = self._model.buffers[index].data
        return data.tobytes() if data is not None and len(data) > 0 else None

    @cached_property
    def ops(self) -> list[OpInfo]:
        ops = []
        for i, op in enumerate(self._graph.operators):
            code = self._model.operatorCodes[op.opcodeIndex]
            name = _OP_NAMES.get(builtin_code(code), "CUSTOM")
            if name == "CUSTOM" and code.customCode:
                name = f"CUSTOM:{code.customCode.decode()}"
            options = dict(vars(op.builtinOptions)) if op.builtinOptions is not None else {}
            ops.append(OpInfo(i, name, tuple(op.inputs), tuple(op.outputs), options))
        return ops

    @property
    def inputs(self) -> list[TensorInfo]:
        return [self.tensors[i] for i in self._graph.inputs]

    @property
    def outputs(self) -> list[TensorInfo]:
        return [self.tensors[i] for i in self._graph.outputs]

    def metadata(self, name: str) -> bytes | None:
        """Returns the bytes of the named metadata entry, or None."""
        for entry in self._model.metadata or []:
            if entry.name is not None and entry.name.decode() == name:
                return self._buffer_bytes(entry.buffer)
        return None

    def op_counts(self) -> Counter:
        return Counter(op.type for op in self.ops)

    def float_compute_ops(self) -> list[str]:
        """Returns the ops that compute in float: any op touching a FLOAT32 tensor, except the
        QUANTIZE / DEQUANTIZE that convert at the graph's edges."""
        edges = set(self._graph.inputs) | set(self._graph.outputs)
        found = []
        for op in self.ops:
            tensors = [i for i in (*op.inputs, *op.outputs) if i >= 0]
            if not any(self.tensors[i].dtype == "FLOAT32" for i in tensors):
                continue
            at_edge = op.type in ("QUANTIZE", "DEQUANTIZE") and any(i in edges for i in tensors)
            if not at_edge:
                found.append(f"{op.type}#{op.index}")
        return found
