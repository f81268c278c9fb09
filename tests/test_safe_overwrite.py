"""--overwrite replaces feature caches made by this project and nothing else: never someone's
folder of documents, the data directory, a folder holding it, or the working directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from PIL import Image

from pipeline.extract.command import main as extract_cli
from pipeline.store.cache import ArraySpec, FeatureCache
from pipeline.store.command import main as cache_cli

REPO = Path(__file__).resolve().parents[1]
EXTRACT = ["--dataset", "synthetic", "--image-size", "32", "--map-grid", "2", "--chunk-rows", "16", "--batch-size", "8",
           "--workers", "0"]


def documents(folder: Path) -> dict[Path, bytes]:
    """A user's folder: a few files and a subfolder. Returns every file and its bytes."""
    (folder / "letters").mkdir(parents=True)
    files = {folder / "thesis.txt": b"chapter one", folder / "letters" / "to_ann.pdf": b"%PDF-1.4 dear Ann",
             folder / "zarr.json": b'{"zarr_format": 3, "node_type": "group", "attributes": {"mine": 1}}'}
    for path, data in files.items():
        path.write_bytes(data)
    return files


def assert_untouched(files: dict[Path, bytes]) -> None:
    for path, data in files.items():
        assert path.read_bytes() == data, path


def assert_refused(result, *words: str) -> str:
    """Exit status 1 with one ``Error:`` paragraph, no traceback, naming ``words``, not suggesting --overwrite."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert "--overwrite" not in lines[0]
    return lines[0]


def image_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


def every_file(folder: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def write_h5(path: Path) -> Path:
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        for split, n in (("train", 8), ("test", 4)):
            f[f"{split}/features"] = rng.normal(size=(n, 3)).astype(np.float32)
            f[f"{split}/labels"] = np.arange(n) % 2
    return path


# --- python -m pipeline.extract ----------------------------------------------------------------

@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_extract_leaves_a_folder_of_documents_alone(tmp_path, overwrite):
    files = documents(tmp_path / "docs")
    result = CliRunner().invoke(extract_cli, [*EXTRACT, "--out", str(tmp_path / "docs"), *overwrite])
    assert_refused(result, str(tmp_path / "docs"), "not a feature cache made by this project")
    assert_untouched(files)


def test_extract_refuses_the_data_directory_and_a_folder_holding_it(tmp_path):
    data = image_folder(tmp_path / "parent" / "images")
    (tmp_path / "parent" / "notes.txt").write_text("keep me")
    before = every_file(tmp_path / "parent")
    for out, words in ((data, ["is the data directory"]), (tmp_path / "parent", ["holds the data directory"])):
        result = CliRunner().invoke(extract_cli, [*EXTRACT, "--dataset", "imagefolder", "--data-dir", str(data),
                                                  "--out", str(out), "--overwrite"])
        assert_refused(result, str(out), *words)
    assert every_file(tmp_path / "parent") == before


def test_extract_refuses_the_working_directory(tmp_path, monkeypatch):
    files = documents(tmp_path / "work")
    monkeypatch.chdir(tmp_path / "work")
    for out in (".", ".."):
        result = CliRunner().invoke(extract_cli, [*EXTRACT, "--out", out, "--overwrite"])
        assert_refused(result, "the current working directory")
    assert_untouched(files)


def test_extract_still_replaces_a_real_cache_and_the_views_store_only_if_it_is_one(tmp_path):
    out = tmp_path / "synthetic.zarr"
    assert CliRunner().invoke(extract_cli, [*EXTRACT, "--out", str(out)]).exit_code == 0  # auto: inception (Lite0)
    result = CliRunner().invoke(extract_cli, [*EXTRACT, "--out", str(out), "--normalisation", "imagenet"])
    assert result.exit_code == 1 and "was made differently" in result.output and "--overwrite" in result.output
    result = CliRunner().invoke(extract_cli, [*EXTRACT, "--out", str(out), "--normalisation", "imagenet",
                                              "--overwrite"])
    assert result.exit_code == 0, result.output
    assert FeatureCache.open(out).metadata["preprocessing"]["normalisation"] == "imagenet"
    # The views store beside the cache is replaced under the same rule.
    files = documents(tmp_path / "synthetic.views.zarr")
    result = CliRunner().invoke(extract_cli, [*EXTRACT, "--out", str(out), "--normalisation", "imagenet",
                                              "--views", "1", "--overwrite"])
    assert_refused(result, str(tmp_path / "synthetic.views.zarr"), "not a feature cache made by this project")
    assert_untouched(files)


def test_a_leftover_partial_store_is_removed_but_a_folder_of_that_name_is_not(tmp_path):
    specs = {"train": [ArraySpec("features", (2,), "float32"), ArraySpec("labels", (), "int64")]}
    partial = tmp_path / "c.zarr.partial"
    zarr.open_group(str(partial), mode="w", attributes={"format": "frozen-feature-ad feature cache"})
    cache = FeatureCache.create(tmp_path / "c.zarr", {"dataset": {}}, specs, {"train": 3})
    assert cache.size("train") == 3 and not partial.exists()
    files = documents(tmp_path / "d.zarr.partial")
    with pytest.raises(Exception, match="d.zarr.partial .*not a feature cache made by this project"):
        FeatureCache.create(tmp_path / "d.zarr", {"dataset": {}}, specs, {"train": 3})
    assert_untouched(files)


def test_caches_made_before_the_format_marker_are_still_recognised(tmp_path):
    specs = {"train": [ArraySpec("features", (2,), "float32"), ArraySpec("labels", (), "int64")]}
    old = FeatureCache.create(tmp_path / "old.zarr", {"dataset": {}}, specs, {"train": 3})
    attributes = dict(old.group.attrs)
    del attributes["format"]
    old.group.attrs.clear()
    old.group.attrs.update(attributes)
    FeatureCache.create(tmp_path / "old.zarr", {"dataset": {"name": "new"}}, specs, {"train": 3})
    assert FeatureCache.open(tmp_path / "old.zarr", require_complete=False).metadata["dataset"]["name"] == "new"


# --- python -m pipeline.cache import-hdf5 ---------------------------------------------------------

@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_import_leaves_a_folder_of_documents_alone(tmp_path, overwrite):
    h5 = write_h5(tmp_path / "f.h5")
    files = documents(tmp_path / "docs")
    result = CliRunner().invoke(cache_cli, ["import-hdf5", str(h5), str(tmp_path / "docs"), *overwrite])
    assert_refused(result, str(tmp_path / "docs"), "not a feature cache made by this project")
    assert_untouched(files)
    # Nor a folder of documents that happens to have the temporary folder's name.
    files = documents(tmp_path / "new.zarr.importing")
    result = CliRunner().invoke(cache_cli, ["import-hdf5", str(h5), str(tmp_path / "new.zarr"), *overwrite])
    assert_refused(result, str(tmp_path / "new.zarr.importing"), "not a feature cache made by this project")
    assert_untouched(files)


def test_import_refuses_the_working_directory(tmp_path, monkeypatch):
    h5 = write_h5(tmp_path / "f.h5")
    files = documents(tmp_path / "work")
    monkeypatch.chdir(tmp_path / "work")
    assert_refused(CliRunner().invoke(cache_cli, ["import-hdf5", str(h5), ".", "--overwrite"]),
                   "the current working directory")
    assert_untouched(files)


def test_import_replaces_a_real_cache_only_with_overwrite(tmp_path):
    h5 = write_h5(tmp_path / "f.h5")
    out = tmp_path / "c.zarr"
    assert CliRunner().invoke(cache_cli, ["import-hdf5", str(h5), str(out)]).exit_code == 0
    result = CliRunner().invoke(cache_cli, ["import-hdf5", str(h5), str(out)])
    assert result.exit_code == 1 and "pass --overwrite" in result.output
    result = CliRunner().invoke(cache_cli, ["import-hdf5", str(h5), str(out), "--overwrite"])
    assert result.exit_code == 0, result.output
    with h5py.File(h5, "r") as f:
        np.testing.assert_array_equal(FeatureCache.open(out).features("train"), f["train/features"][()])
    assert not (tmp_path / "c.zarr.importing").exists()


def test_the_module_entry_point_refuses_with_exit_status_1_and_no_traceback(tmp_path):
    h5 = write_h5(tmp_path / "f.h5")
    files = documents(tmp_path / "docs")
    result = subprocess.run([sys.executable, "-m", "pipeline.cache", "import-hdf5", str(h5), str(tmp_path / "docs"),
                             "--overwrite"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"Error: {tmp_path / 'docs'} ") and "--overwrite" not in result.stderr
    assert_untouched(files)
