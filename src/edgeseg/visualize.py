"""Label maps as palette PNGs, and overlays with a legend of the classes present."""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from edgeseg.data.labelsets import palette_for


def label_image(labels: np.ndarray, palette: np.ndarray | None = None,
                class_names: tuple[str, ...] = ()) -> Image.Image:
    """Returns the labels as a palette ('P') image: indices stay indices, colours come from the palette
    (default: the class names' own, e.g. Cityscapes colours, else VOC's)."""
    palette = palette_for(class_names) if palette is None else palette
    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    img.putpalette(palette[:256].reshape(-1).tolist())
    return img


def legend_percent(share: float) -> str:
    """A class's share for the legend: one decimal, and a class that is present never reads 0.0%."""
    return f"{100 * share:.1f}%" if share >= 0.0005 else "<0.1%"


def class_shares(labels: np.ndarray, class_names: tuple[str, ...]) -> list[tuple[str, float]]:
    """Returns (class name, share of pixels) for the classes present, largest first."""
    counts = np.bincount(labels.reshape(-1), minlength=len(class_names))
    order = np.argsort(-counts, kind="stable")
    return [(class_names[i], counts[i] / labels.size) for i in order if counts[i] > 0]


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def overlay(
    pixels: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...],
    palette: np.ndarray | None = None, alpha: float = 0.55,
) -> Image.Image:
    """Returns the image blended with the class colours, with a legend panel on the right."""
    palette = palette_for(class_names) if palette is None else palette
    colours = palette[labels]
    blended = pixels.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha
    if class_names[:1] == ("background",):  # background stays as the photo so the objects stand out
        blended = np.where(labels[..., None] == 0, pixels, blended)
    blended = blended.astype(np.uint8)
    height, width = labels.shape
    shares = class_shares(labels, class_names)
    font_size = max(12, height // 30)
    row = int(font_size * 1.6)
    panel_width = font_size * 12
    canvas = Image.new("RGB", (width + panel_width, max(height, row * (len(shares) + 1))), "white")
    canvas.paste(Image.fromarray(blended), (0, 0))
    draw, font = ImageDraw.Draw(canvas), _font(font_size)
    for i, (name, share) in enumerate(shares):
        top = row // 2 + i * row
        colour = tuple(int(c) for c in palette[class_names.index(name)])
        draw.rectangle([width + 8, top, width + 8 + font_size, top + font_size], fill=colour, outline="black")
        draw.text((width + 16 + font_size, top), f"{name} {legend_percent(share)}", fill="black", font=font)
    return canvas


_FOREGROUND = [0] + [255] * 255  # point() table: background -> 0, any class -> 255


@functools.lru_cache(maxsize=8)
def _palette(class_names: tuple[str, ...]) -> list[int]:
    return palette_for(class_names)[:256].reshape(-1).tolist()


def blend_image(pixels: np.ndarray, labels: np.ndarray, alpha: float = 0.55,
                class_names: tuple[str, ...] = ()) -> Image.Image:
    """Returns the pixels blended with each label's colour (the label set's palette; a class 0 named
    "background" left as is), as a PIL image of the same size. Done in Pillow's C code: cheap enough
    for every video frame."""
    image = Image.fromarray(pixels)
    label_map = Image.fromarray(labels.astype(np.uint8, copy=False))
    label_map.putpalette(_palette(tuple(class_names)))
    blended = Image.blend(image, label_map.convert("RGB"), alpha)
    if class_names[:1] in ((), ("background",)):
        image.paste(blended, (0, 0), Image.fromarray(labels.astype(np.uint8, copy=False)).point(_FOREGROUND))
        return image
    return blended


def blend(pixels: np.ndarray, labels: np.ndarray, alpha: float = 0.55,
          class_names: tuple[str, ...] = ()) -> np.ndarray:
    """Returns `blend_image` as a uint8 RGB array (H, W, 3)."""
    return np.asarray(blend_image(pixels, labels, alpha, class_names))
