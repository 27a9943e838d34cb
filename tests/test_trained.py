"""The zoo entries edgeseg trained: shipped weights, their figures on CamVid, and the recipes behind them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from edgeseg.cli import main as cli_main
from edgeseg.data.datasets import open_dataset
from edgeseg.data.labelsets import CAMVID_CLASSES
from edgeseg.evaluation.evaluate import evaluate
from edgeseg.runtimes.factory import open_model
from edgeseg.training import recipes
from edgeseg.training.command import main as train_main
from edgeseg.training.config import new_config
from edgeseg.zoo import weights as zoo_weights
from edgeseg.zoo.build import pretrained_state_dict, read_verified
from edgeseg.zoo.registry import TRAINED_DIR, get_entry, list_models
from edgeseg.zoo.weights import resolve_weights, sha256_of

CAMVID = Path(__file__).resolve().parents[2] / "shared" / "camvid"
TRAINED = [name for name in list_models() if get_entry(name).weights.bundled]
FEW = 8  # CamVid val frames the registry's miou_fp32_first8 was measured on


def test_edgeseg_ships_its_camvid_models():
    assert {"deeplab_edgetpu_slim_camvid", "deeplab_edgetpu_slim_camvid_545x721",
            "deeplabv3_mnv2_dm05_camvid"} <= set(TRAINED)
    shipped = sum(path.stat().st_size for path in TRAINED_DIR.glob("*.safetensors"))
    assert shipped < 15e6  # the budget for the repository's growth


@pytest.mark.parametrize("name", TRAINED)
def test_shipped_weights_match_their_digest_and_load(name):
    entry = get_entry(name)
    path = resolve_weights(entry.weights)
    assert path.parent == TRAINED_DIR and path.stat().st_size == entry.weights.num_bytes
    assert sha256_of(path) == entry.weights.sha256
    tensors, metadata = read_verified(path)  # the digest over every tensor, written with them
    assert {value.dtype for value in tensors.values()} == {torch.float16}
    assert tuple(json.loads(metadata["class_names"])) == entry.class_names == CAMVID_CLASSES
    assert all(value.dtype == torch.float32 for value in pretrained_state_dict(entry).values())


@pytest.mark.parametrize("name", TRAINED)
def test_trained_entries_score_what_the_registry_records(name):
    entry = get_entry(name)
    opened = open_model(name)  # no official file: PyTorch FP32, at the entry's input handling
    assert opened.backend == "torch" and opened.runtime.input_size == entry.preprocess.input_size
    result = evaluate(opened.runtime, open_dataset(CAMVID, "val", FEW), entry.class_names)
    # Float kernels differ between CPUs by far less than this; a wrong weight or input handling moves it by points.
    assert abs(100 * result.miou - entry.measured["miou_fp32_first8"]) < 0.3


def test_a_damaged_or_missing_shipped_file_is_one_line(tmp_path, monkeypatch, capsys):
    name = "deeplabv3_mnv2_dm05_camvid"
    filename = get_entry(name).weights.filename
    damaged = bytearray((TRAINED_DIR / filename).read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    (tmp_path / filename).write_bytes(bytes(damaged))
    monkeypatch.setattr(zoo_weights, "TRAINED_DIR", tmp_path)
    frame = next((CAMVID / "val" / "images").glob("*.jpg"))
    argv = ["predict", str(frame), "--model", name, "-o", str(tmp_path / "out")]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "checksum mismatch" in err and "reinstall" in err and filename in err and len(err.splitlines()) == 1
    (tmp_path / filename).unlink()
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "missing" in err and len(err.splitlines()) == 1


def test_a_trained_entry_runs_from_a_fresh_install_without_shared(tmp_path):
    """No mirror, an empty cache: the shipped weights are all `predict` needs (the issue's 'done means')."""
    frame = tmp_path / "frame.jpg"
    shutil.copy(next((CAMVID / "val" / "images").glob("*.jpg")), frame)
    env = {k: v for k, v in os.environ.items() if k != "EDGESEG_MIRROR"}
    env["EDGESEG_HOME"] = str(tmp_path / "home")
    proc = subprocess.run([sys.executable, "-m", "edgeseg.cli", "predict", str(frame), "--model",
                           "deeplab_edgetpu_slim_camvid", "-o", str(tmp_path / "out")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = {path.name for path in (tmp_path / "out").iterdir()}
    assert {"frame_overlay.png", "frame_labels.png"} <= written, written
    assert "road" in proc.stdout and not (tmp_path / "home").exists()  # nothing downloaded or cached


# Recipes -------------------------------------------------------------------------------------------

def test_unknown_recipe_is_one_line_listing_the_known_ones(capsys):
    assert train_main(["--recipe", "no_such_model", "--data", str(CAMVID)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown recipe 'no_such_model'" in err
    assert all(name in err for name in recipes.known_recipes())


def test_a_recipe_fixes_its_options(capsys):
    assert train_main(["--recipe", "deeplabv3_mnv2_dm05_camvid", "--data", str(CAMVID), "--lr", "0.1"]) == 2
    assert "--recipe sets every training option; drop --lr" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["deeplab_edgetpu_slim_camvid", "deeplabv3_mnv2_dm05_camvid"])
def test_shipped_recipes_are_complete_runs_on_camvid(name, tmp_path):
    recipe = recipes.load_recipe(name)
    assert set(recipe.options) == set(recipes.FIXED_BY_RECIPE) - {"epochs", "max_steps", "val_limit"} - (
        set() if recipe.options.get("teacher") else {"teacher", "teacher_input_size", "distill_weight"})
    config = new_config({**recipe.options, "epochs": recipe.stages[0], "data": CAMVID, "recipe": name},
                        tmp_path / "run")  # every check a real run makes before training
    assert config.class_names == CAMVID_CLASSES and config.lr == recipe.options["lr"]
    assert not config.bn_frozen()  # pinned, so a change of --bn auto's rule cannot change the recipe
    result = recipe.result
    assert result["epochs"] == recipe.stages[-1] and 0 < result["val_miou"] < 100
    assert get_entry(name).recipe.startswith(f"edgeseg train --recipe {name} ")
    assert get_entry(name).recipe_name == name


def test_every_recipe_name_in_the_zoo_is_shipped():
    named = {get_entry(n).recipe_name for n in list_models()} - {None}
    assert named and named <= set(recipes.known_recipes())


TINY = {"classes": "background,person", "crop": 97, "batch_size": 2, "max_steps": 2, "val_limit": 1, "lr": 0.001,
        "bn": "train"}


def _tiny_recipe(folder: Path, monkeypatch) -> None:
    (folder / f"tiny{recipes.RECIPE_SUFFIX}").write_text(json.dumps(
        {"data": "VOC", "options": TINY, "epochs": [1, 3], "result": {}}))
    monkeypatch.setattr(recipes, "TRAINED_DIR", folder)


def test_a_recipe_runs_its_stages_and_a_resume_finishes_them(voc_root, tmp_path, monkeypatch, capsys):
    _tiny_recipe(tmp_path, monkeypatch)
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert train_main(["--no-progress", "--recipe", "tiny", "--data", str(voc_root), "-o", str(straight)]) == 0
    out = capsys.readouterr().out
    assert "recipe tiny: 3 epochs, best val mIoU" in out and "wall clock" in out
    log = [json.loads(line) for line in (straight / "log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in log if "val_miou" in row] == [1, 2, 3]
    # Stage 1 decays over 1 epoch, then the decay is stretched to 3 from where it stopped: the rate rises again.
    rates = [row["lr"] for row in log if "lr" in row]
    assert rates[2] > rates[1] and rates[-1] < rates[2]
    assert json.loads((straight / "config.json").read_text())["recipe"] == "tiny"

    argv = ["--no-progress", "--recipe", "tiny", "--data", str(voc_root), "-o", str(stopped)]
    assert train_main([*argv, "--stop-after-epoch", "2"]) == 0
    assert [json.loads(line)["epoch"] for line in (stopped / "log.jsonl").read_text().splitlines()
            if "val_miou" in line][-1] == 2
    assert train_main(["--no-progress", "--resume", str(stopped)]) == 0  # goes on through the last stage
    a, b = load_file(straight / "last.safetensors"), load_file(stopped / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_card_takes_a_wildcard_and_refuses_one_that_matches_nothing(tmp_path, capsys):
    assert cli_main(["card", "--data", str(CAMVID), "--model", "*no_such*", "--limit", "1",
                     "-o", str(tmp_path / "card")]) == 2
    err = capsys.readouterr().err.strip()
    assert "matches no zoo model" in err and len(err.splitlines()) == 1


def test_what_a_trained_entry_cannot_do_is_one_line(tmp_path, capsys):
    frame = next((CAMVID / "val" / "images").glob("*.jpg"))
    (tmp_path / "libdelegate.so").write_bytes(b"not loaded: refused before")
    for extra in (["--backend", "litert"], ["--delegate", str(tmp_path / "libdelegate.so")]):
        assert cli_main(["predict", str(frame), "--model", "deeplabv3_mnv2_dm05_camvid", "-o", str(tmp_path),
                         *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert "ships as PyTorch weights" in err and "edgeseg export --model" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("name", TRAINED)
def test_params_and_ops_match_the_registry(name):
    from edgeseg.evaluation.complexity import count_ops, count_params
    from edgeseg.zoo.build import build_model

    entry = get_entry(name)
    model = build_model(entry)
    assert count_params(model) == entry.measured["params"]
    assert count_ops(model, entry.preprocess.input_size).total == entry.measured["ops"]
