"""VOC segmentation metrics from one confusion matrix accumulated over a whole split."""

from __future__ import annotations

import numpy as np

from edgeseg.voc import IGNORE_INDEX


class ConfusionMatrix:
    """rows = ground truth, columns = prediction; pixels labelled IGNORE_INDEX are skipped."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, target: np.ndarray, prediction: np.ndarray) -> None:
        if target.shape != prediction.shape:
            raise ValueError(f"target {target.shape} and prediction {prediction.shape} differ in shape")
        target = target.reshape(-1).astype(np.int64)
        prediction = prediction.reshape(-1).astype(np.int64)
        keep = target != IGNORE_INDEX
        if np.any(target[keep] >= self.num_classes):
            raise ValueError(f"label {int(target[keep].max())} outside 0..{self.num_classes - 1} (or 255)")
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
        """Returns the mean IoU over classes (classes absent from both sides are left out, as NaN)."""
        return float(np.nanmean(self.iou()))

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(np.diag(self.matrix).sum() / total) if total else float("nan")
