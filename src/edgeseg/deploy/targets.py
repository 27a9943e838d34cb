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


# Export presets by device: the options each target fixes, and why. The graph's tail (`output`) and its stem
# are not fixed: TARGET_DEFAULTS gives each target's choice, and any other can be asked for explicitly.
TARGETS: dict[str, dict[str, str]] = {
    # NXP i.MX 8M Plus NPU (VeriSilicon VIP8000, VX delegate): per-tensor asymmetric uint8 runs natively,
    # per-channel files run far slower or fall back to the GPU/CPU; raw uint8 pixels in.
    "imx8mp": {"precision": "int8", "granularity": "per-tensor", "input": "uint8"},
    # NXP i.MX 93 NPU (Arm Ethos-U65, compiled by Vela): per-channel and per-tensor cost the same there
    # (Vela: 15.2 ms each for dm 0.5 logits), per-tensor uint8 keeps the QAT accuracy (64.91 against 64.00
    # per-channel on VOC val), and a 3-channel first conv wastes the NPU's 16-channel bricks: the host packs
    # 2x2 pixel blocks into 16 channels instead (see TARGET_DEFAULTS).
    "imx93": {"precision": "int8", "granularity": "per-tensor", "input": "uint8"},
}
# Tail: a 513x513 ARG_MAX is lowered by Vela into 65,793 MaxPool ops (88% of the official file's 132.5 ms on
# the i.MX 93), and the x16 align-corners resize is not an NPU op there at all; ending at the 33x33 logits
# leaves the host an exact upsample-and-argmax of only the boundary cells. Stem: the Ethos-U65 reads 16
# channels at a time, so a 3-channel first conv wastes most of it; the host packs 2x2 pixel blocks into
# 16 channels instead (models/stem.py): Vela's dm 0.5 logits file 15.2 ms -> 11.4 ms. The VX delegate's
# costs are not measured here: imx8mp keeps its stem.
TARGET_DEFAULTS: dict[str, dict[str, str]] = {
    "imx8mp": {"output": "logits"},
    "imx93": {"output": "logits", "stem": "space-to-depth"},
}
# Targets whose file is compiled for the NPU after export (`<name>_vela.tflite` beside the plain file).
VELA_TARGETS = frozenset({"imx93"})


def unsupported_ops(op_types: Iterable[str], supported: frozenset[str] = VX_DELEGATE_OPS) -> list[str]:
    """Returns the op types not in the supported list (they would fall back to the CPU)."""
    return sorted(set(op_types) - supported)
