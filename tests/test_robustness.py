"""The robustness protocol end to end: corrupted test splits in the cache (extraction, resume,
adding to a finished cache), heads scoring them with the state fitted once per class (--shift),
the metrics' shift section, and the report's robustness table and figures."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from cli_results import error_line
from pipeline.extract.command import main as extract_main
from pipeline.store.cache import FeatureCache

SPLITS = ["test@identity@1", "test@identity@5", "test@gaussian_noise@1", "test@gaussian_noise@5", "test@fog@1",
          "test@fog@5"]


def extract_args(out, *more: str) -> list[str]:
    return ["--dataset", "synthetic", "--image-size", "32", "--maps", "none", "--views", "0", "--chunk-rows", "16",
            "--batch-size", "8", "--out", str(out), "-q", *more]


@pytest.fixture(scope="module")
def shifted_cache(tmp_path_factory):
    """Synthetic images at 32 px with identity, gaussian_noise and fog at severities 1 and 5, the
    images corrupted in a DataLoader worker."""
    out = tmp_path_factory.mktemp("robust") / "shifted.zarr"
    result = CliRunner().invoke(extract_main, extract_args(out, "--workers", "1", "--corruptions",
                                                           "identity,gaussian_noise,fog", "--severities", "1,5"))
    assert result.exit_code == 0, result.output
    return FeatureCache.open(out)


# --- extraction ---------------------------------------------------------------------------------

def test_every_corrupted_split_is_a_checked_copy_of_the_test_split(shifted_cache):
    cache = shifted_cache
    assert cache.splits == ["train", "test", *SPLITS] and cache.verify() == []
    clean = cache.features("test")
    for split in SPLITS:
        np.testing.assert_array_equal(cache.labels(split), cache.labels("test"))
        np.testing.assert_array_equal(cache.read(split, "rows"), np.arange(cache.size("test")))
        assert cache.chunk_slices(split) == cache.chunk_slices("test")
        description = cache.split_description(split)
        assert description["constants"] == "cifar10-c" and description["of"] == "test"
        assert description["corruption"] == split.split("@")[1] and description["severity"] == int(split.split("@")[2])
    # The control: the same images in the same batches give the same features, bit for bit.
    np.testing.assert_array_equal(cache.features("test@identity@5"), clean)
    assert cache.split_description("test@identity@1")["control"] is True
    # Real corruptions move the features, more at severity 5.
    moved = {s: np.abs(cache.features(s) - clean).mean() for s in SPLITS[2:]}
    assert 0 < moved["test@gaussian_noise@1"] < moved["test@gaussian_noise@5"]
    assert 0 < moved["test@fog@1"] < moved["test@fog@5"]


def test_corrupted_splits_are_added_to_a_finished_cache_and_resume_after_an_interruption(shifted_cache, tmp_path):
    path = tmp_path / "grow.zarr"
    shutil.copytree(shifted_cache.path, path)
    first_chunk = path / "train" / "features" / "c" / "0" / "0"
    written = first_chunk.stat().st_mtime_ns
    # More corruptions on the finished cache: only the new splits are extracted.
    result = CliRunner().invoke(extract_main, extract_args(path, "--workers", "0", "--corruptions", "contrast,fog",
                                                           "--severities", "5"))
    assert result.exit_code == 0, result.output
    cache = FeatureCache.open(path)
    assert cache.splits == ["train", "test", *SPLITS, "test@contrast@5"] and cache.verify() == []
    assert first_chunk.stat().st_mtime_ns == written
    expected = cache.features("test@contrast@5")
    # An interruption: chunk 1 of the new split never recorded, its rows garbage.
    cache.set_aside("test@contrast@5", {1})
    rows = cache.chunk_slices("test@contrast@5")[1]
    cache.array("test@contrast@5", "features")[rows] = 7.0
    untouched = path / "test@contrast@5" / "features" / "c" / "0" / "0"
    stamp = untouched.stat().st_mtime_ns
    result = CliRunner().invoke(extract_main, extract_args(path, "--workers", "0", "--corruptions", "contrast",
                                                           "--severities", "5"))
    assert result.exit_code == 0, result.output
    resumed = FeatureCache.open(path)
    np.testing.assert_array_equal(resumed.features("test@contrast@5"), expected)  # the same draws, bit for bit
    assert untouched.stat().st_mtime_ns == stamp and resumed.verify() == []


def test_a_subset_per_class_holds_the_drawn_rows_and_their_labels(tmp_path):
    out = tmp_path / "subset.zarr"
    result = CliRunner().invoke(extract_main, extract_args(out, "--workers", "0", "--corruptions", "brightness",
                                                           "--severities", "3", "--corrupt-per-class", "4"))
    assert result.exit_code == 0, result.output
    cache = FeatureCache.open(out)
    rows = cache.read("test@brightness@3", "rows")
    assert len(rows) == 12 and np.all(np.diff(rows) > 0) and cache.size("test") == 36
    np.testing.assert_array_equal(np.bincount(cache.labels("test@brightness@3")), [4, 4, 4])
    np.testing.assert_array_equal(cache.labels("test@brightness@3"), cache.labels("test")[rows])
    assert cache.split_description("test@brightness@3")["per_class"] == 4
    # Asked for again with another subset: refused without --overwrite, named.
    again = CliRunner().invoke(extract_main, extract_args(out, "--workers", "0", "--corruptions", "brightness",
                                                          "--severities", "3", "--corrupt-per-class", "5"))
    assert "already has the split test@brightness@3, made differently" in error_line(again)


def test_unknown_corruptions_and_severities_are_refused_with_the_valid_ones(tmp_path):
    result = CliRunner().invoke(extract_main, extract_args(tmp_path / "x.zarr", "--corruptions", "fogg"))
    assert result.exit_code == 2 and "gaussian_noise" in result.output and "identity" in result.output
    result = CliRunner().invoke(extract_main, extract_args(tmp_path / "x.zarr", "--corruptions", "fog",
                                                           "--severities", "0,6"))
    assert result.exit_code == 2 and "1 to 5" in result.output
    assert not (tmp_path / "x.zarr").exists()


def test_an_edited_description_of_a_corrupted_split_is_detected(shifted_cache, tmp_path):
    import json

    from pipeline.errors import PipelineError

    path = tmp_path / "edited.zarr"
    shutil.copytree(shifted_cache.path, path)
    node = json.loads((path / "zarr.json").read_text())
    node["attributes"]["split_metadata"]["test@fog@5"]["severity"] = 3
    (path / "zarr.json").write_text(json.dumps(node))
    with pytest.raises(PipelineError, match="descriptions of its derived splits"):
        FeatureCache.open(path)
