"""An output never overwrites an input (issue 31): every output path of the real commands is
resolved (links, ``..``, paths not made yet) and refused, before anything is written, if it is,
lies inside or holds something the command reads (a head file, an image being scored, a feature
cache with its zarr.json, the image folder), lies inside any feature cache, or is one of the
project's own files (params.yaml, dvc.yaml, the source code)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_results import error_line
from click.testing import CliRunner
from PIL import Image

from pipeline.commands.knn import main as knn_cli
from pipeline.commands.plume_ablation import main as ablation_cli
from pipeline.extract.command import main as extract_cli
from pipeline.scoring import main as score_cli
from pipeline.store.command import main as cache_cli

REPO = Path(__file__).resolve().parents[1]
KNN = ["--k", "2", "--device", "cpu"]


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (or the file itself) and its bytes."""
    path = Path(path)
    if path.is_file():
        return {str(path): path.read_bytes()}
    return {str(p): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def refused(result, *words: str) -> str:
    """Exit status 1, one ``Error:`` line, no traceback, naming every word."""
    line = error_line(result)
    for word in words:
        assert str(word) in line, (word, line)
    return line


@pytest.fixture(scope="module")
def work(synthetic_cache, tmp_path_factory):
    """A copy of the session's cache (so a command that wrongly writes into it spoils nothing
    else), a kNN head saved from it by stages.knn, and a small image folder to score."""
    root = tmp_path_factory.mktemp("outputs")
    cache = root / "cache.zarr"
    shutil.copytree(synthetic_cache.path, cache)
    result = CliRunner().invoke(knn_cli, ["--cache", str(cache), *KNN, "--metrics", str(root / "m.json"),
                                          "--save-heads", str(root / "heads")])
    assert result.exit_code == 0, result.output
    head = min((root / "heads").glob("*.head"))
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(images / name)
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / "elsewhere.png")
    os.symlink("../elsewhere.png", images / "linked.png")
    return {"root": root, "cache": cache, "head": head, "images": images}


def score(work, out, *extra: str):
    return CliRunner().invoke(score_cli, ["--head", str(work["head"]), "--images", str(work["images"]),
                                          "--out", str(out), "--device", "cpu", "--workers", "0", *extra])


def knn(work, *extra: str):
    return CliRunner().invoke(knn_cli, ["--cache", str(work["cache"]), *KNN, *extra])


# --- stages.score ----------------------------------------------------------------------------

def test_score_out_on_the_head_file_is_refused(work):
    before = snapshot(work["head"])
    refused(score(work, work["head"]), "--out", "--head", work["head"], "which this command reads")
    assert snapshot(work["head"]) == before


def test_score_out_through_a_link_to_the_head_file_is_refused(work, tmp_path):
    link = tmp_path / "scores.csv"
    os.symlink(work["head"], link)
    before = snapshot(work["head"])
    refused(score(work, link), f"--out {link}", f"that is, {work['head']}", "--head")
    assert snapshot(work["head"]) == before and link.is_symlink()


def test_score_out_as_a_hard_link_of_the_head_file_is_refused(work, tmp_path):
    link = tmp_path / "scores.csv"
    os.link(work["head"], link)
    refused(score(work, link), "hard link", "--head")


@pytest.mark.parametrize("name", ["scores.csv", "a.png", "sub/scores.csv"])
def test_score_out_in_the_images_folder_or_on_an_image_is_refused(work, name):
    before = snapshot(work["images"])
    out = work["images"] / name
    refused(score(work, out), f"--out {out}", "--images", "which this command reads")
    assert snapshot(work["images"]) == before and not (work["images"] / "sub").exists()


def test_score_out_on_an_image_linked_from_the_images_folder_is_refused(work):
    target = work["root"] / "elsewhere.png"
    before = snapshot(target)
    refused(score(work, target), "--images", "links to", "linked.png")
    assert snapshot(target) == before


def test_score_out_on_the_calibration_folder_is_refused(work, tmp_path):
    calibration = tmp_path / "normal"
    calibration.mkdir()
    refused(score(work, calibration / "s.csv", "--calibrate", str(calibration)), "--calibrate")
    assert list(calibration.iterdir()) == []


@pytest.mark.parametrize("name", ["params.yaml", "dvc.yaml", "pipeline/scoring.py", "pipeline/new_file.csv"])
def test_score_out_on_the_projects_own_files_is_refused(work, name):
    target = REPO / name
    before = snapshot(target) if target.exists() else None
    refused(score(work, target), f"--out {target}", "the project's")
    assert (snapshot(target) if target.exists() else None) == before


# --- head stages (stages.knn) ---------------------------------------------------------------

