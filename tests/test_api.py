"""The public Python API: edgeseg.Segmenter, Result, open_model / open_runtime, and the README example."""

import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import edgeseg
from edgeseg.api import as_rgb
from edgeseg.data.voc import VOC_CLASSES
from edgeseg.errors import EdgesegError
from edgeseg.pipeline import fit_to_input, restore_size
from edgeseg.runtimes.factory import open_model, open_runtime, tflite_class_names

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PHOTO = SHARED / "voc" / "VOC2012" / "JPEGImages" / "2007_000733.jpg"  # a motorbike and its rider


@pytest.fixture(scope="module")
def seg():
    return edgeseg.Segmenter("deeplabv3_mnv2_dm05_voc", threads=2)


def test_readme_api_example_runs_as_written(tmp_path, monkeypatch):
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Quick start: Python", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    shutil.copy(PHOTO, tmp_path / "photo.jpg")
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the README's own example
    assert (tmp_path / "photo_overlay.png").is_file()


def test_result_names_model_backend_and_classes(seg):
    result = seg(PHOTO)
    assert (result.model, result.backend) == ("deeplabv3_mnv2_dm05_voc", "litert")
    assert result.class_names == VOC_CLASSES
    with Image.open(PHOTO) as img:
        assert result.labels.shape == (img.height, img.width) and result.labels.dtype == np.uint8
    shares = result.shares()
    assert abs(sum(shares.values()) - 1) < 1e-9 and list(shares.values()) == sorted(shares.values(), reverse=True)
    assert "person" in shares
    overlay = result.overlay()
    assert overlay.mode == "RGB" and overlay.width > result.labels.shape[1]  # legend panel
    assert result.overlay(legend=False).size == (result.labels.shape[1], result.labels.shape[0])
    assert result.to_dict()["backend"] == "litert" and result.label_image().mode == "P"


def test_path_pil_array_and_bgr_inputs_agree(seg):
    with Image.open(PHOTO) as img:
        rgb = np.asarray(img.convert("RGB"))
        from_pil = seg(img).labels
    assert np.array_equal(seg(rgb).labels, from_pil)
    assert np.array_equal(seg(str(PHOTO)).labels, from_pil)
    assert np.array_equal(seg(rgb[..., ::-1].copy(), bgr=True).labels, from_pil)
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    assert np.array_equal(seg(rgba).labels, from_pil)


