"""Measuring: the confusion matrix and mIoU, evaluation over a split, latency, OPS and params, the card."""
