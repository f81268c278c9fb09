"""Bounded inputs (issue 31, item 6), through the real commands: a dataset file that decompresses
to far more than the real one's is refused at a bound, leaving nothing; an HDF5 file that
declares rows it does not hold is refused before anything is written, and a good one is
imported with progress and one write of the attributes; labels outside the class list and a
map grid larger than the map are refused at extraction, before anything is written."""

from __future__ import annotations

import gzip
import io
import json
import os
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.errors import PipelineError
from pipeline.extract.command import main as extract_cli
from pipeline.store.command import main as cache_cli

REPO = Path(__file__).resolve().parents[1]
ZEROS = 4 << 20  # what the bombs below decompress to: far past their bounds, in a few kilobytes


def error_text(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.output.startswith("Error: "), result.output
    return " ".join(result.output.split())


def extract(*args: str):
    return CliRunner().invoke(extract_cli, ["--image-size", "32", "--maps", "none", "--workers", "0",
                                            "--engine", "torch", *args])


# --- decompression ----------------------------------------------------------------------------

def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def mnist_files(raw: Path, test_labels=(9, 2, 6)) -> None:
    rng = np.random.default_rng(0)
    raw.mkdir(parents=True, exist_ok=True)
    write_idx(raw / "train-images-idx3-ubyte", rng.integers(0, 256, size=(4, 28, 28)))
    write_idx(raw / "train-labels-idx1-ubyte", np.array([3, 1, 4, 1]))
    write_idx(raw / "t10k-images-idx3-ubyte", rng.integers(0, 256, size=(len(test_labels), 28, 28)))
    write_idx(raw / "t10k-labels-idx1-ubyte", np.array(test_labels))


def test_a_gzip_bomb_among_mnist_files_is_refused_at_its_bound_and_leaves_nothing(tmp_path):
    data = tmp_path / "data"
    raw = data / "MNIST" / "raw"
    mnist_files(raw)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        (raw / f"{name}.gz").write_bytes(gzip.compress((raw / name).read_bytes()))
        (raw / name).unlink()
    (raw / "t10k-labels-idx1-ubyte").unlink()
    bomb = raw / "t10k-labels-idx1-ubyte.gz"
    bomb.write_bytes(gzip.compress(bytes(ZEROS)))  # 4 KB that decompress to 4 MiB; the real file has 10008 bytes
    message = error_text(extract("--dataset", "mnist", "--data-dir", str(data), "--out", str(tmp_path / "c.zarr")))
    assert f"{bomb} decompresses to more than 20016 bytes" in message, message
    assert "2 x the 10008 bytes of the real t10k-labels-idx1-ubyte" in message and "nothing of it was kept" in message
    # The good files were decompressed; of the bomb, neither the file nor its temporary part is left.
    assert sorted(p.name for p in raw.iterdir() if not p.name.endswith(".gz")) == [
        "t10k-images-idx3-ubyte", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"]
    assert not list(raw.glob(".*")) and sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_a_gzipped_file_of_unknown_size_is_bounded_by_its_compressed_size(tmp_path):
    from pipeline.extract.torchvision_files import FLOOR_BOUND, _gunzip, decompression_bound

    source = tmp_path / "other.gz"
    source.write_bytes(gzip.compress(bytes(ZEROS)))
    bound, how = decompression_bound("other", source)
    assert bound == FLOOR_BOUND and "20 x its" in how  # 20 x 4 KB is below the floor of 1 MiB
    with pytest.raises(PipelineError, match=f"decompresses to more than {bound} bytes"):
        _gunzip(source, tmp_path / "other")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.gz"]
    # At the bound exactly, it is no bomb.
    source.write_bytes(gzip.compress(bytes(bound)))
    _gunzip(source, tmp_path / "other")
    assert (tmp_path / "other").stat().st_size == bound


def cifar_archive(path: Path, entries: dict[str, int]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, size in entries.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = size
            tar.addfile(info, io.BytesIO(bytes(size)))
    return path


def test_a_cifar_archive_that_unpacks_past_its_bound_is_refused_before_anything_is_unpacked(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    archive = cifar_archive(data / "cifar-10-python.tar.gz", {"batches.meta": 10, "data_batch_1": ZEROS})
    message = error_text(extract("--dataset", "cifar10", "--data-dir", str(data), "--out", str(tmp_path / "c.zarr")))
    assert f"{archive} decompresses to more than 1048576 bytes" in message, message
    assert f"its entry cifar-10-batches-py/data_batch_1 takes it to {ZEROS + 10} bytes" in message
    assert sorted(p.name for p in data.iterdir()) == ["cifar-10-python.tar.gz"]  # no folder, no temporary one


def test_an_archive_of_too_many_entries_is_refused(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    archive = cifar_archive(data / "cifar-10-python.tar.gz", {f"f{i}": 0 for i in range(1001)})
    message = error_text(extract("--dataset", "cifar10", "--data-dir", str(data), "--out", str(tmp_path / "c.zarr")))
    assert f"{archive} holds more than 1000 entries" in message, message
    assert sorted(p.name for p in data.iterdir()) == ["cifar-10-python.tar.gz"]


# --- HDF5 import ----------------------------------------------------------------------------

def h5_file(path: Path, change=None) -> Path:
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        for split, n in (("train", 8), ("test", 6)):
            f[f"{split}/features"] = rng.normal(size=(n, 3)).astype(np.float32)
            f[f"{split}/labels"] = np.arange(n) % 2
        f.attrs["classes"] = json.dumps(["a", "b"])
        if change is not None:
            change(f)
    return path


def chunks_never_written(f: h5py.File) -> None:  # 100000 rows declared, 8 written: a few kB of file
    del f["train/features"], f["train/labels"]
    f.create_dataset("train/features", shape=(100_000, 3), dtype="f4", chunks=(1000, 3))[:8] = 1
    f.create_dataset("train/labels", data=np.arange(100_000) % 2, chunks=(10_000,), compression="gzip")


def virtual_pointing_nowhere(f: h5py.File) -> None:
    del f["test/features"]
    layout = h5py.VirtualLayout(shape=(6, 3), dtype="f4")
    layout[:] = h5py.VirtualSource("nowhere.h5", "data", shape=(6, 3))
    f.create_virtual_dataset("test/features", layout, fillvalue=0)


def virtual_half_mapped(f: h5py.File) -> None:
    with h5py.File(Path(f.filename).parent / "source.h5", "w") as source:
        source["data"] = np.ones((3, 3), np.float32)
    del f["test/features"]
    layout = h5py.VirtualLayout(shape=(6, 3), dtype="f4")
    layout[:3] = h5py.VirtualSource("source.h5", "data", shape=(3, 3))
    f.create_virtual_dataset("test/features", layout, fillvalue=0)


def external_pointing_nowhere(f: h5py.File) -> None:
    del f["test/features"]
    f.create_dataset("test/features", shape=(6, 3), dtype="f4", external=[("nowhere.bin", 0, 72)])


def labels_never_written(f: h5py.File) -> None:
    del f["test/labels"]
    f.create_dataset("test/labels", shape=(6,), dtype="i8")


@pytest.mark.parametrize("change,expected", [
    (chunks_never_written, ("/train/features in {h5} declares 100000 rows (shape (100000, 3)), but only 1 of its 100 "
                           "chunks were ever written (at most 1000 rows)")),
    (virtual_pointing_nowhere, ("/test/features in {h5} declares 6 rows (shape (6, 3)), but its virtual source "
                               "nowhere.h5:data is missing: no file {dir}/nowhere.h5 or {cwd}/nowhere.h5")),
    (virtual_half_mapped, ("/test/features in {h5} declares 6 rows (shape (6, 3)), but its virtual sources map only 9 "
                          "of its 18 values (about 3 rows)")),
    (external_pointing_nowhere, ("/test/features in {h5} declares 6 rows (shape (6, 3)), but its values lie in the "
                                "external file nowhere.bin, which is not there (no file {cwd}/nowhere.bin)")),
    (labels_never_written, ("/test/labels in {h5} declares 6 rows (shape (6,)), but only 0 of its 48 bytes were ever "
                           "written")),
])
def test_an_hdf5_file_declaring_rows_it_does_not_hold_is_refused_before_writing(tmp_path, change, expected):
    h5 = h5_file(tmp_path / "f.h5", change)
    out = tmp_path / "c.zarr"
    message = error_text(CliRunner().invoke(cache_cli, ["import-hdf5", str(h5), str(out)]))
    assert expected.format(h5=h5, dir=tmp_path, cwd=Path.cwd()) in message, message
    assert "It was refused; nothing was written." in message
    assert not list(tmp_path.glob("c.*"))  # no cache, no temporary one, no lock file


def test_hdf5_import_shows_progress_and_writes_the_attributes_once(tmp_path, monkeypatch):
    from pipeline.store.cache import FeatureCache
    from pipeline.store.hdf5 import import_hdf5

    h5 = h5_file(tmp_path / "f.h5")
    monkeypatch.setenv("PIPELINE_PROGRESS", "lines")
    monkeypatch.setenv("FFAD_PROGRESS_INTERVAL", "0")
    result = CliRunner().invoke(cache_cli, ["import-hdf5", str(h5), str(tmp_path / "c.zarr")])
    assert result.exit_code == 0, result.output
    assert "import f.h5: 14/14 (100%)" in result.output
    # Seven chunks of two rows: the attributes (metadata, chunk checksums) are written when the
    # store is made and once at the end, not after every chunk.
    updates = []
    change = FeatureCache._change_attrs
    monkeypatch.setattr(FeatureCache, "_change_attrs", lambda self, fn: (updates.append(1), change(self, fn))[1])
    cache = import_hdf5(h5, tmp_path / "small.zarr", chunk_rows=2)
    assert len(updates) == 1
    assert cache.is_complete and cache.done_chunks("train") == {0, 1, 2, 3} and cache.verify() == []
    np.testing.assert_array_equal(cache.labels("test"), np.arange(6) % 2)


# --- extraction: labels and maps ------------------------------------------------------------------

def test_labels_outside_the_class_list_are_refused_at_extraction_before_anything_is_written(tmp_path):
    mnist_files(tmp_path / "data" / "MNIST" / "raw", test_labels=(9, 10, 10))  # MNIST names 10 classes, 0 to 9
    out = tmp_path / "c.zarr"
    message = error_text(extract("--dataset", "mnist", "--data-dir", str(tmp_path / "data"), "--out", str(out)))
    assert ("the test split of mnist has label 10 at sample 1 (2 of its 3 labels lie outside the class list), but "
            "the dataset names 10 classes (0 - zero, 1 - one,") in message, message
    assert "class indices 0 to 9" in message and "Nothing was written" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no cache, no views, no lock file


def test_a_negative_label_of_any_dataset_is_refused(tmp_path):
    from pipeline.extract.datasets import load_dataset
    from pipeline.extract.extraction import extract as extract_features
    from pipeline.extract.preprocess import Preprocessing

    data = load_dataset("synthetic")
    data.train.labels[5] = -1
    with pytest.raises(PipelineError, match="the train split of synthetic has label -1 at sample 5"):
        extract_features(data, "efficientnet_lite0", Preprocessing(image_size=32), tmp_path / "c.zarr", workers=0)
    assert not list(tmp_path.iterdir())


def test_a_map_grid_larger_than_the_map_is_refused_naming_both_sizes(tmp_path):
    out = tmp_path / "c.zarr"
    result = subprocess.run([sys.executable, "-m", "pipeline.extract", "--dataset", "synthetic", "--image-size", "32",
                             "--maps", "intermediate", "--map-grid", "64", "--workers", "0", "--engine", "torch",
                             "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
                            env={**os.environ, "PIPELINE_PROGRESS": "0"})
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    message = " ".join(result.stderr.split())
    assert ("--map-grid 64 is larger than the map stride16 of efficientnet_lite0 at --image-size 32, which is 2x2"
            in message), message
    assert "Give --map-grid 2" in message
    # No cache, no views (only the writer's lock file, which every extraction leaves beside its cache).
    assert [p.name for p in tmp_path.iterdir()] in ([], ["c.zarr.lock"])
