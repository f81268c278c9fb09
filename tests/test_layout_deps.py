"""DVC dependencies complete by construction: every project file a stage's command imports
(statically, inside functions too, and through the head registry's module names) lies under
one of that stage's ``deps`` in dvc.yaml; and no import circles."""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "stages")


def module_file(root: Path, name: str) -> Path | None:
    """The file of a project module or package, or None if ``name`` is not one."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(root: Path, path: Path) -> set[str]:
    """Project modules one file imports: import statements anywhere in it, and string
    constants naming a project module (what importlib imports by name, as the registry does)."""
    package = ".".join(path.relative_to(root).with_suffix("").parts)
    if path.name == "__init__.py":
        package = package.rsplit(".", 1)[0] + ".__init__"
    names: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    # Imports under `if TYPE_CHECKING:` never run.
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and getattr(block.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(block)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:-node.level]
                base = ".".join(parent + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            name = node.value.split(":")[0]
            if re.fullmatch(r"(pipeline|stages)(\.\w+)+", name):
                names.add(name)
                # A package named in a string (the registry's) is imported part by part: all of it.
                folder = root.joinpath(*name.split("."))
                if (folder / "__init__.py").is_file():
                    names.update(".".join(f.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
                                 for f in folder.rglob("*.py"))
    found = set()
    for name in names:
        parts = name.split(".")
        # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
        for i in range(1, len(parts) + 1):
            if module_file(root, ".".join(parts[:i])) is not None:
                found.add(".".join(parts[:i]))
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    graph = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
            graph[name] = imported_modules(root, path) - {name}
    return graph


def closure(root: Path, module: str) -> set[Path]:
    """Every project file that running ``python -m module`` may import."""
    graph, seen, todo = import_graph(root), set(), [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(graph.get(name, ()))
    files = {module_file(root, name) for name in seen if module_file(root, name) is not None}
    main = module_file(root, f"{module}.__main__")  # python -m <package> runs its __main__.py
    return files | ({main} | closure(root, f"{module}.__main__") if main else set())


def stage_commands(root: Path) -> dict[str, tuple[str, list[str]]]:
    """dvc.yaml's stages: name -> (the module its command runs, its deps without templated outputs)."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    found = {}
    for name, stage in stages.items():
        body = stage.get("do", stage)
        match = re.search(r"python -m ([\w.]+)", body["cmd"])
        assert match, f"stage {name} does not run python -m <module>"
        found[name] = (match[1], [d for d in body.get("deps", []) if "${" not in d])
    return found


def uncovered(root: Path) -> dict[str, list[str]]:
    """Per stage, the imported files that none of its deps covers."""
    missing = {}
    for name, (module, deps) in stage_commands(root).items():
        paths = [(root / d).resolve() for d in deps]
        left = sorted(str(f.relative_to(root)) for f in closure(root, module)
                      if not any(f.resolve() == p or p in f.resolve().parents for p in paths))
        if left:
            missing[name] = left
    return missing


def test_every_stage_depends_on_every_file_it_imports():
    assert uncovered(REPO) == {}


def test_the_check_fails_on_a_stage_whose_deps_miss_an_imported_file(tmp_path):
    for item in (*PACKAGES, "dvc.yaml"):
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


@pytest.mark.parametrize("layer,forbidden", [("pipeline.store", ("pipeline.extract", "pipeline.heads", "stages")),
                                             ("pipeline.report", ("pipeline.heads.knn.head", "pipeline.heads.plume.head",
                                                                  "pipeline.heads.anomem.head", "pipeline.evaluate"))])
def test_layers_import_nothing_above_them(layer, forbidden):
    """The store knows no backbone or head (directly or through others); reports read metrics
    files, not heads (the registry's head packages aside, which it imports by name)."""
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
    from pipeline.extract.backbones import BACKBONES
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
