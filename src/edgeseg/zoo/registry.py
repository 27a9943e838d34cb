"""The model zoo: named entries, each with its weights file, preprocessing and card metadata.

Weights are data (as in torchvision): every entry says where its weights live, how to preprocess
for them, and carries the numbers published for it next to the numbers edgeseg measured itself.
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from edgeseg.data.labelsets import CAMVID_CLASSES, CITYSCAPES_CLASSES
from edgeseg.data.voc import VOC_CLASSES
from edgeseg.errors import EdgesegError


@dataclass(frozen=True)
class WeightsFile:
    """A weights file and what its bytes must hash to: an official QAT .tflite published at `url`, or (with
    `bundled`) edgeseg's own trained weights, a float16 safetensors file shipped in the package (`TRAINED_DIR`)."""

    filename: str
    url: str
    sha256: str
    num_bytes: int
    bundled: bool = False


@dataclass(frozen=True)
class Preprocess:
    """DeepLab preprocessing: x * scale + offset, padded bottom/right to input_size with pad_value.

    Frames larger than the input are resized to fit it (DeepLab's rule); with `upscale`, smaller ones are
    enlarged to fit it too, for models trained on frames enlarged that way (small objects grow).
    """

    input_size: int | tuple[int, int] = 513  # N or (height, width)
    scale: float = 2.0 / 255.0
    offset: float = -1.0
    pad_value: float = 0.0  # the mean pixel after scaling
    upscale: bool = False


@dataclass(frozen=True)
class Family:
    """An architecture family: how to build its torch model and where its layers sit in official files.

    `builder` is a callable, or "module:function" imported only when a model is built (the registry
    itself needs no torch). It is called as builder(num_classes=..., **entry.arch).
    """

    name: str
    builder: Callable | str
    tf_backbone_scope: str  # e.g. "MobilenetV2": the importer maps "<scope>/expanded_conv_3/..." to torch

    def build(self, num_classes: int, **arch):
        builder = self.builder
        if isinstance(builder, str):
            module, _, function = builder.partition(":")
            builder = getattr(importlib.import_module(module), function)
        return builder(num_classes=num_classes, **arch)


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    if family.name in _FAMILIES:
        raise ValueError(f"family {family.name!r} is registered twice")
    _FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Family:
    try:
        return _FAMILIES[name]
    except KeyError:
        raise EdgesegError(f"unknown model family {name!r}; known: {', '.join(sorted(_FAMILIES))}") from None


@dataclass(frozen=True)
class ModelEntry:
    """One zoo entry. `published` is copied from the source; `measured` comes from edgeseg's own runs."""

    name: str
    architecture: str
    backbone: str
    family: str  # a registered Family
    arch: dict  # the family builder's keyword arguments, e.g. {"width_mult": 0.5}
    dataset: str
    weights: WeightsFile
    class_names: tuple[str, ...] = VOC_CLASSES
    preprocess: Preprocess = field(default_factory=Preprocess)
    published: dict[str, float] = field(default_factory=dict)
    published_on: str = "PASCAL VOC 2012 val, 1,449 images"  # the data `published` was measured on
    # Where the weights and the recipe that produced them are described (torchvision's `recipe`).
    recipe: str = "https://github.com/tensorflow/models/blob/master/research/deeplab/g3doc/quantize.md"
    recipe_name: str | None = None  # the shipped recipe (`edgeseg train --recipe NAME`) that produced the weights
    measured: dict[str, object] = field(default_factory=dict)
    license: str = "Apache-2.0"
    # Activation ranges of per-tensor exports: "mse" (least squares on calibration histograms) or "qat" (the
    # official file's learned ranges), chosen per entry by agreement with FP32 on held-out train images
    # (bench/ptq_sweep.py).
    per_tensor_activations: str = "mse"

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


register_family(Family("deeplabv3_mobilenet_v2", "edgeseg.models.deeplabv3:deeplabv3_mobilenet_v2", "MobilenetV2"))
register_family(Family("deeplab_edgetpu", "edgeseg.models.deeplabv3:deeplab_edgetpu_slim", "MobilenetEdgeTPU"))

_CORAL = "https://github.com/google-coral/test_data/raw/master/"
# edgeseg's trained weights and the recipes that produced them (`edgeseg train --recipe NAME`), in the package.
TRAINED_DIR = Path(__file__).parent / "trained"
DEFAULT_MODEL = "deeplabv3_mnv2_dm05_voc"  # what commands and the API run when no model is named
VOC_SUBSET = "VOC12 val subset (166 of 1,449 images), 513x513"

