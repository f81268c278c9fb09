"""The robustness protocol: the standard test (SD) against corrupted test sets (SPD).

A head fitted once per normal class (the evaluation's one fit, on clean training rows) scores
the clean test split and, with the same fitted state, every corrupted copy of it that the
cache holds (``test@<corruption>@<severity>``, made by ``python -m pipeline.extract
--corruptions``). Following the knowledge-exposure paper (appendix C.4, table 5), only the
test set is corrupted, at severity 5 for its SPD column, and the labels are unchanged: a
corrupted image of the normal class is still normal. SD is the clean mean AUROC, SPD the mean
over the corruptions of the AUROC at severity 5.

Two ways of labelling the corrupted images (``labels``):

- ``unchanged`` (the paper's SPD): each corrupted split is scored one-vs-all as the clean one,
  its normal-class images normal, the others anomalies; a robust detector keeps its AUROC.
- ``anomalous``: the corrupted images of the normal class are anomalies against the same
  images clean; the AUROC says how well the detector flags the corruption itself ("flagged":
  0.5 = blind to it, as a robust detector is; 1 = flags every corrupted image, as a detector
  that must catch sensor faults should). ``both`` records the two.

Reads split names, labels and the cache's descriptions of its splits; never images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from pipeline.errors import PipelineError, choice_error

if TYPE_CHECKING:
    from pipeline.store.cache import FeatureCache

SHIFT_LABELS = ("unchanged", "anomalous", "both")
SPD_SEVERITY = 5  # the paper's SPD: every corruption at its strongest


@dataclass(frozen=True)
class ShiftedTest:
    """One corrupted copy of the test split: its name in the cache and what it holds."""

    split: str
    corruption: str
    severity: int
    control: bool = False   # the identity control: left out of every mean
    constants: str = ""     # the corruption constants (cifar10-c, imagenet-c)
    per_class: str = "all"  # test images corrupted: all, or N per class


@dataclass(frozen=True)
class ShiftPlan:
    """The corrupted splits a head scores besides the clean test split, and how they are labelled."""

    tests: tuple[ShiftedTest, ...]
    labels: str = "unchanged"

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(test.split for test in self.tests)


def resolve_shift(cache: "FeatureCache", selection: str | Sequence[str], labels: str = "unchanged") -> ShiftPlan | None:
    """``--shift``: none; all (every corrupted split of the cache); or comma-separated split
    names (test@fog@5), corruptions (fog: all its severities) or corruption@severity (fog@5)."""
    if labels not in SHIFT_LABELS:
        raise choice_error("--shift-labels", labels, SHIFT_LABELS)
    items = [s.strip() for s in selection.split(",")] if isinstance(selection, str) else [str(s) for s in selection]
    items = [item for item in items if item]
    if not items or [item.lower() for item in items] == ["none"]:
        return None
    available = [split for split in cache.derived_splits if cache.split_description(split).get("corruption")]
    if not available:
        raise PipelineError(f"{cache.path} has no corrupted test splits for --shift: extract them with python -m "
                            f"pipeline.extract ... --corruptions all (docs/robustness.md).")
    if [item.lower() for item in items] == ["all"]:
        chosen = available
    else:
        chosen = []
        for item in items:
            name = item if item.startswith("test@") else f"test@{item}"
            found = [s for s in available if s == name or s.startswith(name + "@")]
            if not found:
                raise PipelineError(f"--shift {item!r}: {cache.path} has no such corrupted test split; it has "
                                    f"{', '.join(available)} (give all, split names, corruptions or "
                                    f"corruption@severity).")
            chosen += found
    tests = []
    for split in dict.fromkeys(chosen):
        description = cache.split_description(split)
        tests.append(ShiftedTest(split, str(description["corruption"]), int(description["severity"]),
                                 bool(description.get("control", False)), str(description.get("constants", "")),
                                 str(description.get("per_class", "all"))))
    return ShiftPlan(tuple(tests), labels)


def _auroc(is_anomaly: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score  # here: the commands' --help imports this module

    return float(roc_auc_score(np.asarray(is_anomaly), np.asarray(scores, dtype=np.float64)))


def shift_metrics(plan: ShiftPlan, normal: tuple[int, ...], clean_scores: np.ndarray,
                  shifted: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[ShiftedTest, dict]:
    """One run's figures on each corrupted split, from the fitted head's scores, keyed by the
    split's ``ShiftedTest`` (so they carry what the split is wherever they go).

    ``clean_scores``: the head's scores of the clean test split; ``shifted[split]`` = (scores,
    labels, rows): its scores of the corrupted split, their class labels, and the clean test
    rows they were made from; ``normal``: the task's normal classes. Per split: ``auroc`` (labels
    unchanged), ``clean_auroc`` (the clean images of the same rows, so a subset's drop is not the subset's doing) and, for
    ``labels`` anomalous or both, ``flagged_auroc`` (corrupted normal images against the same
    images clean)."""
    figures = {}
    for test in plan.tests:
        scores, labels, rows = shifted[test.split]
        is_anomaly = (~np.isin(labels, normal)).astype(np.int64)
        values = {}
        if plan.labels in ("unchanged", "both"):
            values["auroc"] = _auroc(is_anomaly, scores)
            values["clean_auroc"] = _auroc(is_anomaly, clean_scores[rows])
        if plan.labels in ("anomalous", "both"):
            is_normal = is_anomaly == 0
            flagged = np.concatenate([np.zeros(is_normal.sum()), np.ones(is_normal.sum())])
            values["flagged_auroc"] = _auroc(flagged, np.concatenate([clean_scores[rows][is_normal], scores[is_normal]]))
        figures[test] = values
    return figures


def mean_over_runs(parts: list[dict[ShiftedTest, dict]]) -> dict[ShiftedTest, dict]:
    """A class's figures per split, averaged over its runs (seeds)."""
    return {test: {name: float(np.mean([p[test][name] for p in parts])) for name in values}
            for test, values in parts[0].items()}


