"""The measured series kept as data under docs/ and the tables the docs show from them must agree: a rerun that
rewrites a JSON file without the docs (or the reverse) fails here."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def table_after(text: str, marker: str) -> list[list[str]]:
    """The body rows of the first Markdown table after `marker`, as cells without emphasis or code marks."""
    start = text.index(marker)
    lines = text[start:].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[first + 2:]:  # past the header and its | --- | line
        if not line.startswith("|"):
            break
        rows.append([re.sub(r"[*`]", "", cell).strip() for cell in line.strip().strip("|").split("|")])
    return rows


def _grid(rows: list[dict]) -> dict[tuple, str]:
    return {(row["lr_given"], row["batch"]): f"{row['val_miou']:.2f}" for row in rows}


@pytest.mark.parametrize("filename, marker", [
    ("finetune_robustness.json", "**Robustness table**"),
    ("finetune_robustness_bn_train.json", "| `--bn train`, lr \\ batch"),
])
def test_finetune_tables_show_their_json(filename, marker):
    data = json.loads((DOCS / filename).read_text())
    text = (DOCS / "training.md").read_text()
    assert f"{data['baseline_val_miou']:.2f}" in text
    grid = _grid(data["rows"])
    batches = sorted({batch for _, batch in grid})
    shown = {}
    for cells in table_after(text, marker):
        lr = None if cells[0].startswith("no") else float(cells[0])  # "no --lr (0.001)": the default rate
        shown.update({(lr, batch): value for batch, value in zip(batches, cells[1:], strict=True)})
    assert shown == grid


@pytest.mark.parametrize("model, marker, vela_col, miou_col", [
    ("deeplabv3_mnv2_dm05_voc", "### dm 0.5", 4, 7),
    ("deeplabv3_mnv2_dm10_voc", "### dm 1.0", 2, 5),
    ("deeplab_edgetpu_slim_cityscapes", "### dm 1.0", 2, 5),
])
def test_npu_tables_show_their_json(model, marker, vela_col, miou_col):
    rows = json.loads((DOCS / "npu_tails.json").read_text())[model]["rows"]
    table = table_after((DOCS / "npu.md").read_text(), marker)
    if model != "deeplabv3_mnv2_dm05_voc":  # one table for both: its first cell names the model
        table = [cells for cells in table if cells[0] == ("dm 1.0" if "dm10" in model else "Cityscapes")]
    shown = [(cells[vela_col], cells[miou_col]) for cells in table]
    assert shown == [(f"{row['vela_npu_ms']:.1f}", f"{row['miou']:.2f}") for row in rows]


def test_frozen_bn_probe_table_shows_its_json():
    rows = json.loads((DOCS / "frozen_bn_probe.json").read_text())["rows"]
    trained = {"conv": "convs", "affine": "convs, scale and shift"}
    expected = [(f"{row['row_norm']:g}", f"{row['lr']:g}", trained[row["trained"]], f"{row['val_miou']:.2f}")
                for row in rows]
    table = table_after((DOCS / "training.md").read_text(), "| row norm R |")
    shown = [(cells[0].split()[0], cells[1], cells[2], cells[3]) for cells in table]  # "1.414 (the old norm)"
    assert shown == expected


def test_new_classes_table_shows_its_json():
    rows = json.loads((DOCS / "new_classes_batches.json").read_text())["rows"]
    columns = [("frozen", 0.001), ("frozen", 0.007), ("train", 0.007)]
    expected = {(row["batch"], (row["bn"], row["lr"])): f"{row['val_miou_per_epoch'][-1]:.2f}" for row in rows}
    shown = {}
    for cells in table_after((DOCS / "training.md").read_text(), "| batch | `--bn frozen`, lr 0.001 |"):
        shown.update({(int(cells[0]), column): value for column, value in zip(columns, cells[1:], strict=True)})
    assert shown == expected
