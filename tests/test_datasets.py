"""Dataset loaders tested against small files fabricated in torchvision's on-disk formats.

No test touches the network: every torchvision dataset is built from files written into
``tmp_path`` (with the md5 sums torchvision checks patched to the sums of those files), and
the one download test patches torchvision's download function to fail.
"""

from __future__ import annotations

import hashlib
import pickle
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.extract.datasets import (
    DATASETS,
    ImageDataset,
    load_dataset,
)
from pipeline.errors import PipelineError
from pipeline.protocol import Task, one_vs_all, resolve_classes, split_for


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _pickle(path: Path, obj) -> None:
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=2)


def _message(error: pytest.ExceptionInfo) -> str:
    return error.value.format_message()


def _check_common(ds: ImageDataset, n_channels: int, size: int) -> None:
    for split in (ds.train, ds.test):
        assert len(split.images) == len(split.labels)
        assert split.labels.dtype == np.int64
        for i in range(len(split.images)):
            image = split.images[i]
            assert isinstance(image, torch.Tensor)
            assert image.dtype == torch.uint8
            assert tuple(image.shape) == (n_channels, size, size)


# --- digits ----------------------------------------------------------------------------


def test_digits_split_shapes_and_determinism():
    ds = load_dataset("digits")
    assert ds.name == "digits"
    assert ds.classes == [str(c) for c in range(10)]
    n_train, n_test = len(ds.train.labels), len(ds.test.labels)
    assert n_train + n_test == 1797
    assert abs(n_train - n_test) <= 1
    train_counts = np.bincount(ds.train.labels, minlength=10)
    test_counts = np.bincount(ds.test.labels, minlength=10)
    assert len(train_counts) == 10 and (train_counts > 0).all()
    assert np.abs(train_counts - test_counts).max() <= 1
    for split in (ds.train, ds.test):
        image = split.images[0]
        assert image.dtype == torch.uint8 and tuple(image.shape) == (1, 8, 8)
    # 0..16 spread over 0..255: the full range is used.
    stacked = np.stack([ds.train.images[i].numpy() for i in range(len(ds.train.images))])
    assert stacked.min() == 0 and stacked.max() == 255
    assert ds.describe()["n_train"] == n_train

    again = load_dataset("digits")
    np.testing.assert_array_equal(ds.train.labels, again.train.labels)
    np.testing.assert_array_equal(ds.test.labels, again.test.labels)
    assert torch.equal(ds.test.images[5], again.test.images[5])
    assert len(ds.identity["sha256"]) == 64
    assert ds.identity["sha256"] == again.identity["sha256"]


# --- CIFAR-10 / CIFAR-100 --------------------------------------------------------------

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _cifar_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


@pytest.fixture
def cifar10_dir(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    files = {}
    for b in range(1, 6):
        data = _cifar_rows(rng, 3)
        labels = [(b + k) % 10 for k in range(3)]
        if b == 1:  # markers at known channel/row/column positions
            data[0, 0 * 1024 + 0 * 32 + 1] = 11   # R, row 0, col 1
            data[0, 1 * 1024 + 2 * 32 + 3] = 222  # G, row 2, col 3
            data[0, 2 * 1024 + 31 * 32 + 30] = 77  # B, row 31, col 30
        _pickle(folder / f"data_batch_{b}", {"batch_label": f"batch {b}", "data": data, "labels": labels})
        files[f"data_batch_{b}"] = (data, labels)
    test_data = _cifar_rows(rng, 4)
    test_labels = [9, 0, 5, 5]
    _pickle(folder / "test_batch", {"batch_label": "test", "data": test_data, "labels": test_labels})
    _pickle(folder / "batches.meta", {"label_names": CIFAR10_NAMES, "num_vis": 3072})

    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{b}", _md5(folder / f"data_batch_{b}")]
                                                for b in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", _md5(folder / "test_batch")]])
    monkeypatch.setattr(CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names",
                                          "md5": _md5(folder / "batches.meta")})
    train_data = np.concatenate([files[f"data_batch_{b}"][0] for b in range(1, 6)])
    train_labels = sum((files[f"data_batch_{b}"][1] for b in range(1, 6)), [])
    return tmp_path, (train_data, train_labels), (test_data, test_labels)


