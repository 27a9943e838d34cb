"""VOC segmentation metrics from one confusion matrix accumulated over a whole split."""

from __future__ import annotations

import numpy as np

from edgeseg.data.voc import IGNORE_INDEX
from edgeseg.errors import EdgesegError


class LabelRangeError(EdgesegError, ValueError):
    """A mask holds a label that is neither a class index nor IGNORE_INDEX (255)."""


def labels_outside(mask: np.ndarray, num_classes: int) -> list[int]:
    """Returns the labels in `mask` that are neither 0..num_classes-1 nor IGNORE_INDEX, as sorted ints."""
    flat = np.asarray(mask).reshape(-1)
    if flat.dtype == np.uint8:  # the usual case: a histogram is cheaper than sorting the pixels
        present = np.flatnonzero(np.bincount(flat, minlength=256))
    else:
        present = np.unique(flat)
    bad = present[((present < 0) | (present >= num_classes)) & (present != IGNORE_INDEX)]
    return [int(v) for v in bad]


def check_label_range(mask: np.ndarray, num_classes: int, where: object = None) -> None:
    """The one label-range check (evaluation, training data checks, ConfusionMatrix.update): raises a
    one-line LabelRangeError naming up to five bad labels, prefixed with `where` (e.g. the mask's path)."""
    bad = labels_outside(mask, num_classes)
    if bad:
        prefix = f"{where}: " if where is not None else ""
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise LabelRangeError(f"{prefix}labels {bad[:5]}{more} outside 0..{num_classes - 1} (and 255 = ignore)")


class ConfusionMatrix:
    """rows = ground truth, columns = prediction; pixels labelled IGNORE_INDEX are skipped."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, target: np.ndarray, prediction: np.ndarray) -> None:
        if target.shape != prediction.shape:
            raise ValueError(f"target {target.shape} and prediction {prediction.shape} differ in shape")
        check_label_range(target, self.num_classes, "target")
        if prediction.size and (prediction.min() < 0 or prediction.max() >= self.num_classes):
            raise ValueError(f"predicted class {int(prediction.max())} outside 0..{self.num_classes - 1}")
        target = target.reshape(-1).astype(np.int64)
        prediction = prediction.reshape(-1).astype(np.int64)
        keep = target != IGNORE_INDEX
        n = self.num_classes
        self.matrix += np.bincount(n * target[keep] + prediction[keep], minlength=n * n).reshape(n, n)

    def iou(self) -> np.ndarray:
        """Returns per-class IoU = TP / (TP + FP + FN); NaN for a class absent from both."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return tp / union

    def iou_percent(self) -> list[float | None]:
        """Returns per-class IoU in percent, rounded to 2 decimals, None for an absent class."""
        return [None if np.isnan(v) else round(100 * float(v), 2) for v in self.iou()]

    def miou(self) -> float:
        """Returns the mean IoU over classes (classes absent from both sides are left out, as NaN);
        NaN, without numpy's warning, when no pixel was counted."""
        iou = self.iou()
        return float(np.nanmean(iou)) if not np.isnan(iou).all() else float("nan")

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(np.diag(self.matrix).sum() / total) if total else float("nan")
