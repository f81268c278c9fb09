"""Interrupted, concurrent, damaged and bad-input runs: nothing lost, nothing half-written."""

import errno
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline.errors import PipelineError
from pipeline.extract.extraction import extract
from pipeline.extract.datasets import load_dataset
from pipeline.extract.preprocess import Preprocessing
from pipeline.store.cache import FeatureCache
from pipeline.store.command import main as cache_cli

from cli_results import error_line

SMALL = dict(chunk_rows=16, batch_size=8, workers=0)


def run(path, **kwargs):
    return extract(load_dataset("synthetic"), "efficientnet_lite0", Preprocessing(image_size=32), path,
                   **{**SMALL, **kwargs})


def test_extraction_is_deterministic(synthetic_cache, tmp_path):
    again = run(tmp_path / "again.zarr", maps=("intermediate",), map_grid=2, trunk_maps="panda")
    for split in ("train", "test"):
        for name in synthetic_cache.array_names(split):
            np.testing.assert_array_equal(again.read(split, name), synthetic_cache.read(split, name))


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path):
    path = tmp_path / "locked.zarr"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom pipeline.store.locks import writer_lock\n"
        f"with writer_lock({str(path)!r}):\n    print('locked', flush=True)\n    time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(PipelineError, match=f"is being written by process {holder.pid}"):
            run(path)
    finally:
        holder.kill()
        holder.wait()
    assert run(path).is_complete  # a killed holder leaves no stale lock


