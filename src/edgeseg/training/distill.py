"""Distillation: a teacher model's soft labels for every training frame, and the loss that uses them.

With `--teacher MODEL`, each step adds `--distill-weight` x KL(teacher || student) per labelled pixel
(temperature 1) to the cross-entropy (Hinton et al. 2015, per pixel as in Liu et al. 2019). The teacher
runs once per training frame, as it is deployed (its own input size and upscale, or --teacher-input-size).
Its class probabilities, summed into the run's classes, are kept as float16 log-probabilities at
1/TARGET_STRIDE of the frame, cached in RUNDIR/teacher.safetensors, and follow the labels through the
augmentation (`soft_crop`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgeseg.checks import parse_size
from edgeseg.data.datasets import RemappedDataset, label_lut
from edgeseg.data.voc import IGNORE_INDEX, VOC_CLASSES
from edgeseg.errors import EdgesegError, warn
from edgeseg.pipeline import fit_to_input, input_hw, normalize_and_pad
from edgeseg.zoo.registry import Preprocess

TARGET_STRIDE = 4  # the teacher's output is 16x coarser than its input: 1/4 of the frame loses nothing
MIN_PROBABILITY = 1e-6  # keeps log-probabilities finite in float16
CACHE_NAME = "teacher.safetensors"
CACHE_FORMAT = "1"  # bump when soft labels are computed differently: older caches are then computed again


def teacher_class_map(teacher: str, teacher_names: tuple[str, ...], names: tuple[str, ...],
                      label_map: str) -> torch.Tensor:
    """Returns, for each teacher class, the run class its probability adds to; raises one line if none fits.
    The same classes in another order map by name."""
    if teacher_names == names:
        return torch.arange(len(names))
    if sorted(teacher_names) == sorted(names) and len(set(names)) == len(names):
        return torch.tensor([names.index(name) for name in teacher_names])
    if label_map == "voc" and teacher_names == VOC_CLASSES:  # e.g. person vs rest: the rest sums into 0
        return torch.from_numpy(label_lut("voc", names)[:len(VOC_CLASSES)].astype(np.int64))
    raise EdgesegError(f"--teacher {teacher}: predicts {','.join(teacher_names)}, not the run's classes "
                       f"({','.join(names)}), and these cannot be mapped onto them")


def teacher_preprocess(preprocess: Preprocess, input_size: str) -> Preprocess:
    """The teacher's own input handling, at `input_size` if given (N or HxW)."""
    if not input_size:
        return preprocess
    try:
        return dataclasses.replace(preprocess, input_size=parse_size(str(input_size)))
    except EdgesegError as exc:
        raise EdgesegError(f"--teacher-input-size: {exc}") from None


@torch.inference_mode()
def soft_labels(model: torch.nn.Module, preprocess: Preprocess, image: np.ndarray, class_map: torch.Tensor,
                num_classes: int) -> torch.Tensor:
    """Returns float16 (num_classes, ceil(H/stride), ceil(W/stride)) log-probabilities of the teacher for
    the uint8 (H, W, 3) frame, run as deployed: fitted to its input, padded, logits cropped to the frame."""
    height, width = image.shape[:2]
    device = next(model.parameters()).device
    fitted = fit_to_input(image, preprocess.input_size, preprocess.upscale)
    pixels = torch.from_numpy(normalize_and_pad(fitted, input_hw(preprocess.input_size), preprocess))
    logits = model(pixels.permute(2, 0, 1)[None].to(device))[:, :, :fitted.shape[0], :fitted.shape[1]]
    size = (math.ceil(height / TARGET_STRIDE), math.ceil(width / TARGET_STRIDE))
    probs = F.interpolate(logits, size=size, mode="bilinear", align_corners=False, antialias=True).softmax(1)
    merged = torch.zeros(1, num_classes, *size, device=device).index_add_(1, class_map.to(device), probs)
    return merged.clamp_min(MIN_PROBABILITY).log()[0].half().cpu()


def cache_key(teacher: str, weights: str, preprocess: Preprocess, dataset: RemappedDataset,
              names: tuple[str, ...]) -> dict[str, str]:
    """What the cached soft labels depend on: the teacher and its weights, its input, the classes, the frames."""
    frames = hashlib.sha256("\n".join(str(s.image_path) for s in dataset.samples).encode()).hexdigest()
    return {"format": CACHE_FORMAT, "teacher": str(teacher), "weights": weights,
            "input": "x".join(map(str, input_hw(preprocess.input_size))), "upscale": str(preprocess.upscale),
            "classes": ",".join(names), "frames": frames, "count": str(len(dataset)), "stride": str(TARGET_STRIDE)}


