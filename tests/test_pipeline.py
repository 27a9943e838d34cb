import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from edgeseg.errors import EdgesegError
from edgeseg.pipeline import (
    fit_to_input,
    labels_from_logits,
    load_image,
    normalize_and_pad,
    restore_size,
    segment,
)


def test_normalize_scales_and_pads_with_the_mean_pixel():
    pixels = np.array([[[0, 255, 51]]], dtype=np.uint8)
    out = normalize_and_pad(pixels, 4)
    assert out.shape == (4, 4, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], [-1.0, 1.0, 51 * 2 / 255 - 1], atol=1e-6)
    assert np.all(out[1:] == 0) and np.all(out[:, 1:] == 0)


def test_large_images_are_resized_to_513_on_the_longer_side():
    assert fit_to_input(np.zeros((300, 400, 3), np.uint8), 513).shape == (300, 400, 3)
    assert fit_to_input(np.zeros((600, 1026, 3), np.uint8), 513).shape == (300, 513, 3)
    assert fit_to_input(np.zeros((2000, 100, 3), np.uint8), 513).shape == (513, 26, 3)


def test_upscale_enlarges_small_frames_to_the_largest_size_that_fits(rng):
    frame = rng.integers(0, 256, (360, 480, 3), dtype=np.uint8)
    assert fit_to_input(frame, (545, 721), upscale=True).shape == (541, 721, 3)  # 1.502x: width binds
    assert fit_to_input(frame, (545, 721)).shape == (360, 480, 3)  # DeepLab's rule: smaller frames only pad
    assert fit_to_input(frame, 513, upscale=True).shape == (385, 513, 3)
    assert fit_to_input(np.zeros((600, 1026, 3), np.uint8), 513, upscale=True).shape == (300, 513, 3)
    same = fit_to_input(frame, (360, 480), upscale=True)
    assert same is frame  # already the input size: not resampled


class _UpscalingRuntime:
    name, input_size, num_classes, upscale = "stub", (200, 300), 2, True

    def predict(self, pixels):
        self.seen = pixels.shape
        return (pixels[..., 0] > 127).astype(np.uint8)


def test_segment_enlarges_for_an_upscaling_runtime_and_returns_the_frame_size(rng):
    runtime = _UpscalingRuntime()
    frame = np.zeros((50, 100, 3), np.uint8)
    frame[:, 50:] = 255
    labels = segment(frame, runtime)
    assert runtime.seen == (150, 300, 3) and labels.shape == (50, 100)
    assert (labels[:, :50] == 0).all() and (labels[:, 50:] == 1).all()


def test_logits_upsampling_matches_torch_align_corners(rng):
    logits = rng.normal(size=(33, 33, 21)).astype(np.float32)
    ours = labels_from_logits(logits, 513, 375, 500)
    up = F.interpolate(torch.from_numpy(logits).permute(2, 0, 1)[None], size=(513, 513),
                       mode="bilinear", align_corners=True)[0]
    reference = up.argmax(0)[:375, :500].numpy()
    assert (ours == reference).mean() > 0.9999  # ties from float rounding only


def test_restore_size_is_nearest():
    labels = np.array([[1, 2], [3, 4]], dtype=np.uint8)
    assert restore_size(labels, 4, 4).tolist()[0] == [1, 1, 2, 2]


class _RecordingRuntime:
    name, input_size, num_classes = "fake", 513, 21

    def __init__(self):
        self.seen = None

    def predict(self, pixels):
        self.seen = pixels.shape
        return np.ones(pixels.shape[:2], dtype=np.int64)


def test_segment_fits_then_restores_the_original_size():
    runtime = _RecordingRuntime()
    labels = segment(np.zeros((800, 1200, 3), np.uint8), runtime)
    assert runtime.seen == (342, 513, 3) and labels.shape == (800, 1200)
    with pytest.raises(EdgesegError, match="uint8 RGB"):
        segment(np.zeros((8, 8), np.uint8), runtime)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "1"])
def test_image_modes_are_converted_to_rgb(tmp_path, mode):
    rgb = Image.new("RGB", (20, 10), (200, 100, 50))
    img = rgb.convert(mode) if mode not in ("I;16", "I") else Image.new(mode, (20, 10), 51400)
    suffix = ".jpg" if mode == "CMYK" else (".tif" if mode == "I" else ".png")
    path = tmp_path / f"img{suffix}"
    img.save(path)
    pixels = load_image(path)
    assert pixels.shape == (10, 20, 3) and pixels.dtype == np.uint8
    if mode in ("I;16", "I"):
        assert pixels[0, 0].tolist() == [200, 200, 200]  # 51400 / 257: 16-bit range scaled to 8 bits


def test_exif_orientation_is_honoured(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif)
    assert load_image(path).shape == (40, 20, 3)


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20])
def test_corrupt_images_give_one_line_errors(tmp_path, content):
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.raises(EdgesegError, match="broken.png: cannot read image") as info:
        load_image(path)
    assert "\n" not in str(info.value)


def test_truncated_jpeg_is_an_error(tmp_path):
    path = tmp_path / "cut.jpg"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(path, quality=95)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(EdgesegError, match="cut.jpg"):
        load_image(path)


def test_missing_image(tmp_path):
    with pytest.raises(EdgesegError, match="no such file"):
        load_image(tmp_path / "nope.jpg")


@pytest.mark.parametrize("kind", ["random", "int8_ties", "constant"])
def test_logits_shortcut_is_exact(rng, kind):
    # Random logits make almost every cell mixed; int8 logits have many ties; constant ones have none mixed.
    if kind == "random":
        logits = rng.normal(size=(33, 33, 21)).astype(np.float32)
    elif kind == "int8_ties":
        logits = rng.integers(-3, 3, size=(33, 33, 21)).astype(np.int8)
    else:
        logits = np.zeros((33, 33, 21), np.float32)
        logits[..., 7] = 1
    up = F.interpolate(torch.from_numpy(logits.astype(np.float32)).permute(2, 0, 1)[None], size=(513, 513),
                       mode="bilinear", align_corners=True)[0]
    reference = up.argmax(0)[:300, :513].numpy()
    assert (labels_from_logits(logits, 513, 300, 513) == reference).mean() > 0.9999


@pytest.mark.parametrize("input_size, logits_hw, keep", [((513, 513), (33, 33), (375, 500)),
                                                          ((361, 481), (23, 31), (361, 481)),
                                                          ((321, 321), (21, 21), (200, 321))])
def test_logits_shortcut_is_exact_on_smooth_quantized_logits(rng, input_size, logits_hw, keep):
    # Real logits are smooth, with regions and boundaries, and uint8 (ties between classes at a corner):
    # the case the candidate pruning works on. Any geometry, not only 513 -> 33.
    coarse = rng.normal(size=(5, 5, 21)).astype(np.float32) * 4
    smooth = F.interpolate(torch.from_numpy(coarse).permute(2, 0, 1)[None], size=logits_hw, mode="bilinear",
                           align_corners=True)[0].permute(1, 2, 0).numpy()
    logits = np.clip(np.round(smooth * 8 + 128), 0, 255).astype(np.uint8)
    up = F.interpolate(torch.from_numpy(logits.astype(np.float32)).permute(2, 0, 1)[None], size=input_size,
                       mode="bilinear", align_corners=True)[0]
    reference = up.argmax(0)[:keep[0], :keep[1]].numpy()
    assert (labels_from_logits(logits, input_size, *keep) == reference).mean() > 0.9999