def damage_first_chunk(cache, split="train", name="features"):
    chunk_file = cache.path / split / name / "c" / "0" / "0"
    data = bytearray(chunk_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk_file.write_bytes(bytes(data))


def test_damaged_chunks_are_found_refused_and_repaired(synthetic_cache, tmp_path):
    path = tmp_path / "damaged.zarr"
    shutil.copytree(synthetic_cache.path, path)
    cache = FeatureCache.open(path)
    damage_first_chunk(cache)
    # A chunk rewritten with valid but different numbers is caught by its checksum.
    rows = cache.chunk_slices("test")[1]
    cache.array("test", "features")[rows] = cache.array("test", "features")[rows] * 1.001
    problems = cache.verify()
    assert any(p.startswith("train chunk 0") for p in problems)
    assert any(p.startswith("test chunk 1") and "checksum" in p for p in problems)
    with pytest.raises(PipelineError, match="verify --repair"):
        cache.features("test")

    runner = CliRunner()
    result = runner.invoke(cache_cli, ["verify", str(path)])
    assert result.exit_code == 1 and "train chunk 0" in result.output
    result = runner.invoke(cache_cli, ["verify", "--repair", str(path)])
    assert result.exit_code == 1 and "set aside" in result.output
    with pytest.raises(PipelineError, match="incomplete"):
        FeatureCache.open(path)

    repaired = run(path, maps=("intermediate",), map_grid=2, trunk_maps="panda")
    assert repaired.verify() == []
    np.testing.assert_array_equal(repaired.features("train"), synthetic_cache.features("train"))
    np.testing.assert_array_equal(repaired.features("test"), synthetic_cache.features("test"))
    assert runner.invoke(cache_cli, ["verify", str(path)]).exit_code == 0


def test_a_full_disk_leaves_an_incomplete_cache_that_resumes(tmp_path, monkeypatch):
    path = tmp_path / "full.zarr"
    original_write = FeatureCache.write_chunk
    calls = {"n": 0}

    def write_until_full(self, split, chunk, values):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original_write(self, split, chunk, values)

    monkeypatch.setattr(FeatureCache, "write_chunk", write_until_full)
    with pytest.raises(PipelineError, match="disk holding .* is full"):
        run(path)
    assert not FeatureCache.open(path, require_complete=False).is_complete
    assert len(FeatureCache.open(path, require_complete=False).done_chunks("train")) == 2
    monkeypatch.setattr(FeatureCache, "write_chunk", original_write)
    assert run(path).verify() == []


def image_folder(root, broken, per_class=4, empty=True):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / split / c / f"{i}.jpg")
    for relative in broken:
        data = (root / relative).read_bytes()
        (root / relative).write_bytes(data[: len(data) // 3])  # truncated JPEG
    if empty:
        (root / "train" / "a" / "empty.png").write_bytes(b"")
    return root


def test_unreadable_images_are_found_by_the_extraction_or_skipped_and_recorded(tmp_path):
    root = image_folder(tmp_path / "images", ["train/b/1.jpg"])
    data = load_dataset("imagefolder", root)
    with pytest.raises(PipelineError) as info:
        extract(data, "efficientnet_lite0", Preprocessing(image_size=32), tmp_path / "c.zarr", **SMALL)
    message = str(info.value)  # the first one the extraction reads
    assert "cannot read the image file train/a/empty.png" in message and "--skip-bad" in message
    assert not FeatureCache.open(tmp_path / "c.zarr", require_complete=False).done_chunks("train")

    # --skip-bad checks every file first; the rows then differ from the unfinished cache's.
    with pytest.raises(PipelineError, match="made differently.*skipped_files"):
        extract(data, "efficientnet_lite0", Preprocessing(image_size=32), tmp_path / "c.zarr", skip_bad=True,
                **SMALL)
    cache = extract(data, "efficientnet_lite0", Preprocessing(image_size=32), tmp_path / "c.zarr",
                    skip_bad=True, overwrite=True, **SMALL)
    assert cache.size("train") == 8 - 1 and cache.size("test") == 8
    skipped = cache.metadata["dataset"]["skipped_files"]
    assert len(skipped) == 2 and any("train/b/1.jpg" in s for s in skipped)
    assert list(cache.labels("train")) == [0, 0, 0, 0, 1, 1, 1]


def test_a_resumed_or_repeated_extraction_takes_the_unreadable_files_from_the_cache(tmp_path, monkeypatch):
    """The full decode that finds unreadable files is made once per set of files: a cache made
    from the same files (same content digest) records what it found, the next run reuses it."""
    from pipeline.extract import datasets

    root = image_folder(tmp_path / "images", ["train/b/1.jpg"])
    decoded = []
    original = datasets.unreadable_images
    monkeypatch.setattr(datasets, "unreadable_images", lambda images, workers=0: decoded.append(len(images))
                        or original(images, workers))
    path = tmp_path / "c.zarr"
    first = extract(load_dataset("imagefolder", root), "efficientnet_lite0", Preprocessing(image_size=32), path,
                    skip_bad=True, **SMALL)
    assert decoded == [8 + 1, 8]  # train (one of them the empty file), test
    first.set_aside("train", {0})  # as if interrupted: the next run resumes
    again = extract(load_dataset("imagefolder", root), "efficientnet_lite0", Preprocessing(image_size=32), path,
                    skip_bad=True, **SMALL)
    assert decoded == [9, 8] and again.is_complete and again.verify() == []
    assert again.metadata["dataset"]["skipped_files"] == first.metadata["dataset"]["skipped_files"]
    np.testing.assert_array_equal(again.labels("train"), [0, 0, 0, 0, 1, 1, 1])
    # Without --skip-bad the recorded files are refused at once, by name, still without decoding.
    with pytest.raises(PipelineError, match=r"2 image files cannot be read.*train/b/1.jpg"):
        extract(load_dataset("imagefolder", root), "efficientnet_lite0", Preprocessing(image_size=32), path, **SMALL)
    assert decoded == [9, 8]
    # Files changed since (another content digest): decoded again, and the fixed file is found readable.
    (root / "train" / "a" / "empty.png").unlink()
    fixed = extract(load_dataset("imagefolder", root), "efficientnet_lite0", Preprocessing(image_size=32), path,
                    skip_bad=True, overwrite=True, **SMALL)
    assert decoded == [9, 8, 8, 8] and fixed.size("train") == 7


def extract_folder(root, out, *options):
    """``python -m pipeline.extract`` on the image folder ``root``: chunks of 4 rows, 4-image batches."""
    from pipeline.extract.command import main

    return CliRunner().invoke(main, ["--dataset", "imagefolder", "--data-dir", str(root), "--out", str(out),
                                     "--backbone", "efficientnet_lite0", "--image-size", "32", "--chunk-rows", "4",
                                     "--batch-size", "4", "--workers", "0", "--device", "cpu", "--views", "0",
                                     "--maps", "none", "--engine", "torch", *options])


def count_decodes(monkeypatch):
    """The image files decoded in this process from now on, in order."""
    from pipeline.extract import datasets

    decoded, original = [], datasets.decode_image_file
    monkeypatch.setattr(datasets, "decode_image_file", lambda path: decoded.append(path) or original(path))
    return decoded


def test_a_fresh_extraction_decodes_each_image_once(tmp_path, monkeypatch):
    from pipeline.extract import datasets

    root = image_folder(tmp_path / "images", [], per_class=6, empty=False)
    monkeypatch.setattr(datasets, "unreadable_images", lambda *args, **kwargs: pytest.fail("a decode check ran"))
    decoded = count_decodes(monkeypatch)
    result = extract_folder(root, tmp_path / "c.zarr")
    assert result.exit_code == 0, result.output
    paths = load_dataset("imagefolder", root)
    assert sorted(decoded) == sorted(paths.train.images.paths + paths.test.images.paths)  # 24 files, once each


def test_an_unreadable_file_found_late_leaves_a_resumable_cache_and_a_clear_message(tmp_path, monkeypatch):
    root = image_folder(tmp_path / "images", ["train/b/5.jpg"], per_class=12, empty=False)
    train_paths = load_dataset("imagefolder", root).train.images.paths
    assert train_paths.index(str(root / "train" / "b" / "5.jpg")) == 19  # the last row of chunk 4 of 6
    out = tmp_path / "c.zarr"
    # With loader workers the file's error crosses from the worker process intact.
    line = error_line(extract_folder(root, out, "--workers", "2"))
    assert "cannot read the image file train/b/5.jpg (RuntimeError: " in line
    assert all(words in line for words in ("kept in", "resumes", "Replace or remove", "--skip-bad", "--overwrite"))
    partial = FeatureCache.open(out, require_complete=False)
    assert partial.done_chunks("train") == {0, 1, 2, 3} and not partial.done_chunks("test")
    assert not partial.is_complete and all("never finished" in problem for problem in partial.verify())

    # The same command resumes: the chunks done are not decoded again, and it stops at the same file.
    decoded = count_decodes(monkeypatch)
    assert error_line(extract_folder(root, out)) == line
    assert decoded == train_paths[16:20]
    assert FeatureCache.open(out, require_complete=False).done_chunks("train") == {0, 1, 2, 3}

    # --skip-bad leaves it out, which changes the store's rows: with --overwrite only.
    assert "made differently" in error_line(extract_folder(root, out, "--skip-bad"))
    result = extract_folder(root, out, "--skip-bad", "--overwrite")
    assert result.exit_code == 0, result.output
    skipped = FeatureCache.open(out)
    assert skipped.size("train") == 23 and skipped.metadata["dataset"]["skipped_files"][0].startswith(
        "train: train/b/5.jpg (")

    # Replaced by a good file: other files than the cache's, which only --overwrite replaces.
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(root / "train" / "b" / "5.jpg")
    line = error_line(extract_folder(root, out))
    assert "dataset.content_sha256" in line and "image files are not those it was made from" in line
    result = extract_folder(root, out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert FeatureCache.open(out).size("train") == 24


def test_knn_metrics_are_identical_across_runs(synthetic_cache, tmp_path):
    from pipeline.commands.knn import main

    outputs = []
    for i in range(2):
        path = tmp_path / f"m{i}.json"
        assert CliRunner().invoke(main, ["--cache", str(synthetic_cache.path), "--metrics", str(path)]).exit_code == 0
        outputs.append(path.read_text())
    assert outputs[0] == outputs[1]
