import numpy as np
import pytest

from edgeseg.data.datasets import voc
from edgeseg.errors import EdgesegError
from edgeseg.pipeline import segment
from edgeseg.runtimes.litert import LiteRTRuntime
from edgeseg.runtimes.torch import TorchRuntime


def test_official_file_feeds_raw_pixels(dm05_official):
    runtime = LiteRTRuntime(dm05_official)
    assert runtime.input_size == (513, 513) and not runtime.outputs_logits
    # uint8 input with scale 1/128, zero point 128: the deployed convention is q = pixel, pad = 128.
    assert runtime._lut.tolist() == list(range(256)) and runtime._pad == 128


def test_litert_and_torch_agree_on_a_voc_image(voc_root, dm05_official, dm05_model):
    image, mask = voc(voc_root, "val", limit=1).load(voc(voc_root, "val", limit=1).samples[0])
    official = segment(image, LiteRTRuntime(dm05_official, num_threads=2))
    ours = segment(image, TorchRuntime(dm05_model, num_classes=21))
    assert official.shape == ours.shape == mask.shape
    assert (official == ours).mean() > 0.97
    valid = mask != 255
    assert (ours[valid] == mask[valid]).mean() > 0.8  # a real prediction, not a constant map


def test_not_a_tflite_file(tmp_path):
    path = tmp_path / "junk.tflite"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(EdgesegError, match="junk.tflite"):
        LiteRTRuntime(path)
    with pytest.raises(EdgesegError, match="no such file"):
        LiteRTRuntime(tmp_path / "missing.tflite")


def test_classifier_is_not_a_segmentation_model(classifier_tflite):
    with pytest.raises(EdgesegError, match="not a segmentation model"):
        LiteRTRuntime(classifier_tflite)


def test_missing_delegate_is_a_clear_error(dm05_official, tmp_path):
    with pytest.raises(EdgesegError, match="libvx_delegate"):
        LiteRTRuntime(dm05_official, delegate=tmp_path / "libvx_delegate.so")


def test_threads_do_not_change_results(voc_root, dm05_official):
    image, _ = voc(voc_root, "val", limit=1).load(voc(voc_root, "val", limit=1).samples[0])
    one = segment(image, LiteRTRuntime(dm05_official, num_threads=1))
    two = segment(image, LiteRTRuntime(dm05_official, num_threads=2))
    np.testing.assert_array_equal(one, two)


def test_pixel_input_rule_depends_on_the_dtype():
    from edgeseg.runtimes.litert import _quantize_values, is_pixel_input

    assert is_pixel_input(1 / 128, 128, np.uint8) and is_pixel_input(1 / 128, 0, np.int8)
    assert not is_pixel_input(1 / 128, 0, np.uint8) and not is_pixel_input(1 / 128, 128, np.int8)
    # Any other quantization gets x*2/255-1 quantized exactly (round half away from zero, clipped).
    values = np.array([0, 128, 255]) * 2 / 255 - 1
    assert _quantize_values(values, 1 / 100, 3, np.int8).tolist() == [-97, 3, 103]
    assert _quantize_values(np.array([-0.25, 0.25, 9.0]), 0.5, 0, np.int8).tolist() == [-1, 1, 18]


def test_threads_out_of_range_and_a_file_that_is_not_a_delegate(dm05_official, tmp_path, capfd):
    with pytest.raises(EdgesegError, match=r"--threads must be a whole number in 1\.\.256"):
        LiteRTRuntime(dm05_official, num_threads=100000)
    fake = tmp_path / "libfake_delegate.so"
    fake.write_bytes(b"\x7fELF not really")
    with pytest.raises(EdgesegError, match="not a shared library"):
        LiteRTRuntime(dm05_official, delegate=fake)
    LiteRTRuntime(dm05_official, num_threads=1)
    assert "XNNPACK" not in capfd.readouterr().err  # LiteRT's INFO line is not shown
