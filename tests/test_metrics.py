import numpy as np
import pytest

from edgeseg.evaluation.metrics import ConfusionMatrix


def test_hand_computed_example():
    # 3 classes. target / prediction pairs, with one ignored pixel (255).
    target = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [2, 2, 0]])
    cm = ConfusionMatrix(3)
    cm.update(target, pred)
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 1, 1], [0, 0, 1]]
    # class 0: TP 1, FP 0, FN 1 -> 1/2; class 1: TP 1, FP 1, FN 1 -> 1/3; class 2: TP 1, FP 1, FN 0 -> 1/2
    np.testing.assert_allclose(cm.iou(), [1 / 2, 1 / 3, 1 / 2])
    assert cm.miou() == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 3)
    assert cm.pixel_accuracy() == pytest.approx(3 / 5)


def test_accumulates_over_images_not_per_image_mean():
    cm = ConfusionMatrix(2)
    cm.update(np.array([0, 0, 0, 1]), np.array([0, 0, 0, 0]))  # class 1 missed
    cm.update(np.array([1, 1]), np.array([1, 1]))
    # Pooled: class 0 TP 3 FP 1 -> 3/4; class 1 TP 2 FN 1 -> 2/3.
    np.testing.assert_allclose(cm.iou(), [3 / 4, 2 / 3])


def test_absent_class_is_nan_and_left_out_of_the_mean():
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 1]), np.array([0, 1]))
    assert np.isnan(cm.iou()[2])
    assert cm.miou() == 1.0


def test_rejects_labels_outside_the_class_range_and_shape_mismatch():
    cm = ConfusionMatrix(2)
    with pytest.raises(ValueError, match=r"labels \[5\] outside 0\.\.1"):
        cm.update(np.array([5]), np.array([0]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 2)), np.zeros((2, 3)))
