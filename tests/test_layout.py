"""The layout's rules, read from the source: no import circles, and a store that knows no
backbone and no head (ARCHITECTURE.md). Every import counts, also those inside functions,
since a lazy import only hides a circle until the day someone moves it to the top."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = ("pipeline", "stages")


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's packages."""
    modules = {}
    for package in PROJECT_PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def imported_modules(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The project modules that the module ``name`` (at ``path``) imports, anywhere in its body."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            # "from a import b" imports the submodule a.b when there is one, else a name of a.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            # "import a.b.c" names a.b.c; keep the longest prefix that is a project module.
            parts = target.split(".")
            while parts and ".".join(parts) not in modules:
                parts.pop()
            if parts and ".".join(parts) != name:
                found.add(".".join(parts))
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imported_modules(path, name, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path a -> ... -> a) through each strongly connected group of modules."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    found = []
    for group in groups:
        start = min(group)
        path, seen = [start], {start}
        while True:  # walk inside the group until the walk comes back on itself
            step = min(t for t in graph[path[-1]] if t in group)
            if step in seen:
                found.append(path[path.index(step):] + [step])
                break
            path.append(step)
            seen.add(step)
    return found


def closure(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in graph[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_the_graph_sees_imports_inside_functions_and_the_package_layout():
    graph = import_graph()
    # stages.score imports the extraction loop inside a function, the extract command the views.
    assert "pipeline.extract.loop" in graph["stages.score"]
    assert "pipeline.extract.views" in graph["pipeline.extract.command"]
    assert graph["pipeline.cache"] == {"pipeline.store.command"}
    assert {"pipeline.store.cache", "pipeline.store.hdf5"} <= graph["pipeline.store.command"]


def test_the_cycle_finder_finds_a_planted_cycle():
    planted = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert cycles(planted) == [["a", "b", "c", "a"]]


def test_no_import_circles_in_pipeline_and_stages():
    found = cycles(import_graph())
    assert not found, "import circles: " + "; ".join(" -> ".join(cycle) for cycle in found)


def test_the_store_imports_nothing_from_extraction_or_heads():
    graph = import_graph()
    for module in (name for name in graph if name == "pipeline.store" or name.startswith("pipeline.store.")):
        reached = closure(graph, module)
        forbidden = sorted(m for m in reached if m.split(".")[:2] in (["pipeline", "extract"], ["pipeline", "heads"])
                           or m.startswith("stages"))
        assert not forbidden, f"{module} imports (directly or through others) {forbidden}"


def test_the_extract_stage_depends_on_every_file_it_imports():
    import yaml

    modules = project_modules()
    graph = import_graph()
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["extract"]["do"]
    deps = [REPO / dep for dep in stage["deps"]]
    entry = "pipeline.extract.__main__"  # what python -m pipeline.extract runs
    needed = {entry} | closure(graph, entry)
    # Importing a module runs the __init__ of every package above it.
    needed |= {".".join(name.split(".")[:i]) for name in needed for i in range(1, name.count(".") + 1)}
    uncovered = sorted(str(modules[name].relative_to(REPO)) for name in needed
                       if not any(modules[name] == dep or dep in modules[name].parents for dep in deps))
    assert not uncovered, f"dvc.yaml's extract stage does not depend on {uncovered}"
