import pytest

from edgeseg.evaluation.complexity import count_ops, count_params
from edgeseg.tflite.reader import TFLiteFile
from edgeseg.zoo.build import build_model, official_tflite
from edgeseg.zoo.registry import get_entry


@pytest.mark.parametrize("name", ["deeplabv3_mnv2_dm05_voc", "deeplabv3_mnv2_dm10_voc",
                                  "deeplab_edgetpu_slim_cityscapes"])
def test_params_and_ops_match_the_zoo_metadata(name):
    entry = get_entry(name)
    model = build_model(entry)
    assert count_params(model) == entry.measured["params"]
    assert count_ops(model, entry.preprocess.input_size).total == entry.measured["ops"]


def test_params_equal_the_official_files_weight_count():
    # The official file stores folded conv weights and biases: the same values our model has.
    for name in ("deeplabv3_mnv2_dm05_voc", "deeplabv3_mnv2_dm10_voc", "deeplab_edgetpu_slim_cityscapes"):
        tfl = TFLiteFile(official_tflite(name))
        stored = sum(tfl.tensors[i].data.size for op in tfl.ops if op.type in ("CONV_2D", "DEPTHWISE_CONV_2D")
                     for i in op.inputs[1:3])
        assert stored == get_entry(name).measured["params"]


def test_dm05_ops_round_to_the_published_figure():
    entry = get_entry("deeplabv3_mnv2_dm05_voc")
    ops = count_ops(build_model(entry), 513)
    assert round(ops.total / 1e9, 2) == entry.published["gops"]  # 1.76 G
    assert ops.conv_macs == 867_496_704  # 2 x MACs alone is 1.73 G; bias adds bring it to 1.76 G


def test_ops_scale_with_input_area():
    model = build_model(get_entry("deeplabv3_mnv2_dm05_voc"))
    small, large = count_ops(model, 257).total, count_ops(model, 513).total
    assert 3.5 < large / small < 4.5
