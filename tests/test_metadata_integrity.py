"""A cache's metadata is covered by a checksum like its chunks: an edited class list (or any other
edit of zarr.json's metadata) is reported by verify and refused by the heads; caches made before
the checksum existed stay readable, with a note."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
from click.testing import CliRunner

from pipeline.commands.knn import main as knn_cli
from pipeline.store.cache import FeatureCache
from pipeline.store.command import main as cache_cli

from cli_results import error_line


def imported_cache(tmp_path: Path, classes=("good", "bad")) -> Path:
    rng = np.random.default_rng(0)
    source = tmp_path / "features.h5"
    with h5py.File(source, "w") as f:
        for split, n in (("train", 12), ("test", 8)):
            f[f"{split}/features"] = rng.normal(size=(n, 4)).astype(np.float32)
            f[f"{split}/labels"] = np.arange(n) % len(classes)
        f.attrs["classes"] = json.dumps(list(classes))
    result = CliRunner().invoke(cache_cli, ["import-hdf5", str(source), str(tmp_path / "c.zarr")])
    assert result.exit_code == 0, result.output
    return tmp_path / "c.zarr"


def edit_attributes(cache: Path, change) -> None:
    node = json.loads((cache / "zarr.json").read_text())
    change(node["attributes"])
    (cache / "zarr.json").write_text(json.dumps(node, indent=2))


def test_an_edited_class_list_is_reported_by_verify_and_refused_by_the_heads(tmp_path):
    cache = imported_cache(tmp_path)
    runner = CliRunner()
    # The order of the keys in zarr.json does not count as an edit.
    edit_attributes(cache, lambda a: a.update(metadata=dict(reversed(list(a["metadata"].items())))))
    result = runner.invoke(cache_cli, ["verify", str(cache)])
    assert result.exit_code == 0 and "metadata as made" in result.output, result.output
    edit_attributes(cache, lambda a: a["metadata"]["dataset"].update(classes=["bad", "good"]))

    result = runner.invoke(cache_cli, ["verify", str(cache)])
    message = error_line(result)
    assert "metadata: its metadata does not match the checksum" in result.output
    assert "--overwrite" in message and "import-hdf5" in message
    # --repair cannot mend metadata: it says so and leaves the cache as it was (complete).
    message = error_line(runner.invoke(cache_cli, ["verify", "--repair", str(cache)]))
    assert "cannot mend" in message
    assert FeatureCache.open(cache, require_complete=False).is_complete

    message = error_line(runner.invoke(knn_cli, ["--cache", str(cache), "--k", "1",
                                                 "--metrics", str(tmp_path / "m.json")]))
    assert str(cache) in message and "does not match the checksum" in message
    assert "--overwrite" in message and "import-hdf5" in message and "original zarr.json" in message
    assert not (tmp_path / "m.json").exists()
    # info still shows it, marked.
    result = runner.invoke(cache_cli, ["info", str(cache)])
    assert result.exit_code == 0 and "EDITED" in result.output


def test_a_cache_made_before_the_metadata_checksum_is_read_with_a_note(tmp_path):
    cache = imported_cache(tmp_path)
    edit_attributes(cache, lambda a: a.pop("metadata_sha256"))
    result = CliRunner().invoke(cache_cli, ["verify", str(cache)])
    assert result.exit_code == 0, result.output
    assert "made before the metadata's checksum was recorded" in result.output
    result = CliRunner().invoke(knn_cli, ["--cache", str(cache), "--k", "1", "--metrics", str(tmp_path / "m.json")])
    assert result.exit_code == 0, result.output


def test_extraction_records_the_checksum_and_will_not_resume_an_edited_cache(synthetic_cache, tmp_path):
    from pipeline.extract.command import main as extract_cli

    cache = tmp_path / "synthetic.zarr"
    shutil.copytree(synthetic_cache.path, cache)
    assert "metadata_sha256" in json.loads((cache / "zarr.json").read_text())["attributes"]
    edit_attributes(cache, lambda a: a["metadata"]["dataset"].update(classes=["class2", "class1", "class0"]))
    assert "metadata: its metadata does not match" in CliRunner().invoke(cache_cli, ["verify", str(cache)]).output
    result = CliRunner().invoke(extract_cli, ["--dataset", "synthetic", "--image-size", "32", "--chunk-rows", "16",
                                              "--batch-size", "8", "--workers", "0", "--maps", "intermediate",
                                              "--map-grid", "2", "--trunk-maps", "--out", str(cache)])
    message = error_line(result)
    assert "made differently" in message and "checksum" in message and "--overwrite" in message
