import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from edgeseg.cli import main
from edgeseg.voc import VOC_CLASSES

SKIMAGE = pytest.importorskip("skimage.data")


def _demo(name):
    return os.path.join(SKIMAGE.data_dir, name)


def test_predict_labels_the_person_and_the_cat(tmp_path, capsys):
    assert main(["predict", _demo("astronaut.png"), _demo("chelsea.png"), "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "astronaut.png: " in out and "chelsea.png: cat" in out  # cat is the largest class
    with Image.open(tmp_path / "astronaut_labels.png") as labels:
        assert labels.mode == "P" and labels.size == (512, 512)
        astronaut = np.asarray(labels)
    assert (astronaut == VOC_CLASSES.index("person")).mean() > 0.3
    with Image.open(tmp_path / "chelsea_labels.png") as labels:
        assert (np.asarray(labels) == VOC_CLASSES.index("cat")).mean() > 0.5
    with Image.open(tmp_path / "chelsea_overlay.png") as overlay:
        assert overlay.mode == "RGB" and overlay.size[0] > 451  # image plus legend panel
    assert not list(tmp_path.glob(".*part"))  # no temp files left behind


def test_predict_with_the_official_tflite_backend(tmp_path, capsys):
    assert main(["predict", _demo("chelsea.png"), "--backend", "litert", "-o", str(tmp_path)]) == 0
    assert "chelsea.png: cat" in capsys.readouterr().out


def test_evaluate_writes_json(voc_root, dm05_official, tmp_path, capsys):
    report = tmp_path / "r.json"
    code = main(["evaluate", "--voc-root", str(voc_root), "--tflite", str(dm05_official),
                 "--limit", "5", "--json", str(report)])
    assert code == 0
    out = capsys.readouterr().out
    assert "mIoU" in out and "person" in out and "images/s" in out
    data = json.loads(report.read_text())
    assert data["num_images"] == 5 and len(data["per_class_iou"]) == 21
    assert 0 < data["miou"] <= 100


def _bad_voc(voc_root, tmp_path):
    root = tmp_path / "VOC"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    ids = [line for line in (voc_root / "ImageSets/Segmentation/val.txt").read_text().split()][:3]
    for i in ids:
        shutil.copy(voc_root / "JPEGImages" / f"{i}.jpg", root / "JPEGImages")
        shutil.copy(voc_root / "SegmentationClass" / f"{i}.png", root / "SegmentationClass")
    (root / "JPEGImages" / f"{ids[1]}.jpg").write_bytes(b"corrupt")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids))
    return root


def test_evaluate_stops_or_skips_on_a_bad_file(voc_root, dm05_official, tmp_path, capsys):
    root = _bad_voc(voc_root, tmp_path)
    args = ["evaluate", "--voc-root", str(root), "--tflite", str(dm05_official)]
    assert main(args) == 2
    assert "cannot read image" in capsys.readouterr().err
    assert main([*args, "--skip-bad"]) == 0
    out = capsys.readouterr()
    assert "2 images" in out.out and "1 skipped" in out.out and "warning: skipped" in out.err


@pytest.mark.parametrize(
    "args,message",
    [
        (["predict", "missing.jpg"], "missing.jpg: no such file"),
        (["predict", "x.jpg", "--model", "nope"], "unknown model 'nope'"),
        (["evaluate", "--voc-root", "/nonexistent"], "no such folder"),
        (["predict", "x.jpg", "--tflite", "a.tflite", "--backend", "torch"], "--tflite runs with LiteRT"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "x.jpg")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_not_a_segmentation_tflite_via_cli(classifier_tflite, tmp_path, capsys):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.jpg")
    assert main(["predict", str(tmp_path / "x.jpg"), "--tflite", str(classifier_tflite)]) == 2
    assert "not a segmentation model" in capsys.readouterr().err


def test_console_script_prints_no_traceback(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    result = subprocess.run([sys.executable, "-m", "edgeseg.cli", "predict", str(bad), "-o", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "bad.png: cannot read image" in result.stderr and "Traceback" not in result.stderr


def test_bad_mask_label_is_one_line_and_skippable(voc_root, dm05_official, tmp_path, capsys):
    root = _bad_voc(voc_root, tmp_path)
    first = (root / "ImageSets/Segmentation/val.txt").read_text().split()[0]
    (root / "JPEGImages" / f"{first}.jpg").write_bytes((voc_root / "JPEGImages" / f"{first}.jpg").read_bytes())
    mask_path = root / "SegmentationClass" / f"{first}.png"
    with Image.open(mask_path) as mask:
        values = np.asarray(mask).copy()
        palette = mask.getpalette()
    values[0, 0] = 42
    broken = Image.fromarray(values, mode="P")
    broken.putpalette(palette)
    broken.save(mask_path)
    args = ["evaluate", "--voc-root", str(root), "--tflite", str(dm05_official)]
    assert main(args) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the progress bar
    assert last.startswith("edgeseg: error:") and f"{first}.png: labels [42] outside 0..20" in last
    assert "Traceback" not in err
    assert main([*args, "--skip-bad"]) == 0  # the corrupt image and the bad mask are both skipped
    assert "1 images" in capsys.readouterr().out


def test_outputs_that_are_folders_fail_before_any_work(voc_root, dm05_official, tmp_path, capsys):
    code = main(["evaluate", "--voc-root", str(voc_root), "--tflite", str(dm05_official), "--json", str(tmp_path)])
    assert code == 2 and "is a folder; expected a file name" in capsys.readouterr().err


def test_predict_keeps_going_past_a_bad_image_and_refuses_clashing_names(tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    code = main(["predict", str(bad), _demo("chelsea.png"), "-o", str(tmp_path / "out"), "--backend", "litert"])
    captured = capsys.readouterr()
    assert code == 2 and "chelsea.png: cat" in captured.out
    assert "bad.png: cannot read image" in captured.err and "1 of 2 images could not be read" in captured.err
    assert (tmp_path / "out" / "chelsea_overlay.png").is_file()
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "sub" / "chelsea.jpg")
    assert main(["predict", _demo("chelsea.png"), str(tmp_path / "sub" / "chelsea.jpg")]) == 2
    assert "several images are named 'chelsea'" in capsys.readouterr().err


def test_models_lists_entries_and_local_weights(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "deeplabv3_mnv2_dm05_voc" in out and "deeplabv3_mnv2_dm10_voc" in out and "present" in out


@pytest.mark.parametrize("args", [["evaluate", "--voc-root", "x", "--limit", "0"],
                                  ["predict", "x.jpg", "--threads", "0"],
                                  ["export", "--calib-count", "-1"],
                                  ["benchmark", "x.tflite", "--runs", "0"]])
def test_numeric_options_are_checked_by_the_parser(args, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
    err = capsys.readouterr().err
    assert info.value.code == 2 and ("must be 1..1000000000" in err or "must be 1..256" in err)
    assert err.count("\n") == 1 and "usage" not in err  # one line, the range named


def test_missing_optional_package_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "litert_torch", None)  # as if the `export` extra were not installed
    assert main(["export", "--precision", "fp32"]) == 2
    err = capsys.readouterr().err
    assert "needs litert_torch: pip install 'edgeseg[export]'" in err and "Traceback" not in err
