"""Overwrite guards: a store is only ever written, replaced or removed where nothing but a store
made by this project is, and never at the working directory or the data directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Sequence

from pipeline.errors import PipelineError
from pipeline.store.metadata import split_name_problem

# Written into a store's attributes before anything else, so that a folder can be recognised as a
# store made by this project before it is ever replaced or removed.
STORE_FORMAT = "frozen-feature-ad feature cache"
# The attributes of stores made before the marker existed; together they still say "ours".
_LEGACY_ATTRIBUTES = {"format_version", "metadata", "chunk_rows", "chunks", "complete"}


def _guarded(target: Path, folder: Path, what: str) -> str | None:
    """``target`` (resolved) described as ``what`` when it is ``folder`` or holds it, else None."""
    folder = folder.resolve()
    if target == folder:
        return f"is {what}"
    if target in folder.parents:
        return f"holds {what}"
    return None


def protected_problem(path: str | Path, protected: Sequence[str | Path] = ()) -> str | None:
    """Why a store must never be written at ``path``, or None: it is, or holds, the current
    working directory or one of the ``protected`` folders (the data directory)."""
    target = Path(path).resolve()
    found = [_guarded(target, Path.cwd(), f"the current working directory {Path.cwd()}")]
    found += [_guarded(target, Path(folder), f"the data directory {folder}") for folder in protected]
    return next((problem for problem in found if problem), None)


def not_a_store_problem(path: str | Path) -> str | None:
    """Why the existing ``path`` is not recognisably a store made by this project, or None.

    A store is a folder holding only zarr.json and split groups, whose attributes carry this
    project's format marker (or, for stores made before it, all of this project's attributes).
    Anything else may be someone's data, so it is never deleted or replaced.
    """
    path = Path(path)
    if path.is_symlink():
        return "is a symbolic link"
    if not path.is_dir():
        return "is not a folder"
    entries = sorted(entry.name for entry in path.iterdir())
    if not entries:
        return None  # an empty folder holds nothing to lose
    try:
        node = json.loads((path / "zarr.json").read_text())
        attributes = node.get("attributes") or {}
    except (OSError, ValueError, AttributeError):
        return "has no readable zarr.json"
    if node.get("node_type") != "group" or not (attributes.get("format") == STORE_FORMAT
                                                 or _LEGACY_ATTRIBUTES <= set(attributes)):
        return "has a zarr.json without this project's feature-cache attributes"
    foreign = [name for name in entries if name != "zarr.json" and split_name_problem(name) is not None]
    if foreign:
        return f"also holds {', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}, which a feature cache never does"
    return None


def occupied(path: str | Path) -> bool:
    """Whether something is at ``path``: anything but nothing or an empty folder."""
    path = Path(path)
    return path.is_symlink() or (path.exists() and not (path.is_dir() and not any(path.iterdir())))


def check_replaceable(path: str | Path, protected: Sequence[str | Path] = ()) -> None:
    """Refuse, naming the path and why, to delete or replace anything at ``path`` but a store
    made by this project (nothing there is fine), and ever the ``protected`` folders."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return
    problem = protected_problem(path, protected)
    if problem:
        raise PipelineError(f"{path} {problem}: a feature cache is never written there, since that would delete "
                            f"it. Choose another path for the cache.")
    problem = not_a_store_problem(path)
    if problem:
        raise PipelineError(f"{path} {problem}: it is not a feature cache made by this project, so it was left "
                            f"untouched (only such a cache is ever replaced). Choose another path for the cache.")


def remove_store(path: str | Path, protected: Sequence[str | Path] = ()) -> None:
    """Delete the store at ``path``, if there is one; anything else is refused (``check_replaceable``)."""
    check_replaceable(path, protected)
    if Path(path).exists():
        shutil.rmtree(path)
