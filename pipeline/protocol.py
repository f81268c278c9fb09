"""Protocols: which training rows a head fits on and which test rows are anomalies.

Reads labels only (from the cache), never images or features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pipeline.errors import PipelineError, choice_error


@dataclass(frozen=True)
class OneVsAll:
    """One normal class against all others.

    ``train_index`` selects the normal class's training samples; ``test_is_anomaly`` is 1
    for every test sample of another class (the whole test set is scored).
    """

    normal_class: int
    train_index: np.ndarray
    test_is_anomaly: np.ndarray


def one_vs_all(train_labels: np.ndarray, test_labels: np.ndarray, normal_class: int) -> OneVsAll:
    train_labels = np.asarray(train_labels)
    test_labels = np.asarray(test_labels)
    train_index = np.flatnonzero(train_labels == normal_class)
    if len(train_index) == 0:
        raise PipelineError(f"class {normal_class} has no training samples.")
    is_anomaly = (test_labels != normal_class).astype(np.int64)
    if is_anomaly.all() or not is_anomaly.any():
        raise PipelineError(
            f"class {normal_class}: the test set needs both normal and anomalous samples "
            f"to compute AUROC (normal: {int((1 - is_anomaly).sum())}, anomalous: {int(is_anomaly.sum())})."
        )
    return OneVsAll(normal_class, train_index, is_anomaly)


def resolve_classes(selection: str | Sequence[str], classes: list[str]) -> list[int]:
    """'all', or comma-separated class names or indices -> class indices."""
    if isinstance(selection, str):
        if selection.strip().lower() == "all":
            return list(range(len(classes)))
        selection = [s.strip() for s in selection.split(",") if s.strip()]
    chosen = []
    for item in selection:
        item = str(item)
        if item in classes:
            chosen.append(classes.index(item))
        elif item.isdigit() and int(item) < len(classes):
            chosen.append(int(item))
        else:
            raise choice_error("class", item, classes)
    if not chosen:
        raise PipelineError(f"--classes names no class ({selection!r}); give all, or comma-separated class names "
                            f"or indices: {', '.join(classes)}.")
    return list(dict.fromkeys(chosen))  # each class once, in the order given


def draw_anomalies(labels: np.ndarray, normal_class: int, gamma: float, draw: int) -> tuple[np.ndarray, np.ndarray]:
    """Training positions for one semi-supervised run: every normal one, plus
    round(gamma x n_normal) (at least 1) labelled anomalies drawn at random from the other
    classes' training images. Returns (positions, is_normal)."""
    normal = np.flatnonzero(labels == normal_class)
    if gamma <= 0:
        return normal, np.ones(len(normal), dtype=bool)
    others = np.flatnonzero(labels != normal_class)
    count = min(len(others), max(1, int(round(gamma * len(normal)))))
    rng = np.random.default_rng([normal_class, draw, int(round(gamma * 1e6))])
    anomalies = np.sort(rng.choice(others, size=count, replace=False))
    return np.concatenate([normal, anomalies]), np.concatenate([np.ones(len(normal), bool), np.zeros(count, bool)])
