"""Every parameter declared once (``pipeline.declare``): the class defaults are what ``dvc
repro`` runs with the committed params.yaml, every option and params.yaml key comes from a
declaration, a malformed params.yaml is one clear error through the real commands, and a new
head needs only its folder and one registry name."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from pipeline import params
from pipeline.declare import Spec, defaults, specs
from pipeline.errors import PipelineError
from pipeline.heads.registry import HEADS, head_class, settings_module

REPO = Path(__file__).resolve().parents[1]
PROJECT = yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.mark.parametrize("name", HEADS)
def test_a_head_built_with_no_arguments_is_what_dvc_repro_runs(name: str) -> None:
    """The committed params.yaml restates the class defaults: the same value for every key."""
    section = params.check_params(PROJECT, "params.yaml")[name]
    head = head_class(name)()
    module = settings_module(name)
    run_defaults = defaults(module.RUN) if getattr(module, "RUN", None) else {}
    stage_defaults = defaults(params.StageParams)
    differ = {}
    for key, value in section.items():
        expected = getattr(head, key) if key in specs(module.PARAMS) else {**run_defaults, **stage_defaults}[key]
        spec = params.section_specs(name)[key]
        if spec.check(expected, key) != value:
            differ[key] = (expected, value)
    assert not differ, f"{name}: class default != params.yaml: {differ}"


@pytest.mark.parametrize("name", HEADS)
def test_every_declared_parameter_has_help_and_a_valid_default(name: str) -> None:
    for key, spec in params.section_specs(name).items():
        assert isinstance(spec, Spec) and len(spec.help) > 10, f"{name}.{key} has no help"
    presets = settings_module(name).PARAMS.PRESETS
    for preset in presets:
        head = head_class(name).preset(preset)
        head._check_params()  # a preset is a valid configuration


def test_params_yaml_sections_and_keys_are_the_declared_ones() -> None:
    checked = params.check_params(PROJECT, "params.yaml")
    assert set(checked) == set(PROJECT)


# --- strict configuration, through the real commands ------------------------------------------

def _params_with(tmp_path: Path, change) -> Path:
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    change(data)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run(module: str, args: list[str], params_file: Path | str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "FFAD_PARAMS": str(params_file), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True)


CASES = [
    ("misspelt key", lambda d: d["knn"].update(kk=3), "unknown key 'kk' in section knn. Did you mean k?"),
    ("bool for an int", lambda d: d["knn"].update(k=True), "k must be an integer"),
    ("float for an int", lambda d: d["knn"].update(k=2.7), "not 2.7"),
    ("null for an int", lambda d: d["knn"].update(k=None), "k must be an integer"),
    ("unknown section", lambda d: d.update(knnn={"k": 2}), "unknown section 'knnn'. Did you mean knn?"),
    ("misspelt key elsewhere", lambda d: d["plume"].update(epochz=3), "unknown key 'epochz' in section plume"),
    ("out of range", lambda d: d["knn"].update(threshold_quantile=1.5), "threshold_quantile must be"),
    ("a section that is not a mapping", lambda d: d.update(shift="none"), "section shift must be a mapping"),
]


@pytest.mark.parametrize("what,change,message", CASES, ids=[c[0] for c in CASES])
def test_a_malformed_params_yaml_is_one_clear_error_before_anything_is_written(
        tmp_path: Path, what: str, change, message: str) -> None:
    result = _run("stages.knn", ["--cache", str(tmp_path / "none.zarr"), "--metrics", str(tmp_path / "m.json")],
                  _params_with(tmp_path, change), tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert message in result.stderr and result.stderr.count("Error:") == 1, result.stderr
    assert not (tmp_path / "m.json").exists()


def test_lists_are_accepted_where_a_list_is_meant_and_a_scalar_class_index_too() -> None:
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["knn"]["classes"] = [0, "cat"]
    data["plume"]["seeds"] = [1, 2]
    data["anomem"]["classes"] = 1
    checked = params.check_params(data, "p.yaml")
    assert checked["knn"]["classes"] == ("0", "cat")
    assert checked["plume"]["seeds"] == (1, 2)
    assert checked["anomem"]["classes"] == ("1",)


@pytest.mark.parametrize("given", ["missing", "folder"])
def test_ffad_params_naming_no_file_is_an_error(tmp_path: Path, given: str) -> None:
    target = tmp_path / "nothing.yaml" if given == "missing" else tmp_path
    result = _run("stages.knn", ["--cache", str(tmp_path / "none.zarr")], target, tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"FFAD_PARAMS names {target}" in result.stderr


def test_an_option_is_checked_as_params_yaml_is(tmp_path: Path) -> None:
    result = _run("stages.knn", ["--cache", str(tmp_path), "--k", "2.5"], REPO / "params.yaml", tmp_path)
    assert result.returncode == 2 and "k must be an integer >= 1" in result.stderr


# --- a new head: its folder and one registry name ---------------------------------------------

TOY_SETTINGS = '''
"""The toy head's parameters."""
from dataclasses import dataclass

