"""dvc.yaml's code dependencies, made from the imports: ``python -m pipeline.commands.dvc_deps``
rewrites each stage's ``deps`` as the files and folders its command imports (statically,
inside functions too, and modules named in strings, as importlib imports them), kept beside
the stage's other deps (caches, metrics folders); ``--check`` only says whether dvc.yaml is
current (tests/test_layout_deps.py runs it). A folder is named whole when the command imports
most of it (``FOLDER_SHARE``)."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import click
import yaml

REPO = Path(__file__).resolve().parents[2]
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




def is_code(dep: str) -> bool:
    return dep.split("/")[0] in PACKAGES


# A folder is named whole when the stage imports at least this share of its modules: a little
# more than the imports (an edit to one of the others re-runs the stage too), much shorter
# (the store, whose modules every head stage imports but the HDF5 and command ones).
FOLDER_SHARE = 2 / 3


def compressed(root: Path, files: set[Path]) -> list[str]:
    """``files`` as dvc.yaml deps, in path order: the outermost folder below the top packages of
    which the stage imports at least ``FOLDER_SHARE`` of the modules, else the file."""
    names = {f.relative_to(root) for f in files}
    chosen: list[str] = []
    for path in sorted(names):
        if any(path.is_relative_to(c) for c in map(Path, chosen)):
            continue
        folder, whole = None, path.parent
        while str(whole) not in PACKAGES and whole != Path("."):
            modules = [m.relative_to(root) for m in (root / whole).rglob("*.py")]
            if sum(m in names for m in modules) >= FOLDER_SHARE * len(modules):
                folder = whole
            whole = whole.parent
        chosen.append(str(folder or path))
    return chosen


def current_deps(root: Path) -> dict[str, list[str]]:
    """Per stage, the deps it should have: its other deps, then its code, compressed."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    wanted = {}
    for name, (module, _) in stage_commands(root).items():
        body = stages[name].get("do", stages[name])
        others = [d for d in body.get("deps", []) if not is_code(d)]
        wanted[name] = others + compressed(root, closure(root, module))
    return wanted


def _flow(deps: list[str], indent: int, width: int = 118) -> list[str]:
    """A YAML flow list, wrapped under its key."""
    out, line = [], " " * indent + "deps: ["
    for i, dep in enumerate(deps):
        quoted = f'"{dep}"' if any(c in dep for c in "{}[],#:") else dep  # flow indicators
        item = quoted + (", " if i < len(deps) - 1 else "]")
        if len(line) + len(item) > width and not line.endswith("["):
            out.append(line.rstrip() + "\n")
            line = " " * (indent + 7)
        line += item
    return out + [line + "\n"]


def rewritten(root: Path) -> str:
    """dvc.yaml's text with every stage's deps as ``current_deps`` says (comments kept)."""
    wanted = current_deps(root)
    lines = (root / "dvc.yaml").read_text().splitlines(keepends=True)
    out, stage, i = [], None, 0
    while i < len(lines):
        line = lines[i]
        match = re.match(r"^  (\w[\w-]*):\s*$", line)
        if match:
            stage = match[1]
        key = re.match(r"^(\s+)deps:", line)
        if key and stage in wanted:
            indent = len(key[1])
            i += 1
            if "[" not in line:  # a block list: skip its items
                while i < len(lines) and re.match(rf"^\s{{{indent},}}- |^\s*#", lines[i]):
                    i += 1
            else:
                while not line.rstrip().endswith("]"):
                    line, i = lines[i], i + 1
            out.extend(_flow(wanted[stage], indent))
            continue
        out.append(line)
        i += 1
    return "".join(out)


@click.command()
@click.option("--check", is_flag=True, help="Only say whether dvc.yaml's deps are current (exit 1 if not).")
def main(check: bool) -> None:
    """Rewrite dvc.yaml's code deps from what each stage's command imports."""
    text = rewritten(REPO)
    if (REPO / "dvc.yaml").read_text() == text:
        click.echo("dvc.yaml: every stage's deps are current.")
        return
    if check:
        click.echo("dvc.yaml's deps are not what the stages import: run python -m pipeline.commands.dvc_deps.")
        sys.exit(1)
    (REPO / "dvc.yaml").write_text(text)
    click.echo("dvc.yaml: deps rewritten from the stages' imports.")


if __name__ == "__main__":
    main()
