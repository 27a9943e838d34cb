"""Segmentation datasets: VOCdevkit folders, or plain images/ + masks/ folder pairs (and, for data that
needs no labels, plain folders of images: `open_images`).

Masks are read as palette indices (never converted to RGB or grey), 255 meaning "ignore".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edgeseg.data.voc import IGNORE_INDEX, VOC_CLASSES
from edgeseg.errors import EdgesegError
from edgeseg.pipeline import load_image

if TYPE_CHECKING:
    from edgeseg.models.deeplabv3 import ClassGroups

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class Sample:
    id: str
    image_path: Path
    mask_path: Path


ORIENTATION = 0x0112  # the EXIF tag; 1 (or none) = stored upright


def exif_orientation(path: str | Path) -> int:
    """Returns the file's EXIF orientation (1..8; 1 when absent or unreadable: load_* report those)."""
    try:
        with Image.open(path) as img:
            value = img.getexif().get(ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def load_mask(path: str | Path) -> np.ndarray:
    """Returns the mask's label indices as uint8 (H, W), its EXIF orientation applied as for images.
    Palette ('P') and greyscale ('L') masks only."""
    try:
        with Image.open(path) as mask:
            if mask.mode not in ("P", "L"):
                raise EdgesegError(f"{path}: mask mode {mask.mode}, expected a palette (P) or index (L) PNG")
            mask.load()
            return np.asarray(ImageOps.exif_transpose(mask), dtype=np.uint8).copy()
    except FileNotFoundError:
        raise EdgesegError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise EdgesegError(f"{path}: a folder, not a mask") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise EdgesegError(f"{path}: cannot read mask ({exc})") from None


class SegmentationFolder:
    """A list of (image, mask) samples; `VOC(root, split)` and `ImageMaskFolders(dir)` build one.

    Missing files are one error here, before any work, unless `allow_missing` (evaluate --skip-bad):
    then `load` reports each missing file as it comes, so that it can be skipped like an unreadable one.
    """

    def __init__(self, samples: list[Sample], description: str, *, allow_missing: bool = False) -> None:
        self.samples = samples
        self.description = description
        missing = [s for s in samples for p in (s.image_path, s.mask_path) if not p.is_file()]
        if missing and not allow_missing:
            paths = sorted({str(p) for s in missing for p in (s.image_path, s.mask_path) if not p.is_file()})
            raise EdgesegError(
                f"{description}: {len(paths)} listed files are missing, e.g. {', '.join(paths[:3])}"
            )

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        """Returns (uint8 RGB image, uint8 mask), both turned upright by the same EXIF orientation.

        Raises a one-line error if their sizes differ, or if image and mask carry different EXIF
        orientations (then it cannot be told which way the mask was drawn, and a 180 degree turn would
        still match in size: a silently wrong score).
        """
        image, mask = load_image(sample.image_path), load_mask(sample.mask_path)
        image_turn, mask_turn = exif_orientation(sample.image_path), exif_orientation(sample.mask_path)
        if image_turn != mask_turn:
            raise EdgesegError(
                f"{sample.mask_path}: EXIF orientation {mask_turn}, but the image has {image_turn} "
                f"({sample.image_path.name}): save both upright (PIL.ImageOps.exif_transpose) or with the same tag"
            )
        if image.shape[:2] != mask.shape:
            raise EdgesegError(
                f"{sample.mask_path}: mask is {mask.shape[1]}x{mask.shape[0]}, "
                f"image is {image.shape[1]}x{image.shape[0]}"
            )
        return image, mask

    def __iter__(self) -> Iterator[tuple[Sample, np.ndarray, np.ndarray]]:
        for sample in self.samples:
            yield (sample, *self.load(sample))


def voc(root: str | Path, split: str = "val", limit: int | None = None, *,
        allow_missing: bool = False) -> SegmentationFolder:
    """Returns the VOCdevkit split at root (the folder holding JPEGImages/, SegmentationClass/)."""
    root = Path(root)
    split_dir = root / "ImageSets" / "Segmentation"
    split_file = split_dir / f"{split}.txt"
    if not split_file.is_file():
        known = sorted(p.stem for p in split_dir.glob("*.txt"))
        if not known:
            raise EdgesegError(f"{root}: not a VOC folder (no ImageSets/Segmentation/*.txt)")
        raise EdgesegError(f"{root}: no split {split!r}; splits here: {', '.join(known)}")
    ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise EdgesegError(f"{split_file}: lists no images")
    if limit is not None:
        ids = ids[:limit]
    samples = [
        Sample(i, root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png") for i in ids
    ]
    return SegmentationFolder(samples, f"VOC {split} split ({root})", allow_missing=allow_missing)


def image_mask_folders(root: str | Path, limit: int | None = None, *,
                       allow_missing: bool = False) -> SegmentationFolder:
    """Returns the pairs root/images/<id>.<ext> + root/masks/<id>.png."""
    root = Path(root)
    images_dir, masks_dir = root / "images", root / "masks"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise EdgesegError(f"{root}: expected images/ and masks/ folders")
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if limit is not None:
        images = images[:limit]
    samples = [Sample(p.stem, p, masks_dir / f"{p.stem}.png") for p in images]
    if not samples:
        raise EdgesegError(f"{images_dir}: no images found")
    return SegmentationFolder(samples, f"folder {root}", allow_missing=allow_missing)


def open_dataset(root: str | Path, split: str = "val", limit: int | None = None, *,
                 allow_missing: bool = False) -> SegmentationFolder:
    """Returns a VOCdevkit split, or the images/ + masks/ pair when root has no ImageSets/.
    `allow_missing`: listed files that are missing fail at `load`, not here (see SegmentationFolder)."""
    root = Path(root)
    if not root.is_dir():
        raise EdgesegError(f"{root}: no such folder")
    if (root / "ImageSets").is_dir():
        return voc(root, split, limit, allow_missing=allow_missing)
    splits = sorted(p.name for p in root.iterdir() if (p / "images").is_dir())
    if splits:  # root/<split>/images + masks
        if split not in splits:
            raise EdgesegError(f"{root}: no split {split!r}; splits here: {', '.join(splits)}")
        return image_mask_folders(root / split, limit, allow_missing=allow_missing)
    # one images/ + masks/ pair: every split is the same data
    return image_mask_folders(root, limit, allow_missing=allow_missing)


def image_files(folder: str | Path, limit: int | None = None) -> list[Path]:
    """Returns the image files directly in `folder` (IMAGE_SUFFIXES, any case), sorted by name, the first `limit`."""
    images = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    return images if limit is None else images[:limit]


def open_images(root: str | Path, split: str = "train", limit: int | None = None) -> tuple[list[Path], str]:
    """Returns (image paths, description) for data that needs no labels, such as calibration.

    A dataset gives the images of its split, the masks neither read nor required: a VOCdevkit folder,
    root/<split>/images/, or root/images/. Any other folder gives the images in it (a plain folder of photos;
    the split is then ignored). Sorted by name; the first `limit`.
    """
    root = Path(root)
    if not root.is_dir():
        raise EdgesegError(f"{root}: no such folder")
    if (root / "ImageSets").is_dir():
        samples = voc(root, split, limit, allow_missing=True).samples
        missing = [str(s.image_path) for s in samples if not s.image_path.is_file()]
        if missing:
            raise EdgesegError(f"VOC {split} split ({root}): {len(missing)} listed images are missing, "
                               f"e.g. {', '.join(missing[:3])}")
        return [s.image_path for s in samples], f"VOC {split} split ({root})"
    splits = sorted(p.name for p in root.iterdir() if (p / "images").is_dir())
    if splits:  # root/<split>/images, as open_dataset reads them
        if split not in splits:
            raise EdgesegError(f"{root}: no split {split!r}; splits here: {', '.join(splits)}")
        folder, description = root / split / "images", f"folder {root / split}"
    elif (root / "images").is_dir():
        folder, description = root / "images", f"folder {root}"
    else:
        folder, description = root, f"image folder {root}"
    images = image_files(folder, limit)
    if not images:
        raise EdgesegError(f"{folder}: no images found ({', '.join(IMAGE_SUFFIXES)})")
    return images, description


def resolve_label_map(mode: str, names: tuple[str, ...], data: Path) -> str:
    """Returns 'voc' (VOC labels -> index in `names`, others -> 0) or 'none' (labels used as they are).

    'auto' picks 'voc' for a VOCdevkit folder when the names are VOC class names other than VOC's own list.
    """
    if mode == "none":
        return "none"
    is_subset = set(names) <= set(VOC_CLASSES)
    if mode == "voc":
        if not is_subset:
            unknown = [n for n in names if n not in VOC_CLASSES]
            raise EdgesegError(f"--label-map voc: {', '.join(unknown)} not VOC class names")
    elif mode == "auto":
        if not (is_subset and tuple(names) != VOC_CLASSES and (Path(data) / "ImageSets").is_dir()):
            return "none"
    else:
        raise EdgesegError(f"--label-map {mode}: expected auto, voc or none")
    if names[0] != "background":
        raise EdgesegError("remapping VOC labels sends unlisted classes to 0, so the first class must be "
                           f"'background' (got {names[0]!r})")
    return "voc"


def label_lut(label_map: str, names: tuple[str, ...]) -> np.ndarray | None:
    """Returns a 256-entry uint8 table from source labels to training labels (None for 'none')."""
    if label_map == "none":
        return None
    lut = np.zeros(256, dtype=np.uint8)
    for source, name in enumerate(VOC_CLASSES):
        if name in names:
            lut[source] = names.index(name)
    lut[IGNORE_INDEX] = IGNORE_INDEX
    return lut


def predicts_classes(model_classes: tuple[str, ...], names: tuple[str, ...], label_map: str) -> bool:
    """Whether a model with `model_classes` already predicts `names` on data labelled as `label_map` says: the
    same classes, or VOC's merged into them by the voc label map."""
    return model_classes == names or (label_map == "voc" and model_classes == VOC_CLASSES)


def class_groups(lut: np.ndarray | None, source_names: tuple[str, ...],
                 names: tuple[str, ...]) -> ClassGroups | None:
    """Each of `names`' classes as the group of `source_names`' classes whose labels `lut` sends to it, when a VOC
    model's classes are merged into `names` (None otherwise, or when a class of `names` has no VOC class)."""
    if lut is None or source_names != VOC_CLASSES or names == VOC_CLASSES:
        return None
    groups = tuple(tuple(k for k in range(len(VOC_CLASSES)) if lut[k] == c) for c in range(len(names)))
    return groups if all(groups) else None


class RemappedDataset:
    """A dataset whose `load(sample)` returns masks with labels sent through a lookup table.

    Has what `edgeseg.evaluation.evaluate.evaluate` uses: `samples`, `description`, `len()`, `load()`.
    """

    def __init__(self, base, lut: np.ndarray | None, names: tuple[str, ...], limit: int | None = None):
        self.base = base
        self.lut = lut
        self.samples = list(base.samples if limit is None else base.samples[:limit])
        suffix = f" [labels mapped to {','.join(names)}]" if lut is not None else ""
        self.description = base.description + suffix

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, sample) -> tuple[np.ndarray, np.ndarray]:
        image, mask = self.base.load(sample)
        return image, (mask if self.lut is None else self.lut[mask])


CLASS_LIST = "classes.txt"  # an images/ + masks/ folder may name its classes, one per line, index order


def data_class_names(root: str | Path) -> tuple[str, ...] | None:
    """The classes a dataset names: its classes.txt, else VOC's for a VOCdevkit folder, else None (unknown)."""
    root = Path(root)
    listed = root / CLASS_LIST
    if listed.is_file():
        try:
            names = tuple(line.strip() for line in listed.read_text().splitlines() if line.strip())
        except (OSError, UnicodeDecodeError) as exc:
            raise EdgesegError(f"{listed}: cannot be read ({exc})") from None
        if len(names) < 2 or len(set(names)) != len(names):
            raise EdgesegError(f"{listed}: expected at least 2 distinct class names, one per line")
        return names
    return VOC_CLASSES if (root / "ImageSets").is_dir() else None


def check_model_classes(class_names: tuple[str, ...], root: str | Path) -> None:
    """Raises unless the model's classes are the data's (or VOC classes that `remap_for` maps onto VOC data):
    scoring one label set as another gives a number with no meaning, not an error, so it must not run."""
    data_names = data_class_names(root)
    if data_names is None or tuple(class_names) == data_names:
        return
    if data_names == VOC_CLASSES and resolve_label_map("auto", tuple(class_names), root) == "voc":
        return

    def preview(names: tuple[str, ...]) -> str:
        return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")

    raise EdgesegError(f"{root}: the data's {len(data_names)} classes ({preview(data_names)}) are not the model's "
                       f"{len(class_names)} ({preview(tuple(class_names))}); score them through a mapping with "
                       "--class-map NAME|FILE.json")


def remap_for(dataset: SegmentationFolder, class_names: tuple[str, ...], root: str | Path):
    """Returns the dataset, with VOC masks remapped when a fine-tuned model predicts a subset of VOC classes."""
    lut = label_lut(resolve_label_map("auto", class_names, root), class_names)
    return dataset if lut is None else RemappedDataset(dataset, lut, class_names)
