"""LiteRT runtime for any segmentation .tflite: uint8, int8 or float32 input; argmax or logits output.

Everything is read from the model's own input and output details, so the same code runs the official
files and edgeseg's exports. Needs only numpy, Pillow and ai-edge-litert (or, on a board image, tflite_runtime).
"""

from __future__ import annotations

import ctypes
import importlib
import threading
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.checks import check_threads, parse_size
from edgeseg.data.voc import MAX_CLASSES
from edgeseg.errors import EdgesegError
from edgeseg.logs import native_stderr
from edgeseg.pipeline import (
    DEEPLAB,
    PACKED_CHANNELS,
    labels_from_logits,
    normalize_and_pad,
    pack_space_to_depth,
    packed_size,
    probabilities_from_logits,
)
from edgeseg.tflite.reader import (
    INPUT_LAYOUT_METADATA,
    INPUT_SIZE_METADATA,
    SPACE_TO_DEPTH_LAYOUT,
    UPSCALE_METADATA,
    VELA_CUSTOM_CODE,
    custom_codes,
    read_metadata,
)
from edgeseg.zoo.registry import Preprocess

# LiteRT's own wheel first, else tflite_runtime: NXP's board images ship that one (built with their NPU
# delegates) and not ai-edge-litert. Every on-device path gets its interpreter from here.
INTERPRETER_MODULES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")
ETHOSU_DELEGATE = "/usr/lib/libethosu_delegate.so"  # NXP's Ethos-U delegate on the i.MX 93


def import_interpreter() -> tuple[str | None, Any, Any]:
    """Returns (module name, Interpreter, load_delegate) from the first of INTERPRETER_MODULES that imports, else
    (None, None, None): opening a runtime then says what to install, while `import edgeseg` still works."""
    for name in INTERPRETER_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        return name, module.Interpreter, module.load_delegate
    return None, None, None


INTERPRETER_MODULE, Interpreter, load_delegate = import_interpreter()


def _litert_info(line: str) -> bool:
    """LiteRT's info lines ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU." on every load); its
    warnings and errors are kept."""
    return line.startswith("INFO: ")


def _quantize_values(values: np.ndarray, scale: float, zero_point: int, dtype: np.dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    scaled = values / scale
    rounded = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)  # half away from zero, as TFLite rounds
    return np.clip(rounded + zero_point, info.min, info.max).astype(dtype)


def is_pixel_input(scale: float, zero_point: int, dtype: np.dtype) -> bool:
    """True for inputs quantized as (q - zero_point) / 128: uint8 with zero point 128, int8 with 0."""
    return abs(scale - 1 / 128) < 1e-7 and zero_point == (128 if dtype == np.uint8 else 0)


