"""Protocols: which training rows a head fits on and which test rows are anomalies.

one-vs-all: each class in turn is normal, all others anomalies. normal-vs-anomalies (an
anomaly_folder's): one fit on the normal classes' training rows, graded on the whole test split
and on each anomaly class (defect type) against the normal test rows.

Reads labels only (from the cache), never images or features.
"""

from __future__ import annotations

import unicodedata
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
    """'all', or class names or indices (comma-separated text, or a list) -> class indices, each
    once, in the order given.

    Every class name can be chosen, whatever it holds:

    - a name is matched before an index ("7" is the class named 7 where there is one) and
      before the text is split at commas: the whole text first, then, of the pieces the commas
      make (the command line splits there too), the longest run that joined again by commas is
      a class name. So the class "a,b" is ``a,b`` (beside classes "a" and "b" too: the longer
      name wins; those two are then ``b,a`` or their indices). Spaces around commas and at the
      ends do not count (the command line trims them) unless two names differ only there:
      then the name has to be exact, or given by its index;
    - the word all, alone, is every class; a class named all is chosen by a list of one:
      ``all,`` on the command line (a trailing comma), ``[all]`` in params.yaml;
    - names are compared after Unicode normalisation (NFC), as class names are made."""
    if isinstance(selection, str):
        if selection.strip().lower() == "all":
            return list(range(len(classes)))
        whole = _class_named(selection, classes)
        if whole is not None:
            return [whole]
        selection = [s.strip() for s in selection.split(",") if s.strip()]
    items = [str(item) for item in selection]
    if not items:
        raise PipelineError(f"--classes names no class ({selection!r}); give all, or comma-separated class names "
                            f"or indices: {', '.join(classes)}.")
    chosen = _read_names(items, 0, classes, {})
    if chosen is None:
        raise _unknown_class(items, classes)
    return list(dict.fromkeys(chosen))  # each class once, in the order given


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _loose(text: str) -> str:
    """A name as the command line leaves it: trimmed, and trimmed around each comma."""
    return ",".join(part.strip() for part in _nfc(text).split(",") if part.strip())


def _class_named(text: str, classes: Sequence[str]) -> int | None:
    """The index of the class named ``text`` (exactly, else but for spaces around commas and at
    the ends), or None; refused where that leaves two classes."""
    exact = [i for i, name in enumerate(classes) if _nfc(name) == _nfc(text)]
    if exact:
        return exact[0]
    loose = [i for i, name in enumerate(classes) if _loose(name) == _loose(text) and _loose(text)]
    if len(loose) > 1:
        shown = ", ".join(f"{classes[i]!r} (index {i})" for i in loose)
        raise PipelineError(f"--classes {text.strip()!r} could be any of the classes {shown}, whose names differ only "
                            f"in spaces the command line trims; give the one meant by its index.")
    return loose[0] if loose else None


def _read_names(items: list[str], start: int, classes: Sequence[str], failed: dict) -> list[int] | None:
    """``items[start:]`` as class indices: at each place the longest run of items that joined by
    commas is a class name, else one item that is a class index; None when no reading fits."""
    if start == len(items):
        return []
    if start in failed:
        return None
    for end in range(len(items), start, -1):
        found = _class_named(",".join(items[start:end]), classes)
        if found is None and end == start + 1 and items[start].isdigit() and int(items[start]) < len(classes):
            found = int(items[start])
        if found is not None:
            rest = _read_names(items, end, classes, failed)
            if rest is not None:
                return [found, *rest]
    failed[start] = True
    return None


def _unknown_class(items: list[str], classes: Sequence[str]) -> PipelineError:
    """The error for a selection no reading fits: the first item that is no class name, part of
    one or index."""
    def known(item: str) -> bool:
        if _class_named(item, classes) is not None or (item.isdigit() and int(item) < len(classes)):
            return True
        return any(_loose(item) in _loose(name).split(",") for name in classes)

    item = next((item for item in items if not known(item)), ",".join(items))
    hint = (" The word all alone means every class; a class named all is chosen by a list of one: --classes all, "
            "(a trailing comma)." if item.strip().lower() == "all" else "")
    return PipelineError(f"{choice_error('class', item, list(classes)).message}{hint}")


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
