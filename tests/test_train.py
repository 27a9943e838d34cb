"""`edgeseg train`: fine-tuning on real VOC images, exact resume, 2-process DDP, bad data up front."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from edgeseg.cli import main as cli_main
from edgeseg.data.datasets import RemappedDataset, label_lut, load_mask, open_dataset, resolve_label_map
from edgeseg.data.voc import VOC_CLASSES
from edgeseg.errors import EdgesegError
from edgeseg.evaluation.evaluate import evaluate
from edgeseg.models import deeplabv3_mobilenet_v2
from edgeseg.runtimes.torch import TorchRuntime
from edgeseg.training import (
    EpochBatches,
    TrainCrops,
    add_train_parser,
    augment,
    cmd_train,
    evaluate_remapped_pretrained,
    fold_batchnorm,
    insert_batchnorm,
    main,
    resolve_classes,
)
from edgeseg.training.batchnorm import ConvBNAct
from edgeseg.zoo.build import create_model, load_checkpoint, read_verified

PERSON = VOC_CLASSES.index("person")
NAMES = ("background", "person")
RUN_FILES = {"config.json", "log.jsonl", "last.safetensors", "best.safetensors", "state.pt"}


def _person_ids(voc_root: Path, split: str, count: int) -> list[str]:
    """The first `count` ids of a split whose masks are 15-60% person (so both classes are learnable)."""
    ids = []
    for line in (voc_root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split():
        share = (load_mask(voc_root / "SegmentationClass" / f"{line}.png") == PERSON).mean()
        if 0.15 < share < 0.6:
            ids.append(line)
        if len(ids) == count:
            return ids
    raise AssertionError(f"not enough person images in {split}")


@pytest.fixture(scope="module")
def tiny_voc(voc_root, tmp_path_factory) -> Path:
    """A VOCdevkit folder linking 8 real train and 2 real val images (with people) of the shared set."""
    root = tmp_path_factory.mktemp("tinyvoc")
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    for name in ("JPEGImages", "SegmentationClass"):
        (root / name).symlink_to(voc_root / name)
    for split, count in (("train", 8), ("val", 2)):
        ids = _person_ids(voc_root, split, count)
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def _train(*args) -> int:
    return main(["--no-progress", *map(str, args)])


def _tiny_args(data, out, *extra):
    return ["--data", data, "--classes", "background,person", "--crop", 97, "--batch-size", 2,
            "--max-steps", 2, "--val-limit", 1, "--lr", 0.001, "--out", out, *extra]


# Pieces ------------------------------------------------------------------------------------------

def test_classes_and_the_voc_label_map(tmp_path, voc_root):
    assert resolve_classes("background, person", "deeplabv3_mnv2_dm05_voc") == NAMES
    assert resolve_classes("3", "deeplabv3_mnv2_dm05_voc") == ("class_0", "class_1", "class_2")
    assert resolve_classes(None, "deeplabv3_mnv2_dm05_voc") == VOC_CLASSES
    assert resolve_label_map("auto", NAMES, voc_root) == "voc"
    assert resolve_label_map("auto", NAMES, tmp_path) == "none"  # not a VOCdevkit folder
    assert resolve_label_map("auto", VOC_CLASSES, voc_root) == "none"
    lut = label_lut("voc", NAMES)
    assert lut[PERSON] == 1 and lut[255] == 255 and lut[0] == 0
    assert (np.delete(lut[:21], PERSON) == 0).all()
    lut3 = label_lut("voc", ("background", "car", "person"))
    assert (lut3[VOC_CLASSES.index("car")], lut3[PERSON], lut3[VOC_CLASSES.index("dog")]) == (1, 2, 0)
    with pytest.raises(Exception, match="first class must be 'background'"):
        resolve_label_map("auto", ("person", "background"), voc_root)
    with pytest.raises(Exception, match="twice"):
        resolve_classes("person,person", "deeplabv3_mnv2_dm05_voc")


def test_augment_pads_with_the_mean_pixel_and_ignore_label(rng):
    image = np.full((20, 30, 3), 255, dtype=np.uint8)
    mask = np.ones((20, 30), dtype=np.uint8)
    for seed in range(5):
        pixels, labels = augment(image, mask, np.random.default_rng(seed), 97)
        assert pixels.shape == (97, 97, 3) and labels.shape == (97, 97) and pixels.dtype == np.float32
        assert set(np.unique(labels)) == {1, 255}
        assert np.all(pixels[labels == 255] == 0.0) and np.allclose(pixels[labels == 1], 1.0)
    a = augment(image, mask, np.random.default_rng([1, 2, 3]), 33)
    b = augment(image, mask, np.random.default_rng([1, 2, 3]), 33)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_batches_shard_the_global_batch_across_ranks():
    one = list(EpochBatches(10, 4, 2, seed=0, epoch=1, rank=0, world=1))
    r0 = list(EpochBatches(10, 4, 2, seed=0, epoch=1, rank=0, world=2))
    r1 = list(EpochBatches(10, 4, 2, seed=0, epoch=1, rank=1, world=2))
    assert [sorted(a + b) for a, b in zip(r0, r1, strict=True)] == [sorted(x) for x in one]
    assert list(EpochBatches(10, 4, 2, seed=0, epoch=2, rank=0, world=1)) != one


def test_the_cli_hook_registers_train():
    parser = argparse.ArgumentParser()
    add_train_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--data", "x", "--classes", "background,person"])
    assert args.func is cmd_train and args.classes == "background,person" and args.workers == 1


def test_batchnorm_insertion_is_an_identity_and_folds_back_exactly(tiny_voc):
    train = RemappedDataset(open_dataset(tiny_voc, "train"), label_lut("voc", NAMES), NAMES)
    crops = TrainCrops(train, 97, seed=0)
    x, y = (torch.stack(t) for t in zip(*[crops[(1, i)] for i in range(4)], strict=True))
    plain = create_model("deeplabv3_mnv2_dm05_voc", class_names=NAMES).eval()
    model = insert_batchnorm(create_model("deeplabv3_mnv2_dm05_voc", class_names=NAMES),
                             [crops[(0, i)][0][None] for i in range(2)], frozen=False).eval()
    with torch.no_grad():
        reference, same = plain(x), model(x)
    assert (same - reference).abs().max() < 1e-4 * reference.abs().max()  # the same function at the start
    assert sum(isinstance(m, ConvBNAct) for m in model.modules()) == 54  # every conv but the classifier

    # Train with batch statistics, then fold: the plain zoo architecture computes what the model computed.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    for _ in range(3):
        loss = F.cross_entropy(model(x), y, ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    folded = fold_batchnorm(model)
    assert folded.state_dict().keys() == plain.state_dict().keys()
    with torch.no_grad():
        # Eval mode written out as conv -> batch norm -> activation, layer by layer, as the reference.
        for layer in (m for m in model.modules() if isinstance(m, ConvBNAct)):
            layer.forward = lambda t, m=layer: m.act(m.bn(m.conv(t)))
        trained, deployed = model(x), folded.eval()(x)
    assert trained.abs().max() > 0 and (deployed - trained).abs().max() < 1e-4 * trained.abs().max()


def test_a_model_built_from_scratch_trains_with_batchnorm():
    torch.manual_seed(0)
    model = insert_batchnorm(deeplabv3_mobilenet_v2(width_mult=0.5, num_classes=3), frozen=False).train()
    x = torch.rand(4, 3, 65, 65) * 2 - 1
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.007, momentum=0.9)
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all() and losses[-1] < 0.9 * losses[0], losses


# Bad input ---------------------------------------------------------------------------------------

def _folder(root: Path, masks: dict[str, np.ndarray]) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name, mask in masks.items():
        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(mask.astype(np.uint8), mode="L").save(root / "masks" / f"{name}.png")
    return root


def test_bad_labels_are_reported_before_training(tmp_path, capsys):
    ok = np.zeros((40, 40))
    bad = ok.copy()
    bad[0, 0] = 30
    data = tmp_path / "data"
    _folder(data / "train", {"a": ok, "b": bad, "c": np.full((30, 40), 1), "d": ok + 255})
    _folder(data / "val", {"a": ok})
    out = tmp_path / "run"
    assert _train("--data", data, "--classes", "2", "--out", out) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "2 of 4 image/mask pairs are bad" in err
    assert "b.png: labels [30]" in err and "c.png: mask is 40x30, image is 40x40" in err
    assert not (out / "state.pt").exists() and not (out / "log.jsonl").exists()


def test_missing_data_and_bad_options_are_one_line_errors(tmp_path, tiny_voc, capsys):
    assert _train("--data", tmp_path / "nope", "--out", tmp_path / "run") == 2
    assert capsys.readouterr().err.strip() == f"edgeseg: error: {tmp_path / 'nope'}: no such folder"
    single = _folder(tmp_path / "single", {"a": np.zeros((40, 40))})
    assert _train("--data", single, "--classes", "2", "--out", tmp_path / "run") == 2
    assert "no separate val split" in capsys.readouterr().err
    for option in ("--seed", "--momentum", "--weight-decay"):
        assert _train("--data", tiny_voc, option, "-1", "--out", tmp_path / "run") == 2
        assert "must be 0 or more" in capsys.readouterr().err
    assert _train("--classes", "2") == 2
    assert "--data DIR is required" in capsys.readouterr().err
    assert _train("--resume", tmp_path) == 2
    assert "no run to resume" in capsys.readouterr().err
    assert _train("--data", tiny_voc, "--classes", "car,person", "--out", tmp_path / "run") == 2
    assert "first class must be 'background'" in capsys.readouterr().err
    assert _train(*_tiny_args(tiny_voc, tmp_path / "run", "--batch-size", 9)) == 2
    assert "fewer than --batch-size 9" in capsys.readouterr().err


# Training ----------------------------------------------------------------------------------------

def test_finetune_person_vs_rest_lowers_the_loss_and_loads_like_a_zoo_model(tiny_voc, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train("--data", tiny_voc, "--classes", "background,person", "--epochs", 8, "--batch-size", 4,
                  "--crop", 129, "--lr", 0.001, "--val-limit", 2, "--out", out) == 0
    assert "epoch 8/8: train loss" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == RUN_FILES  # nothing left half-written
    config = json.loads((out / "config.json").read_text())
    assert config["classes"] == "background,person" and config["label_map"] == "voc"
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    epochs = [r for r in rows if "val_miou" in r]
    assert len(steps) == 16 and [r["epoch"] for r in epochs] == list(range(1, 9))
    assert steps[0]["lr"] == 0.001 and steps[-1]["lr"] < steps[0]["lr"]  # poly decay

    # The crops of epoch 1, re-made from the seed, have a lower loss after training than before. The ratio
    # moves with rounding-level changes of the crops (0.83 and 0.90 here for two resize orders, 0.71 on an
    # AMD EPYC earlier), so the bound only says that the 16 steps learned something.
    before, after = _crop_loss(tiny_voc, out, 129, 4)
    assert after < 0.95 * before, (before, after)

    # best.safetensors is a zoo model with its class names, and evaluates on the remapped masks.
    model, entry = load_checkpoint(out / "best.safetensors")
    assert entry.class_names == NAMES and entry.num_classes == 2
    val = RemappedDataset(open_dataset(tiny_voc, "val"), label_lut("voc", NAMES), NAMES)
    result = evaluate(TorchRuntime(model, num_classes=2), val, NAMES, progress=False)
    best = max(e["val_miou"] for e in epochs)
    assert result.num_images == 2 and abs(100 * result.miou - best) < 1e-3
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["epoch"] == 8 and state["step"] == 16 and state["best_miou"] == best

    # ... and exports to FP32 and INT8 and evaluates through the CLI like any zoo model (`card`), and the
    # INT8 file carries its class names to `evaluate --tflite`.
    card = tmp_path / "card"
    assert cli_main(["card", "--weights", str(out / "best.safetensors"), "--voc-root", str(tiny_voc),
                     "--calib-count", "2", "-o", str(card)]) == 0
    facts = json.loads((card / "card.json").read_text())["models"][0]
    assert facts["name"] == "best" and facts["int8_float_compute_ops"] == []
    assert facts["miou"]["int8"] > 50 and "official_int8" not in facts["miou"]
    assert cli_main(["evaluate", "--voc-root", str(tiny_voc), "--tflite", str(card / "best_int8.tflite"),
                     "--json", str(out / "int8.json")]) == 0
    report = json.loads((out / "int8.json").read_text())
    assert list(report["per_class_iou"]) == list(NAMES) and report["miou"] == facts["miou"]["int8"]


def _crop_loss(data: Path, out: Path, crop: int, batch: int) -> tuple[float, float]:
    """Returns the mean loss on epoch 1's crops of the init model and of the run's last checkpoint."""
    train = RemappedDataset(open_dataset(data, "train"), label_lut("voc", NAMES), NAMES)
    crops = TrainCrops(train, crop, seed=0)
    batches = [tuple(map(torch.stack, zip(*[crops[key] for key in keys], strict=True)))
               for keys in EpochBatches(len(train), batch, len(train) // batch, seed=0, epoch=1, rank=0, world=1)]

    def mean_loss(model):
        with torch.no_grad():
            return np.mean([F.cross_entropy(model.eval()(x), y, ignore_index=255).item() for x, y in batches])

    return (mean_loss(create_model("deeplabv3_mnv2_dm05_voc", class_names=NAMES)),
            mean_loss(load_checkpoint(out / "last.safetensors")[0]))


def test_lr_1e_3_does_not_raise_the_loss(tiny_voc):
    # Trained as it was folded (no batch norm), the zoo model's loss rose at 1e-3 within a few steps. With
    # batch norm back, a few steps at 1e-3 on the same real crops lower it clearly.
    train = RemappedDataset(open_dataset(tiny_voc, "train"), label_lut("voc", NAMES), NAMES)
    crops = TrainCrops(train, 129, seed=0)
    x, y = (torch.stack(t) for t in zip(*[crops[(1, i)] for i in range(4)], strict=True))
    torch.manual_seed(0)
    model = insert_batchnorm(create_model("deeplabv3_mnv2_dm05_voc", class_names=NAMES), [x],
                             frozen=False).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    losses = []
    for _ in range(6):
        loss = F.cross_entropy(model(x), y, ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert max(losses[1:]) <= losses[0] and losses[-1] < 0.8 * losses[0], losses


def test_median_frequency_weights_favour_the_rare_class(tiny_voc, tmp_path, capsys):
    # On real masks: person covers less of the images holding it than background does of its images,
    # so it weighs more; the weights are median(freq) / freq, computed by hand here.
    from edgeseg.training.data import median_frequency_weights

    train = RemappedDataset(open_dataset(tiny_voc, "train"), label_lut("voc", NAMES), NAMES)
    pixels, image_pixels = np.zeros(2), np.zeros(2)
    for sample in train.samples:
        mask = train.load(sample)[1]
        labelled = mask[mask != 255]
        for c in range(2):
            if (labelled == c).any():
                pixels[c] += (labelled == c).sum()
                image_pixels[c] += labelled.size
    frequency = pixels / image_pixels
    weights = median_frequency_weights(train, 2)
    assert np.allclose(weights, np.median(frequency) / frequency, rtol=1e-5)
    assert weights[1] > 1 > weights[0]
    # The run prints them and records the choice, and a resume keeps it.
    out = tmp_path / "weighted"
    assert _train(*_tiny_args(tiny_voc, out, "--epochs", 1, "--class-weights", "median-frequency")) == 0
    assert f"person {weights[1]:.2f}" in capsys.readouterr().out  # the run report, on stdout
    assert json.loads((out / "config.json").read_text())["class_weights"] == "median-frequency"
    assert _train("--resume", out, "--class-weights", "none") == 2
    assert "--class-weights none differs" in capsys.readouterr().err
    # A run saved before the option existed resumes as what it was: unweighted.
    from edgeseg.training.config import resume_config

    saved = json.loads((out / "config.json").read_text())
    del saved["class_weights"]
    (out / "config.json").write_text(json.dumps(saved))
    assert resume_config(out, {}, None).class_weights == "none"


def test_resume_continues_exactly(tiny_voc, tmp_path, capsys):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert _train(*_tiny_args(tiny_voc, straight, "--epochs", 3)) == 0
    assert _train(*_tiny_args(tiny_voc, resumed, "--epochs", 3, "--stop-after-epoch", 1)) == 0
    assert torch.load(resumed / "state.pt", weights_only=True)["epoch"] == 1
    capsys.readouterr()
    assert _train("--resume", resumed, "--lr", 0.01) == 2
    assert "--lr 0.01 differs from the run being resumed" in capsys.readouterr().err
    assert _train("--resume", resumed) == 0
    a, b = load_file(straight / "last.safetensors"), load_file(resumed / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in
             map(json.loads, (straight / "log.jsonl").read_text().splitlines())]
    again = [{k: v for k, v in r.items() if k != "seconds"} for r in
             map(json.loads, (resumed / "log.jsonl").read_text().splitlines())]
    assert strip == again
    capsys.readouterr()
    assert _train("--resume", resumed) == 0  # nothing left to do
    assert "already trained 3 epochs" in capsys.readouterr().out


def test_pretrained_model_remapped_to_person_vs_rest(tiny_voc):
    result = evaluate_remapped_pretrained("deeplabv3_mnv2_dm05_voc", tiny_voc, "val", NAMES, progress=False)
    assert result.class_names == NAMES and result.num_images == 2
    assert result.miou > 0.8  # the VOC model already knows people well


@pytest.mark.slow
def test_ddp_two_processes_on_cpu_match_one_process(tiny_voc, tmp_path):
    ddp_out, single_out = tmp_path / "work" / "ddp", tmp_path / "single"
    (tmp_path / "work").mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "edgeseg.cli",
           "train", "--no-progress", *map(str, _tiny_args(tiny_voc, ddp_out, "--epochs", 1))]
    proc = subprocess.run(cmd, cwd=tmp_path / "work", env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("epoch 1/1: train loss") == 1  # rank 0 reports, rank 1 does not
    assert [p.name for p in (tmp_path / "work").iterdir()] == ["ddp"]
    assert {p.name for p in ddp_out.iterdir()} == RUN_FILES
    model, entry = load_checkpoint(ddp_out / "best.safetensors")
    assert entry.class_names == NAMES

    # The global batch is split across the ranks and the loss normalised globally: same updates as one
    # process. (Compared at one thread, as each rank runs: the thread count alone moves conv results.)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert _train(*_tiny_args(tiny_voc, single_out, "--epochs", 1)) == 0
    finally:
        torch.set_num_threads(threads)
    a, b = load_file(ddp_out / "last.safetensors"), load_file(single_out / "last.safetensors")
    start = create_model("deeplabv3_mnv2_dm05_voc").state_dict()
    keys = [k for k in start if not k.startswith("head.classifier.")]  # pretrained, seed-independent
    gap = sum(float(((a[k] - b[k]) ** 2).sum()) for k in keys) ** 0.5
    update = sum(float(((b[k] - start[k]) ** 2).sum()) for k in keys) ** 0.5
    assert update > 0 and gap < 1e-4 * update, (gap, update)
    losses = [[r["loss"] for r in map(json.loads, (o / "log.jsonl").read_text().splitlines()) if "loss" in r]
              for o in (ddp_out, single_out)]
    assert np.allclose(*losses, rtol=1e-5)


def test_upscale_trains_on_enlarged_frames_and_checkpoints_and_exports_keep_it(tiny_voc, tmp_path, capsys):
    from edgeseg.pipeline import fit_to_input
    from edgeseg.runtimes.factory import open_model, open_runtime
    from edgeseg.training.data import draw_window, sample_rng
    from edgeseg.zoo.build import checkpoint_entry
    from edgeseg.zoo.registry import Preprocess

    # A VOC pair (at most 500 px) is enlarged to fit 641x641 before the random scale: the crop is (up to the
    # rounding of one resize instead of two) the one cut from the pair enlarged first, mask nearest-neighbour.
    train = RemappedDataset(open_dataset(tiny_voc, "train"), label_lut("voc", NAMES), NAMES)
    crops = TrainCrops(train, 129, 0, Preprocess(input_size=641, upscale=True))
    agree, differ = [], []
    for index, sample in enumerate(train.samples):
        image, mask = train.load(sample)
        big_image = fit_to_input(image, 641, upscale=True)
        assert max(big_image.shape[:2]) == 641
        big_mask = np.asarray(Image.fromarray(mask).resize(big_image.shape[1::-1], Image.NEAREST))
        window = draw_window(sample_rng(0, 1, index), *big_mask.shape, 129)
        want_pixels, want_labels = augment(big_image, big_mask, None, 129, window=window)
        pixels, labels = crops[(1, index)]
        assert set(np.unique(labels.numpy())) <= set(np.unique(mask)) | {255}
        agree.append((labels.numpy() == want_labels).mean())
        differ.append(np.abs(pixels.numpy().transpose(1, 2, 0) - want_pixels).mean())
    assert np.mean(agree) > 0.97 and min(agree) > 0.9 and max(differ) < 0.04, (agree, differ)

    out = tmp_path / "up"
    assert _train(*_tiny_args(tiny_voc, out, "--epochs", 1, "--input-size", 641, "--upscale")) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["input_size"] == "641" and config["upscale"] is True
    # The checkpoint runs as it was validated: at 641x641, the val frame enlarged to fit.
    entry = checkpoint_entry(out / "best.safetensors")
    assert entry.preprocess.input_size == (641, 641) and entry.preprocess.upscale
    opened = open_model(weights=out / "best.safetensors")
    assert opened.runtime.upscale and opened.runtime.input_size == (641, 641)
    val = RemappedDataset(open_dataset(tiny_voc, "val"), label_lut("voc", NAMES), NAMES, 1)
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()][-1]["val_miou"]
    assert abs(100 * evaluate(opened.runtime, val, NAMES, progress=False).miou - logged) < 1e-3
    # A resume cannot change the input handling.
    assert _train("--resume", out, "--input-size", 513) == 2
    assert "--input-size 513 differs" in capsys.readouterr().err
    assert _train(*_tiny_args(tiny_voc, tmp_path / "bad", "--input-size", "12x")) == 2
    assert "--input-size" in capsys.readouterr().err

    # The export defaults to the checkpoint's input size and records the upscale, which the file then applies.
    path = tmp_path / "up.tflite"
    assert cli_main(["export", "--weights", str(out / "best.safetensors"), "--precision", "fp32",
                     "-o", str(path)]) == 0
    exported = open_model(tflite=path)
    assert exported.runtime.upscale and exported.runtime.input_size == (641, 641)
    assert exported.class_names == NAMES
    assert open_runtime(path, "litert").upscale  # every way of opening the file (card, benchmark) reads it
    assert not open_runtime(open_model("deeplabv3_mnv2_dm05_voc").runtime.path, "litert").upscale


def test_a_checkpoint_is_a_starting_point(tiny_voc, tmp_path, capsys):
    from dataclasses import replace

    from edgeseg.training.config import new_config
    from edgeseg.zoo.build import checkpoint_entry, init_model, save_checkpoint
    from edgeseg.zoo.registry import Preprocess, get_entry

    # A person-vs-rest checkpoint for frames enlarged to 161x225.
    base = get_entry("deeplabv3_mnv2_dm05_voc")
    start = tmp_path / "earlier" / "best.safetensors"
    start.parent.mkdir()
    trained = create_model(base.name, class_names=NAMES)
    entry = replace(base, class_names=NAMES, preprocess=Preprocess(input_size=(161, 225), upscale=True))
    save_checkpoint(trained, start, entry, base.name)

    # Its weights as they are; with more classes, the rows of the classes it knows carry over by name.
    same = init_model(start).state_dict()
    assert all(torch.equal(value, same[key]) for key, value in trained.state_dict().items())
    wider = init_model(start, ("background", "person", "bus")).state_dict()
    assert torch.equal(wider["head.classifier.conv.weight"][:2], same["head.classifier.conv.weight"])
    assert all(torch.equal(value, same[key]) for key, value in wider.items() if not key.startswith("head.classifier"))

    # A run from it starts where it ended (the baseline is the checkpoint's own val mIoU, at its input
    # handling, which the run inherits), and its checkpoints still name the zoo entry underneath.
    out = tmp_path / "more"
    assert _train(*_tiny_args(tiny_voc, out, "--epochs", 1, "--init", start, "--baseline")) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["init"] == str(start.resolve()) and (config["input_size"], config["upscale"]) == ("161x225", True)
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    val = RemappedDataset(open_dataset(tiny_voc, "val"), label_lut("voc", NAMES), NAMES, 1)
    runtime = TorchRuntime(trained, num_classes=2, preprocess=entry.preprocess)
    assert abs(100 * evaluate(runtime, val, NAMES, progress=False).miou - rows[0]["baseline_miou"]) < 1e-3
    assert checkpoint_entry(out / "best.safetensors").preprocess == entry.preprocess
    with safe_open(str(out / "best.safetensors"), framework="pt") as f:
        assert f.metadata()["edgeseg_base"] == base.name
    # Given options win over the inherited ones; the default run folder is named after the checkpoint.
    again = tmp_path / "again"
    assert _train(*_tiny_args(tiny_voc, again, "--epochs", 1, "--init", start, "--input-size", 129,
                              "--no-upscale", "--max-steps", 1)) == 0
    assert json.loads((again / "config.json").read_text())["input_size"] == "129"
    assert checkpoint_entry(again / "last.safetensors").preprocess == Preprocess(input_size=(129, 129))
    default = new_config({"data": tiny_voc, "init": str(start), "classes": "background,person"}, None)
    assert Path(default.out).name.startswith("earlier-best-")

    # A resume rebuilds from the run's own checkpoint: the init file may be gone, and named relatively.
    moved = start.rename(tmp_path / "moved.safetensors")
    assert _train("--resume", out, "--init", os.path.relpath(start), "--epochs", 2) == 0
    assert json.loads((out / "log.jsonl").read_text().splitlines()[-1])["epoch"] == 2
    moved.rename(start)

    # --baseline on VOC labels needs an init that predicts VOC's classes or the run's: checked up front.
    odd = tmp_path / "odd.safetensors"
    save_checkpoint(init_model(start, ("background", "person", "bus")), odd,
                    replace(entry, class_names=("background", "person", "bus")), base.name)
    assert _train(*_tiny_args(tiny_voc, tmp_path / "odd", "--init", odd, "--baseline")) == 2
    assert "predicts neither VOC's classes nor --classes" in capsys.readouterr().err
    assert not (tmp_path / "odd" / "state.pt").exists()
    assert _train(*_tiny_args(tiny_voc, tmp_path / "x", "--init", tmp_path / "none.safetensors")) == 2
    assert "none.safetensors: no such file" in capsys.readouterr().err
    assert _train(*_tiny_args(tiny_voc, tmp_path / "x", "--init", "model.tflite")) == 2
    assert "no trainable weights" in capsys.readouterr().err


# Distillation --------------------------------------------------------------------------------------

class _MaskTeacher(torch.nn.Module):
    """A stand-in teacher whose logits at the input are the (padded) mask's classes, one-hot, x10."""

    def __init__(self, mask: np.ndarray, input_hw: tuple[int, int]):
        super().__init__()
        padded = np.zeros(input_hw, dtype=np.int64)
        padded[:mask.shape[0], :mask.shape[1]] = np.where(mask == 255, 0, mask)
        self.logits = torch.nn.Parameter(10 * F.one_hot(torch.from_numpy(padded), 2).permute(2, 0, 1)[None].float())

    def forward(self, x):
        assert x.shape[-2:] == self.logits.shape[-2:]
        return self.logits