register(
    ModelEntry(
        name="deeplabv3_mnv2_dm05_voc",
        architecture="DeepLabV3",
        backbone="MobileNetV2 (depth multiplier 0.5, output stride 16)",
        family="deeplabv3_mobilenet_v2",
        arch={"width_mult": 0.5, "output_stride": 16},
        dataset="PASCAL VOC 2012 (COCO-pretrained, train_aug)",
        weights=WeightsFile(
            filename="deeplabv3_mnv2_dm05_pascal_quant.tflite",
            url=_CORAL + "deeplabv3_mnv2_dm05_pascal_quant.tflite",
            sha256="0470d2a782aa54eeeb99d32e7b6b3fb7722905c7c4f5d26bd957ec861366d48b",
            num_bytes=760904,
        ),
        published={"miou_fp32": 70.19, "miou_int8": 69.65, "gops": 1.76},
        # From `edgeseg card --data ../shared/voc/VOC2012` (tests recompute params, OPS and sizes; the sizes include
        # the graph's tensor names, which carry edgeseg's module paths). Per-tensor:
        # `--target imx8mp` with its default logits tail; imx93: `--target imx93`; vela_*: Vela 5.2.0's estimate.
        measured={"params": 688357, "ops": 1757133649, "fp32_bytes": 2828828, "int8_bytes": 1003224,
                  "int8_per_tensor_bytes": 795448, "miou_fp32": 64.99, "miou_int8": 64.00,
                  "miou_int8_per_tensor": 65.14, "imx93_bytes": 796200, "miou_imx93": 65.20,
                  "vela_imx93_ms": 11.40, "vela_official_ms": 132.49, "miou_data": VOC_SUBSET},
    )
)

register(
    ModelEntry(
        name="deeplabv3_mnv2_dm10_voc",
        architecture="DeepLabV3",
        backbone="MobileNetV2 (depth multiplier 1.0, output stride 16)",
        family="deeplabv3_mobilenet_v2",
        arch={"width_mult": 1.0, "output_stride": 16},
        dataset="PASCAL VOC 2012 (COCO-pretrained, train_aug)",
        weights=WeightsFile(
            filename="deeplabv3_mnv2_pascal_quant.tflite",
            url=_CORAL + "deeplabv3_mnv2_pascal_quant.tflite",
            sha256="350af47fd346ea6d74b58833a351f583ba860e9806ec5bd292ff8d8f1f249398",
            num_bytes=2193224,
        ),
        published={"miou_fp32": 75.32, "miou_int8": 74.26},
        measured={"params": 2097013, "ops": 5525117901, "fp32_bytes": 8463452, "int8_bytes": 2624856,
                  "int8_per_tensor_bytes": 2227768, "miou_fp32": 72.77, "miou_int8": 72.10,
                  "miou_int8_per_tensor": 72.85, "imx93_bytes": 2229112, "miou_imx93": 72.82,
                  "vela_imx93_ms": 27.16, "vela_official_ms": 148.80, "miou_data": VOC_SUBSET},
        per_tensor_activations="qat",  # held-out agreement 99.37% against 99.29% with mse
    )
)

register(
    ModelEntry(
        name="deeplab_edgetpu_slim_cityscapes",
        architecture="DeepLab (aspp0 + image pooling, 128 channels)",
        backbone="MobileNet-EdgeTPU (fused 3x3 expansion early, depthwise later; output stride 16)",
        family="deeplab_edgetpu",
        arch={"output_stride": 16},
        dataset="Cityscapes (19 train ids)",
        weights=WeightsFile(
            filename="deeplab_mobilenet_edgetpu_slim_cityscapes_quant.tflite",
            url=_CORAL + "deeplab_mobilenet_edgetpu_slim_cityscapes_quant.tflite",
            sha256="322fe29945cb1693f426952f2a330ab67ea5678545ddee6f2548e0cfd0ca03e5",
            num_bytes=2157328,
        ),
        class_names=CITYSCAPES_CLASSES,
        # TF DeepLab g3doc/model_zoo.md: the float checkpoint, Cityscapes val at full resolution, OS 16.
        published={"miou_fp32": 73.2, "gmacs_full_res": 4.3},
        published_on="Cityscapes val, full resolution (TF DeepLab model_zoo.md; float checkpoint)",
        recipe="https://github.com/tensorflow/models/blob/master/research/deeplab/g3doc/model_zoo.md",
        # From `edgeseg card --model deeplab_edgetpu_slim_cityscapes --voc-root ../shared/camvid
        # --class-map cityscapes-to-camvid`: zero-shot on CamVid val, there being no Cityscapes data here.
        measured={"params": 2055379, "ops": 8666885331, "fp32_bytes": 8324588, "int8_bytes": 2582160,
                  "int8_per_tensor_bytes": 2211464, "miou_fp32": 54.10, "miou_int8": 51.48,
                  "miou_int8_per_tensor": 51.46, "imx93_bytes": 2212520, "miou_imx93": 51.44,
                  "vela_imx93_ms": 34.98, "vela_official_ms": 152.40,
                  "miou_data": "CamVid val (101), zero-shot via cityscapes-to-camvid"},
    )
)

