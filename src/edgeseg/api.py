"""The Python API: `Segmenter` opens a model once, then segments images, arrays, videos and cameras.

    import edgeseg
    seg = edgeseg.Segmenter("deeplabv3_mnv2_dm05_voc")
    result = seg("photo.jpg")
    print(result.shares())          # {'background': 0.62, 'person': 0.31, ...}, largest first
    result.overlay().save("overlay.png")

Images are RGB. A numpy array must be uint8 (H, W, 3) RGB, or (H, W) / (H, W, 1) greyscale, or
(H, W, 4) RGBA; pass `bgr=True` for OpenCV's BGR (or BGRA) order. Float and other integer arrays are
refused with a message saying how to convert them, since their value range cannot be guessed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from edgeseg.checks import check_threads
from edgeseg.errors import EdgesegError
from edgeseg.pipeline import load_image, segment, segment_scores, to_rgb
from edgeseg.runtimes.factory import OpenedModel, open_model
from edgeseg.visualize import blend, blend_image  # noqa: F401 - blend is public here too

ImageLike = Any  # a PIL image, a path, or a numpy array (see as_rgb)


def as_rgb(image: ImageLike, *, bgr: bool = False) -> np.ndarray:
    """Returns uint8 RGB pixels (H, W, 3) for a PIL image, an image path, or a numpy array.

    Arrays: uint8 (H, W, 3) RGB, (H, W) or (H, W, 1) greyscale, (H, W, 4) RGBA (alpha dropped).
    With bgr=True a 3- or 4-channel array is read as BGR / BGRA. Anything else raises EdgesegError.
    """
    if isinstance(image, str | os.PathLike):
        if bgr:
            raise EdgesegError("bgr=True applies to numpy arrays; image files are decoded as RGB")
        return load_image(image)
    if isinstance(image, Image.Image):
        if bgr:
            raise EdgesegError("bgr=True applies to numpy arrays; PIL images are RGB")
        return to_rgb(image)
    if not isinstance(image, np.ndarray):
        raise EdgesegError(f"expected a PIL image, a path or a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.floating):
            raise EdgesegError(f"got a {image.dtype} array; pass uint8 pixels 0..255, e.g. "
                               "(np.clip(x, 0, 1) * 255).round().astype(np.uint8) for values in 0..1")
        raise EdgesegError(f"got a {image.dtype} array; pass uint8 pixels 0..255 (e.g. x >> 8 for 16-bit)")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim in (2, 3) and min(image.shape[:2]) < 1:
        raise EdgesegError(f"got an empty image: shape {image.shape}")
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or min(image.shape[:2]) < 1:
        raise EdgesegError(f"expected an (H, W, 3) RGB array, got shape {image.shape}")
    pixels = image[..., :3]
    if bgr:
        pixels = pixels[..., ::-1]
    return np.ascontiguousarray(pixels)


def names_for(labels: np.ndarray, class_names: tuple[str, ...]) -> tuple[str, ...]:
    """Returns the class names, extended with class_<i> if the model predicts indices beyond them."""
    top = int(labels.max(initial=0))
    return tuple(class_names) + tuple(f"class_{i}" for i in range(len(class_names), top + 1))


@dataclass
class Result:
    """One segmented image: `labels[y, x]` is an index into `class_names`, at the image's own size."""

    labels: np.ndarray  # uint8 (H, W)
    class_names: tuple[str, ...]
    model: str  # zoo name or file name
    backend: str  # "litert" or "torch"
    image: np.ndarray = field(repr=False)  # the uint8 RGB pixels that were segmented
    scores: np.ndarray | None = field(default=None, repr=False)  # float32 (H, W, C) class probabilities, if asked

    def shares(self) -> dict[str, float]:
        """Returns {class name: share of pixels} for the classes present, largest first."""
        from edgeseg.visualize import class_shares

        shares = class_shares(self.labels, names_for(self.labels, self.class_names))
        return {name: float(share) for name, share in shares}

    def overlay(self, *, legend: bool = True, alpha: float = 0.55) -> Image.Image:
        """Returns the image blended with the class colours (background left as is), with a legend panel."""
        from edgeseg.visualize import overlay

        if legend:
            return overlay(self.image, self.labels, names_for(self.labels, self.class_names), alpha=alpha)
        return blend_image(self.image, self.labels, alpha, self.class_names)

    def label_image(self) -> Image.Image:
        """Returns the labels as a palette PNG-ready image (pixel values are class indices, in the colours of
        the model's label set: Cityscapes' for Cityscapes classes, else VOC's)."""
        from edgeseg.visualize import label_image

        return label_image(self.labels, class_names=self.class_names)

    def to_dict(self) -> dict:
        """Returns model, backend, size and class shares, ready for JSON."""
        height, width = self.labels.shape
        return {"model": self.model, "backend": self.backend, "width": width, "height": height,
                "shares": {name: round(share, 6) for name, share in self.shares().items()}}