class SoftLabels:
    """The cached soft labels, read frame by frame from the memory-mapped file: no process (rank or loader
    worker) holds them all, and processes share the pages. Picklable: each process maps the file itself, and
    checks that it is still the one verified (`digest`), as a new loader worker may open it epochs later."""

    def __init__(self, path: Path, count: int, digest: str) -> None:
        self.path, self.count, self.digest = Path(path), count, digest
        self._file, self._pid = None, None

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < self.count:
            raise IndexError(index)
        return self.open()._file.get_tensor(str(index))

    def open(self) -> SoftLabels:
        """Maps the file in this process (once); raises a one-line error if it is not the verified one."""
        if self._pid == os.getpid():  # every __getitem__ passes here: nothing else before this check
            return self
        from safetensors import safe_open

        from edgeseg.zoo.build import DIGEST_KEY

        try:
            handle = safe_open(str(self.path), framework="pt")
            digest, frames = (handle.metadata() or {}).get(DIGEST_KEY), sorted(handle.keys())
        except Exception as exc:  # noqa: BLE001 - removed, truncated or foreign: one line
            raise EdgesegError(f"{self.path}: cannot be read ({str(exc).splitlines()[0][:120]})") from None
        if digest != self.digest or frames != sorted(map(str, range(self.count))):
            raise EdgesegError(f"{self.path}: changed since it was verified (another run writing to this folder?)")
        self._file, self._pid = handle, os.getpid()
        return self

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None, "_pid": None}


def _cached(cache: Path, key: dict[str, str]) -> SoftLabels | None:
    """The soft labels in `cache` if it holds them for `key` (its digest checked, one frame at a time)."""
    from edgeseg.zoo.build import DIGEST_KEY, read_verified

    if not cache.is_file():
        return None
    try:
        _, metadata = read_verified(cache, load=False)
        if any(metadata.get(k) != v for k, v in key.items()):
            return None
        return SoftLabels(cache, int(key["count"]), metadata.get(DIGEST_KEY, "")).open()
    except EdgesegError as exc:  # damaged: the caller computes them again
        warn(f"{exc}; computing the teacher's soft labels again")
        return None


def teacher_targets(teacher: str, input_size: str, dataset: RemappedDataset, names: tuple[str, ...],
                    label_map: str, cache: Path | None, *, device: str = "cpu",
                    progress: bool = False) -> SoftLabels | list[torch.Tensor]:
    """Returns the teacher's soft labels for every sample of `dataset`, from `cache` when it holds the
    same teacher's for the same frames (verified), else computed (on `device`) and written there atomically.
    With a cache they are read from it per frame (`SoftLabels`); without one, a list in memory."""
    from tqdm import tqdm

    from edgeseg.zoo.build import DIGEST_KEY, checkpoint_metadata, init_entry, init_model, is_checkpoint, save_verified

    entry = init_entry(teacher)
    class_map = teacher_class_map(teacher, entry.class_names, names, label_map)
    preprocess = teacher_preprocess(entry.preprocess, input_size)
    weights = checkpoint_metadata(Path(teacher)).get(DIGEST_KEY, "") if is_checkpoint(teacher) \
        else entry.weights.sha256
    key = cache_key(teacher, weights, preprocess, dataset, names)
    cached = _cached(cache, key) if cache is not None else None
    if cached is not None:
        return cached
    model = init_model(teacher).eval().to(device)
    frames = tqdm(dataset.samples, desc="teacher", unit="img", disable=not progress, file=sys.stderr)
    targets = [soft_labels(model, preprocess, dataset.load(sample)[0], class_map, len(names)) for sample in frames]
    if cache is None:
        return targets
    digest = save_verified({str(i): t for i, t in enumerate(targets)}, cache, key)
    return SoftLabels(cache, len(targets), digest).open()


def soft_crop(log_probs: torch.Tensor, frame_hw: tuple[int, int], top: int, left: int, crop: int,
              flip: bool) -> torch.Tensor:
    """Returns float16 (C, crop, crop) soft labels of the crop window [top, left] of the frame scaled to
    `frame_hw`, as `augment` cuts it (bilinear, half-pixel centres; 0 past the frame, where labels are 255)."""
    height, width = frame_hw
    rows, cols = min(crop, height - top), min(crop, width - left)
    ys = (2 * (torch.arange(rows, dtype=torch.float32) + top + 0.5) / height) - 1
    xs = (2 * (torch.arange(cols, dtype=torch.float32) + left + 0.5) / width) - 1
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None]  # (1, rows, cols, (x, y))
    sampled = F.grid_sample(log_probs.float()[None], grid, mode="bilinear", padding_mode="border",
                            align_corners=False)[0]
    out = torch.zeros(log_probs.shape[0], crop, crop, dtype=torch.float16)
    out[:, :rows, :cols] = sampled
    return out.flip(-1) if flip else out


def distillation_sum(logits: torch.Tensor, teacher_log_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Returns KL(teacher || student) summed over the labelled pixels (those the cross-entropy counts)."""
    teacher = teacher_log_probs.float().log_softmax(1)  # renormalized after the bilinear resampling
    kl = (teacher.exp() * (teacher - logits.log_softmax(1))).sum(1)
    return kl[labels != IGNORE_INDEX].sum()
