"""Fuzz-style: malformed HDF5 files, hand edits of a cache's zarr.json, odd option values and a
read-only cache folder, each through the real commands (import-hdf5, info, verify, stages.knn,
stages.score). Every failure is one ``Error:`` paragraph with exit status 1 and no traceback;
an input that is valid after all goes through with status 0."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.commands.knn import main as knn_cli
from pipeline.scoring import main as score_cli
from pipeline.store.command import main as cache_cli

REPO = Path(__file__).resolve().parents[1]


def outcome(result) -> tuple[int, str | None]:
    """(exit status, what is wrong with how it ended, or None)."""
    output = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return result.exit_code, f"raised {type(result.exception).__name__}: {result.exception}"
    if "Traceback" in output:
        return result.exit_code, "printed a traceback"
    if result.exit_code == 1 and not any(line.startswith("Error: ") for line in output.splitlines()):
        return result.exit_code, f"exit 1 without an Error: line: {output[-300:]!r}"
    return result.exit_code, None


def check(failures: list[str], name: str, result, expected: int) -> bool:
    code, problem = outcome(result)
    if problem or code != expected:
        failures.append(f"{name}: exit {code} (expected {expected}){'; ' + problem if problem else ''}")
        return False
    return True


# --- malformed HDF5 files --------------------------------------------------------------------

def h5_file(path: Path, change: Callable[[h5py.File], None] | None = None, classes=("a", "b")) -> Path:
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        for split, n in (("train", 8), ("test", 6)):
            f[f"{split}/features"] = rng.normal(size=(n, 3)).astype(np.float32)
            f[f"{split}/labels"] = np.arange(n) % 2
        if classes is not None:
            f.attrs["classes"] = json.dumps(list(classes))
        if change is not None:
            change(f)
    return path


def attrs(**values) -> Callable[[h5py.File], None]:
    def change(f):
        for key, value in values.items():
            f.attrs[key] = value
    return change


def replaced(name: str, **dataset) -> Callable[[h5py.File], None]:
    def change(f):
        del f[name]
        f.create_dataset(name, **dataset)
    return change


def as_group(name: str) -> Callable[[h5py.File], None]:
    def change(f):
        del f[name]
        f.create_group(name)
    return change


# (name, change, valid after all)
HDF5_CASES = [
    ("classes not JSON", attrs(classes="a, b"), False),
    ("classes JSON text, not a list", attrs(classes='"ab"'), False),
    ("classes JSON object", attrs(classes='{"a": 0, "b": 1}'), False),
    ("classes JSON number", attrs(classes="2"), False),
    ("classes of numbers", attrs(classes="[0, 1]"), False),
    ("classes of lists", attrs(classes='[["a"], ["b"]]'), False),
    ("classes with null", attrs(classes='["a", null]'), False),
    ("classes an integer attribute", attrs(classes=2), False),
    ("classes repeated", attrs(classes='["a", "a"]'), False),
    ("classes with an empty name", attrs(classes='["a", ""]'), False),
    ("classes empty", attrs(classes="[]"), False),
    ("classes an HDF5 string array", attrs(classes=np.array(["a", "b"], dtype=h5py.string_dtype())), True),
    ("metadata not JSON", attrs(metadata="{oops"), False),
    ("metadata a list", attrs(metadata="[1, 2]"), False),
    ("metadata an integer attribute", attrs(metadata=5), False),
    ("metadata dataset section a number", attrs(metadata='{"dataset": 5}'), False),
    ("metadata dataset section a list", attrs(metadata='{"dataset": ["x"]}'), False),
    ("metadata backbone section a number", attrs(metadata='{"dataset": {"name": "d"}, "backbone": 5}'), False),
    ("metadata preprocessing section a list", attrs(metadata='{"preprocessing": [224]}'), False),
    ("metadata features section text", attrs(metadata='{"features": "pooled"}'), False),
    ("metadata classes text, no classes attribute",
     lambda f: (f.attrs.__delitem__("classes"), attrs(metadata='{"dataset": {"classes": "ab"}}')(f)), False),
    ("metadata classes repeated, no classes attribute",
     lambda f: (f.attrs.__delitem__("classes"), attrs(metadata='{"dataset": {"classes": ["a", "a"]}}')(f)), False),
    ("metadata without a dataset section", attrs(metadata='{"backbone": {"name": "mine"}}'), True),
    ("dataset attribute a number", attrs(dataset=5), False),
    ("backbone attribute an array", attrs(backbone=np.array([1.5, 2.5])), False),
    ("labels float", replaced("train/labels", data=(np.arange(8) % 2).astype(np.float64)), False),
    ("labels 2-D", replaced("train/labels", data=(np.arange(8) % 2).reshape(8, 1)), False),
    ("labels a scalar", replaced("train/labels", data=1), False),
    ("labels text", replaced("train/labels", data=np.array([b"a"] * 8)), False),
    ("labels beyond int64", replaced("train/labels", data=np.full(8, 2**63 + 1, dtype=np.uint64)), False),
    ("labels huge without class names",
     lambda f: (f.attrs.__delitem__("classes"), replaced("train/labels", data=np.full(8, 2**62, dtype=np.int64))(f)),
     False),
    ("features int", replaced("train/features", data=np.ones((8, 3), np.int32)), False),
    ("features text", replaced("train/features", data=np.array([[b"a"] * 3] * 8)), False),
    ("features variable-length strings",
     replaced("train/features", data=np.array([["a"] * 3] * 8, dtype=object), dtype=h5py.string_dtype()), False),
    ("features compound", replaced("train/features", data=np.zeros((8, 3), dtype=[("a", "f4")])), False),
    ("features a group", as_group("train/features"), False),
    ("features with no dimensions", replaced("train/features", data=np.ones((8, 0), np.float32)), False),
    ("features float64 too large for float32", replaced("train/features", data=np.full((8, 3), 1e300)), False),
    ("features float64", replaced("train/features", data=np.ones((8, 3)) + np.arange(8)[:, None]), True),
    ("no test rows", lambda f: (replaced("test/features", data=np.ones((0, 3), np.float32))(f),
                                replaced("test/labels", data=np.zeros(0, np.int64))(f)), False),
]


def test_malformed_hdf5_files_are_refused_cleanly_and_valid_ones_go_through(tmp_path):
    runner, failures = CliRunner(), []
    for i, (name, change, valid) in enumerate(HDF5_CASES):
        source = h5_file(tmp_path / f"{i}.h5", change)
        cache = tmp_path / f"{i}.zarr"
        if not check(failures, f"import-hdf5, {name}", runner.invoke(cache_cli, ["import-hdf5", str(source), str(cache)]),
                     0 if valid else 1):
            continue
        if not valid:
            if cache.exists():
                failures.append(f"import-hdf5, {name}: refused but left {cache}")
            continue
        check(failures, f"info, {name}", runner.invoke(cache_cli, ["info", str(cache)]), 0)
        check(failures, f"verify, {name}", runner.invoke(cache_cli, ["verify", str(cache)]), 0)
        check(failures, f"stages.knn, {name}",
              runner.invoke(knn_cli, ["--cache", str(cache), "--k", "1", "--metrics", str(tmp_path / f"{i}.json")]), 0)
    assert failures == [], "\n".join(failures)


# --- hand edits of a cache's zarr.json ---------------------------------------------------------

def setting(path: str, value=None, delete: bool = False) -> Callable[[dict], None]:
    def change(attributes: dict) -> None:
        keys = path.split(".")
        node = attributes
        for key in keys[:-1]:
            node = node[key]
        if delete:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    return change


STRUCTURE = dict(info=1, verify=1, knn=1, export=1)      # zarr.json unusable: every command refuses
CONTENT = dict(info=0, verify=1, knn=1, export=1)        # usable, but not what the cache was made with

# (name, change, expected exit status per command)
EDITS = [
    ("class list renamed", setting("metadata.dataset.classes", ["b", "a"]), CONTENT),
    ("class list shortened", setting("metadata.dataset.classes", ["a"]), CONTENT),
    ("class list removed", setting("metadata.dataset.classes", delete=True), CONTENT),
    ("class list text", setting("metadata.dataset.classes", "ab"), STRUCTURE),
    ("class list of numbers", setting("metadata.dataset.classes", [0, 1]), STRUCTURE),
    ("class list repeated", setting("metadata.dataset.classes", ["a", "a"]), STRUCTURE),
    ("class name empty", setting("metadata.dataset.classes", ["a", " "]), STRUCTURE),
    ("dataset section removed", setting("metadata.dataset", delete=True), CONTENT),
    ("dataset section text", setting("metadata.dataset", "d"), STRUCTURE),
    ("backbone section text", setting("metadata.backbone", "resnet50"), STRUCTURE),
    ("preprocessing section a list", setting("metadata.preprocessing", [224]), STRUCTURE),
    ("n_train text", setting("metadata.dataset.n_train", "8"), CONTENT),
    ("metadata removed", setting("metadata", delete=True), STRUCTURE),
    ("metadata a list", setting("metadata", [1]), STRUCTURE),
    ("chunk_rows removed", setting("chunk_rows", delete=True), STRUCTURE),
    ("chunk_rows text", setting("chunk_rows", "1024"), STRUCTURE),
    ("chunk_rows zero", setting("chunk_rows", 0), STRUCTURE),
    ("chunk_rows negative", setting("chunk_rows", -5), STRUCTURE),
    ("chunks removed", setting("chunks", delete=True), STRUCTURE),
    ("chunks a list", setting("chunks", [1]), STRUCTURE),
    ("chunks of a split a list", setting("chunks.train", [1]), STRUCTURE),
    ("chunk record text", setting("chunks.train.0", "abc"), STRUCTURE),
    ("chunk number not a number", setting("chunks.train.x", {}), STRUCTURE),
    ("complete text", setting("complete", "no"), STRUCTURE),
    ("metadata checksum a number", setting("metadata_sha256", 5), STRUCTURE),
    ("format_version text", setting("format_version", "1"), STRUCTURE),
    # A cache made before the metadata checksum: read as it is (verify adds a note).
    ("metadata checksum removed", setting("metadata_sha256", delete=True), dict(info=0, verify=0, knn=0, export=0)),
]


def test_hand_edits_of_a_caches_metadata_are_refused_cleanly(tmp_path):
    runner, failures = CliRunner(), []
    good = tmp_path / "good.zarr"
    assert runner.invoke(cache_cli, ["import-hdf5", str(h5_file(tmp_path / "good.h5")), str(good)]).exit_code == 0
    for i, (name, change, expected) in enumerate(EDITS):
        cache = tmp_path / f"{i}.zarr"
        shutil.copytree(good, cache)
        node = json.loads((cache / "zarr.json").read_text())
        change(node["attributes"])
        (cache / "zarr.json").write_text(json.dumps(node, indent=2))
        commands = {"info": (cache_cli, ["info", str(cache)]),
                    "verify": (cache_cli, ["verify", str(cache)]),
                    "knn": (knn_cli, ["--cache", str(cache), "--k", "1", "--metrics", str(tmp_path / f"{i}.json")]),
                    "export": (cache_cli, ["export-hdf5", str(cache), str(tmp_path / f"{i}.h5")])}
        for command, (cli, args) in commands.items():
            check(failures, f"{command}, {name}", runner.invoke(cli, args), expected[command])
    assert failures == [], "\n".join(failures)


# --- option values -------------------------------------------------------------------------------

def test_odd_option_values_are_refused_before_any_work(tmp_path):
    runner, failures = CliRunner(), []
    cache = tmp_path / "c.zarr"
    assert runner.invoke(cache_cli, ["import-hdf5", str(h5_file(tmp_path / "c.h5")), str(cache)]).exit_code == 0
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_folder").mkdir()
    knn = ["--cache", str(cache), "--k", "1", "--metrics", str(tmp_path / "m.json")]
    cases = [
        ("--expect with an empty key", knn_cli, [*knn, "--expect", "=1"]),
        ("--expect with an empty key part", knn_cli, [*knn, "--expect", "dataset..name=x"]),
        ("--expect with a value that is not YAML", knn_cli, [*knn, "--expect", "backbone.name=[x"]),
        ("--classes ','", knn_cli, [*knn, "--classes", ","]),
        ("--classes ''", knn_cli, [*knn, "--classes", ""]),
        ("--metrics a folder", knn_cli, [*knn, "--metrics", str(tmp_path / "a_folder")]),
        ("--metrics under a file", knn_cli, [*knn, "--metrics", str(tmp_path / "a_file" / "m.json")]),
        ("--plots a file", knn_cli, [*knn, "--plots", str(tmp_path / "a_file")]),
        ("--save-heads under a file", knn_cli, [*knn, "--save-heads", str(tmp_path / "a_file" / "heads")]),
        ("import-hdf5 under a file", cache_cli, ["import-hdf5", str(tmp_path / "c.h5"),
                                                 str(tmp_path / "a_file" / "c.zarr")]),
        ("export-hdf5 under a file", cache_cli, ["export-hdf5", str(cache), str(tmp_path / "a_file" / "x.h5")]),
    ]
    for name, cli, args in cases:
        check(failures, name, runner.invoke(cli, args), 1)
    assert not (tmp_path / "m.json").exists()  # refused before the work, not after it

    assert runner.invoke(knn_cli, [*knn, "--save-heads", str(tmp_path / "heads")]).exit_code == 0
    head = str(tmp_path / "heads" / "a.head")

    def features(name: str, change) -> str:
        with h5py.File(tmp_path / name, "w") as f:
            f["features"] = np.ones((3, 3), np.float32)
            change(f)
        return str(tmp_path / name)

    score = ["--head", head, "--out", str(tmp_path / "s.csv")]
    cases = [
        ("score --out under a file", ["--head", head, "--features", features("ok.h5", lambda f: None),
                                      "--out", str(tmp_path / "a_file" / "s.csv")]),
        ("score, metadata not JSON", [*score, "--features", features("m1.h5", attrs(metadata="{x"))]),
        ("score, metadata a list", [*score, "--features", features("m2.h5", attrs(metadata="[1]"))]),
        ("score, backbone section a number", [*score, "--features", features("m3.h5", attrs(metadata='{"backbone": 5}'))]),
        ("score, backbone attribute a number", [*score, "--features", features("m4.h5", attrs(backbone=5))]),
        ("score, /paths 2-D", [*score, "--features", features("p1.h5", lambda f: f.create_dataset(
            "paths", data=np.ones((3, 2))))]),
        ("score, /paths a scalar", [*score, "--features", features("p2.h5", lambda f: f.create_dataset(
            "paths", data=5))]),
    ]
    for name, args in cases:
        check(failures, name, runner.invoke(score_cli, args), 1)
    assert failures == [], "\n".join(failures)


# --- a read-only cache folder ----------------------------------------------------------------------

def read_only(folder: Path) -> Callable[[list[str]], subprocess.CompletedProcess]:
    """A runner of ``python -m ARGS`` that sees ``folder`` read-only: chmod for a normal user; for
    root, whom permissions do not stop, a read-only bind mount in a mount namespace of its own."""
    env = {**os.environ, "PIPELINE_PROGRESS": "0", "PYTHONPATH": str(REPO)}
    if os.geteuid() != 0:
        for path in [folder, *folder.rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
        return lambda args: subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env,
                                           cwd=REPO)
    mount = f"mount --bind -o ro {shlex.quote(str(folder))} {shlex.quote(str(folder))}"
    if subprocess.run(["unshare", "-m", "sh", "-c", mount], capture_output=True).returncode != 0:
        pytest.skip("running as root without the right to mount a folder read-only")
    return lambda args: subprocess.run(["unshare", "-m", "sh", "-c", f"{mount} && exec "
                                        + shlex.join([sys.executable, "-m", *args])],
                                       capture_output=True, text=True, env=env, cwd=REPO)


def test_a_read_only_cache_folder_is_read_and_never_written(tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir()
    runner = CliRunner()
    source = h5_file(tmp_path / "c.h5")
    assert runner.invoke(cache_cli, ["import-hdf5", str(source), str(folder / "c.zarr")]).exit_code == 0
    shutil.copytree(folder / "c.zarr", folder / "damaged.zarr")
    chunk = folder / "damaged.zarr" / "train" / "features" / "c" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-1] + bytes([chunk.read_bytes()[-1] ^ 0xFF]))
    run = read_only(folder)
    cases = [
        # Reading is fine: a head on a read-only cache, writing its metrics elsewhere.
        ("stages.knn on it", ["stages.knn", "--cache", str(folder / "c.zarr"), "--k", "1",
                              "--metrics", str(tmp_path / "m.json")], 0),
        ("verify", ["pipeline.cache", "verify", str(folder / "c.zarr")], 0),
        ("export-hdf5 elsewhere", ["pipeline.cache", "export-hdf5", str(folder / "c.zarr"), str(tmp_path / "e.h5")], 0),
        ("import-hdf5 --overwrite onto it", ["pipeline.cache", "import-hdf5", "--overwrite", str(source),
                                             str(folder / "c.zarr")], 1),
        ("import-hdf5 into it", ["pipeline.cache", "import-hdf5", str(source), str(folder / "new.zarr")], 1),
        ("verify --repair of a damaged chunk", ["pipeline.cache", "verify", "--repair", str(folder / "damaged.zarr")], 1),
        ("export-hdf5 into it", ["pipeline.cache", "export-hdf5", str(folder / "c.zarr"), str(folder / "e.h5")], 1),
        ("stages.knn with --metrics in it", ["stages.knn", "--cache", str(folder / "c.zarr"), "--k", "1",
                                             "--metrics", str(folder / "m.json")], 1),
        ("extraction into it", ["pipeline.extract", "--dataset", "synthetic", "--image-size", "32",
                                "--map-grid", "2", "--out", str(folder / "s.zarr")], 1),
    ]
    failures = []
    for name, args, expected in cases:
        result = run(args)
        output = result.stdout + result.stderr
        errors = [line for line in output.splitlines() if line.startswith("Error: ")]
        if result.returncode != expected or "Traceback" in output or (expected == 1 and len(errors) != 1):
            failures.append(f"{name}: exit {result.returncode} (expected {expected}): {output[-400:]}")
        elif expected == 1 and "read-only" not in errors[0]:
            failures.append(f"{name}: the message does not say the place is read-only: {errors[0]}")
    assert failures == [], "\n".join(failures)
    assert sorted(p.name for p in folder.iterdir()) == ["c.zarr", "damaged.zarr"]
