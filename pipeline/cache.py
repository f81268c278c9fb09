"""The feature cache: one Zarr store per dataset x backbone x preprocessing.

Layout of a store::

    <name>.zarr/
      zarr.json                 attrs: metadata (how it was made), progress, complete
      train/features            (N, D)         pooled features, float32 or float16
      train/labels              (N,)           int64 class indices
      train/maps/<layer>        (N, C, g, g)   optional intermediate maps, float16 by default
      test/...                  the same for the test split

Every array is chunked along the sample axis with the same number of rows, so that
extraction can write, and record as done, one chunk of samples at a time. ``complete`` is
set only after the last chunk: an interrupted run never leaves a store that looks finished,
and a new run with the same metadata resumes from the chunks recorded in ``progress``.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from pipeline.errors import PipelineError

FORMAT_VERSION = 1
SPLITS = ("train", "test")
# Features are dense floats that compress poorly; byte-shuffled LZ4 still saves ~10-20% and
# decompresses faster than the disk reads it saves, so reading is not slowed down.
COMPRESSOR = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
# ~5 MB of float32 at D = 1280: large enough for fast sequential reads, small enough that an
# interrupted extraction loses little work.
DEFAULT_CHUNK_ROWS = 1024


def library_versions() -> dict[str, str]:
    import numpy
    import torch
    import torchvision

    import pipeline

    return {"python": sys.version.split()[0], "torch": torch.__version__, "torchvision": torchvision.__version__,
            "zarr": zarr.__version__, "numpy": numpy.__version__, "pipeline": pipeline.__version__}


@dataclass(frozen=True)
class ArraySpec:
    """One per-sample array of a split: its name, the shape of one sample, its dtype."""

    name: str
    sample_shape: tuple[int, ...]
    dtype: str


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


class FeatureCache:
    """Read and write access to one feature store."""

    def __init__(self, path: str | Path, group: zarr.Group) -> None:
        self.path = Path(path)
        self.group = group

    # --- creating and opening ---------------------------------------------------------

    @classmethod
    def create(cls, path: str | Path, metadata: dict, arrays: dict[str, list[ArraySpec]],
               split_sizes: dict[str, int], chunk_rows: int = DEFAULT_CHUNK_ROWS) -> "FeatureCache":
        """A new, empty, incomplete store (an existing one at ``path`` is removed)."""
        path = Path(path)
        if path.exists():
            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        group = zarr.open_group(str(path), mode="w")
        for split, specs in arrays.items():
            n = split_sizes[split]
            for spec in specs:
                group.create_array(
                    f"{split}/{spec.name}", shape=(n, *spec.sample_shape), dtype=spec.dtype,
                    chunks=(max(1, min(chunk_rows, n)), *spec.sample_shape),
                    compressors=COMPRESSOR if spec.name != "labels" else "auto",
                )
        group.attrs.update({"format_version": FORMAT_VERSION, "metadata": metadata,
                            "chunk_rows": chunk_rows, "progress": {s: [] for s in arrays}, "complete": False})
        return cls(path, group)

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
            raise PipelineError(f"{path} has cache format {version}; this version reads format {FORMAT_VERSION}. "
                                f"Re-run the extraction.")
        cache = cls(path, group)
        if require_complete and not cache.is_complete:
            raise PipelineError(f"the feature cache {path} is incomplete (its extraction was interrupted or "
                                f"is still running). Run the same python -m pipeline.extract command again "
                                f"(or dvc repro) to finish it; finished chunks are kept.")
        return cache

    # --- metadata ---------------------------------------------------------------------

    @property
    def metadata(self) -> dict:
        return dict(self.group.attrs["metadata"])

    @property
    def is_complete(self) -> bool:
        return bool(self.group.attrs.get("complete", False))

    @property
    def classes(self) -> list[str]:
        return list(self.metadata["dataset"]["classes"])

    def check_matches(self, expected: dict) -> None:
        """Refuse, with the list of differences, a cache made differently from ``expected``."""
        found = differences(expected, self.metadata)
        if found:
            raise PipelineError(
                f"the feature cache {self.path} was made differently from what the parameters say: "
                f"{'; '.join(found)}. Re-run the extraction with these parameters (dvc repro, or "
                f"python -m pipeline.extract) or point the head at the cache that matches them."
            )

    # --- progress ---------------------------------------------------------------------

    @property
    def chunk_rows(self) -> int:
        return int(self.group.attrs["chunk_rows"])

    def chunk_slices(self, split: str) -> list[slice]:
        n = self.size(split)
        return [slice(start, min(start + self.chunk_rows, n)) for start in range(0, n, self.chunk_rows)]

    def done_chunks(self, split: str) -> set[int]:
        return set(self.group.attrs["progress"].get(split, []))

    def mark_chunk_done(self, split: str, chunk: int) -> None:
        progress = dict(self.group.attrs["progress"])
        progress[split] = sorted(set(progress.get(split, [])) | {chunk})
        self.group.attrs["progress"] = progress  # zarr writes zarr.json atomically

    def mark_complete(self) -> None:
        for split in self.splits:
            missing = set(range(len(self.chunk_slices(split)))) - self.done_chunks(split)
            if missing:
                raise PipelineError(f"cannot mark {self.path} complete: {split} chunks {sorted(missing)} are missing.")
        self.group.attrs["complete"] = True

    # --- data -------------------------------------------------------------------------

    @property
    def splits(self) -> list[str]:
        return [s for s in SPLITS if s in self.group]

    def size(self, split: str) -> int:
        return int(self.group[f"{split}/labels"].shape[0])

    def array(self, split: str, name: str = "features") -> zarr.Array:
        key = f"{split}/{name}"
        if key not in self.group:
            raise PipelineError(f"the feature cache {self.path} has no array {key}.")
        return self.group[key]

    def map_names(self, split: str = "train") -> list[str]:
        return sorted(self.group[f"{split}/maps"].array_keys()) if f"{split}/maps" in self.group else []

    def features(self, split: str, rows: np.ndarray | slice | None = None, dtype: Any = np.float32) -> np.ndarray:
        """Pooled features of a split as NumPy (all rows, a slice, or an index array)."""
        array = self.array(split, "features")
        if rows is None:
            data = array[:]
        elif isinstance(rows, slice):
            data = array[rows]
        else:
            data = array.get_orthogonal_selection((np.asarray(rows),))
        return np.asarray(data, dtype=dtype)

    def labels(self, split: str) -> np.ndarray:
        return np.asarray(self.array(split, "labels")[:])

    def dask(self, split: str, name: str = "features"):
        """A Dask array over the Zarr chunks, for out-of-core work."""
        import dask.array as da

        return da.from_zarr(self.array(split, name))

    def write_rows(self, split: str, rows: slice, values: dict[str, np.ndarray]) -> None:
        for name, data in values.items():
            self.array(split, name)[rows] = data

    def iter_chunks(self, split: str, name: str = "features") -> Iterator[tuple[slice, np.ndarray]]:
        array = self.array(split, name)
        for rows in self.chunk_slices(split):
            yield rows, np.asarray(array[rows])


# --- command line: python -m pipeline.cache ... ---------------------------------------

import click  # noqa: E402  (only the command line below needs it)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main() -> None:
    """Inspect feature caches and move features in and out of HDF5."""


@main.command()
@click.argument("cache_path", type=click.Path(file_okay=False))
def info(cache_path: str) -> None:
    """Print how CACHE_PATH was made, its arrays and whether it is complete."""
    import json

    cache = FeatureCache.open(cache_path, require_complete=False)
    click.echo(json.dumps(cache.metadata, indent=2))
    for split in cache.splits:
        arrays = [f"{name} {cache.array(split, name).shape} {cache.array(split, name).dtype}"
                  for name in ["features", "labels"] + [f"maps/{m}" for m in cache.map_names(split)]]
        done = len(cache.done_chunks(split))
        click.echo(f"{split}: {'; '.join(arrays)}; {done}/{len(cache.chunk_slices(split))} chunks written")
    click.echo("complete" if cache.is_complete else "INCOMPLETE: re-run the extraction command to finish it")


@main.command("export-hdf5")
@click.argument("cache_path", type=click.Path(file_okay=False))
@click.argument("hdf5_path", type=click.Path(dir_okay=False))
def export_command(cache_path: str, hdf5_path: str) -> None:
    """Write the pooled features and labels of CACHE_PATH to HDF5_PATH."""
    from pipeline.hdf5 import export_hdf5

    export_hdf5(FeatureCache.open(cache_path), hdf5_path)
    click.echo(f"wrote {hdf5_path}")


@main.command("import-hdf5")
@click.argument("hdf5_path", type=click.Path(dir_okay=False))
@click.argument("cache_path", type=click.Path(file_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace an existing cache at CACHE_PATH.")
def import_command(hdf5_path: str, cache_path: str, overwrite: bool) -> None:
    """Make a feature cache at CACHE_PATH from features computed elsewhere (HDF5_PATH holds
    /train/features, /train/labels, /test/features, /test/labels; optional attrs classes,
    dataset, backbone)."""
    from pipeline.hdf5 import import_hdf5

    if Path(cache_path).exists() and not overwrite:
        raise PipelineError(f"{cache_path} already exists; pass --overwrite to replace it.")
    cache = import_hdf5(hdf5_path, cache_path)
    click.echo(f"wrote {cache_path}: train {cache.array('train').shape}, test {cache.array('test').shape}, "
               f"{len(cache.classes)} classes")


if __name__ == "__main__":
    main()
