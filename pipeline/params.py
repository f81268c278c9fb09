"""``params.yaml``: the single source of every default that decides a number.

Each command takes its options' defaults from its section of ``params.yaml`` (the one in the
current directory, as under ``dvc repro``, else the project's own beside this package), so
``--help`` shows them and ``dvc.yaml`` passes only what differs per stage (paths, backbone).
Options given on the command line override them.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import click

from pipeline.errors import PipelineError

PROJECT_PARAMS = Path(__file__).resolve().parent.parent / "params.yaml"


def params_path() -> Path:
    """``$FFAD_PARAMS``, else ./params.yaml, else the project's params.yaml."""
    for candidate in (os.environ.get("FFAD_PARAMS"), "params.yaml", PROJECT_PARAMS):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise PipelineError(f"no params.yaml in the current directory or at {PROJECT_PARAMS}: the commands read their "
                        f"defaults from it. Run them from the project's folder, or set FFAD_PARAMS=FILE.")


@lru_cache(maxsize=None)
def _load(path: str) -> dict:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise PipelineError(f"cannot read {path}: {error}") from None
    if not isinstance(data, dict):
        raise PipelineError(f"{path} is not a YAML mapping of sections (dataset, extract, knn, ...).")
    return data


def load_params() -> dict:
    return _load(str(params_path()))


def section(name: str) -> dict:
    """One section of params.yaml (``knn``, ``plume``, ...), or a top-level value's section."""
    params = load_params()
    value = params.get(name)
    if not isinstance(value, dict):
        raise PipelineError(f"{params_path()} has no section {name!r}; every command reads its defaults there.")
    return value


def default(section_name: str, key: str) -> Any:
    """``params.yaml[section][key]``; a top-level key when ``section_name`` is empty."""
    data = load_params() if not section_name else section(section_name)
    if key not in data:
        where = f"{section_name}.{key}" if section_name else key
        raise PipelineError(f"{params_path()} has no {where}: add it (every default is read from there).")
    return data[key]


def option(section_name: str, key: str, *decls: str, **kwargs: Any):
    """A click option whose default is ``params.yaml[section][key]``, shown in ``--help``.
    ``decls`` default to ``--<key with dashes>``."""
    value = default(section_name, key)
    return click.option(*(decls or (f"--{key.replace('_', '-')}",)), default=value, show_default=True, **kwargs)
