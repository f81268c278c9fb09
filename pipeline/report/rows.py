"""What a results table is made of: runs (a metrics file, or one variant of an ablation file)
and their rows of AUROC (or AUPR, FPR at 95% TPR) per class. The head report modules
(``pipeline/report/heads/<name>.py``) turn a ``Run`` into ``Row``s with these;
``pipeline.report.table`` groups and renders them. Nothing here knows a head."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.report.published import Published


# A cell whose metrics file holds no figure for it.
MISSING = "–"


@dataclass(frozen=True)
class Figure:
    """An AUROC (or another metric) as a fraction; ``std`` over seeds or draws, None for a
    single run. ``value`` is NaN where the metrics file holds no figure for the metric shown
    (``pipeline.report.table.metric_run``): it reads "–"."""

    value: float
    std: float | None = None

    @property
    def missing(self) -> bool:
        return math.isnan(self.value)

    def percent(self) -> str:
        if self.missing:
            return MISSING
        text = f"{100 * self.value:.1f}"
        return text if self.std is None else f"{text} ± {100 * self.std:.1f}"


@dataclass
class Row:
    head: str
    setting: str
    per_class: dict[str, Figure]
    mean: Figure
    published: Published | None = None
    # normal-vs-anomalies: every anomaly against the normal test images (the table's Overall
    # column; set by pipeline.report.table, not by the head report modules).
    overall: Figure | None = None


@dataclass
class Run:
    """One trained configuration: a metrics file, or one variant of an ablation file."""

    about: dict
    payload: dict
    source: Path
    name: str = ""  # the ablation variant ("linear/contrastive"), empty otherwise
    roc_dir: Path | None = None
    curves_dir: Path | None = None

    @property
    def head(self) -> str:
        return str(self.about.get("head"))

    @property
    def several_seeds(self) -> bool:
        return (self.about.get("seeds") or 1) > 1


def figures(per_class: dict, key: str, std_key: str | None) -> dict[str, Figure]:
    """``{class: Figure(m[key], m[std_key])}`` of a payload's ``per_class`` (no std without ``std_key``)."""
    return {name: Figure(m[key], m.get(std_key) if std_key else None) for name, m in per_class.items()}


def plural(count: Any, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def final_and_best_epoch_rows(display_name: str, label: str, run: Run, extra: str,
                              published: Published | None) -> list[Row]:
    """Two rows of a head trained by epochs, named apart: the model it kept (after the last
    epoch, or the epoch its ``about.auroc_epoch`` names, chosen without the test set), and
    the best test AUROC over the epochs (which picks the epoch on the test set). A published
    figure sits beside the latter, the protocol of the papers' code."""
    p = run.payload
    std = run.several_seeds
    final = Row(display_name, f"{label}; {run.about.get('auroc_epoch', 'final epoch')}{extra}",
                figures(p["per_class"], "auroc", "auroc_std" if std else None),
                Figure(p["mean"]["auroc"], p["mean"].get("auroc_std") if std else None))
    if "best_epoch_auroc" not in p["mean"]:
        return [final]
    best = Row(display_name, f"{label}; best epoch (picked on the test set){extra}",
               figures(p["per_class"], "best_epoch_auroc", "best_epoch_auroc_std" if std else None),
               Figure(p["mean"]["best_epoch_auroc"], p["mean"].get("best_epoch_auroc_std") if std else None),
               published)
    return [final, best]


def other_rows(run: Run, extra: str) -> list[Row]:
    """A head with no report module: its final AUROC, so that it is not left out."""
    p = run.payload
    several = run.several_seeds
    return [Row(run.head, extra.lstrip("; ") or "-",
                figures(p["per_class"], "auroc", "auroc_std" if several else None),
                Figure(p["mean"]["auroc"], p["mean"].get("auroc_std") if several else None))]
