"""The parameters every head shares, declared once (``pipeline.declare``). A head's own are in
``pipeline/heads/<name>/settings.py``: a dataclass ``PARAMS`` on top of one of these, which
its head class inherits (so the head's fields are its parameters), torch-free so that a
command's ``--help`` stays fast; optionally ``RUN``, its stage's own settings (seeds, AnoMem's
semi-supervised runs), and ``PRESETS`` on ``PARAMS``: named configurations (the paper's)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from pipeline.declare import param

DEFAULT_THRESHOLD_QUANTILE = 0.95
# Feature scalings before a detector (pipeline/heads/scaling.py, which applies them); here, numpy-free,
# for the heads that declare a scaling parameter (gaussian, classical).
SCALINGS = ("none", "standardise", "l2", "sqrt")


@dataclass(eq=False, repr=False, kw_only=True)
class HeadParams:
    # name -> {"about": what it is, <parameter>: value, ...}: ``Head.preset(name)``, ``--preset``.
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    threshold_quantile: float | None = param(
        DEFAULT_THRESHOLD_QUANTILE, "With --save-heads: the quantile of the training scores taken as the anomaly "
                                    "threshold (saved heads flag scores above it); none: no threshold.",
        low=0, high=1, none_word="none")


@dataclass(eq=False, repr=False, kw_only=True)
class TorchHeadParams(HeadParams):
    device: str = param("auto", "Where the head computes: auto (a GPU if there is one), cpu, cuda, cuda:<i>.")


@dataclass
class SeedsParams:
    """A stage whose head draws random numbers: it runs once per seed."""

    seeds: Any = param(1, "Seeds: a number N (seeds 0..N-1) or a comma-separated list; the mean and standard "
                          "deviation over them are reported.", kind="seeds")
