import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeseg.cli import main
from edgeseg.data.voc import VOC_CLASSES

REPO = Path(__file__).resolve().parents[1]

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
    code = main(["evaluate", "--data", str(voc_root), "--tflite", str(dm05_official),
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
    args = ["evaluate", "--data", str(root), "--tflite", str(dm05_official)]
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
        (["evaluate", "--data", "/nonexistent"], "no such folder"),
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
    args = ["evaluate", "--data", str(root), "--tflite", str(dm05_official)]
    assert main(args) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the progress bar
    assert last.startswith("edgeseg: error:") and f"{first}.png: labels [42] outside 0..20" in last
    assert "Traceback" not in err
    assert main([*args, "--skip-bad"]) == 0  # the corrupt image and the bad mask are both skipped
    assert "1 images" in capsys.readouterr().out


def test_outputs_that_are_folders_fail_before_any_work(voc_root, dm05_official, tmp_path, capsys):
    code = main(["evaluate", "--data", str(voc_root), "--tflite", str(dm05_official), "--json", str(tmp_path)])
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


@pytest.mark.parametrize("args", [["evaluate", "--data", "x", "--limit", "0"],
                                  ["predict", "x.jpg", "--threads", "0"],
                                  ["export", "--calib-count", "-1"],
                                  ["benchmark", "x.tflite", "--runs", "0"]])
def test_numeric_options_are_checked_by_the_parser(args, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
    err = capsys.readouterr().err
    assert info.value.code == 2 and ("must be 1..1000000000" in err or "in 1..256" in err)
    assert err.count("\n") == 1 and "usage" not in err  # one line, the range named


def test_missing_optional_package_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "litert_torch", None)  # as if the `export` extra were not installed
    assert main(["export", "--precision", "fp32"]) == 2
    err = capsys.readouterr().err
    assert "needs litert_torch: pip install 'edgeseg[export]'" in err and "Traceback" not in err


# One vocabulary across commands (issue 10) ---------------------------------------------------------------

def _command_parsers():
    import argparse

    from edgeseg.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, sub.choices


def test_every_option_has_help_and_its_default_is_shown():
    import argparse

    parser, commands = _command_parsers()
    for name, command in {"edgeseg": parser, **commands}.items():
        text = command.format_help()
        for action in command._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest} has no help text"
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                shown = command._get_formatter()._get_help_string(action) % {"default": action.default}
                assert "default" in shown.lower(), f"{name} {action.option_strings}: default not shown"
        assert "--voc-root" not in text and "--calib-voc-root" not in text and "--calib-split" not in text


def test_one_name_for_the_data_folder_and_the_output():
    _, commands = _command_parsers()
    for name in ("evaluate", "export", "card", "train"):
        assert "--data" in commands[name]._option_string_actions, name
    for name in ("predict", "export", "card"):
        assert {"-o", "--output"} <= set(commands[name]._option_string_actions), name


def test_old_spellings_are_hidden_aliases():
    from edgeseg.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["evaluate", "--voc-root", "d"]).data == parse(["evaluate", "--data", "d"]).data
    card = parse(["card", "--voc-root", "d", "--calib-voc-root", "c"])
    assert (str(card.data), str(card.calib_data)) == ("d", "c")
    old = parse(["export", "--calib-voc-root", "c", "--calib-split", "val", "--calib-count", "3", "--output",
                 "logits", "-o", "m.tflite"])
    new = parse(["export", "--data", "c", "--split", "val", "--calib-count", "3", "--output-kind", "logits",
                 "--output", "m.tflite"])
    for args in (old, new):
        assert (str(args.data), args.split, args.calib_count, args.output_kind, str(args.output)) == \
            ("c", "val", 3, "logits", "m.tflite")
    assert parse(["export", "--output", "argmax"]).output is None  # the old meaning: the kind, not a file
    assert str(parse(["export", "-o", "argmax"]).output) == "argmax"
    assert parse(["-v", "models"]).verbose and parse(["models", "-v"]).verbose and not parse(["models"]).verbose


def test_old_data_spelling_still_evaluates(voc_root, dm05_official, capsys):
    assert main(["evaluate", "--voc-root", str(voc_root), "--tflite", str(dm05_official), "--limit", "2"]) == 0
    assert "mIoU" in capsys.readouterr().out


