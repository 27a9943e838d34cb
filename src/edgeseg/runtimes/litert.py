"""LiteRT runtime for any segmentation .tflite: uint8, int8 or float32 input; argmax or logits output.

Everything is read from the model's own input and output details, so the same code runs the official
files and edgeseg's exports. Needs only numpy, Pillow and ai-edge-litert.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter, load_delegate

from edgeseg.errors import EdgesegError
from edgeseg.pipeline import DEEPLAB, labels_from_logits, normalize_and_pad
from edgeseg.registry import Preprocess
from edgeseg.tflite_file import UPSCALE_METADATA, read_metadata

MAX_THREADS = 256  # far above any edge CPU; LiteRT crashes on absurd counts (100000 segfaults)


@contextlib.contextmanager
def quiet_native_stderr():
    """Sends what native code writes to file descriptor 2 to /dev/null for the duration."""
    try:
        saved = os.dup(2)
    except OSError:  # no usable stderr: nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


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
        if num_threads is not None and not 1 <= num_threads <= MAX_THREADS:
            raise EdgesegError(f"--threads must be 1..{MAX_THREADS}, got {num_threads}")
        delegates = [self._load_delegate(delegate)] if delegate else None
        try:
            with quiet_native_stderr():  # XNNPACK's "INFO: Created ... delegate" line on every run
                self.interpreter = Interpreter(
                    model_path=str(self.path), num_threads=num_threads, experimental_delegates=delegates
                )
                self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise EdgesegError(f"{self.path}: LiteRT cannot load it ({str(exc).splitlines()[0]})") from None
        self.name = f"litert:{self.path.name}"
        self._input, self._output = self._check_signature()
        self.input_size = (int(self._input["shape"][1]), int(self._input["shape"][2]))
        self.outputs_logits = len(self._output["shape"]) == 4
        self.num_classes = int(self._output["shape"][-1]) if self.outputs_logits else 0
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
        self.upscale = preprocess.upscale or read_metadata(self.path).get(UPSCALE_METADATA) == b"1"

    @staticmethod
    def _load_delegate(path: str | Path):
        if not Path(path).is_file():
            raise EdgesegError(f"delegate library {path} not found (on i.MX 8M Plus: /usr/lib/libvx_delegate.so)")
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
            shape, out_shape = list(inputs[0]["shape"]), list(outputs[0]["shape"])
            if len(shape) != 4 or shape[0] != 1 or shape[3] != 3:
                problem = f"input shape {shape}, expected [1, H, W, 3]"
            elif not (
                (len(out_shape) == 3 and out_shape[1:] == shape[1:3])
                or (len(out_shape) == 4 and out_shape[3] >= 2)
            ):
                problem = f"output shape {out_shape}, expected [1, H, W] labels or [1, h, w, classes] logits"
        if problem:
            raise EdgesegError(f"{self.path}: not a segmentation model ({problem})")
        return inputs[0], outputs[0]

    def set_input(self, pixels: np.ndarray) -> None:
        """Writes uint8 RGB pixels (H, W, 3), scaled and padded, into the model's input tensor."""
        height, width = pixels.shape[:2]
        if self._dtype == np.float32:
            batch = normalize_and_pad(pixels, self.input_size, self._preprocess)
        else:
            batch = np.full((*self.input_size, 3), self._pad, dtype=self._dtype)
            batch[:height, :width] = self._lut[pixels]
        self.interpreter.set_tensor(self._input["index"], batch[None])

    def invoke(self) -> None:
        self.interpreter.invoke()

    def get_labels(self, height: int, width: int) -> np.ndarray:
        """Returns int labels for the top-left (height, width) region of the last invoke's output."""
        out = self.interpreter.get_tensor(self._output["index"])[0]
        if not self.outputs_logits:
            return out[:height, :width]
        # Dequantizing is affine with a positive scale, so it cannot change the argmax: skip it.
        return labels_from_logits(out.astype(np.float32), self.input_size, height, width)

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Returns int labels (H, W) for uint8 RGB pixels (H, W, 3) that fit inside input_size."""
        self.set_input(pixels)
        self.invoke()
        return self.get_labels(*pixels.shape[:2])
