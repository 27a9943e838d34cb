"""The steps around a runtime: image -> preprocess -> runtime -> postprocess -> label map.

DeepLab's rules: scale pixels to x*2/255-1, pad bottom/right to the input size with the mean pixel
(0 after scaling), crop the padding off the prediction, and compare at the image's original size.
An image larger than the input is first resized so its longer side fits, keeping the aspect ratio.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edgeseg.data.voc import MAX_CLASSES
from edgeseg.errors import EdgesegError
from edgeseg.zoo.registry import Preprocess

DEEPLAB = Preprocess()
Size = int | tuple[int, int]  # a square side, or (height, width)


def input_hw(size: Size) -> tuple[int, int]:
    """Returns (height, width) for a square side or an (height, width) pair."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class Runtime(Protocol):
    """What predict, evaluate and benchmark need from a backend (PyTorch or LiteRT).

    A runtime may also set `upscale = True`: frames smaller than its input are then enlarged to fit it.
    """

    name: str
    input_size: tuple[int, int]  # (height, width) of the model input
    num_classes: int

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Returns int labels (H, W) for uint8 RGB pixels (H, W, 3) that fit inside input_size."""
        ...


def load_image(path: str | Path) -> np.ndarray:
    """Returns the image as uint8 RGB (H, W, 3), EXIF orientation applied; 16-bit and alpha handled."""
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except FileNotFoundError:
        raise EdgesegError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise EdgesegError(f"{path}: a folder, not an image") from None
    except EdgesegError as exc:  # from to_rgb: values it will not guess
        raise EdgesegError(f"{path}: {exc}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise EdgesegError(f"{path}: cannot read image ({exc})") from None


def to_rgb(img: Image.Image) -> np.ndarray:
    """Returns uint8 RGB pixels for any Pillow mode (L, LA, P, RGBA, CMYK, I;16, I, F...).

    Wider greyscale is brought to 8 bits by its range, never guessed silently wrong: float (F) images
    with values in 0..1 are scaled by 255, those in 0..255 kept; integer ones above 255 are 16-bit
    (divided by 257). NaN, infinity, negative values and anything beyond those ranges are refused, and so is
    a closed image (its pixels are gone).
    """
    if _is_closed(img):  # Pillow's own error ("Operation on closed image") would surface as a mode problem
        raise EdgesegError("the image is closed (Image.close() was called, or its `with Image.open(...)` block "
                           "ended): segment it before it is closed, or pass img.copy()")
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _wide_grey_to_rgb(img)
    try:
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            img = img.convert("RGBA")
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except ValueError as exc:  # e.g. LAB or HSV, which Pillow cannot convert to RGB
        raise EdgesegError(f"image mode {img.mode} cannot be read as RGB ({exc})") from None


def _is_closed(img: Image.Image) -> bool:
    """True once Image.close() has run: Pillow then holds a DeferredError in place of the pixels."""
    from PIL import _util

    deferred = getattr(_util, "DeferredError", None)
    return deferred is not None and any(isinstance(vars(img).get(name), deferred) for name in ("_im", "im"))


def _wide_grey_to_rgb(img: Image.Image) -> np.ndarray:
    values = np.asarray(img, dtype=np.float64)
    if values.size and not np.isfinite(values).all():
        raise EdgesegError(f"image mode {img.mode} holds NaN or infinite values; expected pixel values")
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if img.mode == "F":
        if low < 0 or high > 255:
            raise EdgesegError(f"float image (mode F) with values {low:g}..{high:g}: expected 0..1 or 0..255")
        if high <= 1:
            values = values * 255.0
    else:
        if low < 0 or high > 65535:
            raise EdgesegError(f"integer image (mode {img.mode}) with values {low:g}..{high:g}: "
                               "expected 0..255 or 16-bit 0..65535")
        if high > 255:
            values = values / 257.0
    grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def fitted_hw(height: int, width: int, input_size: Size, upscale: bool = False) -> tuple[int, int]:
    """Returns the (height, width) `fit_to_input` gives a frame of that size."""
    max_height, max_width = input_hw(input_size)
    ratio = min(max_height / height, max_width / width)
    if ratio >= 1 and not upscale:
        return height, width
    return max(1, round(height * ratio)), max(1, round(width * ratio))


def fit_to_input(pixels: np.ndarray, input_size: Size, upscale: bool = False) -> np.ndarray:
    """Returns the pixels unchanged if they fit the input, else resized (bilinear, aspect kept) to fit.

    For a square input this is DeepLab's rule: the longer side becomes input_size. With `upscale`, smaller
    pixels are enlarged to fit too (the largest size that fits, aspect kept).
    """
    height, width = fitted_hw(*pixels.shape[:2], input_size, upscale)
    if (height, width) == pixels.shape[:2]:
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((width, height), Image.BILINEAR))


def fit_for(pixels: np.ndarray, runtime: Runtime) -> np.ndarray:
    """Returns the pixels resized as `runtime` expects them (`fit_to_input` with the runtime's upscale)."""
    return fit_to_input(pixels, runtime.input_size, getattr(runtime, "upscale", False))


def normalize_and_pad(pixels: np.ndarray, input_size: Size, cfg: Preprocess = DEEPLAB) -> np.ndarray:
    """Returns float32 (H, W, 3) of the input size: scaled pixels, padded bottom/right with cfg.pad_value."""
    height, width = pixels.shape[:2]
    out = np.full((*input_hw(input_size), 3), cfg.pad_value, dtype=np.float32)
    out[:height, :width] = pixels.astype(np.float32) * cfg.scale + cfg.offset
    return out


BLOCK = 2  # a space-to-depth input packs 2x2 pixel blocks (models/stem.py)
# ... into 12 channels, and 4 more that the stem's weights ignore: NPUs read DRAM in 16-byte channel
# bricks, and Vela costs the dm 0.5 stem at 0.44 Mcycles with 16 channels against 2.55 with 12.
PACKED_CHANNELS = 16


def packed_size(input_size: tuple[int, int]) -> tuple[int, int]:
    """Returns the (height, width) in blocks of the packed input for a model input of `input_size`."""
    # A 3x3 stride-2 conv with padding 1 gives (n - 1) // 2 + 1 rows; the 2x2 conv needs one block more.
    return tuple((n - 1) // 2 + 2 for n in input_size)  # type: ignore[return-value]


def pack_space_to_depth(image: np.ndarray, input_size: tuple[int, int], fill: float | int) -> np.ndarray:
    """Returns the packed input (Hb, Wb, 16) for an (h, w, 3) image that fits inside input_size.

    The image goes one pixel down and right on a canvas of `fill` (the padding value, in the image's own
    dtype: 128 for raw pixels, the quantized zero for other integer inputs, 0.0 for float); each 2x2 block
    becomes channels 0..11 ordered (row in block, column in block, colour), as TFLite's SPACE_TO_DEPTH;
    channels 12..15 hold `fill`.
    """
    blocks_h, blocks_w = packed_size(input_size)
    height, width = image.shape[:2]
    canvas = np.full((BLOCK * blocks_h, BLOCK * blocks_w, 3), fill, dtype=image.dtype)
    canvas[1:1 + height, 1:1 + width] = image
    packed = np.full((blocks_h, blocks_w, PACKED_CHANNELS), fill, dtype=image.dtype)
    # one strided copy: the packed channels viewed as (row in block, column in block, colour)
    pixels = packed[..., :BLOCK * BLOCK * 3].reshape(blocks_h, blocks_w, BLOCK, BLOCK, 3)
    assert np.shares_memory(pixels, packed)  # a view, so the assignment below lands in `packed`
    pixels[...] = canvas.reshape(blocks_h, BLOCK, blocks_w, BLOCK, 3).transpose(0, 2, 1, 3, 4)
    return packed


def align_corners_taps(out_size: int, in_size: int, keep: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (low index, high index, weight of high) for the first `keep` outputs of an
    align_corners bilinear resize from in_size to out_size."""
    if in_size == 1 or out_size == 1:
        zeros = np.zeros(keep, dtype=np.intp)
        return zeros, zeros, np.zeros(keep, dtype=np.float32)
    pos = np.arange(keep, dtype=np.float64) * (in_size - 1) / (out_size - 1)
    low = np.minimum(np.floor(pos).astype(np.intp), in_size - 2)
    return low, low + 1, (pos - low).astype(np.float32)


def labels_from_logits(logits: np.ndarray, input_size: Size, height: int, width: int) -> np.ndarray:
    """Returns argmax labels (height, width) of (h, w, C) logits resized to input_size with align_corners.

    Exact, but cheap: every difference of two classes is bilinear inside a cell, so it keeps the sign it
    has at all four corners. A cell whose corners share one argmax takes that class; in the other cells a
    class that some corner's winner beats at all four corners cannot win either, so only the remaining
    candidates (two or three of 21, typically) are interpolated. The padding is never computed.
    """
    values = logits.astype(np.float32, copy=False)
    rows, cols, _ = values.shape
    input_height, input_width = input_hw(input_size)
    row_lo, _, row_w = align_corners_taps(input_height, rows, height)
    col_lo, _, col_w = align_corners_taps(input_width, cols, width)
    coarse = values.argmax(axis=-1)
    below, right = np.minimum(np.arange(rows) + 1, rows - 1), np.minimum(np.arange(cols) + 1, cols - 1)
    # winners[i, j]: the argmax at the cell's corners (i, j), (i, j+1), (i+1, j), (i+1, j+1)
    winners = np.stack([coarse, coarse[:, right], coarse[below], coarse[below][:, right]], axis=-1)
    mixed = (winners != winners[..., :1]).any(axis=-1)
    # pixels per source row and column: row_lo is non-decreasing, so each cell is a block of repeats
    row_counts, col_counts = np.bincount(row_lo, minlength=rows), np.bincount(col_lo, minlength=cols)
    labels = np.repeat(np.repeat(coarse.astype(np.uint8 if values.shape[2] <= 256 else np.int32), row_counts, 0),
                       col_counts, 1)
    cell_i, cell_j = np.nonzero(mixed)
    if cell_i.size == 0:
        return labels
    corners = np.stack([values[cell_i, cell_j], values[cell_i, right[cell_j]], values[below[cell_i], cell_j],
                        values[below[cell_i], right[cell_j]]], axis=1)  # (cells, 4, C)
    classes, corners = _candidates(corners, winners[cell_i, cell_j])
    cell_of = np.full((rows, cols), -1, dtype=np.intp)
    cell_of[cell_i, cell_j] = np.arange(cell_i.size)
    pixel_cell = np.repeat(np.repeat(cell_of, row_counts, 0), col_counts, 1)
    ys, xs = np.nonzero(pixel_cell >= 0)
    cells = pixel_cell[ys, xs]
    wy, wx, v = row_w[ys, None], col_w[xs, None], corners[cells]
    top = v[:, 0] * (1 - wx) + v[:, 1] * wx
    bottom = v[:, 2] * (1 - wx) + v[:, 3] * wx
    labels[ys, xs] = classes[cells, (top * (1 - wy) + bottom * wy).argmax(axis=-1)]
    return labels


def _candidates(corners: np.ndarray, winners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For cells' corner logits (cells, 4, C) and corner winners (cells, 4): returns the classes that can win
    somewhere in each cell (cells, K), in class order and padded with the first, and their corner logits
    (cells, 4, K). Class k is out if a winner c beats it at all four corners, strictly or, where c < k, with
    ties (argmax takes the lower index of equal values, everywhere in the cell alike)."""
    num_classes = corners.shape[2]
    winner_values = np.take_along_axis(corners, np.repeat(winners[:, None, :], 4, axis=1), axis=2)  # (cells, 4, 4)
    above = winner_values[..., None] - corners[:, :, None, :]  # (cells, corner, winner, class)
    index = np.arange(num_classes)
    beaten = ((above > 0).all(axis=1) | ((above >= 0).all(axis=1) & (winners[..., None] < index))) \
        & (winners[..., None] != index)
    candidate = ~beaten.any(axis=1)  # (cells, C)
    count = int(candidate.sum(axis=1).max())
    classes = np.argsort(~candidate, axis=1, kind="stable")[:, :count]  # candidates first, in class order
    classes = np.where(np.take_along_axis(candidate, classes, axis=1), classes, classes[:, :1])
    return classes, np.take_along_axis(corners, np.repeat(classes[:, None, :], 4, axis=1), axis=2)


def probabilities_from_logits(logits: np.ndarray, input_size: Size, height: int, width: int) -> np.ndarray:
    """Returns float32 class probabilities (height, width, C): (h, w, C) logits resized to input_size with
    align_corners, as the graph's own upsample would, then a softmax over classes. For `scores=True` only:
    every pixel and class is interpolated, unlike `labels_from_logits`."""
    values = logits.astype(np.float32, copy=False)
    input_height, input_width = input_hw(input_size)
    row_lo, row_hi, row_w = align_corners_taps(input_height, values.shape[0], height)
    col_lo, col_hi, col_w = align_corners_taps(input_width, values.shape[1], width)
    rows = values[row_lo] * (1 - row_w[:, None, None]) + values[row_hi] * row_w[:, None, None]
    full = rows[:, col_lo] * (1 - col_w[None, :, None]) + rows[:, col_hi] * col_w[None, :, None]
    full -= full.max(axis=-1, keepdims=True)
    np.exp(full, out=full)
    full /= full.sum(axis=-1, keepdims=True)
    return full


def restore_scores(scores: np.ndarray, height: int, width: int) -> np.ndarray:
    """Returns (height, width, C) scores, each class resized bilinearly, unchanged if already that size."""
    if scores.shape[:2] == (height, width):
        return scores
    planes = [np.asarray(Image.fromarray(np.ascontiguousarray(scores[..., c])).resize((width, height), Image.BILINEAR))
              for c in range(scores.shape[2])]
    return np.stack(planes, axis=-1)


def segment_scores(pixels: np.ndarray, runtime: Runtime) -> np.ndarray:
    """Returns float32 class probabilities (H, W, C) for uint8 RGB pixels (H, W, 3) of any size."""
    if not hasattr(runtime, "predict_scores"):
        raise EdgesegError(f"{runtime.name} gives labels only, not class scores")
    fitted = fit_for(pixels, runtime)
    return restore_scores(runtime.predict_scores(fitted), *pixels.shape[:2])


def restore_size(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Returns uint8 labels at (height, width), nearest-neighbour, unchanged if already that size."""
    if labels.dtype != np.uint8 and labels.size and (labels.max() >= 256 or labels.min() < 0):
        raise EdgesegError(f"the model predicted class {int(labels.max() if labels.max() >= 256 else labels.min())}: "
                           f"edgeseg handles classes 0..{MAX_CLASSES - 1} (labels are stored in 8 bits)")
    labels = labels.astype(np.uint8)
    if labels.shape == (height, width):
        return labels
    return np.asarray(Image.fromarray(labels).resize((width, height), Image.NEAREST))


def segment(pixels: np.ndarray, runtime: Runtime) -> np.ndarray:
    """Returns uint8 labels (H, W) for uint8 RGB pixels (H, W, 3) of any size."""
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise EdgesegError(f"expected uint8 RGB pixels of shape (H, W, 3), got {pixels.dtype} {pixels.shape}")
    fitted = fit_for(pixels, runtime)
    labels = runtime.predict(fitted)
    return restore_size(labels, *pixels.shape[:2])
