"""The feature cache: one Zarr store per dataset x backbone x preprocessing.

Layout of a store::

    <name>.zarr/
      zarr.json                 attrs: metadata (how it was made) and its SHA-256, chunks
                                (finished chunks and their SHA-256 per array), complete
      train/features            (N, D)         pooled features, float32 or float16
      train/labels              (N,)           int64 class indices
      train/maps/<layer>        (N, C, g, g)   optional intermediate maps, float16 by default
      train/trunk/<stage>       (N, C, H, W)   optional full-resolution maps (PANDA's trunk, the patch
                                               heads' stages), float16
      test/...                  the same for the test split, and where the test images have
                                ground-truth masks, test/masks (N, S, S) and test/inputs
                                (N, S, S, 3), uint8, at the backbone input's side S
      test@<variant>[@...]/...  optional derived splits (the corrupted copies of test images of the
                                robustness protocol, say): the same arrays, plus rows (which rows
                                of the split they derive from); each one described in the
                                attributes (split_metadata), added to a finished store like chunks

Every array is chunked along the sample axis with the same number of rows, so that
extraction can write, and record as done, one chunk of samples at a time. ``complete`` is
set only after the last chunk: an interrupted run never leaves a store that looks finished,
and a new run with the same metadata resumes from the chunks recorded in ``chunks``. The
checksums let every read, and ``python -m pipeline.cache verify``, detect damaged chunks; the
metadata's checksum (``metadata_sha256``, recorded when the store is made) lets verify and the
heads detect a metadata edited by hand (a class list renamed or reordered, say), which would
otherwise label every score wrongly without a sign.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from pipeline.errors import PipelineError
from pipeline.store.guards import STORE_FORMAT, check_replaceable, occupied, remove_store
from pipeline.store.locks import attrs_lock
from pipeline.store.metadata import (SPLITS, _digest, attributes_problem, differences, is_derived,
                                     library_versions, metadata_digest, metadata_problem, remake_hint,
                                     split_name_problem)

FORMAT_VERSION = 1
# Features are dense floats that compress poorly; byte-shuffled LZ4 still saves ~10-20% and
# decompresses faster than the disk reads it saves, so reading is not slowed down.
COMPRESSOR = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
# ~5 MB of float32 at D = 1280: large enough for fast sequential reads, small enough that an
# interrupted extraction loses little work.
DEFAULT_CHUNK_ROWS = 1024


@dataclass(frozen=True)
class ArraySpec:
    """One per-sample array of a split: its name, the shape of one sample, its dtype."""

    name: str
    sample_shape: tuple[int, ...]
    dtype: str


_per_process: dict[str, tuple[int, dict]] = {}


def once_per_process(path: str | Path, build: Callable[["FeatureCache"], Any] | None = None,
                     require_complete: bool = True):
    """The store at ``path`` (or ``build(store)``, e.g. its test split), opened once per process
    and reused by the later tasks a Dask worker runs there.

    Keyed by the modification time of the store's metadata, so a store re-extracted between two
    runs on a long-lived cluster is read afresh (and the stale entry dropped, for memory).
    """
    resolved = str(Path(path).resolve())
    try:
        stamp = (Path(path) / "zarr.json").stat().st_mtime_ns
    except OSError:
        # Here in a Dask worker, usually: name where it looked from, not a FileNotFoundError.
        raise PipelineError(f"the feature cache {resolved} cannot be read on {socket.gethostname()} (process "
                            f"{os.getpid()}): no store there. The workers of a Dask cluster open the cache "
                            f"themselves, so it must be at that path on storage every worker sees.") from None
    held = _per_process.get(resolved)
    if held is None or held[0] != stamp:
        held = _per_process[resolved] = (stamp, {})
    key = (build, require_complete)
    if key not in held[1]:
        cache = FeatureCache.open(path, require_complete=require_complete)
        held[1][key] = cache if build is None else build(cache)
    return held[1][key]


def _read_rows_task(path: str, split: str, name: str, chunk: int, local: np.ndarray | None) -> np.ndarray:
    """A Dask task: one chunk's rows, checked against its checksum, read by whichever process
    computes it."""
    data = once_per_process(path, require_complete=False).read_chunk(split, name, chunk)
    return data if local is None else data[local]


class FeatureCache:
    """Read and write access to one feature store."""

    def __init__(self, path: str | Path, group: zarr.Group) -> None:
        self.path = Path(path)
        self.group = group

    # --- creating and opening ---------------------------------------------------------

    @classmethod
    def create(cls, path: str | Path, metadata: dict, arrays: dict[str, list[ArraySpec]],
               split_sizes: dict[str, int], chunk_rows: int = DEFAULT_CHUNK_ROWS,
               protected: Sequence[str | Path] = ()) -> "FeatureCache":
        """A new, empty, incomplete store (an existing store at ``path`` is replaced; anything
        else there, and the ``protected`` folders, are refused: see ``replace_problem``).

        The store is built beside ``path`` and renamed into place, so a run killed while
        creating it leaves either the old store or a complete empty one, never half of one.
        """
        path = Path(path)
        problem = metadata_problem(metadata)
        if problem:
            raise PipelineError(f"cannot make the feature cache {path}: its {problem}.")
        check_replaceable(path, protected)  # before any work: nothing is built for a path that cannot be
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        remove_store(partial, protected)  # what a run killed while creating a store left behind
        group = zarr.open_group(str(partial), mode="w-", attributes={"format": STORE_FORMAT})
        for split, specs in arrays.items():
            n = split_sizes[split]
            for spec in specs:
                group.create_array(
                    f"{split}/{spec.name}", shape=(n, *spec.sample_shape), dtype=spec.dtype,
                    chunks=(max(1, min(chunk_rows, n)), *spec.sample_shape),
                    compressors=COMPRESSOR if spec.name != "labels" else "auto",
                )
        group.attrs.update({"format_version": FORMAT_VERSION, "metadata": metadata,
                            "chunk_rows": chunk_rows, "chunks": {s: {} for s in arrays}, "complete": False})
        # The checksum of the metadata as stored (read back, so as JSON gives it to every reader).
        group.attrs["metadata_sha256"] = metadata_digest(group.attrs["metadata"])
        remove_store(path, protected)
        os.replace(partial, path)
        return cls(path, zarr.open_group(str(path), mode="r+"))

    @classmethod
    def open(cls, path: str | Path, require_complete: bool = True) -> "FeatureCache":
        path = Path(path)
        if not path.exists():
            raise PipelineError(f"no feature cache at {path}. Make it with python -m pipeline.extract "
                                f"(or dvc repro), or import features with python -m pipeline.cache import-hdf5.")
        try:
            group = zarr.open_group(str(path), mode="r+")
            version = group.attrs["format_version"]
        except Exception as error:
            raise PipelineError(f"{path} is not a feature cache made by this project "
                                f"({type(error).__name__}: {error}).") from error
        if version != FORMAT_VERSION:
            raise PipelineError(f"{path} has cache format {version!r}; this version reads format {FORMAT_VERSION}. "
                                f"Re-run the extraction.")
        problem = attributes_problem(group.attrs) or cls._arrays_problem(group)
        if problem:
            raise PipelineError(f"the feature cache {path} is damaged or was edited by hand: {problem} (in "
                                f"{path / 'zarr.json'}). {remake_hint(path)}")
        cache = cls(path, group)
        if require_complete and not cache.is_complete:
            raise PipelineError(f"the feature cache {path} is incomplete (its extraction was interrupted, "
                                f"is still running, or damaged chunks were set aside by verify --repair). Run the "
                                f"same python -m pipeline.extract command again (or dvc repro) to finish it; "
                                f"finished chunks are kept.")
        if require_complete:  # read for use: its metadata must be the one it was made with
            cache.check_metadata()
        return cache

    @staticmethod
    def _arrays_problem(group: zarr.Group) -> str | None:
        # A derived split is recorded only once its arrays are in place (add_split).
        for split in [*SPLITS, *group.attrs.get("split_metadata", {})]:
            if split in group or is_derived(split):
                for name in ("features", "labels"):
                    if f"{split}/{name}" not in group:
                        return f"the array {split}/{name} is missing"
        return None

    # --- metadata ---------------------------------------------------------------------

    @property
    def metadata(self) -> dict:
        return dict(self.group.attrs["metadata"])

    @property
    def is_complete(self) -> bool:
        return bool(self.group.attrs.get("complete", False))

    @property
    def classes(self) -> list[str]:
        classes = self.metadata.get("dataset", {}).get("classes")
        if classes is None:
            raise PipelineError(f"the feature cache {self.path} records no class names (metadata.dataset.classes). "
                                f"{remake_hint(self.path)}")
        return list(classes)

    @property
    def metadata_checked(self) -> bool:
        """Whether the store records its metadata's checksum (stores made before it was recorded do not)."""
        return "metadata_sha256" in self.group.attrs

    def metadata_edited(self) -> str | None:
        """Why the metadata is not the one the store was made with, or None (also when the
        store records no checksum of it)."""
        recorded = self.group.attrs.get("metadata_sha256")
        if recorded is not None and recorded != metadata_digest(self.group.attrs["metadata"]):
            return ("its metadata does not match the checksum recorded when it was made: zarr.json was edited "
                    "(a class name, say) or damaged since, so its labels and settings cannot be trusted")
        recorded = self.group.attrs.get("split_metadata_sha256")
        if recorded is not None and recorded != metadata_digest(self.group.attrs.get("split_metadata", {})):
            return ("the descriptions of its derived splits (split_metadata) do not match the checksum recorded when "
                    "they were added: zarr.json was edited or damaged since")
        return None

    def check_metadata(self) -> None:
        """Refuse a store whose metadata was edited since it was made."""
        problem = self.metadata_edited()
        if problem:
            raise PipelineError(f"the feature cache {self.path}: {problem}. Put back the original zarr.json if you "
                                f"have it, or {remake_hint(self.path, 'make the cache again')}")

    def check_matches(self, expected: dict) -> None:
        """Refuse, with the list of differences, a cache made differently from ``expected``."""
        found = differences(expected, self.metadata)
        if found:
            raise PipelineError(
                f"the feature cache {self.path} was made differently from what the parameters say: "
                f"{'; '.join(found)}. Re-run the extraction with these parameters (dvc repro, or "
                f"python -m pipeline.extract) or point the head at the cache that matches them."
            )

    # --- chunks and their checksums -----------------------------------------------------

    @property
    def chunk_rows(self) -> int:
        return int(self.group.attrs["chunk_rows"])

    def chunk_slices(self, split: str) -> list[slice]:
        n = self.size(split)
        return [slice(start, min(start + self.chunk_rows, n)) for start in range(0, n, self.chunk_rows)]

    def _checksums(self, split: str) -> dict[str, dict[str, str]]:
        return dict(self.group.attrs["chunks"].get(split, {}))

    def done_chunks(self, split: str) -> set[int]:
        return {int(chunk) for chunk in self._checksums(split)}

    def write_chunk(self, split: str, chunk: int, values: dict[str, np.ndarray]) -> None:
        """Write every array's rows of one chunk, then record the chunk and its checksums.

        Recording comes last (zarr writes each file atomically), so a chunk that is
        recorded is always fully written.
        """
        rows = self.chunk_slices(split)[chunk]
        checksums = {}
        for name, data in values.items():
            array = self.array(split, name)
            data = np.ascontiguousarray(data, dtype=array.dtype)
            if data.shape[0] != rows.stop - rows.start:
                raise ValueError(f"chunk {chunk} of {split}/{name} needs {rows.stop - rows.start} rows")
            array[rows] = data
            checksums[name] = _digest(data)
        missing = set(self.array_names(split)) - set(checksums)
        if missing:
            raise ValueError(f"chunk {chunk} of {split} lacks arrays {sorted(missing)}")

        def record(attrs: dict) -> dict:
            chunks = dict(attrs["chunks"])
            merged = {**chunks.get(split, {}), str(chunk): checksums}
            # In chunk order, so a sharded extraction records them as a single run does.
            chunks[split] = dict(sorted(merged.items(), key=lambda item: int(item[0])))
            return {"chunks": chunks}

        self._update_attrs(record)

    def _update_attrs(self, change) -> None:
        """Apply ``change(current attrs) -> new attrs`` to the attributes as they are on disk now
        (another shard may have recorded chunks since this process last read them)."""
        with attrs_lock(self.path):
            self._change_attrs(change)

    def _change_attrs(self, change) -> None:
        """``_update_attrs``'s work, for a caller holding the attributes lock."""
        fresh = zarr.open_group(str(self.path), mode="r+")
        updates = change(dict(fresh.attrs))
        if updates:
            fresh.attrs.update(updates)
        self.group = fresh

    # --- derived splits -----------------------------------------------------------------

    @property
    def derived_splits(self) -> list[str]:
        """The derived splits (test@fog@5, ...), in the order they were added."""
        return list(self.group.attrs.get("split_metadata", {}))

    def split_description(self, split: str) -> dict:
        """What the extraction recorded about a derived split (empty for train and test)."""
        return dict(self.group.attrs.get("split_metadata", {}).get(split, {}))

    def add_split(self, split: str, specs: list[ArraySpec], size: int, description: dict) -> bool:
        """Add an empty derived split, to be filled chunk by chunk like the others (same chunk
        rows, checksums, resume and verify); the store is incomplete until it is. Returns False,
        doing nothing, when the split is there already with the same description; one with
        another description is refused (``remove_split`` it first).

        The arrays are made beside the store and moved in whole, then recorded, all under the
        attributes lock: a recorded split always has its arrays, and a run killed half-way
        leaves at most a folder that the next add of that split replaces.
        """
        problem = split_name_problem(split)
        if problem or not is_derived(split):
            raise ValueError(problem or f"{split!r} is not a derived split name")
        description = json.loads(json.dumps(description))  # as every reader gets it back from zarr.json
        with attrs_lock(self.path):
            self.refresh()
            if split in self.derived_splits:
                recorded = self.split_description(split)
                if differences(description, recorded) or differences(recorded, description):
                    raise PipelineError(f"{self.path} already has the split {split}, made differently: "
                                        f"{'; '.join(differences(description, recorded))}.")
                return False
            staging = Path(str(self.path) + ".adding")
            remove_store(staging)  # what a run killed while adding left; only ever a store of ours
            group = zarr.open_group(str(staging), mode="w-", attributes={"format": STORE_FORMAT})
            for spec in specs:
                group.create_array(f"{split}/{spec.name}", shape=(size, *spec.sample_shape), dtype=spec.dtype,
                                   chunks=(max(1, min(self.chunk_rows, size)), *spec.sample_shape),
                                   compressors=COMPRESSOR if spec.name != "labels" else "auto")
            if (self.path / split).exists():  # arrays left by a run killed before it recorded them
                shutil.rmtree(self.path / split)
            os.replace(staging / split, self.path / split)
            remove_store(staging)

            def record(attrs: dict) -> dict:
                derived = {**attrs.get("split_metadata", {}), split: description}
                return {"split_metadata": derived, "split_metadata_sha256": metadata_digest(derived),
                        "chunks": {**attrs["chunks"], split: {}}, "complete": False}

            self._change_attrs(record)
        return True

    def remove_split(self, split: str) -> None:
        """Forget a derived split (first, so a recorded split always has its arrays), then delete
        its arrays. The store stays complete if it was: its other splits are untouched."""
        if split not in self.derived_splits:
            return

        def forget(attrs: dict) -> dict:
            derived = {name: d for name, d in attrs.get("split_metadata", {}).items() if name != split}
            return {"split_metadata": derived, "split_metadata_sha256": metadata_digest(derived),
                    "chunks": {name: c for name, c in attrs["chunks"].items() if name != split}}

        self._update_attrs(forget)
        if (self.path / split).exists():
            shutil.rmtree(self.path / split)

    def refresh(self) -> "FeatureCache":
        """Re-read the attributes from disk (chunks recorded by other processes)."""
        self.group = zarr.open_group(str(self.path), mode="r+")
        return self

    def missing_chunks(self) -> dict[str, list[int]]:
        """Chunks not yet recorded, per split, as they are on disk now."""
        self.refresh()
        return {split: sorted(set(range(len(self.chunk_slices(split)))) - self.done_chunks(split))
                for split in self.splits}

    def mark_complete(self, when_all_done: bool = False) -> bool:
        """Set ``complete`` once every chunk is recorded. A missing chunk is an error, or, with
        ``when_all_done`` (a shard finishing before the others), leaves the cache as it is and
        returns False. The check and the mark happen under the attributes lock, so of shards
        finishing together the one whose chunk completes the store marks it."""
        outcome = {}

        def complete(attrs: dict) -> dict:
            missing = {s: set(range(len(self.chunk_slices(s)))) - {int(c) for c in attrs["chunks"].get(s, {})}
                       for s in self.splits}
            missing = {s: m for s, m in missing.items() if m}
            outcome["done"] = not missing
            if missing and not when_all_done:
                split, chunks = next(iter(missing.items()))
                raise PipelineError(f"cannot mark {self.path} complete: {split} chunks {sorted(chunks)} are missing.")
            return {"complete": True} if not missing else {}

        self._update_attrs(complete)
        return outcome["done"]

    def verify(self) -> list[str]:
        """Every problem found: missing or damaged chunks, arrays that disagree with the metadata."""
        return [message for _, _, message in self._problems()]

    def _problems(self) -> list[tuple[str | None, int | None, str]]:
        problems = []
        edited = self.metadata_edited()
        if edited:
            problems.append((None, None, f"metadata: {edited}"))
        dataset = self.metadata.get("dataset", {})
        n_classes = len(dataset["classes"]) if isinstance(dataset.get("classes"), list) else None
        for split in self.splits:
            expected = dataset.get(f"n_{split}")
            if expected is not None and expected != self.size(split):
                problems.append((split, None, f"{split} has {self.size(split)} samples but the metadata says {expected}"))
            for name in self.array_names(split):
                if self.array(split, name).shape[0] != self.size(split):
                    problems.append((split, None, f"{split}/{name} has {self.array(split, name).shape[0]} rows, "
                                                  f"labels have {self.size(split)}"))
            checksums = self._checksums(split)
            for chunk in range(len(self.chunk_slices(split))):
                if str(chunk) not in checksums:
                    problems.append((split, chunk, f"{split} chunk {chunk}: missing (never finished)"))
                    continue
                for name in self.array_names(split):
                    try:
                        data = self.read_chunk(split, name, chunk)
                    except PipelineError as error:
                        problems.append((split, chunk, f"{split} chunk {chunk}: {error.message}"))
                        continue
                    if name == "labels" and n_classes is not None and len(data) and (
                            data.min() < 0 or data.max() >= n_classes):
                        problems.append((split, None, f"{split} chunk {chunk}: labels {data.min()}..{data.max()} "
                                                      f"but the metadata names {n_classes} classes"))
        return problems

    def set_aside(self, split: str, chunks: set[int]) -> None:
        """Forget chunks (so the extraction recomputes them) and mark the cache incomplete."""
        def forget(attrs: dict) -> dict:
            recorded = dict(attrs["chunks"])
            recorded[split] = {c: sums for c, sums in recorded.get(split, {}).items() if int(c) not in chunks}
            return {"chunks": recorded, "complete": False}

        self._update_attrs(forget)

    # --- data -------------------------------------------------------------------------

    @property
    def splits(self) -> list[str]:
        """train and test (those present), then the derived splits in the order they were added."""
        return [s for s in SPLITS if s in self.group] + self.derived_splits

    def size(self, split: str) -> int:
        return int(self.group[f"{split}/labels"].shape[0])

    def array(self, split: str, name: str = "features") -> zarr.Array:
        key = f"{split}/{name}"
        if key not in self.group:
            raise PipelineError(f"the feature cache {self.path} has no array {key}.")
        return self.group[key]

    def map_names(self, split: str = "train") -> list[str]:
        return self._names_in(f"{split}/maps")

    def trunk_names(self, split: str = "train") -> list[str]:
        """Stages whose full-resolution map the split stores (``trunk/<stage>``)."""
        return self._names_in(f"{split}/trunk")

    def _names_in(self, group: str) -> list[str]:
        return sorted(self.group[group].array_keys()) if group in self.group else []

    def array_names(self, split: str) -> list[str]:
        # Extra per-sample arrays (the views store's "rows") are checked like the others.
        extra = sorted(set(self.group[split].array_keys()) - {"features", "labels"}) if split in self.group else []
        return (["features", "labels"] + extra + [f"maps/{m}" for m in self.map_names(split)]
                + [f"trunk/{t}" for t in self.trunk_names(split)])

    def read_chunk(self, split: str, name: str, chunk: int) -> np.ndarray:
        """One chunk's rows of an array, checked against the checksum recorded when it was written."""
        rows = self.chunk_slices(split)[chunk]
        repair = (f"Run python -m pipeline.cache verify --repair {self.path}, then the extraction command "
                  f"again, to recompute the damaged chunks.")
        try:
            data = np.asarray(self.array(split, name)[rows])
        except Exception as error:
            raise PipelineError(f"{split}/{name} rows {rows.start}-{rows.stop - 1} of {self.path} cannot be read "
                                f"({type(error).__name__}: {error}). {repair}") from error
        recorded = self._checksums(split).get(str(chunk), {}).get(name)
        if recorded is not None and recorded != _digest(data):
            raise PipelineError(f"{split}/{name} rows {rows.start}-{rows.stop - 1} of {self.path} do not match the "
                                f"checksum recorded when they were written (the file was changed or damaged). {repair}")
        return data

    def _row_index(self, split: str, rows: np.ndarray | slice | None) -> np.ndarray:
        if rows is None:
            return np.arange(self.size(split))
        return np.arange(self.size(split))[rows] if isinstance(rows, slice) else np.asarray(rows, dtype=np.int64)

    def iter_rows(self, split: str, name: str = "features",
                  rows: np.ndarray | slice | None = None) -> Iterator[np.ndarray]:
        """The selected rows, chunk by chunk in row order (one chunk in memory at a time)."""
        index = self._row_index(split, rows)
        chunk_of = index // self.chunk_rows
        for chunk in np.unique(chunk_of):
            data = self.read_chunk(split, name, int(chunk))
            yield data[index[chunk_of == chunk] - int(chunk) * self.chunk_rows]

    def read(self, split: str, name: str = "features", rows: np.ndarray | slice | None = None) -> np.ndarray:
        """Rows of an array (all, a slice, or an index array), every chunk read checked."""
        index = self._row_index(split, rows)
        if len(index) == 0:
            return np.asarray(self.array(split, name)[0:0])
        parts = np.concatenate(list(self.iter_rows(split, name, index)))
        # iter_rows yields in chunk order; put the rows back in the order asked for.
        order = np.argsort(np.argsort(index // self.chunk_rows, kind="stable"), kind="stable")
        return parts[order]

    def features(self, split: str, rows: np.ndarray | slice | None = None, dtype: Any = np.float32) -> np.ndarray:
        """Pooled features of a split as NumPy (all rows, a slice, or an index array)."""
        return np.asarray(self.read(split, "features", rows), dtype=dtype)

    def labels(self, split: str) -> np.ndarray:
        return self.read(split, "labels")

    def dask(self, split: str, name: str = "features"):
        """A Dask array over the Zarr chunks, for out-of-core work."""
        import dask.array as da

        return da.from_zarr(self.array(split, name))

    def dask_rows(self, split: str, name: str = "features", rows: np.ndarray | slice | None = None):
        """The selected rows as a Dask array with one block per cache chunk, for out-of-core work.

        Unlike ``dask``, every block is checked against its recorded checksum. Each task opens
        the store by path in the process that computes it (so on a cluster the path must be on
        storage the workers share) and holds one chunk; the graph holds only paths and indices.
        """
        import dask
        import dask.array as da

        index = self._row_index(split, rows)
        array = self.array(split, name)
        chunk_of = index // self.chunk_rows
        blocks = []
        for chunk in np.unique(chunk_of):
            local = index[chunk_of == chunk] - int(chunk) * self.chunk_rows
            rows_in_chunk = self.chunk_slices(split)[int(chunk)]
            whole = np.array_equal(local, np.arange(rows_in_chunk.stop - rows_in_chunk.start))
            task = dask.delayed(_read_rows_task, pure=True)(str(Path(self.path).resolve()), split, name, int(chunk),
                                                            None if whole else local)
            blocks.append(da.from_delayed(task, shape=(len(local), *array.shape[1:]), dtype=array.dtype))
        if not blocks:
            return da.zeros((0, *array.shape[1:]), dtype=array.dtype)
        return da.concatenate(blocks)

    def iter_chunks(self, split: str, name: str = "features") -> Iterator[tuple[slice, np.ndarray]]:
        for chunk, rows in enumerate(self.chunk_slices(split)):
            yield rows, self.read_chunk(split, name, chunk)


def _array_differences(existing: FeatureCache, arrays: dict[str, list[ArraySpec]]) -> list[str]:
    """The arrays a store has that a run would not write, and those it lacks (a cache made with
    a trunk map, resumed without one, say: the metadata compares only what the run records).
    Derived splits (test@fog@5) are the extraction's to add or refuse, split by split."""
    have = {f"{split}/{name}" for split in existing.splits if not is_derived(split)
            for name in existing.array_names(split)}
    wanted = {f"{split}/{spec.name}" for split, specs in arrays.items() for spec in specs}
    found = []
    if have - wanted:
        found.append(f"the cache has arrays {', '.join(sorted(have - wanted))} that were not asked for")
    if wanted - have:
        found.append(f"arrays {', '.join(sorted(wanted - have))} were asked for but the cache has none")
    return found


def open_or_create(out: Path, metadata: dict, arrays: dict[str, list[ArraySpec]], sizes: dict[str, int],
                   chunk_rows: int, overwrite: bool, protected: Sequence[str | Path] = ()) -> FeatureCache:
    """The store to fill at ``out``.

    An unfinished store made with the same metadata is resumed (its recorded chunks are what
    this run would write). A complete one is returned as it is, or, with ``overwrite``, made
    again from scratch. A store made differently is refused, or replaced with ``overwrite``.
    Anything that is not a store made by this project, and the ``protected`` folders, are refused.
    """
    out = Path(out)
    check_replaceable(out, protected)
    if occupied(out):
        try:
            existing = FeatureCache.open(out, require_complete=False)
            found = differences(metadata, existing.metadata)
            found += [edited] if (edited := existing.metadata_edited()) else []
            found += _array_differences(existing, arrays)
        except PipelineError as error:  # ours, but of another format version
            existing, found = None, [error.message]
        same = existing is not None and not found and existing.chunk_rows == chunk_rows
        if same and not (overwrite and existing.is_complete):
            return existing
        if not same and not overwrite:
            changed_files = (" The image files are not those it was made from (one was replaced, edited, added or "
                             "removed since), so none of its chunks can be reused."
                             if any(entry.startswith("dataset.content_sha256 ") for entry in found) else "")
            raise PipelineError(
                f"{out} already exists but was made differently: {'; '.join(found) or 'other chunk size'}."
                f"{changed_files} Pass --overwrite to replace it, or choose another --out."
            )
    return FeatureCache.create(out, {**metadata, "versions": library_versions()}, arrays, sizes, chunk_rows,
                               protected)
