"""Training data: checks, DeepLab's augmentation, and a batch order that depends on (seed, epoch) only.

The data order of epoch e comes from (seed, e) and each sample's augmentation from (seed, e, index), so
an interrupted run resumed from its state continues exactly, and loader worker processes change nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from edgeseg.data.datasets import RemappedDataset
from edgeseg.data.voc import IGNORE_INDEX
from edgeseg.errors import EdgesegError
from edgeseg.evaluation.metrics import LabelRangeError, check_label_range
from edgeseg.pipeline import DEEPLAB, fitted_hw, input_hw
from edgeseg.training.distill import SoftLabels, soft_crop
from edgeseg.zoo.registry import Preprocess

SCALE_RANGE = (0.5, 2.0)
CALIBRATION_EPOCH = 0  # training epochs count from 1: epoch 0's crops measure batch norm statistics


def validate_dataset(dataset: RemappedDataset, num_labels: int, *, progress: bool = False) -> None:
    """Loads every pair; raises one line naming the bad files (unreadable, size mismatch, label out of range).

    `num_labels` bounds the source labels (before remapping); 255 is always allowed.
    """
    from tqdm import tqdm

    bad: list[str] = []
    for sample in tqdm(dataset.samples, desc="check data", unit="img", disable=not progress, file=sys.stderr):
        try:
            _, mask = dataset.base.load(sample)
        except EdgesegError as exc:
            bad.append(str(exc))
            continue
        try:
            check_label_range(mask, num_labels, sample.mask_path.name)  # the one label-range check
        except LabelRangeError as exc:
            bad.append(str(exc))
    if bad:
        raise EdgesegError(f"{dataset.base.description}: {len(bad)} of {len(dataset)} image/mask pairs "
                           f"are bad, e.g. {'; '.join(bad[:3])}")


@dataclass(frozen=True)
class CropWindow:
    """Where `augment` cuts: the frame scaled to (height, width), the window at (top, left), mirrored or not."""

    height: int
    width: int
    top: int
    left: int
    flip: bool


def draw_window(rng: np.random.Generator, height: int, width: int, crop: int) -> CropWindow:
    """Draws DeepLab's random scale in SCALE_RANGE, crop position and flip (p=0.5), in that order."""
    scale = rng.uniform(*SCALE_RANGE)
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    top, left = int(rng.integers(0, max(h, crop) - crop + 1)), int(rng.integers(0, max(w, crop) - crop + 1))
    return CropWindow(h, w, top, left, bool(rng.random() < 0.5))


def augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator | None, crop: int,
            preprocess: Preprocess = DEEPLAB, window: CropWindow | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Returns (float32 (crop, crop, 3) normalized pixels, uint8 (crop, crop) labels), DeepLab style.

    Random scale in SCALE_RANGE (bilinear image, nearest mask), pad bottom/right to at least the crop
    with the mean pixel (0 after scaling) and label 255, random crop, horizontal flip with p=0.5.
    The window is drawn from `rng` unless given (`draw_window`); a given window's frame size may differ
    from the pair's (a frame fitted to the input, then scaled): the pair is resized to it.
    """
    win = window or draw_window(rng, *mask.shape, crop)
    # Only the window is resized and normalized (the scaled frame can be 4x the pixels of the crop):
    # what lies past the frame is padding (the mean pixel, label 255).
    rows, cols = min(crop, win.height - win.top), min(crop, win.width - win.left)
    sy, sx = mask.shape[0] / win.height, mask.shape[1] / win.width
    box = (win.left * sx, win.top * sy, (win.left + cols) * sx, (win.top + rows) * sy)
    image = np.asarray(Image.fromarray(image).resize((cols, rows), Image.BILINEAR, box=box))
    mask = np.asarray(Image.fromarray(mask).resize((cols, rows), Image.NEAREST, box=box))
    pixels = np.full((crop, crop, 3), preprocess.pad_value, dtype=np.float32)
    pixels[:image.shape[0], :image.shape[1]] = image.astype(np.float32) * preprocess.scale + preprocess.offset
    labels = np.full((crop, crop), IGNORE_INDEX, dtype=np.uint8)
    labels[:mask.shape[0], :mask.shape[1]] = mask
    if win.flip:
        pixels, labels = pixels[:, ::-1], labels[:, ::-1]
    return np.ascontiguousarray(pixels), np.ascontiguousarray(labels)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """Returns the sample order of an epoch, a function of (seed, epoch) only."""
    return np.random.default_rng([seed, epoch]).permutation(n)


class TrainCrops:
    """Map-style dataset indexed by (epoch, sample index): its augmentation depends on nothing else.

    With another input size than DeepLab's 513, or `preprocess.upscale`, the random scale applies to each frame
    as fitted to the input, as the deployed model will see it (at 513, DeepLab trains on frames as they are);
    both resizes are done in one, on the crop's window.
    """

    def __init__(self, dataset: RemappedDataset, crop: int, seed: int, preprocess: Preprocess = DEEPLAB,
                 teacher: SoftLabels | list[torch.Tensor] | None = None) -> None:
        """`teacher`: soft labels per sample (`distill.teacher_targets`), cropped like the labels if given."""
        self.dataset, self.crop, self.seed, self.preprocess = dataset, crop, seed, preprocess
        self.teacher = teacher

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        """Returns (pixels (3, crop, crop), labels (crop, crop)), and the teacher's (C, crop, crop) if any."""
        epoch, index = key
        image, mask = self.dataset.load(self.dataset.samples[index])
        frame_hw = mask.shape
        if self.preprocess.upscale or input_hw(self.preprocess.input_size) != input_hw(DEEPLAB.input_size):
            frame_hw = fitted_hw(*frame_hw, self.preprocess.input_size, self.preprocess.upscale)
        window = draw_window(sample_rng(self.seed, epoch, index), *frame_hw, self.crop)
        pixels, labels = augment(image, mask, None, self.crop, window=window)
        sample = torch.from_numpy(pixels.transpose(2, 0, 1).copy()), torch.from_numpy(labels.astype(np.int64))
        if self.teacher is None:
            return sample
        soft = soft_crop(self.teacher[index], (window.height, window.width), window.top, window.left,
                         self.crop, window.flip)
        return (*sample, soft)


class EpochBatches:
    """Batch sampler: the epoch's global batches in order, this rank's share (every world-th sample)."""

    def __init__(self, n: int, batch_size: int, steps: int, seed: int, epoch: int, rank: int, world: int):
        self.n, self.batch_size, self.steps = n, batch_size, steps
        self.seed, self.epoch, self.rank, self.world = seed, epoch, rank, world

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = epoch_order(self.seed, self.epoch, self.n)
        for step in range(self.steps):
            batch = order[step * self.batch_size:(step + 1) * self.batch_size]
            yield [(self.epoch, int(i)) for i in batch[self.rank::self.world]]


def median_frequency_weights(dataset: RemappedDataset, num_classes: int) -> np.ndarray:
    """Returns one loss weight per class: median(freq) / freq(c), where freq(c) is the share of class c in
    the labelled pixels of the training images that contain c (Eigen & Fergus 2015; SegNet on CamVid).
    A class absent from the training masks gets weight 1 (it has no pixels to weigh)."""
    pixels = np.zeros(num_classes, np.float64)
    image_pixels = np.zeros(num_classes, np.float64)  # labelled pixels of the images holding the class
    for sample in dataset.samples:
        _, mask = dataset.load(sample)
        counts = np.bincount(mask[mask != IGNORE_INDEX].ravel(), minlength=num_classes)[:num_classes]
        pixels += counts
        image_pixels[counts > 0] += counts.sum()
    present = pixels > 0
    if not present.any():
        raise EdgesegError(f"{dataset.description}: no labelled pixels to weigh classes by")
    frequency = pixels[present] / image_pixels[present]
    weights = np.ones(num_classes, np.float64)
    weights[present] = np.median(frequency) / frequency
    return weights.astype(np.float32)


def calibration_batches(crops: TrainCrops, batch_size: int, count: int = 4) -> list[torch.Tensor]:
    """Returns the first `count` batches of samples, in index order, as epoch 0's training crops.

    They measure the statistics that inserted batch norm starts from (see `batchnorm.insert_batchnorm`).
    """
    n = min(len(crops), count * batch_size)
    return [torch.stack([crops[(CALIBRATION_EPOCH, i)][0] for i in range(j, min(j + batch_size, n))])
            for j in range(0, n, batch_size)]