def test_cifar10_from_fabricated_batches(cifar10_dir):
    root, (train_data, train_labels), (test_data, test_labels) = cifar10_dir
    ds = load_dataset("cifar10", root)
    assert ds.name == "cifar10"
    assert ds.classes == CIFAR10_NAMES
    np.testing.assert_array_equal(ds.train.labels, train_labels)
    np.testing.assert_array_equal(ds.test.labels, test_labels)
    assert len(ds.train.labels) == 15 and len(ds.test.labels) == 4
    _check_common(ds, 3, 32)

    first = ds.train.images[0]
    assert first[0, 0, 1] == 11
    assert first[1, 2, 3] == 222
    assert first[2, 31, 30] == 77
    # Every pixel of every image: CIFAR rows are channel-major planes of row-major 32x32.
    for i in range(len(train_labels)):
        np.testing.assert_array_equal(ds.train.images[i].numpy(), train_data[i].reshape(3, 32, 32))
    for i in range(len(test_labels)):
        np.testing.assert_array_equal(ds.test.images[i].numpy(), test_data[i].reshape(3, 32, 32))
    assert ds.identity["sha256"] == load_dataset("cifar10", root).identity["sha256"]


def test_cifar10_md5_check_is_real(cifar10_dir):
    """The patched md5 sums are those of the files: a changed file is rejected."""
    root = cifar10_dir[0]
    with open(root / "cifar-10-batches-py" / "test_batch", "ab") as handle:
        handle.write(b"corruption")
    with pytest.raises(PipelineError, match="--data-dir"):
        load_dataset("cifar10", root)


COARSE_NAMES = [f"super{c:02d}" for c in range(20)]
FINE_NAMES = [f"fine{c:03d}" for c in range(100)]


def test_cifar100_returns_coarse_labels(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR100

    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train_data, test_data = _cifar_rows(rng, 5), _cifar_rows(rng, 3)
    train_fine, train_coarse = [99, 3, 50, 7, 0], [19, 1, 12, 4, 0]
    test_fine, test_coarse = [10, 60, 42], [2, 15, 8]
    _pickle(folder / "train", {"filenames": [], "data": train_data,
                               "fine_labels": train_fine, "coarse_labels": train_coarse})
    _pickle(folder / "test", {"filenames": [], "data": test_data,
                              "fine_labels": test_fine, "coarse_labels": test_coarse})
    _pickle(folder / "meta", {"fine_label_names": FINE_NAMES, "coarse_label_names": COARSE_NAMES})
    monkeypatch.setattr(CIFAR100, "train_list", [["train", _md5(folder / "train")]])
    monkeypatch.setattr(CIFAR100, "test_list", [["test", _md5(folder / "test")]])
    monkeypatch.setattr(CIFAR100, "meta", {"filename": "meta", "key": "fine_label_names",
                                           "md5": _md5(folder / "meta")})

    ds = load_dataset("cifar100", tmp_path)
    assert ds.name == "cifar100"
    assert ds.classes == COARSE_NAMES
    np.testing.assert_array_equal(ds.train.labels, train_coarse)
    np.testing.assert_array_equal(ds.test.labels, test_coarse)
    _check_common(ds, 3, 32)
    np.testing.assert_array_equal(ds.train.images[3].numpy(), train_data[3].reshape(3, 32, 32))
    np.testing.assert_array_equal(ds.test.images[2].numpy(), test_data[2].reshape(3, 32, 32))


# --- MNIST / Fashion-MNIST -------------------------------------------------------------


def _write_idx(path: Path, array: np.ndarray) -> None:
    """The big-endian idx format: 0, 0, type code 0x08 (uint8), ndim; then the sizes."""
    assert array.dtype == np.uint8
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())