def test_required_data_is_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        main(["evaluate"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert "the following arguments are required: --data" in err and "--voc-root" not in err


# Quiet by default ----------------------------------------------------------------------------------------

def test_third_party_output_is_diverted_and_errors_are_one_line(capfd):
    from edgeseg.errors import EdgesegError
    from edgeseg.logs import progress_stream, set_verbose, third_party_output

    with third_party_output("conversion"):
        os.write(2, b"native noise\n")
        print("python noise", file=sys.stderr)
        print("stdout noise")
        print("edgeseg progress", file=progress_stream())
    out, err = capfd.readouterr()
    assert "noise" not in out + err and "edgeseg progress" in err
    with pytest.raises(EdgesegError) as info, third_party_output("conversion"):
        os.write(2, b"converter says why\n")
        raise RuntimeError("lowering failed\nmore detail")
    message = str(info.value)
    assert message.startswith("conversion failed: RuntimeError: lowering failed (full log: ") and "\n" not in message
    log = message.split("full log: ")[1].split(";")[0]
    text = open(log).read()
    os.remove(log)
    assert "converter says why" in text and "more detail" in text
    with pytest.raises(EdgesegError, match="^bad data$"), third_party_output():
        raise EdgesegError("bad data")  # edgeseg's own errors pass through unchanged
    set_verbose(True)
    try:
        with third_party_output():
            os.write(2, b"shown with -v\n")
    finally:
        set_verbose(False)
    assert "shown with -v" in capfd.readouterr().err


def _plain_folder(tmp_path, count):
    from pathlib import Path

    camvid = Path(__file__).resolve().parents[1].parent / "shared" / "camvid" / "val" / "images"
    folder = tmp_path / "photos"
    folder.mkdir()
    for source in sorted(camvid.glob("*.jpg"))[:count]:
        shutil.copy(source, folder / source.name)
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_open_images_reads_plain_folders_and_datasets_without_masks(tmp_path, voc_root):
    from edgeseg.data.datasets import open_images
    from edgeseg.errors import EdgesegError

    folder = _plain_folder(tmp_path, 3)
    paths, description = open_images(folder, "train", limit=2)
    assert [p.name for p in paths] == sorted(p.name for p in folder.glob("*.jpg"))[:2]
    assert description == f"image folder {folder}"
    (tmp_path / "pair" / "images").mkdir(parents=True)  # images/ with no masks/: fine for calibration
    shutil.copy(paths[0], tmp_path / "pair" / "images")
    assert open_images(tmp_path / "pair")[0] == [tmp_path / "pair" / "images" / paths[0].name]
    assert len(open_images(voc_root, "train", limit=3)[0]) == 3
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgesegError, match="no images found"):
        open_images(tmp_path / "empty")
    with pytest.raises(EdgesegError, match="no such folder"):
        open_images(tmp_path / "missing")


@pytest.mark.slow
def test_export_calibrates_on_a_plain_folder_and_prints_only_its_own_lines(tmp_path):
    folder = _plain_folder(tmp_path, 3)
    out = tmp_path / "m.tflite"
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    result = subprocess.run([sys.executable, "-m", "edgeseg.cli", "export", "--data", str(folder),
                             "--calib-count", "2", "--input-size", "65", "-o", str(out)],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert out.is_file() and f"calibrated on 2 images of image folder {folder}" in result.stdout
    assert result.stdout.count("\n") == 6  # wrote, input, output, ops, tensor types, calibration
    lines = [line.strip() for line in result.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert all(line.startswith(("calibration", "conversion")) for line in lines), result.stderr


def test_every_flag_the_docs_show_is_one_the_command_takes():
    # The README once told `train` to take --split, which it does not: each `edgeseg COMMAND ... --flag` in the
    # README and docs/ must name an option of that command (old spellings count: they still work).
    import re

    from edgeseg.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    known = {name: {s for a in p._actions for s in a.option_strings} for name, p in commands.items()}
    known_global = {s for a in parser._actions for s in a.option_strings}
    texts = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    wrong = []
    for path in texts:
        # a command line: `edgeseg COMMAND ...` up to the end of the line, following backslash continuations
        for match in re.finditer(r"edgeseg (\w+)((?:[^\n`|]|\\\n)*)", path.read_text()):
            command, rest = match.group(1), match.group(2).split("#")[0]
            if command not in known:
                continue
            for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", rest):
                if flag not in known[command] | known_global:
                    wrong.append(f"{path.name}: edgeseg {command} {flag}")
    assert not wrong, wrong
