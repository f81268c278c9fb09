"""``params.yaml``: read once, checked strictly against the declared parameters.

Every section's keys are the parameters some class declares (``pipeline.declare``): a head's
section is its head's parameters (``pipeline/heads/<name>/settings.py``) and its stage's own
(``StageParams``, and the head's ``RUN`` class if it has one); dataset, preprocess and extract
are ``pipeline/extract/settings.py``'s; shift is ``ShiftParams`` below. An unknown section or
key, a value of the wrong type (a bool is not an int, 2.7 is not an int) or out of range is one
error naming the file, the section and the key, before any work. Keys a section leaves out take
the class defaults, which are the project's defaults: params.yaml restates them so that DVC
tracks them (``tests/test_params.py`` checks that they agree).

The file is ``$FFAD_PARAMS`` (which must exist), else ./params.yaml (as under ``dvc repro``),
else the project's own beside this package.
"""

from __future__ import annotations

import difflib
import importlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pipeline.declare import Spec, param, specs
from pipeline.errors import PipelineError
from pipeline.heads.registry import HEADS, settings_module

PROJECT_PARAMS = Path(__file__).resolve().parent.parent / "params.yaml"
SHIFT_LABELS = ("unchanged", "anomalous", "both")


@dataclass
class StageParams:
    """What every head stage reads besides its head's parameters."""

    classes: Any = param("all", "Normal classes to evaluate: all, or class names or indices (normal-vs-anomalies: "
                                "the normal classes, together; all: those the dataset records). Any class name "
                                "works: names win over indices and over the commas, the longest first (a class "
                                "named a,b is --classes a,b; classes a and b beside it are then b,a or their "
                                "indices); the word all alone is every class, so a class named all is a list of "
                                "one: --classes all, (a trailing comma).",
                         kind="names", words=("all",))


@dataclass
class ShiftParams:
    """The robustness protocol's section (docs/robustness.md)."""

    splits: str = param("none", "Robustness protocol: each class's head, fitted once, also scores these corrupted "
                                "copies of the test split (made by extract --corruptions): all, or comma-separated "
                                "split names (test@glass_blur@5), corruptions (all their severities) or "
                                "corruption@severity. The metrics gain a shift section: SD (clean), SPD (mean over "
                                "corruptions at severity 5), per corruption and severity.", option="--shift --test-split")
    labels: str = param("unchanged", "unchanged: a corrupted normal-class image is normal (the paper's SPD); "
                                     "anomalous: it is an anomaly, scored against the same images clean (does the "
                                     "head flag the corruption?); both.", choices=SHIFT_LABELS, option="--shift-labels")


@dataclass
class TopLevel:
    scheduler: str = param("none", "Where the head stages run their (class, seed) jobs. none: in this process. "
                                   "local:N: a Dask LocalCluster with N worker processes on this machine. HOST:PORT "
                                   "(or tcp://HOST:PORT): an existing Dask scheduler, e.g. one started on a SLURM "
                                   "allocation or in Kubernetes. A path ending in .json: that scheduler's "
                                   "--scheduler-file. Workers open the cache themselves, so its path must be on "
                                   "storage every worker sees. Metrics files are laid out as in process (identical "
                                   "for kNN; for PLUME identical when the torch thread counts are equal).")
    backbones: Any = param(("efficientnet_lite0",), "One extract stage and one stage per head for each backbone.",
                           kind="names")


# Sections that are not heads: name -> "module:class" (imported when the file is checked).
SECTIONS = {"dataset": "pipeline.extract.settings:DatasetParams",
            "preprocess": "pipeline.extract.settings:PreprocessParams",
            "extract": "pipeline.extract.settings:ExtractParams",
            "shift": "pipeline.params:ShiftParams"}


def _class(path: str) -> type:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def head_settings(head: str) -> tuple[type, type | None]:
    """A head's parameter class and its stage's own (``RUN``, or None), torch-free."""
    module = settings_module(head)
    return module.PARAMS, getattr(module, "RUN", None)


def section_specs(name: str) -> dict[str, Spec]:
    """The parameters a section may hold, by key."""
    if name in SECTIONS:
        return specs(_class(SECTIONS[name]))
    if name in HEADS:
        head, run = head_settings(name)
        found = {**specs(StageParams), **specs(head), **(specs(run) if run else {})}
        return {key: spec for key, spec in found.items() if spec.config}
    raise KeyError(name)


def params_path() -> Path:
    """``$FFAD_PARAMS`` (an error if it is not a file), else ./params.yaml, else the project's."""
    given = os.environ.get("FFAD_PARAMS")
    if given:
        if not Path(given).is_file():
            what = "a folder" if Path(given).is_dir() else "missing"
            raise PipelineError(f"FFAD_PARAMS names {given}, which is {what}: set it to a params.yaml file, or unset "
                                f"it to use ./params.yaml.")
        return Path(given)
    for candidate in ("params.yaml", PROJECT_PARAMS):
        if Path(candidate).is_file():
            return Path(candidate)
    raise PipelineError(f"no params.yaml in the current directory or at {PROJECT_PARAMS}: the commands read their "
                        f"defaults from it. Run them from the project's folder, or set FFAD_PARAMS=FILE.")


def _close(word: str, known: list[str]) -> str:
    near = difflib.get_close_matches(word, known, n=3, cutoff=0.6)
    return f" Did you mean {' or '.join(near)}?" if near else f" Known: {', '.join(known)}."


def check_params(data: Any, path: str | Path) -> dict:
    """The file's contents checked and normalised (lists as tuples), or a PipelineError."""
    if not isinstance(data, dict):
        raise PipelineError(f"{path} is not a YAML mapping of sections (dataset, extract, knn, ...).")
    top = specs(TopLevel)
    known = [*top, *SECTIONS, *HEADS]
    checked: dict = {}
    for name, value in data.items():
        if name in top:
            checked[name] = top[name].check(value, name, str(path))
            continue
        if name not in SECTIONS and name not in HEADS:
            raise PipelineError(f"{path}: unknown section {name!r}.{_close(str(name), known)}")
        if not isinstance(value, dict):
            raise PipelineError(f"{path}: section {name} must be a mapping of keys to values, not {value!r}.")
        allowed = section_specs(name)
        section = {}
        for key, item in value.items():
            if key not in allowed:
                raise PipelineError(f"{path}: unknown key {key!r} in section {name}.{_close(str(key), list(allowed))}")
            section[key] = allowed[key].check(item, key, f"{path}, section {name}")
        checked[name] = section
    return checked


@lru_cache(maxsize=None)
def _load(path: str, mtime: float) -> dict:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise PipelineError(f"cannot read {path}: {error}") from None
    return check_params(data, path)


def load_params() -> dict:
    path = params_path()
    return _load(str(path), path.stat().st_mtime)


def section(name: str) -> dict:
    """One section of params.yaml, checked (keys it leaves out are not filled in)."""
    value = load_params().get(name, {})
    return value if isinstance(value, dict) else {}


def default(section_name: str, key: str, fallback: Any = None) -> Any:
    """``params.yaml[section][key]`` (a top-level key when ``section_name`` is empty), else
    ``fallback`` (the class default). For the defaults of options, made when a command is
    imported: a file that fails its check gives the fallback here, and the command reports
    the error when it runs (``load_params`` first thing), never a traceback at import."""
    try:
        data = load_params() if not section_name else section(section_name)
    except PipelineError:
        return fallback
    return data.get(key, fallback)

