"""The model zoo: named entries, each with its weights file, preprocessing and card metadata.

Weights are data (as in torchvision): every entry says where its weights live, how to preprocess
for them, and carries the numbers published for it next to the numbers edgeseg measured itself.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from edgeseg.errors import EdgesegError
from edgeseg.voc import VOC_CLASSES


@dataclass(frozen=True)
class WeightsFile:
    """An official weights file: where it is published and what its bytes must hash to."""

    filename: str
    url: str
    sha256: str
    num_bytes: int


@dataclass(frozen=True)
class Preprocess:
    """DeepLab preprocessing: x * scale + offset, padded bottom/right to input_size with pad_value."""

    input_size: int = 513
    scale: float = 2.0 / 255.0
    offset: float = -1.0
    pad_value: float = 0.0  # the mean pixel after scaling


@dataclass(frozen=True)
class ModelEntry:
    """One zoo entry. `published` is copied from the source; `measured` comes from edgeseg's own runs."""

    name: str
    architecture: str
    backbone: str
    width_mult: float
    dataset: str
    weights: WeightsFile
    class_names: tuple[str, ...] = VOC_CLASSES
    output_stride: int = 16
    preprocess: Preprocess = field(default_factory=Preprocess)
    published: dict[str, float] = field(default_factory=dict)
    measured: dict[str, object] = field(default_factory=dict)
    license: str = "Apache-2.0"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


_REGISTRY: dict[str, ModelEntry] = {}


def register(entry: ModelEntry) -> ModelEntry:
    if entry.name in _REGISTRY:
        raise ValueError(f"model {entry.name!r} is registered twice")
    _REGISTRY[entry.name] = entry
    return entry


def list_models(pattern: str = "*") -> list[str]:
    """Returns the registered model names matching a shell-style wildcard."""
    return sorted(name for name in _REGISTRY if fnmatch.fnmatch(name, pattern))


def get_entry(name: str) -> ModelEntry:
    """Returns the entry called `name`, or raises a one-line error listing the known names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise EdgesegError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


_CORAL = "https://github.com/google-coral/test_data/raw/master/"
VOC_SUBSET = "VOC12 val subset (166 of 1,449 images), 513x513"

register(
    ModelEntry(
        name="deeplabv3_mnv2_dm05_voc",
        architecture="DeepLabV3",
        backbone="MobileNetV2 (depth multiplier 0.5, output stride 16)",
        width_mult=0.5,
        dataset="PASCAL VOC 2012 (COCO-pretrained, train_aug)",
        weights=WeightsFile(
            filename="deeplabv3_mnv2_dm05_pascal_quant.tflite",
            url=_CORAL + "deeplabv3_mnv2_dm05_pascal_quant.tflite",
            sha256="0470d2a782aa54eeeb99d32e7b6b3fb7722905c7c4f5d26bd957ec861366d48b",
            num_bytes=760904,
        ),
        published={"miou_fp32": 70.19, "miou_int8": 69.65, "gops": 1.76},
        # From `edgeseg card --voc-root ../shared/voc/VOC2012` (tests recompute params, OPS and sizes).
        measured={"params": 688357, "ops": 1757133649, "fp32_bytes": 2827916, "int8_bytes": 1001528,
                  "miou_fp32": 64.99, "miou_int8": 64.00, "miou_data": VOC_SUBSET},
    )
)

register(
    ModelEntry(
        name="deeplabv3_mnv2_dm10_voc",
        architecture="DeepLabV3",
        backbone="MobileNetV2 (depth multiplier 1.0, output stride 16)",
        width_mult=1.0,
        dataset="PASCAL VOC 2012 (COCO-pretrained, train_aug)",
        weights=WeightsFile(
            filename="deeplabv3_mnv2_pascal_quant.tflite",
            url=_CORAL + "deeplabv3_mnv2_pascal_quant.tflite",
            sha256="350af47fd346ea6d74b58833a351f583ba860e9806ec5bd292ff8d8f1f249398",
            num_bytes=2193224,
        ),
        published={"miou_fp32": 75.32, "miou_int8": 74.26},
        measured={"params": 2097013, "ops": 5525117901, "fp32_bytes": 8462540, "int8_bytes": 2623160,
                  "miou_fp32": 72.77, "miou_int8": 72.10, "miou_data": VOC_SUBSET},
    )
)