def test_greyscale_is_converted_and_other_arrays_are_refused():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert np.array_equal(as_rgb(grey), np.repeat(grey[..., None], 3, axis=2))
    assert as_rgb(grey[..., None]).shape == (3, 4, 3)
    with pytest.raises(EdgesegError, match="float32 array; pass uint8"):
        as_rgb(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(EdgesegError, match="uint16 array"):
        as_rgb(np.zeros((4, 4, 3), np.uint16))
    with pytest.raises(EdgesegError, match="shape"):
        as_rgb(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(EdgesegError, match="bgr=True applies to numpy arrays"):
        as_rgb(Image.new("RGB", (4, 4)), bgr=True)
    with pytest.raises(EdgesegError, match="expected a PIL image"):
        as_rgb([1, 2, 3])


def test_tflite_file_and_backend_choices(dm05_official):
    by_path = edgeseg.Segmenter(dm05_official)
    assert by_path.backend == "litert" and by_path.model == dm05_official.name
    assert edgeseg.Segmenter(tflite=dm05_official).class_names == VOC_CLASSES
    with pytest.raises(EdgesegError, match="runs with LiteRT"):
        open_model(tflite=dm05_official, backend="torch")
    with pytest.raises(EdgesegError, match="unknown backend 'onnx'"):
        open_model("deeplabv3_mnv2_dm05_voc", backend="onnx")
    with pytest.raises(EdgesegError, match="unknown model"):
        edgeseg.Segmenter("nope")
    assert tflite_class_names(dm05_official, 0) == VOC_CLASSES


def test_open_runtime_is_the_one_factory(dm05_official):
    runtime = open_runtime(dm05_official, "litert", threads=1)
    assert runtime.name == f"litert:{dm05_official.name}" and runtime.input_size in (513, (513, 513))
    with pytest.raises(EdgesegError, match="unknown backend"):
        open_runtime(dm05_official, "onnxruntime")
    with pytest.raises(EdgesegError, match="torch model, not a file"):
        open_runtime(dm05_official, "torch")


def test_torch_backend_names_itself(dm05_model):
    seg = edgeseg.Segmenter("deeplabv3_mnv2_dm05_voc", backend="torch")
    result = seg(np.zeros((40, 60, 3), np.uint8))
    assert (result.backend, seg.description) == ("torch", "deeplabv3_mnv2_dm05_voc (PyTorch FP32)")
    assert result.labels.shape == (40, 60)


def test_fine_tuned_checkpoint_runs_with_torch(tmp_path):
    from edgeseg.zoo.build import create_model, save_checkpoint
    from edgeseg.zoo.registry import get_entry

    names = ("background", "person")
    entry = get_entry("deeplabv3_mnv2_dm05_voc")
    model = create_model(entry.name, class_names=names)
    save_checkpoint(model, tmp_path / "best.safetensors", replace(entry, class_names=names), entry.name)
    seg = edgeseg.Segmenter(weights=tmp_path / "best.safetensors")
    assert (seg.backend, seg.model, seg.class_names) == ("torch", "best.safetensors", names)
    assert set(seg(PHOTO).shares()) <= set(names)
    assert edgeseg.Segmenter(tmp_path / "best.safetensors").backend == "torch"  # found by its suffix
    with pytest.raises(EdgesegError, match="export it to .tflite"):
        edgeseg.Segmenter(weights=tmp_path / "best.safetensors", backend="litert")


def test_input_size_and_upscale_replace_the_models_own(dm05_official):
    small = np.asarray(Image.open(PHOTO).convert("RGB"))[::4, ::4]  # far smaller than the input
    seg = edgeseg.Segmenter("deeplabv3_mnv2_dm05_voc", backend="torch", input_size=(161, 225), upscale=True)
    assert (seg.runtime.input_size, seg.runtime.upscale) == ((161, 225), True)
    assert seg.description == "deeplabv3_mnv2_dm05_voc (PyTorch FP32) at 161x225, frames enlarged to fit"
    enlarged = fit_to_input(small, (161, 225), upscale=True)  # the frame grows until a side fits the input
    assert enlarged.shape[0] > small.shape[0] and (enlarged.shape[0] == 161 or enlarged.shape[1] == 225)
    assert np.array_equal(seg(small).labels, restore_size(seg.runtime.predict(enlarged), *small.shape[:2]))
    # A .tflite keeps the size it was exported at; its upscale flag can still be set either way.
    assert open_model(tflite=dm05_official, upscale=True).runtime.upscale is True
    assert open_model(tflite=dm05_official, input_size=513, upscale=False).runtime.upscale is False
    with pytest.raises(EdgesegError, match="takes 513x513 input, not 600x600: export"):
        open_model("deeplabv3_mnv2_dm05_voc", input_size=600)
    for bad in (5, (513,), (513, 513.5), True, "513"):
        with pytest.raises(EdgesegError, match="sides 33..2049"):
            open_model("deeplabv3_mnv2_dm05_voc", backend="torch", input_size=bad)
    with pytest.raises(EdgesegError, match="upscale must be True, False or None"):
        edgeseg.Segmenter("deeplabv3_mnv2_dm05_voc", upscale="no")


def test_cli_evaluate_runs_a_zoo_model_at_another_input(capsys):
    from edgeseg.cli import main

    args = ["evaluate", "--data", str(SHARED / "voc" / "VOC2012"), "--limit", "2", "--backend", "torch"]
    assert main([*args, "--input-size", "369x481", "--no-upscale"]) == 0
    assert "(PyTorch FP32) at 369x481 on" in capsys.readouterr().out


def test_default_zoo_model_needs_no_extra():
    extras = ("torch", "safetensors", "litert_torch", "ai_edge_quantizer", "matplotlib", "av", "skimage")
    code = ("import sys, numpy as np, edgeseg; r = edgeseg.Segmenter()(np.zeros((8, 8, 3), np.uint8)); "
            f"print(r.backend, sorted(m for m in sys.modules if m.split('.')[0] in {extras!r}))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "EDGESEG_MIRROR": str(SHARED / "models")})
    assert run.stdout.split() == ["litert", "[]"]
    assert run.stderr == ""  # LiteRT's "Created TensorFlow Lite XNNPACK delegate" line is filtered out


def test_cli_predict_imports_no_torch(tmp_path):
    """`edgeseg predict` with a zoo model starts in about a second: building the parser (all subcommands,
    `train` included) and predicting must not import torch (a 5-10 s import on a small machine)."""
    code = ("import sys; from edgeseg.cli import main; "
            f"code = main(['predict', {str(PHOTO)!r}, '-o', {str(tmp_path)!r}]); "
            "print(code, 'torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "EDGESEG_MIRROR": str(SHARED / "models")})
    assert run.stdout.split()[-2:] == ["0", "False"], run.stderr


def test_version_and_defaults_in_help(capsys):
    from edgeseg.cli import main

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"edgeseg {edgeseg.__version__}"
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "output folder (default: predictions)" in text and "(default: None)" not in text


def test_a_class_present_in_the_legend_never_reads_zero():
    from edgeseg.visualize import legend_percent

    assert (legend_percent(0.25), legend_percent(0.0005), legend_percent(1e-6)) == ("25.0%", "0.1%", "<0.1%")


def test_a_list_or_a_batch_array_gives_one_result_per_image(seg):
    image = np.asarray(Image.open(PHOTO).convert("RGB"))
    flipped = np.ascontiguousarray(image[:, ::-1])
    single = [seg(image).labels, seg(flipped).labels]
    for batch in ([image, flipped], (image, flipped), np.stack([image, flipped])):
        results = seg(batch)
        assert [r.labels.tolist() for r in results] == [s.tolist() for s in single]


def test_scores_on_request_from_the_torch_model_and_a_logits_file(dm05_exports):
    image = np.asarray(Image.open(PHOTO).convert("RGB"))
    for segmenter in (edgeseg.Segmenter("deeplabv3_mnv2_dm05_voc", backend="torch"),
                      edgeseg.Segmenter(dm05_exports["int8_logits"], threads=2)):
        plain, scored = segmenter(image), segmenter(image, scores=True)
        assert plain.scores is None and scored.scores.shape == (*image.shape[:2], 21)
        assert scored.scores.dtype == np.float32 and np.allclose(scored.scores.sum(-1), 1, atol=1e-4)
        assert np.array_equal(scored.labels, scored.scores.argmax(-1))
        assert (scored.labels == plain.labels).mean() > 0.999  # the same logits; ties aside


def test_scores_from_a_file_that_ends_in_argmax_is_one_error(seg):
    with pytest.raises(EdgesegError, match="outputs labels, not class scores"):
        seg(np.zeros((20, 20, 3), np.uint8), scores=True)


@pytest.mark.parametrize("threads", [0, 257, 2.0, "2", True])
def test_thread_counts_are_checked_in_one_place_for_the_api_and_the_cli(threads, capsys):
    # The API, LiteRT's runtime and the CLI's --threads share checks.check_threads: one range, one message.
    from edgeseg.checks import check_threads
    from edgeseg.cli import main

    with pytest.raises(EdgesegError, match=r"threads must be a whole number in 1\.\.256"):
        check_threads(threads)
    with pytest.raises(EdgesegError, match=r"threads must be a whole number in 1\.\.256"):
        edgeseg.Segmenter(threads=threads)
    if isinstance(threads, int) and not isinstance(threads, bool):
        with pytest.raises(SystemExit) as exit_info:  # argparse's own errors exit 2 from the parser
            main(["predict", str(PHOTO), "--threads", str(threads), "-o", "out"])
        assert exit_info.value.code == 2
        assert "threads must be a whole number in 1..256" in capsys.readouterr().err
