"""Protocols: which training rows a head fits on and which test rows are anomalies.

one-vs-all: each class in turn is normal, all others anomalies. normal-vs-anomalies (an
anomaly_folder's): one fit on the normal classes' training rows, graded on the whole test split
and on each anomaly class (defect type) against the normal test rows.

Reads labels only (from the cache), never images or features.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from pipeline.errors import PipelineError, choice_error


ONE_VS_ALL, NORMAL_VS_ANOMALIES = "one-vs-all", "normal-vs-anomalies"
PROTOCOLS = (ONE_VS_ALL, NORMAL_VS_ANOMALIES)
# --protocol's default: the protocol the cache's dataset records (anomaly_folder records
# normal-vs-anomalies), else one-vs-all.
FROM_DATASET = "dataset"


@dataclass(frozen=True)
class Task:
    """One fit of a head: on the training rows of the ``normal`` classes, scoring the whole test
    set. Its results (and saved head) go by ``name``. ``by_type``: also grade each anomaly class
    on its own against the normal test rows (normal-vs-anomalies)."""

    name: str
    normal: tuple[int, ...]
    by_type: bool = False


@dataclass(frozen=True)
class Split:
    """What a task reads of the labels: ``train_index`` selects the normal training rows;
    ``test_is_anomaly`` is 1 for every test row of another class (the whole test set is
    scored); ``types`` (``by_type`` tasks) maps each anomaly class present in the test set to
    its test rows and the normal ones, in test order."""

    normal: tuple[int, ...]
    train_index: np.ndarray
    test_is_anomaly: np.ndarray
    types: dict[str, np.ndarray] = field(default_factory=dict)


def split_for(task: Task, train_labels: np.ndarray, test_labels: np.ndarray, classes: Sequence[str]) -> Split:
    """The task's training rows and test labels; refused where no AUROC could be computed."""
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    what = f"class {task.name}" if len(task.normal) == 1 else f"the normal classes {task.name}"
    train_index = np.flatnonzero(np.isin(train_labels, task.normal))
    if len(train_index) == 0:
        hint = "" if task.by_type else (
            " One-vs-all trains on each class in turn; a class with test images only (an anomaly_folder's defect "
            "types) can only be an anomaly: use --protocol normal-vs-anomalies, or --classes naming classes that "
            "have training images.")
        raise PipelineError(f"{what} has no training samples.{hint}")
    is_normal = np.isin(test_labels, task.normal)
    is_anomaly = (~is_normal).astype(np.int64)
    if is_anomaly.all() or not is_anomaly.any():
        raise PipelineError(
            f"{what}: the test set needs both normal and anomalous samples "
            f"to compute AUROC (normal: {int((1 - is_anomaly).sum())}, anomalous: {int(is_anomaly.sum())})."
        )
    types = {}
    if task.by_type:
        types = {classes[c]: np.flatnonzero(is_normal | (test_labels == c)) for c in np.unique(test_labels[~is_normal])}
    return Split(task.normal, train_index, is_anomaly, types)


def one_vs_all(classes: Sequence[str], chosen: Sequence[int]) -> list[Task]:
    """Each chosen class in turn is normal."""
    return [Task(classes[c], (c,)) for c in chosen]


def protocol_of(metadata: dict, asked: str = FROM_DATASET) -> str:
    """The protocol asked for, or (``FROM_DATASET``) the one the cache's dataset records."""
    if asked == FROM_DATASET:
        asked = metadata.get("dataset", {}).get("protocol", ONE_VS_ALL)
    if asked not in PROTOCOLS:
        raise choice_error("protocol", asked, list(PROTOCOLS))
    return asked


def tasks(protocol: str, selection: str | Sequence[str], classes: list[str], metadata: dict) -> list[Task]:
    """The fits a protocol makes. one-vs-all: one per selected class. normal-vs-anomalies: one,
    on the selected classes together as normal ('all': those the dataset records as normal,
    ``dataset.normal_classes``), graded overall and per anomaly class."""
    if protocol == ONE_VS_ALL:
        return one_vs_all(classes, resolve_classes(selection, classes))
    recorded = metadata.get("dataset", {}).get("normal_classes")
    if isinstance(selection, str) and selection.strip().lower() == "all":
        if not recorded:
            raise PipelineError(f"{NORMAL_VS_ANOMALIES} needs to know which classes are normal, and this cache's "
                                f"dataset records none (an anomaly_folder does): name them with --classes, e.g. "
                                f"--classes {classes[0]}.")
        selection = list(recorded)
    normal = resolve_classes(selection, classes)
    if len(normal) == len(classes):
        raise PipelineError(f"--classes names every class as normal ({', '.join(classes)}): {NORMAL_VS_ANOMALIES} "
                            f"needs some classes left as anomalies.")
    return [Task("+".join(classes[c] for c in normal), tuple(normal), by_type=True)]


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
