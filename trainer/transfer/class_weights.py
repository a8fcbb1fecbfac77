"""transfer.head.class_weights resolved against the training data: one loss weight per class.

`balanced` is sklearn's rule, rows / (classes x rows of the class): every class then weighs as much
in the loss as the others together weigh per class, whatever its size. A class with no training
row gets weight 1 (it adds nothing to the loss either way; the data check warns of it).
"""

from __future__ import annotations

import unicodedata

import numpy as np

from trainer.transfer.config import HeadConfig


def resolved_class_weights(head: HeadConfig, classes: np.ndarray | None) -> np.ndarray | None:
    """Per class id, its loss weight (float32), or None when the run weighs every example alike."""
    if head.class_weights is None or classes is None:
        return None
    count = len(head.label_names)
    if isinstance(head.class_weights, list):
        return np.asarray(head.class_weights, dtype=np.float32)
    if isinstance(head.class_weights, dict):  # label names (matched as data labels are) to weights; others 1
        given = {unicodedata.normalize("NFC", str(k)).strip(): float(v) for k, v in head.class_weights.items()}
        return np.asarray([given.get(name, 1.0) for name in head.label_names], dtype=np.float32)
    rows = np.bincount(classes.astype(np.int64), minlength=count)[:count].astype(np.float64)
    weights = np.where(rows > 0, rows.sum() / (count * np.maximum(rows, 1)), 1.0)
    return weights.astype(np.float32)


def class_weights_note(head: HeadConfig, weights: np.ndarray) -> str:
    """'class weights (balanced): a 0.67, b 0.67, c 2.78' for the console."""
    how = "balanced, from the training rows" if head.class_weights == "balanced" else "transfer.head.class_weights"
    if head.class_weights == "balanced" and bool((weights == 1.0).any()):
        how += "; a label with no training row weighs 1"
    listed = ", ".join(f"{name}: {weight:.3g}" for name, weight in zip(head.label_names, weights.tolist(), strict=True))
    return f"class weights ({how}): {listed}; the training loss is their weighted mean, evaluation losses unweighted"
