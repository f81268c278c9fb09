"""DVC dependencies complete by construction: every project file a stage's command imports
(statically, inside functions too, and modules named in strings) lies under one of that
stage's ``deps`` in dvc.yaml, which ``pipeline.commands.dvc_deps`` writes from the imports;
and no import circles, and layers that read one way."""

from __future__ import annotations

import shutil

import pytest
import yaml

from pipeline.commands.dvc_deps import REPO, import_graph, rewritten, uncovered


def test_every_stage_depends_on_every_file_it_imports():
    assert uncovered(REPO) == {}


def test_dvc_yaml_deps_are_what_the_tool_writes():
    """The deps are exactly the imports (no stale file, no missing one): python -m
    pipeline.commands.dvc_deps rewrites them; this fails until it has been run."""
    assert rewritten(REPO) == (REPO / "dvc.yaml").read_text()


def test_the_check_fails_on_a_stage_whose_deps_miss_an_imported_file(tmp_path):
    for item in ("pipeline", "stages", "dvc.yaml"):
        (shutil.copytree if (REPO / item).is_dir() else shutil.copy)(REPO / item, tmp_path / item)
    dvc = yaml.safe_load((tmp_path / "dvc.yaml").read_text())
    dvc["stages"]["knn"]["do"]["deps"].remove("pipeline/heads/knn")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(dvc))
    missing = uncovered(tmp_path)
    assert set(missing) == {"knn"} and "pipeline/heads/knn/head.py" in missing["knn"]
    # A new import in a shared module shows up too (in every stage that imports that module).
    (tmp_path / "pipeline" / "sneaky.py").write_text("X = 1\n")
    with open(tmp_path / "pipeline" / "heads" / "base.py", "a") as f:
        f.write("\n\ndef _late():\n    from pipeline import sneaky\n")
    assert "pipeline/sneaky.py" in uncovered(tmp_path)["plume"]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle found by a depth-first walk (a module importing its own package's
    ``__init__`` is not one: Python runs the package first)."""
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    found = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return found


def test_the_cycle_finder_finds_a_planted_cycle():
    planted = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "x.y": {"x"}, "x": set()}
    assert cycles(planted) == [["a", "b", "c", "a"]]


def test_no_import_circles():
    found = cycles(import_graph(REPO))
    assert not found, "import circles: " + "; ".join(" -> ".join(c) for c in found)


ABOVE_HEADS = ("pipeline.commands", "pipeline.evaluate", "pipeline.report", "pipeline.cli", "pipeline.params",
               "pipeline.protocol", "pipeline.shift", "pipeline.distributed", "pipeline.scoring", "pipeline.console",
               "stages")


@pytest.mark.parametrize("layer,forbidden", [("pipeline.store", ("pipeline.extract", "pipeline.heads", "stages")),
                                             ("pipeline.report", ("pipeline.heads", "pipeline.evaluate",
                                                                  "pipeline.commands", "pipeline.params")),
                                             ("pipeline.heads", ABOVE_HEADS),
                                             ("pipeline.backbones", ("pipeline.extract", "pipeline.heads",
                                                                     "pipeline.store", *ABOVE_HEADS)),
                                             ("pipeline.evaluate", ("pipeline.commands", "pipeline.report", "stages"))])
def test_layers_import_nothing_above_them(layer, forbidden):
    """Layers read one way: commands -> evaluation / report -> heads -> extract / store. The
    store knows no backbone or head; reports read metrics files, not heads; a head package
    imports nothing from the commands, the evaluation, the report or the console helpers
    (directly or through others; the registry's by-name imports aside)."""
    graph = import_graph(REPO)
    for module in (m for m in graph if m == layer or m.startswith(layer + ".")):
        reached, todo = set(), [module]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in reached and nxt != "pipeline.heads.registry":
                    reached.add(nxt)
                    todo.append(nxt)
        assert not [m for m in reached if m.startswith(forbidden)], module


def test_the_torch_free_names_are_the_registries_keys():
    """The extract command offers names from pipeline/extract/names.py (so --help loads no torch)."""
    from pipeline.extract import names
    from pipeline.backbones import BACKBONES
    from pipeline.extract.datasets import DATASETS
    from pipeline.extract.loop import ENGINES, PRECISIONS
    from pipeline.extract.preprocess import INTERPOLATIONS, NORMALISATIONS

    assert names.DATASET_NAMES == tuple(DATASETS) and names.BACKBONE_NAMES == tuple(BACKBONES)
    assert names.INTERPOLATION_NAMES == tuple(INTERPOLATIONS)
    assert names.NORMALISATION_NAMES == tuple(NORMALISATIONS) and names.PRECISION_NAMES == tuple(PRECISIONS)
    assert names.AUTO not in NORMALISATIONS and names.AUTO not in PRECISIONS and names.ENGINE_NAMES == ENGINES


@pytest.mark.parametrize("command", ["extract", "cache", "knn", "plume", "anomem", "gaussian", "classical", "igd",
                                     "panda", "plume-ablation", "score", "report"])
def test_help_loads_no_torch(command):
    """`ffad COMMAND --help` answers without importing torch (seconds on a small machine)."""
    import subprocess
    import sys

    code = ("import sys\nfrom click.testing import CliRunner\nfrom pipeline.console import main\n"
            f"result = CliRunner().invoke(main, [{command!r}, '--help'])\n"
            "assert result.exit_code == 0, result.output\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
