"""Class names come from folder names and HDF5 attributes: every file made from one stays in its
folder, every class has files of its own, and a class list that would make two classes share a
name (or have none) is refused where it enters."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.commands.knn import main as knn_cli
from pipeline.scoring import main as score_cli
from pipeline.store.command import main as cache_cli

from cli_results import error_line

CLASSES = ["../../x", "good part", "good_part", "a/b"]


def write_h5(path: Path, classes, n_per_class: int = 6, dim: int = 5, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    k = max(len(classes), 2) if isinstance(classes, list) else 2
    with h5py.File(path, "w") as f:
        for split, n in (("train", n_per_class * k), ("test", 4 * k)):
            f[f"{split}/features"] = rng.normal(size=(n, dim)).astype(np.float32)
            f[f"{split}/labels"] = np.arange(n) % k
        f.attrs["classes"] = json.dumps(classes)
    return path


def every_file(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*") if path.is_file() or path.is_symlink()}


def test_class_names_from_an_hdf5_file_write_only_inside_the_output_folders(tmp_path, monkeypatch):
    # Deep enough that '../../x' from any output folder would still land inside tmp_path.
    work = tmp_path / "one" / "two" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    source = write_h5(tmp_path / "features.h5", CLASSES)
    runner = CliRunner()

    before = every_file(tmp_path)
    result = runner.invoke(cache_cli, ["import-hdf5", str(source), str(work / "c.zarr")])
    assert result.exit_code == 0, result.output
    # The import writes the cache and nothing beside it.
    assert all(work / "c.zarr" in path.parents for path in every_file(tmp_path) - before)

    plots, heads, metrics = work / "plots", work / "heads", work / "metrics" / "knn.json"
    before = every_file(tmp_path)
    result = runner.invoke(knn_cli, ["--cache", str(work / "c.zarr"), "--k", "2", "--metrics", str(metrics),
                                     "--plots", str(plots), "--save-heads", str(heads)])
    assert result.exit_code == 0, result.output
    written = every_file(tmp_path) - before
    outside = [path for path in written if plots not in path.parents and heads not in path.parents
               and path.parent != metrics.parent]
    assert outside == []
    # One ROC file and one head file per class, each a plain file directly in its folder.
    roc_files, head_files = sorted(plots.iterdir()), sorted(heads.iterdir())
    assert len(roc_files) == len(CLASSES) and len(head_files) == len(CLASSES)
    assert all(f.is_file() and f.name.startswith("roc_") and f.suffix == ".json" for f in roc_files)
    assert all(f.is_file() and f.suffix == ".head" for f in head_files)
    assert set(json.loads(metrics.read_text())["per_class"]) == set(CLASSES)

    # stages.score loads every head, each of its own class.
    with h5py.File(tmp_path / "new.h5", "w") as f:
        f["features"] = np.random.default_rng(1).normal(size=(3, 5)).astype(np.float32)
    named = set()
    for head in head_files:
        result = runner.invoke(score_cli, ["--head", str(head), "--features", str(tmp_path / "new.h5"),
                                           "--out", str(work / "scores" / f"{head.stem}.csv")])
        assert result.exit_code == 0, result.output
        named.add(result.output.split("(class ", 1)[1].split("); wrote", 1)[0])
    assert named == set(CLASSES)


@pytest.mark.parametrize("classes, words", [
    (["a", "a"], ["'a' more than once"]),
    (["good", ""], ["empty name"]),
    (["good", "  "], ["empty name"]),
    (["b", "a", "b"], ["'b' more than once"]),
])
def test_an_hdf5_class_list_with_a_repeated_or_empty_name_is_error_line(tmp_path, classes, words):
    source = write_h5(tmp_path / "features.h5", classes)
    result = CliRunner().invoke(cache_cli, ["import-hdf5", str(source), str(tmp_path / "c.zarr")])
    message = error_line(result)
    assert "classes attribute" in message and str(source) in message
    for word in words:
        assert word in message
    assert not (tmp_path / "c.zarr").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.h5"]  # nothing left behind


def test_a_repeated_class_name_in_the_metadata_attribute_is_error_line(tmp_path):
    source = write_h5(tmp_path / "features.h5", ["a", "b"])
    with h5py.File(source, "a") as f:
        del f.attrs["classes"]
        f.attrs["metadata"] = json.dumps({"dataset": {"name": "mine", "classes": ["a", "a"]}})
    message = error_line(CliRunner().invoke(cache_cli, ["import-hdf5", str(source), str(tmp_path / "c.zarr")]))
    assert "dataset.classes" in message and "'a' more than once" in message
