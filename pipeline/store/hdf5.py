"""Bring your own features: copy a feature cache to and from a plain HDF5 file.

The HDF5 layout, which other tools can write with a few lines of h5py::

    /train/features  (N, D) float16/32/64     /train/labels  (N,) integer class index
    /test/features   (M, D) float16/32/64     /test/labels   (M,) integer class index
    attrs (all optional): classes (JSON list of names), dataset, backbone (names),
                          metadata (JSON, the full cache metadata; written on export)

Class names must be distinct and non-empty (each one names metrics, plots and saved heads), also
after Unicode normalisation (NFC), the form they are kept in; an import that breaks any of this
is refused with what is wrong, never half-done.
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
from pipeline.class_names import nfc, same_after_nfc_problem
from pipeline.progress import progress
from pipeline.store.cache import DEFAULT_CHUNK_ROWS, ArraySpec, FeatureCache
from pipeline.store.guards import check_replaceable, not_a_store_problem, remove_store
from pipeline.store.metadata import (METADATA_SECTIONS, SPLITS, _digest, class_names_problem,
                                     library_versions)


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


def _places(name: str, path: Path, prefix_variable: str, beside: bool) -> list[Path]:
    """Where HDF5 looks for the file ``name`` that ``path`` refers to, in order: there when
    absolute; else under ``$<prefix_variable>`` (``${ORIGIN}``: ``path``'s folder) when set;
    else beside ``path`` (virtual sources only) and in the working folder."""
    if os.path.isabs(name):
        return [Path(name)]
    prefix = os.environ.get(prefix_variable)
    if prefix:
        return [Path(prefix.replace("${ORIGIN}", str(path.parent))) / name]
    return [*([path.parent / name] if beside else []), Path(name).absolute()]


def _found(name: str, path: Path, prefix_variable: str, beside: bool) -> tuple[Path | None, str]:
    """The file ``name`` as HDF5 finds it (``_places``), or None; and where it was looked for."""
    places = _places(name, path, prefix_variable, beside)
    return next((place for place in places if place.is_file()), None), " or ".join(map(str, places))


def _held_problem(dataset: h5py.Dataset, path: Path, depth: int = 0) -> str | None:
    """What is missing when ``dataset`` does not hold every value its shape declares, else None.
    HDF5 reads what was never written, or lies in a file that is not there, as the fill value
    (zeros) without a word: a file of a few kilobytes can declare a billion rows. Checked from
    the layout alone, before any value is read: the chunks written (chunked), the storage
    (contiguous), the external files' sizes, the virtual sources (each checked the same way)."""
    rows = dataset.shape[0]
    per_row = dataset.size // rows if rows else 1
    if dataset.is_virtual:
        covered = 0
        for source in dataset.virtual_sources():
            problem = _virtual_source_problem(source, path, depth)
            if problem:
                return problem
            covered += source.vspace.get_select_npoints()
        if covered < dataset.size:
            return (f"its virtual sources map only {covered} of its {dataset.size} values (about {covered // per_row} "
                    f"rows); the rest would be read as zeros")
        return None
    if dataset.external:
        held = 0
        for name, offset, size in dataset.external:
            file, looked = _found(name, path, "HDF5_EXTFILE_PREFIX", beside=False)
            if file is None:
                return f"its values lie in the external file {name}, which is not there (no file {looked})"
            available = max(file.stat().st_size - offset, 0)
            held += available if size == h5py.h5f.UNLIMITED else min(size, available)
        if held < dataset.nbytes:
            return (f"its external files hold only {held} of its {dataset.nbytes} bytes (about "
                    f"{held // (per_row * dataset.dtype.itemsize)} rows); the rest would be read as zeros")
        return None
    if dataset.chunks is not None:
        expected = int(np.prod([-(-n // c) for n, c in zip(dataset.shape, dataset.chunks)]))
        try:
            written = dataset.id.get_num_chunks()
        except (AttributeError, RuntimeError):  # HDF5 before 1.10.5 cannot count them: left unchecked
            return None
        if written < expected:
            return (f"only {written} of its {expected} chunks were ever written (at most "
                    f"{min(rows, written * dataset.chunks[0])} rows); the rest would be read as zeros")
        return None
    stored = dataset.id.get_storage_size()
    if stored < dataset.nbytes:
        return f"only {stored} of its {dataset.nbytes} bytes were ever written; the rest would be read as zeros"
    return None


def _virtual_source_problem(source, path: Path, depth: int) -> str | None:
    """Why a virtual source of a dataset in ``path`` does not hold what is mapped from it."""
    file, looked = ((path, str(path)) if source.file_name == "." else
                    _found(source.file_name, path, "HDF5_VDS_PREFIX", beside=True))
    where = f"{source.file_name}:{source.dset_name}"
    if file is None:
        return f"its virtual source {where} is missing: no file {looked}"
    if depth >= 4:
        return f"its virtual sources are nested more than 4 deep (at {where}); give the values themselves"
    try:
        with h5py.File(file, "r") as f:
            held = f.get(source.dset_name)
            if not isinstance(held, h5py.Dataset):
                return f"its virtual source {where} is missing: {file} has no dataset {source.dset_name}"
            try:
                _, last = source.src_space.get_select_bounds()
            except (ValueError, RuntimeError, OSError):  # an unlimited selection has no bounds: not checked
                last = None
            if last is not None and (len(last) != held.ndim or any(e >= n for e, n in zip(last, held.shape))):
                return (f"its virtual source {where} has shape {held.shape}, smaller than the region mapped from it "
                        f"(up to {tuple(e + 1 for e in last)})")
            problem = _held_problem(held, file, depth + 1)
    except OSError as error:
        return f"its virtual source {where} cannot be read ({error})"
    return None if problem is None else f"its virtual source {where}: {problem}"


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
    for name, dataset in (("features", features), ("labels", labels)):  # before reading any of them
        problem = _held_problem(dataset, path)
        if problem:
            raise PipelineError(f"/{split}/{name} in {path} declares {dataset.shape[0]} rows (shape {dataset.shape}), "
                                f"but {problem}. It was refused; nothing was written. Write every row's values into "
                                f"the file (h5py: f[\"{split}/{name}\"] = array), not only its shape.")
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
        # Names are kept Unicode-normalised (NFC), as folder names are: two spellings of one name are refused.
        problem = class_names_problem(classes) or same_after_nfc_problem(classes)
        if problem:
            raise PipelineError(f"the {source} of {path} {problem}. Give the classes as a JSON list of "
                                f"distinct, non-empty names, one per label (label i is class i), e.g. "
                                f"[\"good\", \"scratch\"].")
        classes = [nfc(name) for name in classes]
        recorded_normal = metadata["dataset"].get("normal_classes")
        if isinstance(recorded_normal, list) and all(isinstance(name, str) for name in recorded_normal):
            metadata["dataset"]["normal_classes"] = [nfc(name) for name in recorded_normal]
        for split, (_, labels) in splits.items():
            if labels.min() < 0 or labels.max() >= len(classes):
                raise PipelineError(f"/{split}/labels in {path} must lie in 0..{len(classes) - 1} "
                                    f"(one per class name), found {labels.min()}..{labels.max()}.")
        splits = {split: (features, labels.astype(np.int64)) for split, (features, labels) in splits.items()}
        feature_dtype = np.result_type(*(features.dtype for features, _ in splits.values()))
        feature_dtype = "float16" if feature_dtype == np.float16 else "float32"
        metadata["dataset"].update({"classes": list(classes), "n_train": len(splits["train"][1]),
                                    "n_test": len(splits["test"][1])})
        # Only pooled features come in: no maps, no full-resolution trunk or patch maps.
        recorded = {k: v for k, v in metadata.get("features", {}).items() if k not in ("trunk", "patch")}
        metadata["features"] = {**recorded, "dtype": feature_dtype, "maps": {}}
        specs = [ArraySpec("features", (dims["train"],), feature_dtype), ArraySpec("labels", (), "int64")]
        cache = FeatureCache.create(out, {**metadata, "versions": library_versions()},
                                    {s: specs for s in SPLITS}, {s: len(splits[s][1]) for s in SPLITS}, chunk_rows)
        # Chunk by chunk with progress; the chunks' checksums are recorded, with the mark of
        # completion, in one write of the attributes at the end: the store is moved into place
        # only whole, so recording each chunk (FeatureCache.write_chunk, for resuming) would only
        # rewrite the attributes, which grow with every chunk, once per chunk.
        checksums: dict[str, dict[str, dict[str, str]]] = {split: {} for split in splits}
        with progress(total=sum(len(labels) for _, labels in splits.values()), desc=f"import {path.name}",
                      unit="row") as bar:
            for split, (features, labels) in splits.items():
                for chunk, rows in enumerate(cache.chunk_slices(split)):
                    block = features[rows]
                    with np.errstate(over="ignore"):
                        stored = block.astype(feature_dtype)
                    if not np.isfinite(stored).all():
                        bad = rows.start + int(np.flatnonzero(~np.isfinite(stored).all(axis=1))[0])
                        if not np.isfinite(block).all():
                            raise PipelineError(f"/{split}/features in {path} contains NaN or Inf (first at row "
                                                f"{bad}); the import was not completed. Clean the features and "
                                                f"import again.")
                        raise PipelineError(f"/{split}/features in {path} holds values too large for {feature_dtype} "
                                            f"(first at row {bad}); the import was not completed. Scale the features "
                                            f"and import again.")
                    checksums[split][str(chunk)] = {name: _write_rows(cache, split, name, rows, values) for name, values
                                                    in (("features", stored), ("labels", labels[rows]))}
                    bar.update(rows.stop - rows.start)
        cache._update_attrs(lambda attrs: {"chunks": checksums, "complete": True})
    return cache


def _write_rows(cache: FeatureCache, split: str, name: str, rows: slice, values: np.ndarray) -> str:
    """``values`` written as rows ``rows`` of ``split/name``, as ``FeatureCache.write_chunk``
    writes them; their checksum, which it would record."""
    array = cache.array(split, name)
    values = np.ascontiguousarray(values, dtype=array.dtype)
    array[rows] = values
    return _digest(values)