from pipeline.declare import param
from pipeline.heads.settings import HeadParams


@dataclass(eq=False, repr=False, kw_only=True)
class ToyParams(HeadParams):
    power: int = param(2, "Score = the distance to the training mean, to this power.", low=1, report="power {}")


PARAMS = ToyParams
'''

TOY_HEAD = '''
"""Toy head: distance to the mean of the normal training features."""
from dataclasses import dataclass

import numpy as np

from pipeline.heads.base import Features, Head
from pipeline.heads.toy.settings import ToyParams


@dataclass(eq=False, repr=False, kw_only=True)
class ToyHead(ToyParams, Head):
    name = "toy"

    def _fit(self, features, labels, callback):
        self.mean_ = np.asarray(Features.of(features).pooled, dtype=np.float64).mean(axis=0)

    def score_samples(self, features):
        pooled = np.asarray(Features.of(features).pooled, dtype=np.float64)
        return np.linalg.norm(pooled - self.mean_, axis=1) ** self.power


HEAD = ToyHead
'''


def test_a_new_head_needs_its_folder_and_one_registry_name(tmp_path: Path, synthetic_cache, monkeypatch) -> None:
    """A toy head in a folder of its own: ``ffad toy`` runs it with the generic stage runner,
    its option comes from its declaration, params.yaml may hold its section, and the metrics
    carry its settings in words."""
    import json

    import pipeline.heads
    from pipeline import console
    from pipeline.heads import registry

    folder = tmp_path / "heads" / "toy"
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("")
    (folder / "settings.py").write_text(textwrap.dedent(TOY_SETTINGS))
    (folder / "head.py").write_text(textwrap.dedent(TOY_HEAD))
    monkeypatch.setattr(pipeline.heads, "__path__", [*pipeline.heads.__path__, str(tmp_path / "heads")])
    monkeypatch.setattr(registry, "HEADS", (*registry.HEADS, "toy"))
    monkeypatch.setattr(params, "HEADS", registry.HEADS)
    monkeypatch.setattr(console, "HEADS", registry.HEADS)
    monkeypatch.setitem(console.COMMANDS, "toy", ("pipeline.commands.toy:main", "toy"))
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["toy"] = {"power": 3}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv("FFAD_PARAMS", str(tmp_path / "params.yaml"))
    params._load.cache_clear()
    runner = CliRunner()
    help_text = runner.invoke(console.main, ["toy", "--help"]).output
    assert "--power INTEGER" in help_text and "[default: 3]" in help_text
    metrics = tmp_path / "toy.json"
    result = runner.invoke(console.main, ["toy", "--cache", str(synthetic_cache.path), "--metrics", str(metrics),
                                          "--power", "1"])
    assert result.exit_code == 0, result.output
    about = json.loads(metrics.with_suffix(".about.json").read_text())["about"] if metrics.with_suffix(
        ".about.json").exists() else json.loads(metrics.read_text())["about"]
    assert about["head"] == "toy" and about["power"] == 1
    assert about["setting_words"] == {"power": "power 1"}
    params._load.cache_clear()


def test_the_declared_check_refuses_what_the_old_code_coerced() -> None:
    spec = params.section_specs("knn")["k"]
    for bad in (True, 2.7, None, "2"):
        with pytest.raises(PipelineError):
            spec.check(bad, "k")
    assert spec.check(3, "k") == 3


@pytest.mark.parametrize("name", ["plume", "anomem", "igd", "classical_ocsvm", "knn"])
def test_older_metrics_files_get_the_words_the_stage_writes(tmp_path: Path, name: str) -> None:
    """describe_metrics gives a metrics file written before setting_words the same words the
    head stage writes today (the committed metrics/ files are the stage's own output)."""
    import json
    import shutil

    from pipeline.commands.describe_metrics import describe_file

    source = REPO / "metrics" / f"{name}_efficientnet_lite0.json"
    shutil.copy(source, tmp_path / source.name)
    sidecar = json.loads(source.with_name(source.stem + ".about.json").read_text())
    written = sidecar["about"].pop("setting_words")
    (tmp_path / f"{source.stem}.about.json").write_text(json.dumps(sidecar))
    assert describe_file(tmp_path / source.name)
    described = json.loads((tmp_path / f"{source.stem}.about.json").read_text())["about"]["setting_words"]
    assert described == written
    assert not describe_file(tmp_path / source.name)  # already described: left alone
