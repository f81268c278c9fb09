"""What the report says of each head: its display name, order, rows, title and published
figures, one module per head, reading metrics payloads only (no head package, no torch).
A head without a module here still gets a generic row of its AUROCs."""

from __future__ import annotations

import importlib
from types import ModuleType

# head name (``about.head`` in metrics files) -> its report module
REPORTS = {"knn": "pipeline.report.heads.knn", "plume": "pipeline.report.heads.plume",
           "anomem": "pipeline.report.heads.anomem", "igd": "pipeline.report.heads.igd",
           "gaussian": "pipeline.report.heads.gaussian", "classical": "pipeline.report.heads.classical",
           "panda": "pipeline.report.heads.panda"}


def report_module(head: str) -> ModuleType | None:
    """The report module of ``head``, or None for a head without one."""
    return importlib.import_module(REPORTS[head]) if head in REPORTS else None
