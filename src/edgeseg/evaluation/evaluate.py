"""VOC evaluation: one confusion matrix over the whole split, for any runtime."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from edgeseg.data.datasets import RemappedDataset, SegmentationFolder
from edgeseg.errors import EdgesegError, warn
from edgeseg.evaluation.metrics import ConfusionMatrix, check_label_range
from edgeseg.pipeline import Runtime, segment


@dataclass
class EvalResult:
    class_names: tuple[str, ...]
    confusion: ConfusionMatrix
    num_images: int
    seconds: float
    skipped: list[str] = field(default_factory=list)

    @property
    def miou(self) -> float:
        return self.confusion.miou()

    def to_dict(self) -> dict:
        return {
            "miou": round(100 * self.miou, 2),
            "pixel_accuracy": round(100 * self.confusion.pixel_accuracy(), 2),
            "per_class_iou": dict(zip(self.class_names, self.confusion.iou_percent())),
            "num_images": self.num_images,
            "images_per_second": round(self.num_images / self.seconds, 2) if self.seconds else None,
            "skipped": self.skipped,
            "confusion_matrix": self.confusion.matrix.tolist(),
        }


def evaluate(
    runtime: Runtime, dataset: SegmentationFolder | RemappedDataset, class_names: tuple[str, ...], *,
    skip_bad: bool = False, progress: bool = True, predictions: list | None = None,
) -> EvalResult:
    """Returns the VOC metrics of `runtime` over `dataset`.

    With skip_bad, an unreadable image or mask is reported and left out instead of stopping the run.
    If `predictions` is a list, each image's label map is appended to it (for agreement checks).
    """
    confusion = ConfusionMatrix(len(class_names))
    skipped: list[str] = []
    start = time.perf_counter()
    bar = tqdm(dataset.samples, desc=f"evaluate {runtime.name}", unit="img", disable=not progress,
               file=sys.stderr)
    for sample in bar:
        try:
            image, mask = dataset.load(sample)
            check_label_range(mask, len(class_names), sample.mask_path)
        except EdgesegError as exc:
            if not skip_bad:
                raise
            warn(f"skipped {exc}")
            skipped.append(sample.id)
            continue
        labels = segment(image, runtime)
        if labels.max(initial=0) >= len(class_names):
            raise EdgesegError(f"{runtime.name} predicts class {int(labels.max())}, "
                               f"but the dataset has {len(class_names)} classes")
        confusion.update(mask, labels)
        if predictions is not None:
            predictions.append(labels)
    seconds = time.perf_counter() - start
    if len(skipped) == len(dataset):
        raise EdgesegError(f"{dataset.description}: no image evaluated, all {len(skipped)} skipped as bad "
                           f"(first: {skipped[0]})" if skipped else f"{dataset.description}: no images")
    return EvalResult(class_names, confusion, len(dataset) - len(skipped), seconds, skipped)


def format_table(result: EvalResult) -> str:
    """Returns the per-class IoU table followed by mIoU, pixel accuracy and speed."""
    lines = [f"{'class':<14} {'IoU %':>7}"]
    for name, value in zip(result.class_names, result.confusion.iou()):
        lines.append(f"{name:<14} {'n/a' if np.isnan(value) else f'{100 * value:7.2f}':>7}")
    lines.append(f"{'mIoU':<14} {100 * result.miou:7.2f}")
    lines.append(f"{'pixel acc':<14} {100 * result.confusion.pixel_accuracy():7.2f}")
    lines.append(f"{result.num_images} images, {result.num_images / result.seconds:.1f} images/s"
                 + (f", {len(result.skipped)} skipped" if result.skipped else ""))
    return "\n".join(lines)
