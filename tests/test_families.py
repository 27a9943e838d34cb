"""Model families plug in (builder + importer scope + entry), and the second family: EdgeTPU-DeepLab-slim."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgeseg.cli import main
from edgeseg.data.labelsets import CAMVID_CLASSES, CITYSCAPES_CLASSES, MAPPINGS, load_mapping, mapping_lut, palette_for
from edgeseg.errors import EdgesegError
from edgeseg.evaluation.complexity import count_ops, count_params
from edgeseg.models.deeplabv3 import DeepLabHead, DeepLabV3
from edgeseg.models.mobilenetv2 import ConvAct
from edgeseg.pipeline import load_image, segment
from edgeseg.runtimes.litert import LiteRTRuntime
from edgeseg.runtimes.torch import TorchRuntime
from edgeseg.zoo import registry
from edgeseg.zoo.build import create_model, official_tflite

CAMVID = Path(__file__).resolve().parents[2] / "shared" / "camvid"
NAME = "deeplab_edgetpu_slim_cityscapes"


class TinyBackbone(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.stem = ConvAct(3, channels, 3, stride=16)
        self.out_channels = channels

    def forward(self, x):
        return self.stem(x)


def tiny_deeplab(*, num_classes: int, channels: int = 8) -> DeepLabV3:
    backbone = TinyBackbone(channels)
    return DeepLabV3(backbone, DeepLabHead(channels, num_classes, depth=16))


def test_a_new_family_plugs_in_with_a_builder_and_an_entry(monkeypatch):
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.register_family(registry.Family("tiny", tiny_deeplab, "TinyNet"))
    registry.register(registry.ModelEntry(
        name="tiny_voc", architecture="DeepLab", backbone="one conv", family="tiny", arch={"channels": 4},
        dataset="none", weights=registry.WeightsFile("tiny.tflite", "https://example.invalid/t.tflite", "0" * 64, 1)))
    model = create_model("tiny_voc", pretrained=False).eval()
    assert model.backbone.out_channels == 4 and model.head.classifier.conv.out_channels == 21
    assert model(torch.zeros(1, 3, 65, 65)).shape == (1, 21, 65, 65)
    assert count_ops(model, 65).total > 0 and count_params(model) > 0
    with pytest.raises(EdgesegError, match="unknown model family 'nope'"):
        registry.get_family("nope")
    with pytest.raises(ValueError, match="registered twice"):
        registry.register_family(registry.Family("tiny", tiny_deeplab, "TinyNet"))


def test_edgetpu_entry_imports_every_official_tensor():
    model = create_model(NAME)  # strict: any missing, extra or misshaped tensor raises
    assert model.head.classifier.conv.out_channels == 19 and model.backbone.out_channels == 1280
    residual_blocks = sum(getattr(m, "use_residual", False) for m in model.modules())
    assert residual_blocks == 15  # the official file's 15 ADD ops
    dilated = [m.conv.dilation[0] for m in model.backbone.blocks[-4:] if m.depthwise is not None
               for m in [m.depthwise]]
    assert dilated == [2, 2, 2, 2]


def test_edgetpu_import_agrees_with_the_official_file_on_camvid_frames():
    images = sorted((CAMVID / "val" / "images").glob("*.jpg"))[::25][:4]
    official = LiteRTRuntime(official_tflite(NAME), num_threads=2)
    ours = TorchRuntime(create_model(NAME), num_classes=19)
    agreement = np.mean([(segment(load_image(p), official) == segment(load_image(p), ours)).mean() for p in images])
    assert agreement > 0.95, agreement  # 97.2% on 6 frames here: FP32 vs a per-tensor QAT file out of domain


def test_cityscapes_to_camvid_mapping():
    mapping = load_mapping("cityscapes-to-camvid")
    lut = mapping_lut(mapping, CITYSCAPES_CLASSES)
    assert mapping.dataset_classes == CAMVID_CLASSES
    pairs = {CITYSCAPES_CLASSES[i]: CAMVID_CLASSES[lut[i]] for i in range(19)}
    assert pairs["road"] == "road" and pairs["sidewalk"] == "pavement" and pairs["truck"] == "car"
    assert pairs["rider"] == pairs["bicycle"] == "bicyclist" and pairs["terrain"] == "tree"
    assert set(pairs.values()) == set(CAMVID_CLASSES)  # every CamVid class is reachable
    partial = registry_free_mapping({"road": "road"})
    with pytest.raises(EdgesegError, match="unmapped"):
        mapping_lut(partial, CITYSCAPES_CLASSES)
    with pytest.raises(EdgesegError, match="not in the model or the dataset"):
        mapping_lut(registry_free_mapping({"lane": "road"}), CITYSCAPES_CLASSES)


def registry_free_mapping(pairs):
    return type(MAPPINGS["cityscapes-to-camvid"])(CAMVID_CLASSES, pairs)


def test_mapping_files_and_bad_names(tmp_path):
    good = tmp_path / "map.json"
    good.write_text(json.dumps({"dataset_classes": ["a", "b"], "mapping": {"x": "a", "y": "b"}}))
    assert load_mapping(good).pairs == {"x": "a", "y": "b"}
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(EdgesegError, match="not a class mapping file"):
        load_mapping(bad)
    with pytest.raises(EdgesegError, match="unknown class mapping 'nope'"):
        load_mapping("nope")


def test_evaluate_across_label_sets_through_the_cli(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["evaluate", "--voc-root", str(CAMVID), "--model", NAME, "--backend", "litert",
                 "--class-map", "cityscapes-to-camvid", "--limit", "3", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert list(report["per_class_iou"]) == list(CAMVID_CLASSES) and report["miou"] > 20
    assert main(["evaluate", "--voc-root", str(CAMVID), "--model", NAME, "--class-map", "nope", "--limit", "1"]) == 2
    assert "unknown class mapping" in capsys.readouterr().err


def test_cityscapes_palette():
    palette = palette_for(CITYSCAPES_CLASSES)
    assert tuple(palette[0]) == (128, 64, 128) and tuple(palette[10]) == (70, 130, 180)  # road, sky
    assert tuple(palette_for(("background", "x"))[1]) == (128, 0, 0)  # VOC colours otherwise


# The targets on CamVid val (101 frames, DeepLab protocol: padded to 513, not resized): the official
# file's 51.07 reproduced within 0.1, the torch import within 1.0 of it. Prints the pixel agreement.
@pytest.mark.slow
def test_edgetpu_zero_shot_on_camvid_val():
    from edgeseg.data.datasets import open_dataset
    from edgeseg.data.labelsets import MappedRuntime
    from edgeseg.evaluation.evaluate import evaluate

    dataset = open_dataset(CAMVID, "val")
    mapping = load_mapping("cityscapes-to-camvid")
    lut = mapping_lut(mapping, CITYSCAPES_CLASSES)
    runs = {}
    for key, runtime in (("official", LiteRTRuntime(official_tflite(NAME), num_threads=2)),
                         ("torch", TorchRuntime(create_model(NAME), num_classes=19))):
        predictions = []
        result = evaluate(MappedRuntime(runtime, lut, 11), dataset, CAMVID_CLASSES, progress=False,
                          predictions=predictions)
        runs[key] = (100 * result.miou, predictions)
    agreement = sum(int((a == b).sum()) for a, b in zip(runs["official"][1], runs["torch"][1])) / sum(
        a.size for a in runs["official"][1])
    print(f"CamVid val zero-shot mIoU: official {runs['official'][0]:.2f}, torch import {runs['torch'][0]:.2f}; "
          f"agreement (CamVid classes) {100 * agreement:.2f}%")
    assert abs(runs["official"][0] - 51.07) < 0.1
    assert runs["torch"][0] > 51.07 - 1.0  # 54.10 here: the float import loses nothing to the INT8 file


def test_a_camvid_fine_tune_starts_from_the_mapped_cityscapes_rows():
    full = create_model(NAME).state_dict()["head.classifier.conv.weight"]
    rows = create_model(NAME, class_names=CAMVID_CLASSES).state_dict()["head.classifier.conv.weight"]
    for camvid, cityscapes in (("road", "road"), ("pavement", "sidewalk"), ("tree", "vegetation"),
                               ("sign_symbol", "traffic sign"), ("pedestrian", "person"), ("bicyclist", "bicycle")):
        assert torch.equal(rows[CAMVID_CLASSES.index(camvid)], full[CITYSCAPES_CLASSES.index(cityscapes)])