def test_knn_metrics_inside_the_cache_is_refused(work):
    before = snapshot(work["cache"])
    out = work["cache"] / "metrics.json"
    refused(knn(work, "--metrics", str(out)), f"--metrics {out}", "lies inside", "--cache")
    assert snapshot(work["cache"]) == before


@pytest.mark.parametrize("option", ["--plots", "--save-heads"])
def test_knn_folders_on_the_cache_are_refused(work, tmp_path, option):
    before = snapshot(work["cache"])
    refused(knn(work, "--metrics", str(tmp_path / "m.json"), option, str(work["cache"])),
            f"{option} {work['cache']} is --cache")
    assert snapshot(work["cache"]) == before and not (tmp_path / "m.json").exists()


def test_knn_folder_holding_the_cache_is_refused(work, tmp_path):
    before = snapshot(work["cache"])
    refused(knn(work, "--metrics", str(tmp_path / "m.json"), "--plots", str(work["root"])), "holds", "--cache")
    assert snapshot(work["cache"]) == before


def test_knn_save_heads_inside_a_cache_split_is_refused(work, tmp_path):
    """A folder inside the cache (a split group): refused whatever it is called."""
    inside = work["cache"] / "train" / "heads"
    refused(knn(work, "--metrics", str(tmp_path / "m.json"), "--save-heads", str(inside)), "lies inside")
    assert not inside.exists()


def test_the_dot_dot_spelling_of_the_cache_is_refused(work, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spelled = os.path.relpath(work["cache"])  # ../../outputs0/cache.zarr
    assert ".." in spelled
    before = snapshot(work["cache"])
    refused(knn(work, "--metrics", str(tmp_path / "m.json"), "--plots", spelled),
            f"--plots {spelled}", f"that is, {work['cache']}", "--cache")
    sneaky = str(work["cache"] / "train" / ".." / "m.json")
    refused(knn(work, "--metrics", sneaky), "--metrics", "--cache")
    assert snapshot(work["cache"]) == before


def test_knn_metrics_on_params_yaml_is_refused(work):
    before = snapshot(REPO / "params.yaml")
    refused(knn(work, "--metrics", str(REPO / "params.yaml")), "params.yaml", "the project's")
    assert snapshot(REPO / "params.yaml") == before


def test_knn_metrics_inside_another_feature_cache_is_refused(work, synthetic_cache, tmp_path):
    """Not the cache read: any folder with a zarr.json up the path."""
    before = snapshot(synthetic_cache.path)
    out = Path(synthetic_cache.path) / "train" / "m.json"
    refused(knn(work, "--metrics", str(out)), "the feature cache", str(synthetic_cache.path))
    assert snapshot(synthetic_cache.path) == before


# --- python -m pipeline.cache, pipeline.extract, stages.plume_ablation ------------------------

def test_export_onto_the_caches_zarr_json_is_refused(work):
    before = snapshot(work["cache"])
    target = work["cache"] / "zarr.json"
    refused(CliRunner().invoke(cache_cli, ["export-hdf5", str(work["cache"]), str(target)]),
            f"HDF5_PATH {target}", "CACHE_PATH")
    assert snapshot(work["cache"]) == before


def test_export_onto_another_caches_zarr_json_is_refused(work, synthetic_cache):
    target = Path(synthetic_cache.path) / "zarr.json"
    before = snapshot(target)
    refused(CliRunner().invoke(cache_cli, ["export-hdf5", str(work["cache"]), str(target)]), "the feature cache")
    assert snapshot(target) == before


def test_extract_out_inside_a_cache_or_the_data_directory_is_refused(work, tmp_path):
    before = snapshot(work["cache"])
    common = ["--dataset", "synthetic", "--image-size", "32", "--workers", "0", "--views", "0"]
    out = work["cache"] / "nested.zarr"
    refused(CliRunner().invoke(extract_cli, [*common, "--out", str(out)]), "the feature cache", work["cache"])
    assert snapshot(work["cache"]) == before
    out = work["images"] / "c.zarr"
    refused(CliRunner().invoke(extract_cli, [*common, "--data-dir", str(work["images"]), "--out", str(out)]),
            "lies inside --data-dir")
    assert not out.exists()


def test_plume_ablation_table_on_the_knn_metrics_is_refused(work, tmp_path):
    knn_metrics = tmp_path / "knn.json"
    knn_metrics.write_text("{}")
    result = CliRunner().invoke(ablation_cli, ["--cache", str(work["cache"]), "--knn-metrics", str(knn_metrics),
                                               "--metrics", str(tmp_path / "m.json"), "--table", str(knn_metrics),
                                               "--device", "cpu"])
    refused(result, f"--table {knn_metrics} is --knn-metrics")
    assert knn_metrics.read_text() == "{}" and not (tmp_path / "m.json").exists()