@pytest.mark.parametrize("key,cls_name", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_like_from_idx_files(tmp_path, key, cls_name):
    import torchvision.datasets as tvd

    rng = np.random.default_rng(2)
    raw = tmp_path / cls_name / "raw"
    raw.mkdir(parents=True)
    train_images = rng.integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    test_images = rng.integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    train_images[0, 3, 27] = 201
    train_labels = np.array([5, 0, 4, 1, 9, 2], dtype=np.uint8)
    test_labels = np.array([7, 2, 1, 0], dtype=np.uint8)
    _write_idx(raw / "train-images-idx3-ubyte", train_images)
    _write_idx(raw / "train-labels-idx1-ubyte", train_labels)
    _write_idx(raw / "t10k-images-idx3-ubyte", test_images)
    _write_idx(raw / "t10k-labels-idx1-ubyte", test_labels)

    ds = load_dataset(key, tmp_path)
    assert ds.name == key
    assert ds.classes == list(getattr(tvd, cls_name).classes)
    assert len(ds.classes) == 10
    np.testing.assert_array_equal(ds.train.labels, train_labels)
    np.testing.assert_array_equal(ds.test.labels, test_labels)
    _check_common(ds, 1, 28)
    assert ds.train.images[0][0, 3, 27] == 201
    np.testing.assert_array_equal(ds.test.images[3].numpy()[0], test_images[3])


def _mnist_arrays(seed: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"train-images-idx3-ubyte": rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8),
            "train-labels-idx1-ubyte": np.array([3, 1, 4, 1, 5], dtype=np.uint8),
            "t10k-images-idx3-ubyte": rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8),
            "t10k-labels-idx1-ubyte": np.array([9, 2, 6], dtype=np.uint8)}


def _write_gzipped_idx(folder: Path, arrays: dict[str, np.ndarray]) -> None:
    import gzip

    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        _write_idx(folder / name, array)
        (folder / f"{name}.gz").write_bytes(gzip.compress((folder / name).read_bytes()))
        (folder / name).unlink()