def _mean(values: list[float]) -> float:
    return round(float(np.mean(values)), 6)


def shift_section(per_class: dict[str, dict[ShiftedTest, dict]], clean_auroc: float) -> dict:
    """The metrics file's ``shift`` section from each class's per-split figures (``shift_metrics``,
    averaged over runs):

    ``sd`` (the clean mean AUROC), ``spd`` (mean over corruptions at severity 5), ``drop``,
    ``spd_per_class``, ``by_severity`` (mean over corruptions), ``sd_same_rows`` (the clean
    images of the corrupted splits' rows), and per corruption and severity the mean over classes
    and each class (``corruptions``); with labels anomalous/both the same under ``flagged``.
    The identity control is reported under ``corruptions`` but left out of every mean.
    Descriptions (what SPD is, the labelling) are text, so they go to the about sidecar."""
    classes = list(per_class)
    tests = list(per_class[classes[0]])
    real = [t for t in tests if not t.control]
    names = set(per_class[classes[0]][tests[0]])
    labels = "both" if {"auroc", "flagged_auroc"} <= names else "anomalous" if "flagged_auroc" in names else "unchanged"

    def figure_tree(name: str) -> dict:
        tree: dict = {}
        for test in tests:
            values = {c: per_class[c][test][name] for c in classes}
            tree.setdefault(test.corruption, {})[str(test.severity)] = {
                "auroc": _mean(list(values.values())), "per_class": {c: round(v, 6) for c, v in values.items()}}
        return tree

    def means(name: str) -> dict:
        found = {}
        severities = sorted({t.severity for t in real})
        by_severity = {str(s): _mean([per_class[c][t][name] for t in real if t.severity == s for c in classes])
                       for s in severities}
        if by_severity:
            found["by_severity"] = by_severity
        strongest = [t for t in real if t.severity == SPD_SEVERITY]
        if strongest:
            found["severity_5"] = by_severity[str(SPD_SEVERITY)]
            found["severity_5_per_class"] = {c: _mean([per_class[c][t][name] for t in strongest]) for c in classes}
        return found

    section: dict = {"labels": labels, "splits": len(tests), "corruptions_in_means": len({t.corruption for t in real}),
                     "constants": ", ".join(sorted({t.constants for t in tests})),
                     "test_images": ", ".join(sorted({"all" if t.per_class == "all" else f"{t.per_class} per class"
                                                      for t in tests}))}
    if labels in ("unchanged", "both"):
        unchanged = means("auroc")
        section["sd"] = round(clean_auroc, 6)
        if "severity_5" in unchanged:
            section["spd"] = unchanged["severity_5"]
            section["drop"] = round(section["sd"] - section["spd"], 6)
            section["spd_per_class"] = unchanged["severity_5_per_class"]
            section["sd_same_rows"] = _mean([per_class[c][t]["clean_auroc"] for t in real
                                             if t.severity == SPD_SEVERITY for c in classes])
        if "by_severity" in unchanged:
            section["by_severity"] = unchanged["by_severity"]
        section["corruptions"] = figure_tree("auroc")
        section["spd_is"] = (f"mean over the corruptions of the one-vs-all AUROC at severity {SPD_SEVERITY}, only the "
                             f"test set corrupted, labels unchanged (the knowledge-exposure paper's SPD); sd is the "
                             f"clean test set's; sd_same_rows the clean images of the corrupted splits' rows")
    if labels in ("anomalous", "both"):
        flagged = means("flagged_auroc")
        section["flagged"] = {**({"by_severity": flagged["by_severity"]} if "by_severity" in flagged else {}),
                              **({"severity_5": flagged["severity_5"]} if "severity_5" in flagged else {}),
                              "corruptions": figure_tree("flagged_auroc"),
                              "is": "AUROC of the corrupted normal-class images (anomalies) against the same images "
                                    "clean (normal): 0.5 = blind to the corruption, 1 = flags it every time"}
    return section


def summary_line(section: dict) -> str:
    """The closing line about robustness, for the command's output."""
    parts = []
    if "spd" in section:
        parts.append(f"SD {100 * section['sd']:.2f}%, SPD {100 * section['spd']:.2f}% (severity {SPD_SEVERITY}, mean "
                     f"over {section['corruptions_in_means']} corruptions, labels unchanged), drop "
                     f"{100 * section['drop']:.2f} points")
    elif "by_severity" in section:
        parts.append("mean AUROC by severity " + ", ".join(f"{s}: {100 * v:.2f}%" for s, v in section["by_severity"].items()))
    if "severity_5" in section.get("flagged", {}):
        parts.append(f"corrupted normal images flagged, AUROC {100 * section['flagged']['severity_5']:.2f}% at severity "
                     f"{SPD_SEVERITY}")
    return "  robustness: " + ("; ".join(parts) if parts else f"{section['splits']} corrupted splits scored")
