"""The published figures this project's results are put beside.

They are a copy of the project's reference file (``paper_results.json``, shipped with the
package so that a clone without the papers still has them). They are always labelled with
the paper's backbone and protocol: they were not measured here. Which figure goes beside
which row is each head's business (``pipeline/report/heads/<name>.py``, reading its paper's
section through ``paper_section``); this module knows no head.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

PAPER_RESULTS = Path(__file__).with_name("paper_results.json")


@lru_cache(maxsize=1)
def paper_results() -> dict:
    """The whole reference file (read once)."""
    return json.loads(PAPER_RESULTS.read_text())


def paper_section(name: str) -> dict:
    """One paper's section of the reference file, such as 'panda', 'plume' or 'anomem'."""
    return paper_results()[name]


def has_published_column(about: dict) -> bool:
    """The published figures are CIFAR-10's (the JPEG copy reads imagefolder:cifar10-jpg), one-vs-all
    (not an anomaly folder made of CIFAR-10 images, graded normal-vs-anomalies)."""
    dataset = str(about.get("dataset")).lower()
    one_vs_all = about.get("protocol", "one-vs-all") == "one-vs-all"
    return one_vs_all and "cifar10" in dataset and "cifar100" not in dataset


@dataclass(frozen=True)
class Published:
    """A figure copied from a paper (percent, as printed there), the tag of its note, and the
    note: the paper, backbone and protocol behind it (not part of a row's identity)."""

    value: float
    tag: str
    note: str = field(default="", compare=False)

    def text(self) -> str:
        return f"{self.value:.1f} [{self.tag}]"


def published(value: float | None, tag: str, note: str) -> Published | None:
    """The published cell of a row, or None where the paper has no figure."""
    return Published(value, tag, note) if value is not None else None
