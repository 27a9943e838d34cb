"""Training throughput (images/s), the old step against today's, measured interleaved in one run.

before: the zoo model with batch norm folded, contiguous tensors, augmentation inside the loop
        (no loader workers) and as it was then (`OldCrops`: the whole frame resized and normalized, then
        cropped), deterministic mode filling every new tensor with NaN (the old defaults).
after:  today's `edgeseg train` step: batch norm inserted (--bn train, and frozen), channels-last,
        one loader worker augmenting ahead of the step (only the crop's window resized and normalized),
        no NaN fill, subnormals flushed.
Each round runs every setting for --steps steps after --warmup steps, on CamVid train crops (crop 321,
batch 8 by default), with --threads torch threads; the median round is reported, and ratios to before.

    .venv/bin/python bench/bench_train.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from edgeseg.data.datasets import RemappedDataset, open_dataset
from edgeseg.data.voc import IGNORE_INDEX
from edgeseg.training import insert_batchnorm
from edgeseg.training.data import SCALE_RANGE, EpochBatches, TrainCrops, calibration_batches, sample_rng
from edgeseg.zoo.build import create_model

CAMVID = Path(__file__).resolve().parents[2] / "shared" / "camvid"
CLASSES = ("sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car", "pedestrian",
           "bicyclist")
SETTINGS = {
    # name: (batch norm, channels_last, loader workers, NaN-fill new tensors, today's augmentation)
    "before": (None, False, 0, True, False),
    "after, --bn train": ("train", True, 1, False, True),
    "after, --bn frozen": ("frozen", True, 1, False, True),
}


class OldCrops(TrainCrops):
    """The augmentation when the throughput target was set: the same draws, the whole scaled frame
    resized and normalized before the crop."""

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = key
        image, mask = self.dataset.load(self.dataset.samples[index])
        rng, crop = sample_rng(self.seed, epoch, index), self.crop
        scale = rng.uniform(*SCALE_RANGE)
        size = (max(1, round(mask.shape[1] * scale)), max(1, round(mask.shape[0] * scale)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
        mask = np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))
        h, w = mask.shape
        ph, pw = max(h, crop), max(w, crop)
        pixels = np.zeros((ph, pw, 3), dtype=np.float32)
        pixels[:h, :w] = image.astype(np.float32) * (2 / 255) - 1
        labels = np.full((ph, pw), IGNORE_INDEX, dtype=np.uint8)
        labels[:h, :w] = mask
        top, left = int(rng.integers(0, ph - crop + 1)), int(rng.integers(0, pw - crop + 1))
        pixels, labels = pixels[top:top + crop, left:left + crop], labels[top:top + crop, left:left + crop]
        if rng.random() < 0.5:
            pixels, labels = pixels[:, ::-1], labels[:, ::-1]
        return (torch.from_numpy(pixels.transpose(2, 0, 1).copy()),
                torch.from_numpy(labels.astype(np.int64)))


def make_model(bn: str | None, channels_last: bool, crops: TrainCrops, batch: int) -> torch.nn.Module:
    model = create_model("deeplabv3_mnv2_dm05_voc", class_names=CLASSES)
    if bn is not None:
        insert_batchnorm(model, calibration_batches(crops, batch, 1), frozen=bn == "frozen")
    return model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format).train()


def run_steps(model: torch.nn.Module, crops: TrainCrops, batch: int, steps: int, warmup: int, epoch: int,
              channels_last: bool, workers: int, fill: bool) -> float:
    """Returns images/s over `steps` SGD steps (data loading included), after `warmup` steps."""
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = fill
    torch.set_flush_denormal(not fill)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    sampler = EpochBatches(len(crops), batch, warmup + steps, seed=0, epoch=epoch, rank=0, world=1)
    loader = torch.utils.data.DataLoader(crops, batch_sampler=sampler, num_workers=workers)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    start = end = 0.0
    for i, (pixels, labels) in enumerate(loader):
        if i == warmup:
            start = time.perf_counter()
        loss = F.cross_entropy(model(pixels.contiguous(memory_format=fmt)), labels, ignore_index=IGNORE_INDEX)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        end = time.perf_counter()  # not after the loop: that would add the loader's shutdown
    return steps * batch / (end - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=CAMVID, help="images/ + masks/ splits (default ../shared/camvid)")
    parser.add_argument("--crop", type=int, default=321)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train = RemappedDataset(open_dataset(args.data, "train"), None, CLASSES)
    crops = {True: TrainCrops(train, args.crop, seed=0), False: OldCrops(train, args.crop, seed=0)}
    models = {name: make_model(bn, cl, crops[True], args.batch_size) for name, (bn, cl, *_) in SETTINGS.items()}
    rates: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for r in range(args.rounds):
        for name, (_, channels_last, workers, fill, today) in SETTINGS.items():
            rates[name].append(run_steps(models[name], crops[today], args.batch_size, args.steps, args.warmup,
                                         r + 1, channels_last, workers, fill))
            print(f"round {r + 1} {name:<20} {rates[name][-1]:6.2f} images/s", flush=True)
    base = statistics.median(rates["before"])
    print(f"\ncrop {args.crop}, batch {args.batch_size}, {args.threads} threads, {args.steps} steps x "
          f"{args.rounds} rounds (median round)")
    print(f"{'setting':<20} {'images/s':>9} {'s/step':>7} {'ratio':>6}")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:<20} {median:9.2f} {args.batch_size / median:7.3f} {median / base:6.2f}")


if __name__ == "__main__":
    main()
