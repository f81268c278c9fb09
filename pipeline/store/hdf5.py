"""Bring your own features: copy a feature cache to and from a plain HDF5 file.

The HDF5 layout, which other tools can write with a few lines of h5py::

    /train/features  (N, D) float16/32/64     /train/labels  (N,) integer class index
    /test/features   (M, D) float16/32/64     /test/labels   (M,) integer class index
    attrs (all optional): classes (JSON list of names), dataset, backbone (names),
                          metadata (JSON, the full cache metadata; written on export)

Class names must be distinct and non-empty (each one names metrics, plots and saved heads); an
import that breaks any of this is refused with what is wrong, never half-done.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from pipeline.errors import PipelineError
from pipeline.store.cache import (DEFAULT_CHUNK_ROWS, METADATA_SECTIONS, SPLITS, ArraySpec, FeatureCache,
                                  check_replaceable, class_names_problem, library_versions, not_a_store_problem,
                                  remove_store)


def export_hdf5(cache: FeatureCache, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        for split in cache.splits:
            features = cache.array(split, "features")
            dataset = f.create_dataset(f"{split}/features", shape=features.shape, dtype=features.dtype,
                                       chunks=(min(cache.chunk_rows, features.shape[0]), features.shape[1]))
            for rows, block in cache.iter_chunks(split):
                dataset[rows] = block
            f.create_dataset(f"{split}/labels", data=cache.labels(split))
        f.attrs["classes"] = json.dumps(cache.classes)
        f.attrs["dataset"] = str(cache.metadata.get("dataset", {}).get("name", "external"))
        f.attrs["backbone"] = str(cache.metadata.get("backbone", {}).get("name", "external"))
        f.attrs["metadata"] = json.dumps(cache.metadata)
    tmp.replace(path)


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _text_attr(f: h5py.File, name: str, path: Path, default: str) -> str:
    """A name attribute (dataset, backbone): text, or ``default`` when absent."""
    value = f.attrs.get(name)
    if value is None:
        return default
    if not isinstance(value, (str, bytes)):
        raise PipelineError(f"the {name} attribute of {path} must be text (a name), got {_shown(value)}.")
    return _text(value)


def _json_attr(f: h5py.File, name: str, path: Path, what: str, names_array: bool = False):
    """A JSON attribute, parsed (None when absent). With ``names_array`` a 1-D array of strings
    (h5py's way of storing a list of names) is taken as that list."""
    value = f.attrs.get(name)
    if value is None:
        return None
    if names_array and isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind in "OSU":
        return [_text(item) if isinstance(item, (str, bytes)) else item for item in value.tolist()]
    if not isinstance(value, (str, bytes)):
        raise PipelineError(f"the {name} attribute of {path} must be JSON text ({what}), got {_shown(value)}.")
    try:
        return json.loads(_text(value))
    except ValueError as error:
        raise PipelineError(f"the {name} attribute of {path} is not valid JSON ({error}); it must be {what}.") from None


def _shown(value) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and type {value.dtype}"
    return f"{type(value).__name__} {str(value)[:60]}"


def _metadata(f: h5py.File, path: Path) -> dict:
    """The metadata attribute (export-hdf5 writes it) with its sections checked, and the
    dataset and backbone attributes for what it leaves out."""
    what = "a JSON object, the cache metadata export-hdf5 writes"
    metadata = _json_attr(f, "metadata", path, what)
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict):
        raise PipelineError(f"the metadata attribute of {path} must be {what}, got a JSON "
                            f"{type(metadata).__name__}. Leave it out, or write a JSON object.")
    for section in METADATA_SECTIONS:
        if section in metadata and not isinstance(metadata[section], dict):
            raise PipelineError(f"the metadata attribute of {path}: its {section} section must be a JSON object, "
                                f"got a JSON {type(metadata[section]).__name__}.")
    defaults = {
        "dataset": {"name": _text_attr(f, "dataset", path, "external"), "source": f"hdf5 import of {path.name}"},
        "backbone": {"name": _text_attr(f, "backbone", path, "external")},
        "preprocessing": {},
        "features": {"pooled": "imported", "maps": {}},
    }
    return {**metadata, **{section: {**defaults[section], **metadata.get(section, {})} for section in defaults}}


def _check_split(f: h5py.File, split: str, path: Path) -> tuple[h5py.Dataset, np.ndarray]:
    for name in ("features", "labels"):
        if not isinstance(f.get(f"{split}/{name}"), h5py.Dataset):
            raise PipelineError(f"{path} has no dataset /{split}/{name}. An importable file has /train/features "
                                f"(N, D), /train/labels (N,), /test/features (M, D) and /test/labels (M,).")
    features, labels = f[f"{split}/features"], f[f"{split}/labels"]
    if features.ndim != 2:
        raise PipelineError(f"/{split}/features in {path} must be 2-D (samples, dimensions), "
                            f"got shape {features.shape}.")
    if features.dtype.kind != "f":
        raise PipelineError(f"/{split}/features in {path} must be floating point, got {features.dtype}.")
    if features.shape[0] == 0 or features.shape[1] == 0:
        raise PipelineError(f"/{split}/features in {path} is empty (shape {features.shape}); every split needs "
                            f"samples with at least one dimension.")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise PipelineError(f"/{split}/labels in {path} must be a 1-D integer array, got shape "
                            f"{labels.shape} and type {labels.dtype}.")
    if labels.shape[0] != features.shape[0]:
        raise PipelineError(f"/{split}/features has {features.shape[0]} rows but /{split}/labels has "
                            f"{labels.shape[0]} in {path}.")
    return features, labels[()]


