"""Every head, one name each: its stage, its params.yaml section, ``about.head`` in metrics
files, the kind of a saved head file. Its package is ``pipeline.heads.<name>``, by convention
(not written here, so that reading the list imports no head): ``settings.py`` (its declared
parameters) and ``head.py`` (``HEAD``, the head class). A new head is that folder and one name
here; ``ffad <name>`` then runs it with the generic stage runner, and a command of its own,
``pipeline/commands/<name>.py``, is only needed for what the runner does not do."""

from __future__ import annotations

import importlib
from types import ModuleType

from pipeline.errors import PipelineError

HEADS = ("knn", "plume", "anomem", "igd", "gaussian", "classical", "panda", "patchcore", "padim", "ensemble")


def _part(name: str, part: str) -> ModuleType:
    if name not in HEADS:
        raise PipelineError(f"unknown head {name!r}; this version knows: {', '.join(HEADS)}.")
    return importlib.import_module(f"{package(name)}.{part}")


def package(name: str) -> str:
    """The package of a head: ``pipeline.heads.<name>``."""
    return f"pipeline.heads.{name}"


def settings_module(name: str) -> ModuleType:
    """The head's ``settings.py``: ``PARAMS``, its declared parameters, and ``RUN``, its stage's
    own (torch-free)."""
    return _part(name, "settings")


def head_class(name: str) -> type:
    """The head class of ``name`` (its ``head.py`` defines ``HEAD``)."""
    return _part(name, "head").HEAD


