"""Label sets beyond VOC (Cityscapes, CamVid), their palettes, and named mappings between them.

A mapping sends each model class to a dataset class, so a model can be scored on a dataset whose classes
differ (e.g. the Cityscapes model zero-shot on CamVid). It must name every model class: a class with
nowhere to go has no column in the dataset's confusion matrix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeseg.data.voc import IGNORE_INDEX, MAX_CLASSES, voc_palette
from edgeseg.errors import EdgesegError

# Cityscapes' 19 train ids, in order (road = 0 ... bicycle = 18), and its official colours.
CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
CITYSCAPES_COLORS = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0),
    (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)

# CamVid's 11 classes as in the SegNet tutorial release (../shared/camvid), index 0..10; 255 = void.
CAMVID_CLASSES: tuple[str, ...] = (
    "sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car", "pedestrian",
    "bicyclist",
)

@dataclass(frozen=True)
class ClassMapping:
    """Model class name -> dataset class name, and the dataset's classes in label order."""

    dataset_classes: tuple[str, ...]
    pairs: dict[str, str]


MAPPINGS: dict[str, ClassMapping] = {
    # As ../shared/README.md measures the official file zero-shot on CamVid. Where several model classes
    # share a target, the first listed is the one a fine-tune's classifier row starts from.
    "cityscapes-to-camvid": ClassMapping(CAMVID_CLASSES, {
        "road": "road", "sidewalk": "pavement", "building": "building", "wall": "building", "fence": "fence",
        "pole": "pole", "traffic sign": "sign_symbol", "traffic light": "sign_symbol", "vegetation": "tree",
        "terrain": "tree", "sky": "sky", "person": "pedestrian", "bicycle": "bicyclist", "rider": "bicyclist",
        "motorcycle": "bicyclist", "car": "car", "truck": "car", "bus": "car", "train": "car",
    }),
}


def load_mapping(spec: str | Path) -> ClassMapping:
    """Returns a named mapping, or one read from a JSON file {"dataset_classes": [...], "mapping": {...}}."""
    if str(spec) in MAPPINGS:
        return MAPPINGS[str(spec)]
    path = Path(spec)
    if not path.is_file():
        raise EdgesegError(f"unknown class mapping {str(spec)!r}: not one of {', '.join(MAPPINGS)}, "
                           "nor a JSON file")
    try:
        data = json.loads(path.read_text())
        if not isinstance(data["dataset_classes"], list):  # a string would be split into letters
            raise TypeError("dataset_classes must be a list of names")
        mapping = ClassMapping(tuple(data["dataset_classes"]), dict(data["mapping"]))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise EdgesegError(f"{path}: not a class mapping file ({type(exc).__name__}: {exc}); expected "
                           '{"dataset_classes": [...], "mapping": {"model class": "dataset class"}}') from None
    if not all(isinstance(v, str) for v in (*mapping.dataset_classes, *mapping.pairs, *mapping.pairs.values())):
        raise EdgesegError(f"{path}: class names in a mapping must be strings")
    if len(mapping.dataset_classes) > MAX_CLASSES:
        raise EdgesegError(f"{path}: {len(mapping.dataset_classes)} dataset classes, at most {MAX_CLASSES} (label 255 "
                           "means ignore)")
    return mapping


def source_classes(model_classes: tuple[str, ...], new_classes: tuple[str, ...]) -> dict[str, str]:
    """Returns {new class: model class its classifier row starts from}: the same name, else the first model
    class a shipped mapping from these model classes to exactly these new classes sends to it."""
    sources = {name: name for name in new_classes if name in model_classes}
    for mapping in MAPPINGS.values():
        if mapping.dataset_classes == tuple(new_classes) and set(mapping.pairs) == set(model_classes):
            for model_name, new_name in mapping.pairs.items():
                sources.setdefault(new_name, model_name)
    return sources


def palette_for(class_names: tuple[str, ...]) -> np.ndarray:
    """Returns a (256, 3) uint8 palette: Cityscapes' colours for its classes, else VOC's colour map."""
    palette = voc_palette()
    if tuple(class_names[: len(CITYSCAPES_CLASSES)]) == CITYSCAPES_CLASSES:
        palette[: len(CITYSCAPES_COLORS)] = CITYSCAPES_COLORS
    return palette


def mapping_lut(mapping: ClassMapping, model_classes: tuple[str, ...]) -> np.ndarray:
    """Returns a 256-entry lookup table from model class index to dataset class index.

    Every name in the mapping must be a class of its side, and every model class must be mapped.
    """
    unknown = [m for m in mapping.pairs if m not in model_classes] + \
        [d for d in mapping.pairs.values() if d not in mapping.dataset_classes]
    if unknown:
        raise EdgesegError(f"class mapping names classes that are not in the model or the dataset: {unknown[:5]}")
    unmapped = [m for m in model_classes if m not in mapping.pairs]
    if unmapped:
        raise EdgesegError(f"class mapping leaves model classes unmapped: {unmapped[:5]}")
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for model_name, dataset_name in mapping.pairs.items():
        lut[model_classes.index(model_name)] = mapping.dataset_classes.index(dataset_name)
    return lut


class MappedRuntime:
    """A runtime whose predictions are translated to another label set through a lookup table."""

    def __init__(self, runtime, lut: np.ndarray, num_classes: int) -> None:
        self.runtime, self.lut, self.num_classes = runtime, lut, num_classes
        self.name, self.input_size = f"{runtime.name}->mapped", runtime.input_size

    @property
    def upscale(self) -> bool:
        return getattr(self.runtime, "upscale", False)

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        return self.lut[self.runtime.predict(pixels)]
