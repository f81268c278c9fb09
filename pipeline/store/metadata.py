"""The metadata checks of a feature store: split names, class lists, the metadata and the
attributes (zarr.json) a store must have, their checksums, and the library versions recorded."""

from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import zarr

SPLITS = ("train", "test")
# A derived split is named <split>@<variant>[@<variant>...], e.g. test@fog@5: the store keeps
# its arrays and description, and knows nothing of what the variant means.
DERIVED_MARK = "@"
_VARIANT_CHARACTERS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def library_versions() -> dict[str, str]:
    import numpy
    import torch
    import torchvision

    import pipeline

    return {"python": sys.version.split()[0], "torch": torch.__version__, "torchvision": torchvision.__version__,
            "zarr": zarr.__version__, "numpy": numpy.__version__, "pipeline": pipeline.__version__}


def differences(expected: dict, actual: dict, prefix: str = "") -> list[str]:
    """Human-readable differences for every key of ``expected`` that ``actual`` disagrees with."""
    found = []
    for key, want in expected.items():
        where = f"{prefix}{key}"
        have = actual.get(key) if isinstance(actual, dict) else None
        if isinstance(want, dict) and isinstance(have, dict):
            found += differences(want, have, where + ".")
        elif have != want:
            found.append(f"{where} is {have!r} in the cache but {want!r} was asked for")
    return found


def split_name_problem(name: Any) -> str | None:
    """Why ``name`` cannot name a split, or None: train, test, or a derived split
    <split>@<variant>[@...] whose variants are non-empty words of letters, digits and _ . -"""
    if not isinstance(name, str):
        return f"{_kind(name)} is not a split name"
    base, *variants = name.split(DERIVED_MARK)
    if base not in SPLITS:
        return f"{name!r} is not a split name (train, test, or test@<variant>[@<variant>...])"
    if any(not variant or not set(variant) <= _VARIANT_CHARACTERS for variant in variants):
        return f"{name!r} is not a split name: each @-separated variant is made of letters, digits and _ . -"
    return None


def is_derived(name: str) -> bool:
    """Whether ``name`` names a derived split (test@fog@5), not train or test."""
    return DERIVED_MARK in name


def _digest(data: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()


def metadata_digest(metadata: Any) -> str:
    """SHA-256 of the metadata as canonical JSON (keys sorted), so the order in which zarr.json
    lists the keys does not matter, but every value does."""
    return hashlib.sha256(json.dumps(metadata, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _kind(value: Any) -> str:
    """What a JSON value is, in words, for messages."""
    names = {dict: "a mapping", list: "a list", str: "a text", bool: "true/false", int: "a number",
             float: "a number", type(None): "null"}
    return f"{names.get(type(value), type(value).__name__)} ({json.dumps(value, default=str)[:60]})"


def class_names_problem(classes: Any) -> str | None:
    """Why ``classes`` is not a usable class list, or None. A class list is a non-empty list of
    distinct, non-empty names: each name labels metrics, plots and saved heads, so two classes
    of one name would share them (and one would be lost)."""
    if not isinstance(classes, list):
        return f"is {_kind(classes)}, not a list of names"
    if not classes:
        return "is empty"
    for name in classes:
        if not isinstance(name, str):
            return f"holds {_kind(name)}, which is not a name (text)"
    empty = [i for i, name in enumerate(classes) if not name.strip()]
    if empty:
        return f"holds an empty name (class {empty[0]})"
    repeated = [name for name, count in Counter(classes).items() if count > 1]
    if repeated:
        return (f"names {', '.join(repr(name) for name in repeated[:5])} more than once (two classes of one "
                f"name would share their metrics, plots and saved heads)")
    return None


METADATA_SECTIONS = ("dataset", "backbone", "preprocessing", "features")


def metadata_problem(metadata: Any) -> str | None:
    """Why ``metadata`` cannot be a feature cache's metadata, or None: a mapping whose sections
    (dataset, backbone, preprocessing, features) are mappings, with a usable class list."""
    if not isinstance(metadata, dict):
        return f"metadata is {_kind(metadata)}, not a mapping"
    for section in METADATA_SECTIONS:
        if section in metadata and not isinstance(metadata[section], dict):
            return f"metadata.{section} is {_kind(metadata[section])}, not a mapping"
    classes = metadata.get("dataset", {}).get("classes")
    problem = class_names_problem(classes) if classes is not None else None
    return f"metadata.dataset.classes {problem}" if problem else None


def attributes_problem(attrs: Any) -> str | None:
    """Why a store's attributes (its zarr.json) cannot be this project's, or None: the
    bookkeeping a reader relies on (chunk size, chunk records, completeness) with the right
    types, and usable metadata."""
    chunk_rows = attrs.get("chunk_rows")
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        return f"chunk_rows is {_kind(chunk_rows)}, not a positive number of rows"
    chunks = attrs.get("chunks")
    if not isinstance(chunks, dict):
        return f"chunks is {_kind(chunks)}, not a mapping of finished chunks per split"
    for split, record in chunks.items():
        if not isinstance(record, dict):
            return f"chunks.{split} is {_kind(record)}, not a mapping of finished chunks"
        for chunk, sums in record.items():
            if not chunk.isdigit():
                return f"chunks.{split} has the entry {chunk!r}, not a chunk number"
            if not isinstance(sums, dict) or not all(isinstance(value, str) for value in sums.values()):
                return f"chunks.{split}.{chunk} is {_kind(sums)}, not a mapping of array names to checksums"
    if not isinstance(attrs.get("complete", False), bool):
        return f"complete is {_kind(attrs.get('complete'))}, not true or false"
    if not isinstance(attrs.get("metadata_sha256", ""), str):
        return f"metadata_sha256 is {_kind(attrs.get('metadata_sha256'))}, not a checksum"
    derived = attrs.get("split_metadata", {})
    if not isinstance(derived, dict):
        return f"split_metadata is {_kind(derived)}, not a mapping of derived splits to their descriptions"
    for name, description in derived.items():
        problem = split_name_problem(name)
        if problem or not is_derived(name):
            return f"split_metadata names {name!r}, which is not a derived split (test@<variant>...)"
        if not isinstance(description, dict):
            return f"split_metadata.{name} is {_kind(description)}, not a mapping"
    if not isinstance(attrs.get("split_metadata_sha256", ""), str):
        return f"split_metadata_sha256 is {_kind(attrs.get('split_metadata_sha256'))}, not a checksum"
    if "metadata" not in attrs:
        return "there is no metadata"
    return metadata_problem(attrs["metadata"])


def remake_hint(path: str | Path, lead: str = "Make it again") -> str:
    """How to make a cache again, when nothing in it can be repaired."""
    return (f"{lead}: the python -m pipeline.extract command that made it, with --overwrite (dvc repro -f "
            f"for a DVC stage), or, for imported features, python -m pipeline.cache import-hdf5 --overwrite "
            f"FILE.h5 {path}.")