def import_hdf5(path: str | Path, out: str | Path, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                protected: Sequence[str | Path] = ()) -> FeatureCache:
    """Validate an HDF5 feature file and write it as a complete feature cache at ``out``.

    The cache is built beside ``out`` and moved into place only when complete, so a
    rejected file leaves nothing behind (and an existing cache at ``out`` untouched). Only a
    feature cache made by this project is ever replaced: anything else at ``out`` (or at the
    temporary ``<out>.importing``), and the ``protected`` folders, are refused.
    """
    out = Path(out)
    building = out.with_name(out.name + ".importing")
    check_replaceable(out, protected)  # before any work
    remove_store(building, protected)  # what an import killed half-way left behind
    try:
        _import_hdf5(Path(path), building, chunk_rows)
    except BaseException:
        if building.exists() and not_a_store_problem(building) is None:
            shutil.rmtree(building)
        raise
    finally:
        # The lock file the temporary store's attribute updates used: nothing is left beside ``out``.
        Path(str(building) + ".attrs.lock").unlink(missing_ok=True)
    remove_store(out, protected)
    os.replace(building, out)
    return FeatureCache.open(out)


def _import_hdf5(path: Path, out: Path, chunk_rows: int) -> FeatureCache:
    if not path.is_file():
        raise PipelineError(f"no HDF5 file at {path}.")
    try:
        f = h5py.File(path, "r")
    except OSError as error:
        raise PipelineError(f"{path} is not a readable HDF5 file ({error}).") from error
    with f:
        splits = {split: _check_split(f, split, path) for split in SPLITS}
        dims = {split: features.shape[1] for split, (features, _) in splits.items()}
        if len(set(dims.values())) != 1:
            raise PipelineError(f"train and test features of {path} have different dimensions: {dims}.")
        metadata = _metadata(f, path)
        source = "classes attribute"
        classes = _json_attr(f, "classes", path, "a JSON list of class names", names_array=True)
        if classes is None:
            classes, source = metadata["dataset"].get("classes"), "metadata attribute's dataset.classes"
        if classes is None:  # named by their indices, 0 to the largest label
            rows = sum(len(labels) for _, labels in splits.values())
            lowest = min(labels.min() for _, labels in splits.values())
            largest = max(labels.max() for _, labels in splits.values())
            if lowest < 0 or largest >= rows:
                raise PipelineError(f"the labels of {path} run from {lowest} to {largest}, which cannot be class "
                                    f"indices of {rows} samples. Give labels from 0 to the number of classes - 1, "
                                    f"or name the classes with a classes attribute (a JSON list, label i is class i).")
            classes = [str(c) for c in range(int(largest) + 1)]
        problem = class_names_problem(classes)
        if problem:
            raise PipelineError(f"the {source} of {path} {problem}. Give the classes as a JSON list of "
                                f"distinct, non-empty names, one per label (label i is class i), e.g. "
                                f"[\"good\", \"scratch\"].")
        for split, (_, labels) in splits.items():
            if labels.min() < 0 or labels.max() >= len(classes):
                raise PipelineError(f"/{split}/labels in {path} must lie in 0..{len(classes) - 1} "
                                    f"(one per class name), found {labels.min()}..{labels.max()}.")
        splits = {split: (features, labels.astype(np.int64)) for split, (features, labels) in splits.items()}
        feature_dtype = np.result_type(*(features.dtype for features, _ in splits.values()))
        feature_dtype = "float16" if feature_dtype == np.float16 else "float32"
        metadata["dataset"].update({"classes": list(classes), "n_train": len(splits["train"][1]),
                                    "n_test": len(splits["test"][1])})
        # Only pooled features come in: no maps, no full-resolution trunk map.
        recorded = {k: v for k, v in metadata.get("features", {}).items() if k != "trunk"}
        metadata["features"] = {**recorded, "dtype": feature_dtype, "maps": {}}
        specs = [ArraySpec("features", (dims["train"],), feature_dtype), ArraySpec("labels", (), "int64")]
        cache = FeatureCache.create(out, {**metadata, "versions": library_versions()},
                                    {s: specs for s in SPLITS}, {s: len(splits[s][1]) for s in SPLITS}, chunk_rows)
        for split, (features, labels) in splits.items():
            for chunk, rows in enumerate(cache.chunk_slices(split)):
                block = features[rows]
                with np.errstate(over="ignore"):
                    stored = block.astype(feature_dtype)
                if not np.isfinite(stored).all():
                    bad = rows.start + int(np.flatnonzero(~np.isfinite(stored).all(axis=1))[0])
                    if not np.isfinite(block).all():
                        raise PipelineError(f"/{split}/features in {path} contains NaN or Inf (first at row {bad}); "
                                            f"the import was not completed. Clean the features and import again.")
                    raise PipelineError(f"/{split}/features in {path} holds values too large for {feature_dtype} "
                                        f"(first at row {bad}); the import was not completed. Scale the features "
                                        f"and import again.")
                block = stored
                cache.write_chunk(split, chunk, {"features": block, "labels": labels[rows]})
        cache.mark_complete()
    return cache
