"""params.yaml and the options made from the declared parameters (``pipeline.declare``,
``pipeline.params``, ``pipeline.commands.options``): the real commands, run on the project's
params.yaml with one change (``FFAD_PARAMS``), stop on a bad value with one ``Error:`` line that
names it, no traceback and nothing written; a good value in another form gets through; a value
given on the command line is checked as params.yaml's is."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from pipeline import params

REPO = Path(__file__).resolve().parents[1]


def project_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def params_file(tmp_path: Path, change: Callable[[dict], Any]) -> Path:
    """The project's params.yaml with ``change`` applied, in a folder of its own."""
    data = project_params()
    change(data)
    folder = tmp_path / "params"
    folder.mkdir()
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_extract(tmp_path: Path, params_path: Path | str, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    """``python -m pipeline.extract`` in an empty folder (where its default --out would go),
    reading ``params_path``; the folder is returned to check that nothing was written."""
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run([sys.executable, "-m", "pipeline.extract", *args], cwd=work, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "FFAD_PARAMS": str(params_path)})
    return done, work


def one_error(done: subprocess.CompletedProcess) -> str:
    """The run's only ``Error:`` line; no traceback."""
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, done.stderr
    return errors[0]


def set_key(section: str, key: str, value: Any) -> Callable[[dict], None]:
    return lambda data: data[section].__setitem__(key, value)


def test_the_project_params_yaml_is_accepted():
    checked = params.check_params(project_params(), REPO / "params.yaml")
    assert checked["preprocess"]["image_size"] == 224 and checked["extract"]["severities"] == (1, 2, 3, 4, 5)


@pytest.mark.parametrize("change, words", [
    (lambda data: data["extract"].__setitem__("batch_sise", 64), ["unknown key 'batch_sise' in section extract",
                                                                   "batch_size"]),
    (set_key("preprocess", "image_size", 32.9), ["section preprocess", "image_size must be an integer", "32.9"]),
    (set_key("preprocess", "image_size", True), ["section preprocess", "image_size must be an integer", "True"]),
    (set_key("dataset", "download", "yes"), ["section dataset", "download must be true or false", "'yes'"]),
    (lambda data: data.__setitem__("extrakt", {"views": 2}), ["unknown section 'extrakt'", "extract"]),
], ids=["misspelt key", "image_size 32.9", "image_size true", "download 'yes'", "unknown section"])
def test_a_bad_params_yaml_stops_the_command_with_one_message(tmp_path, change, words):
    path = params_file(tmp_path, change)
    done, work = run_extract(tmp_path, path, "--dataset", "synthetic")
    assert done.returncode == 1
    error = one_error(done)
    assert str(path) in error
    for word in words:
        assert word in error, error
    assert list(work.iterdir()) == [] and list(path.parent.iterdir()) == [path]


@pytest.mark.parametrize("what", ["missing", "a folder"])
def test_ffad_params_must_name_a_file(tmp_path, what):
    given = tmp_path / "nothing.yaml"
    if what == "a folder":
        given.mkdir()
    done, work = run_extract(tmp_path, given, "--dataset", "synthetic")
    assert done.returncode == 1
    error = one_error(done)
    assert f"FFAD_PARAMS names {given}, which is {what}" in error
    assert list(work.iterdir()) == []


def test_a_yaml_list_of_severities_is_accepted(tmp_path):
    path = params_file(tmp_path, set_key("extract", "severities", [1, 3]))
    data = tmp_path / "data"
    data.mkdir()
    # -v prints the settings the command received; --out on the data is refused after the
    # check of params.yaml, before any work.
    done, work = run_extract(tmp_path, path, "-v", "--dataset", "imagefolder", "--data-dir", str(data),
                             "--out", str(data))
    assert "severities=(1, 3)" in done.stderr, done.stderr
    assert "a feature cache is never written there" in one_error(done)
    assert list(work.iterdir()) == [] and list(data.iterdir()) == []


def test_a_command_line_value_is_checked_as_params_yaml_s(tmp_path):
    done, work = run_extract(tmp_path, REPO / "params.yaml", "--image-size", "32.9")
    assert done.returncode == 2
    assert "image_size must be an integer >= 16 and <= 1024, not '32.9'" in one_error(done)
    assert list(work.iterdir()) == []