class LiteRTRuntime:
    """Runs a segmentation .tflite with LiteRT (XNNPACK on CPU, or an external delegate)."""

    def __init__(
        self, path: str | Path, *, num_threads: int | None = None, delegate: str | Path | None = None,
        preprocess: Preprocess = DEEPLAB,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise EdgesegError(f"{self.path}: {'a folder, not a file' if self.path.is_dir() else 'no such file'}")
        num_threads = check_threads(num_threads, "--threads")
        if Interpreter is None:
            raise EdgesegError("running a .tflite needs LiteRT: pip install ai-edge-litert, or on the board use the "
                               "image's tflite_runtime (neither ai_edge_litert nor tflite_runtime can be imported)")
        self.interpreter_module = INTERPRETER_MODULE  # which of INTERPRETER_MODULES runs it
        # Checked before LiteRT sees the file: without the Ethos-U delegate it fails on the custom op, unexplained.
        if not delegate and VELA_CUSTOM_CODE in custom_codes(self.path):
            raise EdgesegError(f"{self.path} was compiled by Vela for the Ethos-U NPU ({VELA_CUSTOM_CODE} custom op): "
                               f"run it on the i.MX 93 with --delegate {ETHOSU_DELEGATE}, or run the plain .tflite "
                               "exported beside it")
        delegates = [self._load_delegate(delegate)] if delegate else None
        try:
            with native_stderr(drop=_litert_info):
                self.interpreter = Interpreter(
                    model_path=str(self.path), num_threads=num_threads, experimental_delegates=delegates
                )
                self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise EdgesegError(f"{self.path}: LiteRT cannot load it ({str(exc).splitlines()[0]})") from None
        self.name = f"litert:{self.path.name}"
        self.lock = threading.RLock()  # see set_input
        metadata = read_metadata(self.path)
        # A space-to-depth file (models/stem.py) takes 2x2 pixel blocks packed into 16 channels.
        self.packed = metadata.get(INPUT_LAYOUT_METADATA) == SPACE_TO_DEPTH_LAYOUT
        self._input, self._output = self._check_signature()
        self.input_size = self._image_size(metadata)
        self.outputs_logits = len(self._output["shape"]) == 4
        self.num_classes = int(self._output["shape"][-1]) if self.outputs_logits else 0
        if self.num_classes > MAX_CLASSES:
            raise EdgesegError(f"{self.path}: {self.num_classes} classes; edgeseg handles at most {MAX_CLASSES} "
                               "(labels are stored in 8 bits, 255 means ignore)")
        self._dtype = np.dtype(self._input["dtype"])
        scale, zero_point = self._input["quantization"]
        if self._dtype in (np.uint8, np.int8):
            if scale == 0:
                raise EdgesegError(f"{self.path}: integer input without quantization parameters")
            # One lookup table maps raw pixels straight to the model's quantized input.
            pixels = np.arange(256, dtype=np.int64)
            if is_pixel_input(scale, zero_point, self._dtype):
                # The deployed DeepLab convention: the app feeds raw pixels, q = p - 128 + zero_point,
                # meaning (p - 128) / 128, which approximates p*2/255-1 to within 1/255.
                self._lut = (pixels - 128 + zero_point).astype(self._dtype)
            else:
                scaled = pixels * preprocess.scale + preprocess.offset
                self._lut = _quantize_values(scaled, scale, zero_point, self._dtype)
            self._pad = _quantize_values(np.float64(preprocess.pad_value), scale, zero_point, self._dtype)
        elif self._dtype != np.float32:
            raise EdgesegError(f"{self.path}: unsupported input type {self._dtype}")
        self._preprocess = preprocess
        # A model trained on enlarged frames says so in its metadata (edgeseg exports).
        self.upscale = preprocess.upscale or metadata.get(UPSCALE_METADATA) == b"1"

    def _image_size(self, metadata: dict[str, bytes]) -> tuple[int, int]:
        """The image size the input holds: its own shape, or for a packed input the size kept in metadata."""
        shape = self._input["shape"]
        if not self.packed:
            return int(shape[1]), int(shape[2])
        try:
            size = parse_size(metadata[INPUT_SIZE_METADATA].decode())
        except (KeyError, UnicodeDecodeError, EdgesegError):
            size = None
        if size is None or packed_size(size) != (int(shape[1]), int(shape[2])):
            raise EdgesegError(f"{self.path}: a space-to-depth input {list(shape)} without a matching image size "
                               f"in its metadata ({INPUT_SIZE_METADATA})")
        return size

    @staticmethod
    def _load_delegate(path: str | Path):
        if not Path(path).is_file():
            raise EdgesegError(f"delegate library {path} not found (on i.MX 8M Plus: /usr/lib/libvx_delegate.so, "
                               f"on i.MX 93: {ETHOSU_DELEGATE})")
        # Check the library first: LiteRT's Delegate object prints a traceback from __del__ when loading fails.
        try:
            library = ctypes.CDLL(str(path))
        except OSError as exc:
            raise EdgesegError(f"cannot load delegate {path}: not a shared library ({exc})") from None
        if not hasattr(library, "tflite_plugin_create_delegate"):
            raise EdgesegError(f"{path} is not a TFLite delegate (no tflite_plugin_create_delegate symbol)")
        try:
            return load_delegate(str(path))
        except (ValueError, OSError, RuntimeError) as exc:
            raise EdgesegError(f"cannot load delegate {path} ({exc})") from None

    def _check_signature(self) -> tuple[dict, dict]:
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        problem = None
        if len(inputs) != 1 or len(outputs) != 1:
            problem = f"{len(inputs)} inputs and {len(outputs)} outputs, expected 1 and 1"
        else:
            shape, out_shape = [int(v) for v in inputs[0]["shape"]], [int(v) for v in outputs[0]["shape"]]
            channels = PACKED_CHANNELS if self.packed else 3
            if len(shape) != 4 or shape[0] != 1 or shape[3] != channels:
                problem = f"input shape {shape}, expected [1, H, W, {channels}]"
            elif not (
                (len(out_shape) == 3 and (self.packed or out_shape[1:] == shape[1:3]))
                or (len(out_shape) == 4 and out_shape[3] >= 2)
            ):
                problem = f"output shape {out_shape}, expected [1, H, W] labels or [1, h, w, classes] logits"
            elif len(out_shape) == 3 and not np.issubdtype(np.dtype(outputs[0]["dtype"]), np.integer):
                # a depth or saliency map has this shape too: only integer maps are labels
                problem = f"a {np.dtype(outputs[0]['dtype'])} [1, H, W] output is not a label map"
        if problem:
            raise EdgesegError(f"{self.path}: not a segmentation model ({problem})")
        return inputs[0], outputs[0]

    def input_batch(self, pixels: np.ndarray) -> np.ndarray:
        """Returns the model's input tensor (1, ...) for uint8 RGB pixels (H, W, 3): scaled, padded, packed."""
        height, width = pixels.shape[:2]
        if self.packed:  # the pad value is the scaled mean pixel, 0.0, as the stem conv's own padding
            image = pixels * np.float32(self._preprocess.scale) + np.float32(self._preprocess.offset) \
                if self._dtype == np.float32 else self._lut[pixels]
            pad = np.float32(self._preprocess.pad_value) if self._dtype == np.float32 else self._pad
            batch = pack_space_to_depth(image, self.input_size, pad)
        elif self._dtype == np.float32:
            batch = normalize_and_pad(pixels, self.input_size, self._preprocess)
        else:
            batch = np.full((*self.input_size, 3), self._pad, dtype=self._dtype)
            batch[:height, :width] = self._lut[pixels]
        return batch[None]

    # One interpreter holds one input and one output: calls from several threads take `lock` from writing the
    # input to copying the output, or one thread's invoke runs on another's input. The steps below are for a
    # single caller that times them (the video pipeline holds `lock` around all three); `predict` is the
    # thread-safe call, and prepares the input and runs the host tail outside the lock, so threads overlap.
    def set_input(self, pixels: np.ndarray) -> None:
        """Writes uint8 RGB pixels (H, W, 3), scaled and padded, into the model's input tensor."""
        batch = self.input_batch(pixels)
        with self.lock:
            self.interpreter.set_tensor(self._input["index"], batch)

    def invoke(self) -> None:
        with self.lock:
            self.interpreter.invoke()

    def get_labels(self, height: int, width: int) -> np.ndarray:
        """Returns int labels for the top-left (height, width) region of the last invoke's output."""
        with self.lock:
            out = self.interpreter.get_tensor(self._output["index"])[0]  # a copy
        return self.labels_from_output(out, height, width)

    def labels_from_output(self, out: np.ndarray, height: int, width: int) -> np.ndarray:
        """The host tail: crop labels, or upsample and argmax logits, to the top-left (height, width)."""
        if not self.outputs_logits:
            return out[:height, :width]
        # Dequantizing is affine with a positive scale, so it cannot change the argmax: skip it.
        return labels_from_logits(out.astype(np.float32), self.input_size, height, width)

    def predict_scores(self, pixels: np.ndarray) -> np.ndarray:
        """Returns float32 class probabilities (H, W, C) for pixels that fit inside input_size: the dequantized
        logits, upsampled, softmaxed. Files that end in ARG_MAX hold no scores. Thread-safe."""
        if not self.outputs_logits:
            raise EdgesegError(f"{self.path} outputs labels, not class scores: export it with --output-kind logits "
                               "(or use backend='torch')")
        out = self._run(self.input_batch(pixels))
        scale, zero_point = self._output["quantization"]
        logits = (out.astype(np.float32) - zero_point) * scale if scale else out.astype(np.float32)
        return probabilities_from_logits(logits, self.input_size, *pixels.shape[:2])

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Returns int labels (H, W) for uint8 RGB pixels (H, W, 3) that fit inside input_size. Thread-safe."""
        return self.labels_from_output(self._run(self.input_batch(pixels)), *pixels.shape[:2])

    def _run(self, batch: np.ndarray) -> np.ndarray:
        """Input, invoke and a copy of the output under the lock: the one critical section of the thread-safe calls."""
        with self.lock:
            self.interpreter.set_tensor(self._input["index"], batch)
            self.interpreter.invoke()
            return self.interpreter.get_tensor(self._output["index"])[0]
