"""Links in image folders, through the real commands (python -m pipeline.extract and
python -m stages.score): links to files are followed, links to folders never are, and a broken
or looping link is refused with its name like an unreadable image (left out with --skip-bad)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline.extract.command import main as extract_cli
from pipeline.scoring import main as score_cli
from pipeline.store.cache import FeatureCache

from cli_results import error_line

EXTRACT = ["--dataset", "imagefolder", "--image-size", "32", "--map-grid", "2", "--chunk-rows", "8", "--batch-size",
           "8", "--workers", "0", "--device", "cpu", "--views", "0"]

# name -> (link inside the folder, its target, words the refusal names)
CASES = {
    "directory loop": ("up", "..", ["up", "a folder holding it", "loop"]),
    "broken link": ("broken.png", "nowhere.png", ["broken.png", "broken link", "nowhere.png"]),
    "self link": ("self.png", "self.png", ["self.png", "loops back to itself"]),
}


def image_folder(root: Path, classes=("a", "b"), per_class: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


def with_links(root: Path, case: str, folder: Path) -> Path:
    """``folder`` (under ``root``) with a link to an image file elsewhere, which is followed, and
    the ``case``'s link, which is not."""
    os.symlink(os.path.relpath(root / "elsewhere.png", folder), folder / "linked.png")
    name, target, _ = CASES[case]
    os.symlink(target, folder / name)
    return folder


@pytest.mark.parametrize("case", list(CASES))
def test_extraction_follows_links_to_files_and_refuses_broken_or_looping_ones(tmp_path, case):
    root = image_folder(tmp_path / "images")
    Image.fromarray(np.full((20, 20, 3), 99, np.uint8)).save(root / "elsewhere.png")
    with_links(root, case, root / "train" / "a")
    runner = CliRunner()

    message = error_line(runner.invoke(extract_cli, [*EXTRACT, "--data-dir", str(root),
                                                     "--out", str(tmp_path / "c.zarr")]))
    for word in CASES[case][2]:
        assert word in message
    assert "train/a/" + CASES[case][0] in message and "--skip-bad" in message
    assert not (tmp_path / "c.zarr").exists()

    result = runner.invoke(extract_cli, [*EXTRACT, "--data-dir", str(root), "--out", str(tmp_path / "c.zarr"),
                                         "--skip-bad"])
    assert result.exit_code == 0, result.output
    cache = FeatureCache.open(tmp_path / "c.zarr")
    # a's three images and the linked one; b's three, none of them twice or under a.
    assert list(cache.labels("train")) == [0, 0, 0, 0, 1, 1, 1]
    assert cache.size("test") == 6
    skipped = cache.metadata["dataset"]["skipped_files"]
    assert len(skipped) == 1 and skipped[0].startswith(f"train: train/a/{CASES[case][0]} (")
    # The content hash reads the linked file: an edit of it makes the cache stale.
    Image.fromarray(np.full((20, 20, 3), 98, np.uint8)).save(root / "elsewhere.png")
    message = error_line(runner.invoke(extract_cli, [*EXTRACT, "--data-dir", str(root), "--skip-bad",
                                                     "--out", str(tmp_path / "c.zarr")]))
    assert "dataset.content_sha256" in message


def test_a_class_folder_that_is_a_link_is_refused_not_followed(tmp_path):
    root = image_folder(tmp_path / "images")
    os.symlink("../train", root / "test" / "c")  # a 'class' holding both classes' training images
    os.symlink("../train", root / "train" / "c")
    message = error_line(CliRunner().invoke(extract_cli, [*EXTRACT, "--data-dir", str(root),
                                                          "--out", str(tmp_path / "c.zarr")]))
    assert "train/c" in message and "test/c" in message and "links to folders are never followed" in message


@pytest.fixture(scope="module")
def saved_head(tmp_path_factory):
    """A kNN head saved by stages.knn from a small image folder's cache."""
    from pipeline.commands.knn import main as knn_cli

    work = tmp_path_factory.mktemp("head")
    root = image_folder(work / "images")
    runner = CliRunner()
    result = runner.invoke(extract_cli, [*EXTRACT, "--data-dir", str(root), "--out", str(work / "c.zarr")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(knn_cli, ["--cache", str(work / "c.zarr"), "--k", "2", "--device", "cpu",
                                     "--metrics", str(work / "m.json"), "--save-heads", str(work / "heads")])
    assert result.exit_code == 0, result.output
    return work / "heads" / "a.head"


@pytest.mark.parametrize("case", list(CASES))
def test_scoring_follows_links_to_files_and_refuses_broken_or_looping_ones(tmp_path, saved_head, case):
    root = tmp_path / "new"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in ("x.png", "sub/y.png"):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / name)
    Image.fromarray(np.full((20, 20, 3), 99, np.uint8)).save(tmp_path / "elsewhere.png")
    os.symlink("../../elsewhere.png", root / "sub" / "linked.png")
    name, target, words = CASES[case]
    os.symlink(target, root / "sub" / name)
    runner = CliRunner()
    args = ["--head", str(saved_head), "--images", str(root), "--out", str(tmp_path / "s.csv"), "--device", "cpu",
            "--workers", "0"]

    message = error_line(runner.invoke(score_cli, args))
    for word in words:
        assert word in message
    assert str(root / "sub" / name) in message and "--skip-bad" in message
    assert not (tmp_path / "s.csv").exists()

    result = runner.invoke(score_cli, [*args, "--skip-bad"])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "s.csv", newline="") as handle:
        scored = [row["path"] for row in csv.DictReader(handle)]
    assert scored == [str(root / "sub" / "linked.png"), str(root / "sub" / "y.png"), str(root / "x.png")]