# Trained by edgeseg on CamVid (../shared/camvid: SegNet's 367 train / 101 val frames, 480x360, 11 classes). Each has
# a recipe file beside its weights (`edgeseg train --recipe NAME`); `published` is the recipe's own run, scored on
# CamVid val by edgeseg, and `measured` comes from `edgeseg card --data ../shared/camvid --model '*camvid*'` on the
# shipped float16 weights (miou_fp32_first8: the first 8 val frames, which tests recompute).
CAMVID_VAL = "CamVid val (101 frames)"
_CAMVID_DATA = "CamVid (367 train frames, 480x360, enlarged to fit the input)"
_EDGETPU_CAMVID = WeightsFile(filename="deeplab_edgetpu_slim_camvid.safetensors", url="",
                              sha256="30c785a3f63148a655b66cfe9d5e2890e3ca6d7bd9930dcd1795033e1e37dd3d",
                              num_bytes=4122022, bundled=True)


def _trained_on_camvid(name: str, recipe: str, **fields) -> ModelEntry:
    return ModelEntry(name=name, class_names=CAMVID_CLASSES, dataset=_CAMVID_DATA,
                      recipe=f"edgeseg train --recipe {recipe} --data CAMVID_DIR", recipe_name=recipe,
                      published_on=f"{CAMVID_VAL}, edgeseg's run of its recipe (`edgeseg train --recipe {recipe}`)",
                      license="Apache-2.0 (weights trained by edgeseg from Apache-2.0 TF DeepLab checkpoints)",
                      **fields)


# Params and file sizes do not depend on the input: the two EdgeTPU entries share them (and one weights file).
_EDGETPU_CAMVID_FILES = {"params": 2054347, "fp32_bytes": 8320432, "int8_bytes": 2580888,
                         "int8_per_tensor_bytes": 2210376, "imx93_bytes": 2211440, "miou_data": CAMVID_VAL}
EDGETPU_CAMVID = register(
    _trained_on_camvid(
        "deeplab_edgetpu_slim_camvid", "deeplab_edgetpu_slim_camvid",
        architecture="DeepLab (aspp0 + image pooling, 128 channels)",
        backbone="MobileNet-EdgeTPU (output stride 16), fine-tuned from deeplab_edgetpu_slim_cityscapes",
        family="deeplab_edgetpu", arch={"output_stride": 16}, weights=_EDGETPU_CAMVID,
        # Frames enlarged 2x: the model was trained at 1.5x, and 2x scores higher (chosen on CamVid train frames).
        preprocess=Preprocess(input_size=(721, 961), upscale=True),
        published={"miou_fp32": 70.22},
        measured={**_EDGETPU_CAMVID_FILES, "ops": 22531167754, "miou_fp32": 70.22, "miou_int8": 70.26,
                  "miou_int8_per_tensor": 70.43, "miou_imx93": 70.28, "vela_imx93_ms": 91.59,
                  "miou_fp32_first8": 68.22},
    )
)
# The same weights at the input they were trained at: 0.57x the OPS, 2.9 mIoU less.
register(
    replace(
        EDGETPU_CAMVID, name="deeplab_edgetpu_slim_camvid_545x721",
        backbone="MobileNet-EdgeTPU (output stride 16): deeplab_edgetpu_slim_camvid's weights at 1.5x, 0.57x its OPS",
        preprocess=Preprocess(input_size=(545, 721), upscale=True),
        published={"miou_fp32": 67.29},
        measured={**_EDGETPU_CAMVID_FILES, "ops": 12863759718, "miou_fp32": 67.29, "miou_int8": 67.36,
                  "miou_int8_per_tensor": 67.52, "miou_imx93": 67.41, "vela_imx93_ms": 49.07,
                  "miou_fp32_first8": 66.04},
    )
)

register(
    _trained_on_camvid(
        "deeplabv3_mnv2_dm05_camvid", "deeplabv3_mnv2_dm05_camvid",
        architecture="DeepLabV3",
        backbone="MobileNetV2 (depth multiplier 0.5, output stride 16), from deeplabv3_mnv2_dm05_voc, distilled from "
                 "deeplab_edgetpu_slim_camvid",
        family="deeplabv3_mobilenet_v2", arch={"width_mult": 0.5, "output_stride": 16},
        weights=WeightsFile(filename="deeplabv3_mnv2_dm05_camvid.safetensors", url="",
                            sha256="628df7994befd3d213cf893bf81f0f9781ce1bd5b8b4096fc077fd972d34db98",
                            num_bytes=1383246, bundled=True),
        preprocess=Preprocess(input_size=(545, 721), upscale=True),
        published={"miou_fp32": 62.27},
        measured={"params": 685787, "ops": 2593997162, "fp32_bytes": 2818508, "int8_bytes": 1000344,
                  "int8_per_tensor_bytes": 792808, "miou_fp32": 62.27, "miou_int8": 62.07,
                  "miou_int8_per_tensor": 62.16, "imx93_bytes": 793560, "miou_imx93": 62.16,
                  "vela_imx93_ms": 16.79, "miou_data": CAMVID_VAL, "miou_fp32_first8": 61.69},
    )
)