@pytest.mark.parametrize("input_size, upscale", [(513, False), (641, True)])
def test_teacher_soft_labels_follow_the_augmentation(tiny_voc, input_size, upscale):
    # Soft labels computed from the frame as the teacher sees it (enlarged to 641 with upscale), kept at 1/4
    # of the frame and cut with the crop's window, scale and flip agree with the crop's labels away from
    # edges; mirrored, they do not.
    from edgeseg.pipeline import fitted_hw
    from edgeseg.training.distill import soft_labels
    from edgeseg.zoo.registry import Preprocess

    preprocess = Preprocess(input_size=input_size, upscale=upscale)
    train = RemappedDataset(open_dataset(tiny_voc, "train"), label_lut("voc", NAMES), NAMES)
    maps = []
    for sample in train.samples:
        image, mask = train.load(sample)
        seen = np.asarray(Image.fromarray(mask).resize(fitted_hw(*mask.shape, input_size, upscale)[::-1],
                                                      Image.NEAREST))
        teacher = _MaskTeacher(seen, (input_size, input_size))
        maps.append(soft_labels(teacher, preprocess, image, torch.arange(2), 2))
        assert maps[-1].dtype == torch.float16 and maps[-1].shape == (2, -(-mask.shape[0] // 4), -(-mask.shape[1] // 4))
        assert torch.allclose(maps[-1].float().exp().sum(0), torch.ones(1), atol=1e-2)
    crops = TrainCrops(train, 129, 0, preprocess, teacher=maps)
    plain = TrainCrops(train, 129, 0, preprocess)
    agree, mirrored = [], []
    for key in [(epoch, i) for epoch in (1, 2) for i in range(8)]:
        pixels, labels, soft = crops[key]
        assert torch.equal(pixels, plain[key][0]) and torch.equal(labels, plain[key][1])  # same draws
        keep = labels != 255
        agree.append((soft.float().argmax(0) == labels)[keep].float().mean())
        mirrored.append((soft.float().flip(-1).argmax(0) == labels)[keep].float().mean())
        assert agree[-1] > 0.9, key
        assert torch.all(soft[:, ~keep & (pixels == 0).all(0)] == 0)  # nothing past the frame
    assert np.mean(agree) > 0.99 and np.mean(mirrored) < np.mean(agree) - 0.1, (agree, mirrored)


def _first_loss(run: Path) -> float:
    return next(row["loss"] for row in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in row)


def test_distillation_adds_the_teachers_kl_to_the_loss(tiny_voc, tmp_path, capsys):
    # The VOC model teaches person vs rest: its 21 classes' probabilities sum into the run's 2.
    plain, taught, heavy = tmp_path / "plain", tmp_path / "taught", tmp_path / "heavy"
    one = ("--epochs", 1, "--max-steps", 1)
    assert _train(*_tiny_args(tiny_voc, plain, *one)) == 0
    assert _train(*_tiny_args(tiny_voc, taught, *one, "--teacher", "deeplabv3_mnv2_dm05_voc")) == 0
    assert _train(*_tiny_args(tiny_voc, heavy, *one, "--teacher", "deeplabv3_mnv2_dm05_voc",
                              "--distill-weight", 2)) == 0
    # Same crops, same start: the first step's loss grows by the KL term, linearly in its weight.
    kl = _first_loss(taught) - _first_loss(plain)
    assert kl > 1e-3 and abs(_first_loss(heavy) - _first_loss(plain) - 2 * kl) < 1e-4

    # The cached soft labels are the teacher's: probabilities, agreeing with the masks on most pixels.
    tensors, metadata = read_verified(taught / "teacher.safetensors")
    assert metadata["teacher"] == "deeplabv3_mnv2_dm05_voc" and metadata["classes"] == "background,person"
    train = RemappedDataset(open_dataset(tiny_voc, "train"), label_lut("voc", NAMES), NAMES)
    assert len(tensors) == len(train) == 8
    for i, sample in enumerate(train.samples):
        _, mask = train.load(sample)
        small = mask[::4, ::4]
        soft = tensors[str(i)].float()
        assert soft.shape == (2, *small.shape)
        assert torch.allclose(soft.exp().sum(0), torch.ones(1), atol=1e-2)
        keep = torch.from_numpy(small != 255)
        assert (soft.argmax(0) == torch.from_numpy(small.astype(np.int64)))[keep].float().mean() > 0.85


def test_a_distilled_run_resumes_exactly_from_its_cached_soft_labels(tiny_voc, tmp_path, capsys):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    teacher = ("--teacher", "deeplabv3_mnv2_dm05_voc", "--epochs", 3)
    assert _train(*_tiny_args(tiny_voc, straight, *teacher)) == 0
    assert _train(*_tiny_args(tiny_voc, resumed, *teacher, "--stop-after-epoch", 1)) == 0
    cache = resumed / "teacher.safetensors"
    written = cache.stat().st_mtime_ns
    assert _train("--resume", resumed, "--stop-after-epoch", 2) == 0
    assert cache.stat().st_mtime_ns == written  # read back, not recomputed
    # A damaged cache is noticed and computed again.
    data = bytearray(cache.read_bytes())
    data[-100] ^= 0xFF
    cache.write_bytes(bytes(data))
    damaged = cache.stat().st_mtime_ns
    capsys.readouterr()
    assert _train("--resume", resumed) == 0
    assert "damaged" in capsys.readouterr().err and cache.stat().st_mtime_ns != damaged
    read_verified(cache)  # whole again
    a, b = load_file(straight / "last.safetensors"), load_file(resumed / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cached_soft_labels_are_read_frame_by_frame_in_any_process(tmp_path):
    # The cache is memory-mapped and read per frame, also in loader workers (which get a pickled copy).
    import pickle
    import shutil

    from edgeseg.training.distill import SoftLabels
    from edgeseg.zoo.build import save_verified

    frames = {str(i): torch.randn(2, 3, 4 + i).half() for i in range(3)}
    path = tmp_path / "teacher.safetensors"
    soft = SoftLabels(path, 3, save_verified(frames, path, {"count": "3"})).open()
    assert len(soft) == 3 and torch.equal(soft[1], frames["1"])
    assert torch.equal(pickle.loads(pickle.dumps(soft))[2], frames["2"])
    for context in ("fork", "spawn"):
        loader = torch.utils.data.DataLoader(soft, batch_size=None, num_workers=1, multiprocessing_context=context)
        assert all(torch.equal(read, frames[str(i)]) for i, read in enumerate(loader))
    with pytest.raises(IndexError):
        soft[3]
    # A process opening the file after it was replaced (another run writing there) refuses it.
    save_verified({k: v + 1 for k, v in frames.items()}, path, {"count": "3"})
    with pytest.raises(EdgesegError, match="changed since it was verified"):
        pickle.loads(pickle.dumps(soft))[0]
    # Checked without loading: a flipped byte is still found.
    damaged = tmp_path / "damaged.safetensors"
    shutil.copy(path, damaged)
    assert read_verified(damaged, load=False) == ({}, read_verified(damaged)[1])
    data = bytearray(damaged.read_bytes())
    data[-3] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(EdgesegError, match="damaged"):
        read_verified(damaged, load=False)


def test_bad_teachers_are_one_line_errors(tiny_voc, tmp_path, capsys):
    cases = [
        (("--teacher", tmp_path / "missing.safetensors"), "--teacher: "),
        (("--teacher", "no_such_model"), "--teacher: "),
        (("--teacher", "deeplab_edgetpu_slim_cityscapes"), "cannot be mapped onto them"),
        (("--teacher-input-size", "721x961"), "--teacher-input-size needs --teacher"),
        (("--teacher", "deeplabv3_mnv2_dm05_voc", "--teacher-input-size", "9"), "--teacher-input-size: "),
        (("--teacher", "deeplabv3_mnv2_dm05_voc", "--distill-weight", 0), "--distill-weight must be more than 0"),
        (("--distill-weight", 2), "--distill-weight needs --teacher"),
    ]
    for extra, message in cases:
        capsys.readouterr()
        assert _train(*_tiny_args(tiny_voc, tmp_path / "run", *extra)) == 2, extra
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, (extra, err)
    assert not (tmp_path / "run" / "state.pt").exists()


def test_an_epoch_far_below_the_baseline_is_warned_about_with_its_likely_cause():
    from edgeseg.errors import EdgesegWarning
    from edgeseg.training.config import TrainConfig
    from edgeseg.training.loop import forgetting_warning

    config = TrainConfig(data="voc", lr=0.007, batch_size=4, bn="frozen")
    log = [{"epoch": 0, "step": 0, "baseline_miou": 64.98}]
    expected = r"epoch 1: val mIoU 11\.25 is 53\.7 points below .*--lr 0\.007 is too high"
    with pytest.warns(EdgesegWarning, match=expected):
        assert forgetting_warning(config, log, 1, 11.25)
    with pytest.warns(EdgesegWarning, match=r"statistics from 4 images per process \(--bn train\).*try --bn frozen"):
        assert forgetting_warning(TrainConfig(data="voc", lr=0.007, batch_size=4, bn="train"), log, 1, 11.25)
    # A run saved before auto was resolved: 6 images over 2 processes froze the statistics.
    with pytest.warns(EdgesegWarning, match=r"--lr 0\.007 is too high"):
        assert forgetting_warning(TrainConfig(data="voc", lr=0.007, batch_size=6, bn="auto"), log, 1, 11.25, 2)
    assert forgetting_warning(config, log, 1, 60.0) is None  # 5 points: within what a first epoch may cost
    assert forgetting_warning(config, log, 3, 11.25) is None  # later epochs: the curve speaks for itself
    assert forgetting_warning(config, [], 1, 11.25) is None  # no baseline, nothing to compare with


def test_a_fine_tune_on_the_init_models_classes_measures_its_baseline_by_default(tiny_voc, tmp_path, capsys):
    assert _train(*_tiny_args(tiny_voc, tmp_path / "run", "--epochs", 1)) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert "baseline_miou" in rows[0] and "baseline:" in capsys.readouterr().out
    assert _train(*_tiny_args(tiny_voc, tmp_path / "off", "--epochs", 1, "--no-baseline")) == 0
    assert "baseline_miou" not in (tmp_path / "off" / "log.jsonl").read_text()
