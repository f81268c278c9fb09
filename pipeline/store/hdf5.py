"""Bring your own features: copy a feature cache to and from a plain HDF5 file.

The HDF5 layout, which other tools can write with a few lines of h5py::

    /train/features  (N, D) float16/32/64     /train/labels  (N,) integer class index
    /test/features   (M, D) float16/32/64     /test/labels   (M,) integer class index
    attrs (all optional): classes (JSON list of names), dataset, backbone (names),
                          metadata (JSON, the full cache metadata; written on export)
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
from pipeline.store.cache import (DEFAULT_CHUNK_ROWS, SPLITS, ArraySpec, FeatureCache, check_replaceable,
                                  library_versions, not_a_store_problem, remove_store)


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
        f.attrs["dataset"] = cache.metadata["dataset"]["name"]
        f.attrs["backbone"] = cache.metadata["backbone"]["name"]
        f.attrs["metadata"] = json.dumps(cache.metadata)
    tmp.replace(path)


def _attr(f: h5py.File, name: str, default=None):
    value = f.attrs.get(name, default)
    return value.decode() if isinstance(value, bytes) else value


def _check_split(f: h5py.File, split: str, path: Path) -> tuple[h5py.Dataset, np.ndarray]:
    for name in ("features", "labels"):
        if f"{split}/{name}" not in f:
            raise PipelineError(f"{path} has no dataset /{split}/{name}. An importable file has /train/features "
                                f"(N, D), /train/labels (N,), /test/features (M, D) and /test/labels (M,).")
    features, labels = f[f"{split}/features"], f[f"{split}/labels"][()]
    if features.ndim != 2:
        raise PipelineError(f"/{split}/features in {path} must be 2-D (samples, dimensions), "
                            f"got shape {features.shape}.")
    if features.dtype.kind != "f":
        raise PipelineError(f"/{split}/features in {path} must be floating point, got {features.dtype}.")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise PipelineError(f"/{split}/labels in {path} must be a 1-D integer array, got shape "
                            f"{labels.shape} and type {labels.dtype}.")
    if len(labels) != features.shape[0]:
        raise PipelineError(f"/{split}/features has {features.shape[0]} rows but /{split}/labels has "
                            f"{len(labels)} in {path}.")
    return features, labels.astype(np.int64)


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
        metadata = json.loads(_attr(f, "metadata", "{}") or "{}")
        classes = json.loads(_attr(f, "classes", "null") or "null") or metadata.get("dataset", {}).get("classes")
        largest = max(int(labels.max(initial=-1)) for _, labels in splits.values())
        if classes is None:
            classes = [str(c) for c in range(largest + 1)]
        for split, (_, labels) in splits.items():
            if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
                raise PipelineError(f"/{split}/labels in {path} must lie in 0..{len(classes) - 1} "
                                    f"(one per class name), found {labels.min()}..{labels.max()}.")
        if not metadata:
            metadata = {
                "dataset": {"name": _attr(f, "dataset", "external"), "source": f"hdf5 import of {path.name}"},
                "backbone": {"name": _attr(f, "backbone", "external")},
                "preprocessing": {},
                "features": {"pooled": "imported", "maps": {}},
            }
        feature_dtype = np.result_type(*(features.dtype for features, _ in splits.values()))
        feature_dtype = "float16" if feature_dtype == np.float16 else "float32"
        metadata["dataset"].update({"classes": list(classes), "n_train": len(splits["train"][1]),
                                    "n_test": len(splits["test"][1])})
        metadata["features"] = {**metadata.get("features", {}), "dtype": feature_dtype, "maps": {}}
        specs = [ArraySpec("features", (dims["train"],), feature_dtype), ArraySpec("labels", (), "int64")]
        cache = FeatureCache.create(out, {**metadata, "versions": library_versions()},
                                    {s: specs for s in SPLITS}, {s: len(splits[s][1]) for s in SPLITS}, chunk_rows)
        for split, (features, labels) in splits.items():
            for chunk, rows in enumerate(cache.chunk_slices(split)):
                block = features[rows]
                if not np.isfinite(block).all():
                    bad = rows.start + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
                    raise PipelineError(f"/{split}/features in {path} contains NaN or Inf (first at row {bad}); "
                                        f"the import was not completed. Clean the features and import again.")
                cache.write_chunk(split, chunk, {"features": block, "labels": labels[rows]})
        cache.mark_complete()
    return cache