@pytest.mark.parametrize("key,cls_name", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_like_from_gzipped_idx_files_as_downloaded(tmp_path, key, cls_name):
    """Only the .gz files, as downloaded: decompressed beside themselves, no network."""
    arrays = _mnist_arrays()
    raw = tmp_path / cls_name / "raw"
    _write_gzipped_idx(raw, arrays)
    ds = load_dataset(key, tmp_path)
    np.testing.assert_array_equal(ds.train.labels, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(ds.test.images[2].numpy()[0], arrays["t10k-images-idx3-ubyte"][2])
    # Decompressed into place, the .gz kept, no temporary file left behind.
    assert sorted(p.name for p in raw.iterdir()) == sorted([*arrays, *(f"{n}.gz" for n in arrays)])
    assert load_dataset(key, tmp_path).identity == ds.identity


def test_missing_mnist_files_are_named_with_their_folder(tmp_path):
    arrays = _mnist_arrays()
    raw = tmp_path / "MNIST" / "raw"
    _write_gzipped_idx(raw, {k: v for k, v in arrays.items() if not k.startswith("t10k-labels")})
    with pytest.raises(PipelineError) as error:
        load_dataset("mnist", tmp_path)
    message = _message(error)
    assert f"{raw}/" in message and "missing: t10k-labels-idx1-ubyte." in message
    assert "train-images-idx3-ubyte, train-labels-idx1-ubyte" in message and ".gz" in message
    assert "--download true" in message and "imagefolder" in message
    # Files in a folder of their own (here straight in --data-dir): the message says where to move them.
    empty = tmp_path / "elsewhere"
    _write_gzipped_idx(empty, arrays)
    with pytest.raises(PipelineError) as error:
        load_dataset("fashion_mnist", empty)
    message = _message(error)
    assert f"{empty / 'FashionMNIST' / 'raw'}/" in message
    assert f"in {empty}/: move them to {empty / 'FashionMNIST' / 'raw'}/" in message


def test_damaged_gzip_is_named(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    _write_gzipped_idx(raw, _mnist_arrays())
    gz = raw / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:40])
    with pytest.raises(PipelineError) as error:
        load_dataset("mnist", tmp_path)
    assert str(gz) in _message(error) and "cannot decompress" in _message(error)
    assert not (raw / "train-images-idx3-ubyte").exists() and not list(raw.glob(".*.tmp"))


def test_cifar10_from_the_downloaded_archive(cifar10_dir):
    """Only cifar-10-python.tar.gz, as downloaded: unpacked into place, then read (MD5 sums checked)."""
    import tarfile

    root, (train_data, _), _ = cifar10_dir
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(root / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    expected = load_dataset("cifar10", root).identity
    import shutil

    shutil.rmtree(root / "cifar-10-batches-py")
    ds = load_dataset("cifar10", root)
    assert ds.identity == expected
    np.testing.assert_array_equal(ds.train.images[1].numpy(), train_data[1].reshape(3, 32, 32))
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]


def test_unreadable_files_are_not_reported_missing(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in _mnist_arrays():
        (raw / name).write_bytes(b"not an idx file")
    with pytest.raises(PipelineError) as error:
        load_dataset("mnist", tmp_path)
    message = _message(error)
    assert f"files in {raw} could not be read" in message and "not found" not in message


# --- SVHN ------------------------------------------------------------------------------


def test_svhn_from_mat_files(tmp_path, monkeypatch):
    sio = pytest.importorskip("scipy.io")
    from torchvision.datasets import SVHN

    rng = np.random.default_rng(3)
    arrays = {}
    for split, labels in (("train", [10, 1, 2, 10, 9]), ("test", [3, 10, 7])):
        n = len(labels)
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = np.array(labels, dtype=np.uint8).reshape(n, 1)
        sio.savemat(str(tmp_path / f"{split}_32x32.mat"), {"X": x, "y": y})
        arrays[split] = (x, labels)
    split_list = {key: list(value) for key, value in SVHN.split_list.items()}
    for split in ("train", "test"):
        split_list[split][2] = _md5(tmp_path / f"{split}_32x32.mat")
    monkeypatch.setattr(SVHN, "split_list", split_list)

    ds = load_dataset("svhn", tmp_path)
    assert ds.name == "svhn"
    assert ds.classes == [str(c) for c in range(10)]
    np.testing.assert_array_equal(ds.train.labels, [0, 1, 2, 0, 9])
    np.testing.assert_array_equal(ds.test.labels, [3, 0, 7])
    _check_common(ds, 3, 32)
    for split in ("train", "test"):
        x, labels = arrays[split]
        for i in range(len(labels)):
            # .mat X is (H, W, C, N); images come back (C, H, W).
            np.testing.assert_array_equal(ds.split(split).images[i].numpy(), x[:, :, :, i].transpose(2, 0, 1))


# --- missing data ----------------------------------------------------------------------


def test_missing_cifar10_without_download(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PipelineError) as error:
        load_dataset("cifar10", empty, download=False)
    message = _message(error)
    assert "--data-dir" in message
    assert "imagefolder" in message
    assert "not found" in message
    assert str(empty) in message


def test_failed_cifar10_download_is_a_pipeline_error(tmp_path, monkeypatch):
    # torchvision's download_url: what --download calls (the archive is then unpacked, bounded,
    # by torchvision_files, not by torchvision).
    import torchvision.datasets.utils as tv_utils

    calls = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(tv_utils, "download_url", offline)
    with pytest.raises(PipelineError) as error:
        load_dataset("cifar10", tmp_path, download=True)
    message = _message(error)
    assert calls and calls[0].startswith("https://")
    assert "could not download" in message
    assert "CIFAR-10" in message
    assert "offline" in message
    assert "--data-dir" in message and "imagefolder" in message


# --- imagefolder -----------------------------------------------------------------------


def _save(path: Path, array: np.ndarray, **kwargs) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)


def _rgb(rng, h, w) -> np.ndarray:
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.fixture
def folder_root(tmp_path):
    rng = np.random.default_rng(4)
    root = tmp_path / "images"
    arrays = {
        "train/zebra/a.png": _rgb(rng, 10, 12),
        "train/zebra/b.png": _rgb(rng, 10, 12),
        "train/ant/c.png": _rgb(rng, 7, 9),
        "test/ant/d.png": _rgb(rng, 10, 12),
        "test/zebra/e.png": _rgb(rng, 10, 12),
    }
    for rel, array in arrays.items():
        _save(root / rel, array)
    gray = rng.integers(0, 256, size=(6, 5), dtype=np.uint8)
    _save(root / "test/ant/gray.png", gray)
    arrays["test/ant/gray.png"] = gray
    jpeg = np.full((8, 8, 3), (200, 40, 90), dtype=np.uint8)
    _save(root / "train/ant/photo.jpg", jpeg, quality=95)
    arrays["train/ant/photo.jpg"] = jpeg
    (root / "train/ant/notes.txt").write_text("not an image")
    return root, arrays


def test_imagefolder_loads_classes_labels_and_pixels(folder_root):
    root, arrays = folder_root
    ds = load_dataset("imagefolder", root)
    assert ds.name == "imagefolder"
    assert ds.classes == ["ant", "zebra"]
    # Sorted by class then file name; the .txt file is ignored.
    np.testing.assert_array_equal(ds.train.labels, [0, 0, 1, 1])
    np.testing.assert_array_equal(ds.test.labels, [0, 0, 1])
    assert [Path(p).name for p in ds.train.images.paths] == ["c.png", "photo.jpg", "a.png", "b.png"]
    assert [Path(p).name for p in ds.test.images.paths] == ["d.png", "gray.png", "e.png"]

    c = ds.train.images[0]
    assert c.dtype == torch.uint8 and tuple(c.shape) == (3, 7, 9)
    np.testing.assert_array_equal(c.numpy(), arrays["train/ant/c.png"].transpose(2, 0, 1))
    np.testing.assert_array_equal(ds.train.images[3].numpy(), arrays["train/zebra/b.png"].transpose(2, 0, 1))

    photo = ds.train.images[1]
    assert photo.dtype == torch.uint8 and tuple(photo.shape) == (3, 8, 8)
    assert np.abs(photo.numpy().astype(int) - np.array([200, 40, 90])[:, None, None]).max() <= 4

    gray = ds.test.images[1]
    assert gray.dtype == torch.uint8 and tuple(gray.shape) == (3, 6, 5)
    for channel in range(3):
        np.testing.assert_array_equal(gray[channel].numpy(), arrays["test/ant/gray.png"])

    assert ds.identity["content_sha256"] == load_dataset("imagefolder", root).identity["content_sha256"]


def test_imagefolder_identity_is_a_digest_of_paths_and_contents(folder_root, tmp_path):
    import os
    import shutil

    root, _ = folder_root
    ds = load_dataset("imagefolder", root)
    # A plain reference: every image, train then test, by relative path and BLAKE2b of its bytes.
    reference = hashlib.sha256()
    for path in ds.train.images.paths + ds.test.images.paths:
        reference.update(f"{os.path.relpath(path, root)}\0{hashlib.blake2b(Path(path).read_bytes()).hexdigest()}\n"
                         .encode())
    assert ds.identity["content_sha256"] == reference.hexdigest()
    # A copy elsewhere (new paths above the folder, new time stamps) is the same dataset.
    copy = shutil.copytree(root, tmp_path / "elsewhere" / "images")
    assert load_dataset("imagefolder", copy).identity == ds.identity
    # One byte changed in place, size and modification time kept: another dataset.
    image = root / "train/zebra/b.png"
    stat, data = image.stat(), bytearray(image.read_bytes())
    data[-20] ^= 0x01
    image.write_bytes(bytes(data))
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert image.stat().st_size == stat.st_size and image.stat().st_mtime_ns == stat.st_mtime_ns
    assert load_dataset("imagefolder", root).identity["content_sha256"] != ds.identity["content_sha256"]


def test_imagefolder_mismatched_classes(folder_root):
    root, _ = folder_root
    rng = np.random.default_rng(5)
    _save(root / "train/moth/m.png", _rgb(rng, 4, 4))
    with pytest.raises(PipelineError) as error:
        load_dataset("imagefolder", root)
    message = _message(error)
    assert "different class folders" in message
    assert "only in train: ['moth']" in message
    assert "only in test: []" in message


def test_imagefolder_empty_class_folder(folder_root):
    root, _ = folder_root
    (root / "test/zebra/e.png").unlink()
    with pytest.raises(PipelineError) as error:
        load_dataset("imagefolder", root)
    message = _message(error)
    assert "zebra" in message
    assert "at least one image" in message


def test_imagefolder_class_folder_without_images(folder_root):
    root, _ = folder_root
    (root / "train/zebra/a.png").unlink()
    (root / "train/zebra/b.png").unlink()
    (root / "train/zebra/readme.txt").write_text("x")
    with pytest.raises(PipelineError, match="zebra"):
        load_dataset("imagefolder", root)


def test_imagefolder_missing_test_folder(tmp_path):
    rng = np.random.default_rng(6)
    _save(tmp_path / "train/a/x.png", _rgb(rng, 4, 4))
    with pytest.raises(PipelineError) as error:
        load_dataset("imagefolder", tmp_path)
    message = _message(error)
    assert "no test/ subfolder" in message
    assert "train/<class>/<image>" in message


def test_imagefolder_train_without_class_folders(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    rng = np.random.default_rng(7)
    _save(tmp_path / "test/a/x.png", _rgb(rng, 4, 4))
    with pytest.raises(PipelineError):
        load_dataset("imagefolder", tmp_path)


@pytest.mark.parametrize("ext", [".bmp", ".tif"])
def test_imagefolder_every_accepted_extension_decodes(tmp_path, ext):
    rng = np.random.default_rng(8)
    array = _rgb(rng, 5, 6)
    for split in ("train", "test"):
        _save(tmp_path / split / "a" / f"x{ext}", array)
    try:
        ds = load_dataset("imagefolder", tmp_path)
    except PipelineError:
        return  # rejecting the files up front with a clear message would also be fine
    image = ds.train.images[0]
    np.testing.assert_array_equal(image.numpy(), array.transpose(2, 0, 1))


def test_imagefolder_16bit_png_comes_back_uint8(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
        Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)).save(tmp_path / split / "a" / "x.png")
    image = load_dataset("imagefolder", tmp_path).train.images[0]
    assert image.dtype == torch.uint8
    assert tuple(image.shape) == (3, 4, 4)
    assert int(image.max()) == 255


def test_imagefolder_animated_gif_is_one_image(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(9)
    frames = [Image.fromarray(_rgb(rng, 5, 6)) for _ in range(2)]
    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
        frames[0].save(tmp_path / split / "a" / "x.gif", save_all=True, append_images=frames[1:])
    image = load_dataset("imagefolder", tmp_path).train.images[0]
    assert tuple(image.shape) == (3, 5, 6)


# --- names -----------------------------------------------------------------------------


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(PipelineError) as error:
        load_dataset("imagenet42")
    message = _message(error)
    assert "'imagenet42'" in message
    for name in DATASETS:
        assert name in message
    assert {"digits", "cifar10", "cifar100", "mnist", "fashion_mnist", "svhn", "imagefolder"} <= set(DATASETS)


# --- protocol --------------------------------------------------------------------------


NAMES = ["0", "1", "2", "3"]


def test_one_vs_all_selects_normal_class():
    train = np.array([0, 1, 2, 1, 0, 1])
    test = np.array([1, 2, 0, 1, 2])
    (task,) = one_vs_all(NAMES, [1])
    assert task == Task("1", (1,))
    protocol = split_for(task, train, test, NAMES)
    assert protocol.normal == (1,) and protocol.types == {}
    np.testing.assert_array_equal(protocol.train_index, [1, 3, 5])
    assert (train[protocol.train_index] == 1).all()
    np.testing.assert_array_equal(protocol.test_is_anomaly, [0, 1, 1, 0, 1])
    assert protocol.test_is_anomaly.dtype == np.int64


def test_one_vs_all_errors():
    with pytest.raises(PipelineError, match="class 3 has no training samples"):
        split_for(Task("3", (3,)), np.array([0, 1, 2]), np.array([0, 3]), NAMES)
    with pytest.raises(PipelineError, match="both normal and anomalous"):
        split_for(Task("1", (1,)), np.array([0, 1]), np.array([1, 1]), NAMES)  # no anomalies
    with pytest.raises(PipelineError, match="both normal and anomalous"):
        split_for(Task("1", (1,)), np.array([0, 1]), np.array([0, 0]), NAMES)  # no normal test samples


def test_resolve_classes():
    names = ["cat", "dog", "ship", "7"]
    assert resolve_classes("all", names) == [0, 1, 2, 3]
    assert resolve_classes(" ALL ", names) == [0, 1, 2, 3]
    assert resolve_classes("dog", names) == [1]
    assert resolve_classes("ship, cat", names) == [2, 0]
    assert resolve_classes("2", names) == [2]
    assert resolve_classes(["1", "cat"], names) == [1, 0]
    assert resolve_classes("7", names) == [3]  # a name wins over an index
    with pytest.raises(PipelineError) as error:
        resolve_classes("horse", names)
    message = _message(error)
    assert "'horse'" in message and "cat, dog, ship, 7" in message
    with pytest.raises(PipelineError):
        resolve_classes("4", names)  # index out of range
    with pytest.raises(PipelineError):
        resolve_classes("-1", names)
