"""Which ops a delegate documents as supported, to check exported files against.

i.MX 8M Plus NPU: NXP ships the VeriSilicon TFLite VX delegate (nxp-imx/tflite-vx-delegate-imx is
its fork). The list below is the "yes" rows of VeriSilicon/tflite-vx-delegate `op_status.md`,
in TFLite builtin names. It is a documented list, not a run on the board.
"""

from __future__ import annotations

from collections.abc import Iterable

VX_DELEGATE_SOURCE = "VeriSilicon/tflite-vx-delegate op_status.md"
VX_DELEGATE_OPS = frozenset({
    "ABS", "ADD", "ADD_N", "ARG_MAX", "ARG_MIN", "AVERAGE_POOL_2D", "BATCH_MATMUL", "BATCH_TO_SPACE_ND",
    "BIDIRECTIONAL_SEQUENCE_LSTM", "BIDIRECTIONAL_SEQUENCE_RNN", "CONCATENATION", "CONV_2D", "CONV_3D", "COS",
    "DEPTH_TO_SPACE", "DEPTHWISE_CONV_2D", "DEQUANTIZE", "DIV", "ELU", "EMBEDDING_LOOKUP", "EQUAL", "EXP",
    "EXPAND_DIMS", "FLOOR", "FLOOR_DIV", "FULLY_CONNECTED", "GATHER", "GATHER_ND", "GREATER", "GREATER_EQUAL",
    "HARD_SWISH", "HASHTABLE_LOOKUP", "L2_NORMALIZATION", "LEAKY_RELU", "LESS", "LESS_EQUAL",
    "LOCAL_RESPONSE_NORMALIZATION", "LOG", "LOGICAL_AND", "LOGICAL_NOT", "LOGICAL_OR", "LOGISTIC", "MAXIMUM",
    "MAX_POOL_2D", "MEAN", "MINIMUM", "MUL", "NEG", "NOT_EQUAL", "ONE_HOT", "PACK", "PAD", "POW", "PRELU",
    "QUANTIZE", "REDUCE_ANY", "REDUCE_MAX", "REDUCE_MIN", "REDUCE_PROD", "RELU", "RELU6", "RELU_N1_TO_1",
    "RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "REVERSE_V2", "RNN", "RSQRT", "SELECT",
    "SELECT_V2", "SHAPE", "SIN", "SLICE", "SOFTMAX", "SPACE_TO_BATCH_ND", "SPACE_TO_DEPTH", "SPLIT", "SPLIT_V",
    "SQRT", "SQUARE", "SQUEEZE", "STRIDED_SLICE", "SUB", "SUM", "TANH", "TRANSPOSE", "TRANSPOSE_CONV",
    "UNIDIRECTIONAL_SEQUENCE_LSTM", "UNIDIRECTIONAL_SEQUENCE_RNN", "UNPACK",
})


# Export presets by device: the options each target needs, and why.
TARGETS: dict[str, dict[str, str]] = {
    # NXP i.MX 8M Plus NPU (VeriSilicon VIP8000, VX delegate): per-tensor asymmetric uint8 runs natively,
    # per-channel files run far slower or fall back to the GPU/CPU; raw uint8 pixels in, labels out.
    "imx8mp": {"precision": "int8", "granularity": "per-tensor", "input": "uint8", "output": "argmax"},
}


def unsupported_ops(op_types: Iterable[str], supported: frozenset[str] = VX_DELEGATE_OPS) -> list[str]:
    """Returns the op types not in the supported list (they would fall back to the CPU)."""
    return sorted(set(op_types) - supported)
