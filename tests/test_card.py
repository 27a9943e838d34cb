import json

import numpy as np
import pytest

from edgeseg.cli import main
from edgeseg.data.datasets import voc
from edgeseg.deploy.targets import VX_DELEGATE_OPS, unsupported_ops
from edgeseg.evaluation.card import COLUMNS, CardModel, card_row, markdown, measure, plot_charts, write_card
from edgeseg.zoo.registry import get_entry


def test_export_sizes_match_the_zoo_metadata(dm05_exports):
    # Calibration data changes values, never sizes: the fixture's exports have the card's byte counts.
    entry = get_entry("deeplabv3_mnv2_dm05_voc")
    assert dm05_exports["fp32"].stat().st_size == entry.measured["fp32_bytes"]
    assert dm05_exports["int8"].stat().st_size == entry.measured["int8_bytes"]
    assert dm05_exports["imx8mp"].stat().st_size == entry.measured["int8_per_tensor_bytes"]
    assert dm05_exports["imx93"].stat().st_size == entry.measured["imx93_bytes"]


def test_vx_list_check():
    assert unsupported_ops(["CONV_2D", "ARG_MAX", "CUSTOM:Foo"]) == ["CUSTOM:Foo"]
    assert "BROADCAST_TO" not in VX_DELEGATE_OPS


def test_card_from_existing_exports(voc_root, dm05_exports, dm05_model, dm05_official, tmp_path):
    out = tmp_path / "card"
    out.mkdir()
    for variant in ("fp32", "int8", "imx8mp", "imx93", "imx93_vela"):
        source = dm05_exports["imx93"].with_name("imx93_vela.tflite") if variant == "imx93_vela" \
            else dm05_exports[variant]
        (out / f"deeplabv3_mnv2_dm05_voc_{variant}.tflite").write_bytes(source.read_bytes())
    entry = get_entry("deeplabv3_mnv2_dm05_voc")
    dataset = voc(voc_root, "val", limit=3)
    fact = measure(CardModel(entry, dm05_model, dm05_official), dataset, out, calib_root=voc_root,
                   reuse_exports=True, threads=2)
    assert fact["params"] == entry.measured["params"] and fact["ops"]["total"] == entry.measured["ops"]
    assert fact["int8_float_compute_ops"] == [] and fact["vx_unsupported_ops"] == []
    assert set(fact["miou"]) == {"fp32", "int8", "int8_per_tensor", "imx93", "official_int8"}
    # Vela's estimates: the i.MX 93 file runs whole on the NPU; the official file leaves its x16 resize.
    assert fact["vela"]["imx93"]["cpu_ops"] == {} and fact["vela"]["imx93"]["npu_ms"] < 13
    assert fact["vela"]["official_int8"]["cpu_ops"] == {"RESIZE_BILINEAR": 1}
    assert np.asarray(fact["int8_confusion"]).sum() > 0
    row = card_row(entry, fact)
    assert len(row) == len(COLUMNS) and row[7] == "1.76 G" and row[8] == "0.69 M"
    assert row[11].startswith(f"{fact['vela']['imx93']['npu_ms']:.1f} ms (`--target imx93`), 0 ops on the CPU")
    assert "per-tensor (NPU, `--target imx8mp`)" in row[5] and row[6] == "513x513x3"
    text = markdown([entry], [fact], "test data")
    assert "| " + " | ".join(COLUMNS) + " |" in text and "test data" in text and "70.19" in text
    pngs = plot_charts(entry, fact, out)
    assert [p.name for p in pngs] == ["deeplabv3_mnv2_dm05_voc_per_class_iou.png",
                                      "deeplabv3_mnv2_dm05_voc_confusion_int8.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    card = write_card([entry], [fact], "test data", out)
    assert json.loads((out / "card.json").read_text())["models"][0]["name"] == entry.name
    assert card.read_text() == text


def test_card_rejects_a_non_segmentation_tflite(voc_root, classifier_tflite, tmp_path, capsys):
    for variant in ("fp32", "int8", "imx8mp"):
        (tmp_path / f"deeplabv3_mnv2_dm05_voc_{variant}.tflite").write_bytes(classifier_tflite.read_bytes())
    code = main(["card", "--data", str(voc_root), "--model", "deeplabv3_mnv2_dm05_voc", "-o", str(tmp_path),
                 "--reuse-exports", "--limit", "2"])
    assert code == 2 and "not a segmentation model" in capsys.readouterr().err


@pytest.mark.parametrize("flag", [[], ["--delegate", "/nonexistent/libvx_delegate.so"]])
def test_benchmark_rejects_bad_files(classifier_tflite, flag, capsys):
    assert main(["benchmark", str(classifier_tflite), "--runs", "1", *flag]) == 2
    err = capsys.readouterr().err
    assert ("libvx_delegate" in err) if flag else ("not a segmentation model" in err)


def test_card_header_names_each_models_input_handling():
    from dataclasses import replace

    from edgeseg.evaluation.card import _input_handling
    from edgeseg.zoo.registry import Preprocess

    zoo = get_entry("deeplabv3_mnv2_dm05_voc")
    assert _input_handling([zoo]) == "513x513, pad with the mean pixel"
    tuned = replace(zoo, name="camvid", preprocess=Preprocess(input_size=(545, 721), upscale=True))
    assert _input_handling([tuned]) == "545x721, smaller frames enlarged to fit, pad with the mean pixel"
    assert _input_handling([zoo, tuned]).startswith("deeplabv3_mnv2_dm05_voc: 513x513")
