import pytest

from edgeseg.data.voc import VOC_CLASSES
from edgeseg.errors import EdgesegError
from edgeseg.zoo.registry import get_entry, list_models


def test_zoo_entries():
    assert list_models() == ["deeplab_edgetpu_slim_camvid", "deeplab_edgetpu_slim_camvid_545x721",
                             "deeplab_edgetpu_slim_cityscapes", "deeplabv3_mnv2_dm05_camvid",
                             "deeplabv3_mnv2_dm05_voc", "deeplabv3_mnv2_dm10_voc"]
    assert list_models("*dm05*") == ["deeplabv3_mnv2_dm05_camvid", "deeplabv3_mnv2_dm05_voc"]
    entry = get_entry("deeplabv3_mnv2_dm05_voc")
    assert entry.arch["width_mult"] == 0.5 and entry.preprocess.input_size == 513
    assert entry.class_names == VOC_CLASSES
    assert entry.published["miou_fp32"] == 70.19 and entry.published["miou_int8"] == 69.65
    assert get_entry("deeplabv3_mnv2_dm10_voc").published == {"miou_fp32": 75.32, "miou_int8": 74.26}


def test_unknown_model_lists_known_names():
    with pytest.raises(EdgesegError, match="unknown model 'nope'.*deeplabv3_mnv2_dm05_voc"):
        get_entry("nope")
