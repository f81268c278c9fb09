"""Every head, one line each: its name (the stage, ``about.head`` in metrics files, the kind of
a saved head file) and its package. A new head is a new package under ``pipeline/heads/`` and
one line here."""

from __future__ import annotations

import importlib
from types import ModuleType

from pipeline.errors import PipelineError

HEADS = {
    "knn": "pipeline.heads.knn",
    "plume": "pipeline.heads.plume",
    "anomem": "pipeline.heads.anomem",
    "igd": "pipeline.heads.igd",
    "gaussian": "pipeline.heads.gaussian",
    "classical": "pipeline.heads.classical",
    "panda": "pipeline.heads.panda",
}


def _part(name: str, part: str) -> ModuleType:
    if name not in HEADS:
        raise PipelineError(f"unknown head {name!r}; this version knows: {', '.join(HEADS)}.")
    return importlib.import_module(f"{HEADS[name]}.{part}")


def head_class(name: str) -> type:
    """The head class of ``name`` (its ``head.py`` defines ``HEAD``)."""
    return _part(name, "head").HEAD


def report_module(name: str) -> ModuleType | None:
    """``report.py`` of ``name`` (its rows, title and settings), or None for an unknown head."""
    return _part(name, "report") if name in HEADS else None