class Segmenter:
    """A segmentation model opened once: call it on images, or `stream` a video file or a camera.

    `model` is a zoo name (see `edgeseg.list_models()`), a `.tflite` file, or a `.safetensors` checkpoint
    (also accepted as `tflite=` / `weights=`, whatever their suffix). Default backend: a zoo model runs its
    official INT8 `.tflite` with LiteRT (fast, and torch is not imported); `backend="torch"` runs the
    PyTorch FP32 model. `threads` sets LiteRT's CPU threads; `delegate` names an external LiteRT delegate
    library that runs a `.tflite` (or a zoo model's official file) on an NPU, e.g.
    "/usr/lib/libvx_delegate.so" on the i.MX 8M Plus or "/usr/lib/libethosu_delegate.so" for a `*_vela.tflite`
    on the i.MX 93. `input_size` (N or (H, W): any size for a PyTorch model, a `.tflite` only its exported one)
    and `upscale` (enlarge smaller frames to fit) replace the model's input handling; by default a model runs
    as it was trained.
    """

    def __init__(self, model: str | os.PathLike | None = None, *, weights: str | os.PathLike | None = None,
                 tflite: str | os.PathLike | None = None, backend: str | None = None,
                 threads: int | None = None, input_size: int | tuple[int, int] | None = None,
                 upscale: bool | None = None, delegate: str | os.PathLike | None = None) -> None:
        check_threads(threads)  # before any model is opened
        self.opened: OpenedModel = open_model(model, tflite=tflite, weights=weights, backend=backend,
                                              threads=threads, input_size=input_size, upscale=upscale,
                                              delegate=delegate)
        self.runtime = self.opened.runtime
        self.class_names = self.opened.class_names
        self.model = self.opened.model
        self.backend = self.opened.backend
        self.description = self.opened.description

    def __repr__(self) -> str:
        return f"Segmenter({self.model!r}, backend={self.backend!r})"

    def __call__(self, image: ImageLike | list | tuple, *, bgr: bool = False, scores: bool = False,
                 ) -> Result | list[Result]:
        """Segments one image (PIL image, path, or uint8 array; see `as_rgb`) and returns a Result; a list or
        tuple of images, or an (N, H, W, 3) uint8 array, gives a list of Results. With `scores=True` each
        Result also holds `scores`, the float32 (H, W, C) class probabilities (the PyTorch model, or a `.tflite`
        that ends at the logits; labels stay the argmax of the same logits)."""
        if isinstance(image, list | tuple) or (isinstance(image, np.ndarray) and image.ndim == 4):
            return [self(one, bgr=bgr, scores=scores) for one in image]
        pixels = as_rgb(image, bgr=bgr)
        if not scores:
            return Result(segment(pixels, self.runtime), self.class_names, self.model, self.backend, pixels)
        probabilities = segment_scores(pixels, self.runtime)
        labels = probabilities.argmax(axis=-1).astype(np.uint8)
        return Result(labels, self.class_names, self.model, self.backend, pixels, probabilities)

    def stream(self, source: str | os.PathLike | int, *, every: int = 1, max_frames: int | None = None,
               ) -> Iterator[tuple[np.ndarray, Result]]:
        """Yields (RGB frame, Result) for a video file, a camera index (0 -> /dev/video0), a device path or
        a stream URL, in order: every `every`-th frame (a whole number >= 1), at most `max_frames` (None, or a
        whole number >= 1) of them, turned upright as the video is displayed. Decoding runs in a background
        thread. Needs the `video` extra (PyAV). Bad options raise here, not at the first frame."""
        from edgeseg.io.video import check_frame_options

        check_frame_options(every, max_frames)
        return self._stream(source, every, max_frames)

    def _stream(self, source: str | os.PathLike | int, every: int, max_frames: int | None,
                ) -> Iterator[tuple[np.ndarray, Result]]:
        from edgeseg.io.video import open_video

        with open_video(source) as video:
            for _, frame in video.frames(every=every, max_frames=max_frames):
                yield frame, self(frame)
