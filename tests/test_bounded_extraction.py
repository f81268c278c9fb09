"""Bounded inputs (issue 31, item 6), the cases left, through the real command
(``python -m pipeline.extract``):

- what ``--download true`` fetches is decompressed by the project, under the same bound as a
  file copied by hand (``torchvision_files.decompression_bound``), never by torchvision: a
  download that is a decompression bomb is refused at the bound, leaving nothing unpacked. There
  is no network here: torchvision's ``download_url`` is replaced by a copy of a local file (so
  the real download is not exercised; the addresses asked for are checked);
- a map grid larger than the map (``--map-grid`` over the map's side) is refused."""

from __future__ import annotations

import gzip
import io
import shutil
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.extract.command import main as extract_cli

ZEROS = 1 << 20  # what the bombs below decompress to: far past their bounds, in about a kilobyte


def error_text(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.output.startswith("Error: "), result.output
    return " ".join(result.output.split())


def extract(*args: str):
    return CliRunner().invoke(extract_cli, ["--backbone", "efficientnet_lite0", "--image-size", "32", "--maps", "none",
                                            "--views", "0", "--workers", "0", "--engine", "torch", *args])


@pytest.fixture
def downloads(monkeypatch):
    """torchvision's ``download_url`` as a copy of ``served[file name]`` (no network here), with
    its MD5 check left out (a bomb that passed it is the worst case); the addresses asked for
    are recorded in ``served["asked"]``."""
    import torchvision.datasets.utils as tv_utils

    served: dict = {"asked": []}

    def download_url(url, root, filename=None, md5=None, max_redirect_hops=3):
        filename = filename or Path(url).name
        served["asked"].append(url)
        if filename not in served:
            raise tv_utils.urllib.error.URLError("no network here")
        Path(root).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(served[filename], Path(root) / filename)

    monkeypatch.setattr(tv_utils, "download_url", download_url)
    return served


def cifar_archive(path: Path, entries: dict[str, int]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, size in entries.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = size
            tar.addfile(info, io.BytesIO(bytes(size)))
    return path


def test_a_downloaded_cifar_archive_that_is_a_bomb_is_unpacked_bounded_and_refused(tmp_path, downloads, monkeypatch):
    from torchvision.datasets import CIFAR10

    from pipeline.extract import torchvision_files

    monkeypatch.setattr(torchvision_files, "FLOOR_BOUND", 64 << 10)  # a low bound, for a small bomb
    (tmp_path / "server").mkdir()
    bomb = cifar_archive(tmp_path / "server" / CIFAR10.filename, {"batches.meta": 10, "data_batch_1": ZEROS})
    downloads[CIFAR10.filename] = bomb
    bound = max(20 * bomb.stat().st_size, 64 << 10)
    data = tmp_path / "data"
    message = error_text(extract("--dataset", "cifar10", "--data-dir", str(data), "--download", "true",
                                 "--out", str(tmp_path / "c.zarr")))
    assert downloads["asked"] == [CIFAR10.url]  # torchvision's address, asked once: torchvision did not download again
    archive = data / CIFAR10.filename
    assert f"{archive} decompresses to more than {bound} bytes" in message, message
    assert f"its entry cifar-10-batches-py/data_batch_1 takes it to {ZEROS + 10} bytes" in message
    assert "nothing of it was kept" in message
    # The download is there; nothing of it was unpacked, no temporary folder left.
    assert sorted(p.name for p in data.iterdir()) == [CIFAR10.filename]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "server"]


def idx(array: np.ndarray) -> bytes:
    return struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + \
        array.astype(np.uint8).tobytes()


def mnist_server(folder: Path, bomb: bool) -> dict[str, Path]:
    """MNIST's four .gz files, tiny (4 training and 3 test images), the test labels a bomb if
    asked (1 MiB of zeros; the real file has 10008 bytes, its bound is twice that)."""
    rng = np.random.default_rng(0)
    contents = {"train-images-idx3-ubyte": idx(rng.integers(0, 256, size=(4, 28, 28))),
                "train-labels-idx1-ubyte": idx(np.array([3, 1, 4, 1])),
                "t10k-images-idx3-ubyte": idx(rng.integers(0, 256, size=(3, 28, 28))),
                "t10k-labels-idx1-ubyte": bytes(ZEROS) if bomb else idx(np.array([9, 2, 6]))}
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in contents.items():
        (folder / f"{name}.gz").write_bytes(gzip.compress(content))
    return {f"{name}.gz": folder / f"{name}.gz" for name in contents}


def test_a_downloaded_mnist_file_that_is_a_bomb_is_decompressed_bounded_and_refused(tmp_path, downloads):
    from torchvision.datasets import MNIST

    downloads.update(mnist_server(tmp_path / "server", bomb=True))
    data = tmp_path / "data"
    message = error_text(extract("--dataset", "mnist", "--data-dir", str(data), "--download", "true",
                                 "--out", str(tmp_path / "c.zarr")))
    raw = data / "MNIST" / "raw"
    bomb = raw / "t10k-labels-idx1-ubyte.gz"
    assert f"{bomb} decompresses to more than 20016 bytes" in message, message
    assert "2 x the 10008 bytes of the real t10k-labels-idx1-ubyte" in message and "nothing of it was kept" in message
    assert downloads["asked"] == [f"{MNIST.mirrors[0]}{name}" for name, _ in MNIST.resources]
    # The good files were decompressed; of the bomb, neither the file nor its temporary part is left.
    assert sorted(p.name for p in raw.iterdir() if not p.name.endswith(".gz")) == [
        "t10k-images-idx3-ubyte", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"]
    assert not list(raw.glob(".*"))


def test_a_good_download_is_decompressed_here_and_torchvision_reads_it_without_downloading_again(tmp_path, downloads):
    from torchvision.datasets import MNIST

    downloads.update(mnist_server(tmp_path / "server", bomb=False))
    out = tmp_path / "c.zarr"
    result = extract("--dataset", "mnist", "--data-dir", str(tmp_path / "data"), "--download", "true", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert downloads["asked"] == [f"{MNIST.mirrors[0]}{name}" for name, _ in MNIST.resources]  # each once
    from pipeline.store.cache import FeatureCache

    cache = FeatureCache.open(out)
    assert cache.size("train") == 4 and list(cache.labels("test")) == [9, 2, 6]
    # Run again: everything is in place, nothing is downloaded.
    result = extract("--dataset", "mnist", "--data-dir", str(tmp_path / "data"), "--download", "true", "--out", str(out))
    assert result.exit_code == 0 and "already complete" in result.output, result.output
    assert len(downloads["asked"]) == 4


def test_a_download_failing_from_every_mirror_is_one_error_naming_them(tmp_path, downloads):
    from torchvision.datasets import MNIST

    message = error_text(extract("--dataset", "mnist", "--data-dir", str(tmp_path / "data"), "--download", "true",
                                 "--out", str(tmp_path / "c.zarr")))
    assert "could not download MNIST" in message and "no network here" in message, message
    first = MNIST.resources[0][0]
    assert all(f"from {mirror}{first}" in message for mirror in MNIST.mirrors), message
    assert "--data-dir" in message and "imagefolder" in message


# --- the map grid -----------------------------------------------------------------------------------

@pytest.mark.parametrize("grid", ["3", "4"])  # 4: the default, on the 2x2 stride-16 map of a 32 px image
def test_a_map_grid_larger_than_the_map_is_refused(tmp_path, grid):
    out = tmp_path / "c.zarr"
    result = CliRunner().invoke(extract_cli, ["--dataset", "synthetic", "--image-size", "32", "--maps", "intermediate",
                                              "--map-grid", grid, "--views", "0", "--workers", "0", "--engine",
                                              "torch", "--out", str(out)])
    message = error_text(result)
    assert (f"--map-grid {grid} is larger than the map stride16 of efficientnet_lite0 at --image-size 32, which is "
            f"2x2") in message, message
    assert "Give --map-grid 2 or less" in message and "--maps none" in message
    assert not out.exists()


def test_a_map_grid_of_the_map_s_side_is_accepted(tmp_path):
    from pipeline.store.cache import FeatureCache

    out = tmp_path / "c.zarr"
    result = CliRunner().invoke(extract_cli, ["--dataset", "synthetic", "--image-size", "32", "--maps", "intermediate",
                                              "--map-grid", "2", "--views", "0", "--workers", "0", "--engine",
                                              "torch", "--chunk-rows", "64", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert FeatureCache.open(out).array("test", "maps/stride16").shape[1:] == (112, 2, 2)
