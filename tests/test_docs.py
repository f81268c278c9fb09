"""The README and the documentation site stay true: the site builds with warnings as errors (a
broken link or anchor fails), every command and option their code blocks show exists, and the
generated parts (results pages, HTML report, the README's table and summary, the heads' option
tables, the index of results/) are what ``python -m pipeline.docs`` writes from the metrics
files today. (The Python examples run in tests/test_head_contract.py.)"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def pages() -> list[Path]:
    """The README and every hand-written docs page (the generated results pages are checked by
    being regenerated)."""
    return [REPO / "README.md", *sorted(p for p in DOCS.rglob("*.md") if "results" not in p.relative_to(DOCS).parts)]


def code_blocks(text: str) -> list[str]:
    return re.findall(r"^ *```(?:bash|sh|)\n(.*?)^ *```", text, flags=re.M | re.S)


def command_lines(block: str) -> list[str]:
    """Shell lines of a code block, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    lines = []
    for line in joined.splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            lines.extend(part.strip() for part in re.split(r"&&|;|\bdo\b|\bthen\b", line))
    return lines


# `python -m <module>` -> the ffad command it is
MODULES = {"pipeline.extract": "extract", "pipeline.cache": "cache", "pipeline.report": "report",
           "stages.score": "score", "stages.plume_ablation": "plume-ablation"}


def invoked(line: str) -> tuple[str, list[str]] | None:
    """(ffad command name, its arguments) of a line running one of the project's commands."""
    try:
        words = shlex.split(line)
    except ValueError:
        return None
    for i, word in enumerate(words):
        if word == "ffad" and i + 1 < len(words):
            return words[i + 1], words[i + 2:]
        if word == "-m" and i + 1 < len(words) and words[i - 1].startswith("python"):
            module = words[i + 1]
            name = MODULES.get(module) or (module.split(".", 1)[1] if module.startswith("stages.") else None)
            return (name, words[i + 2:]) if name else None
    return None


def test_every_command_and_option_the_docs_show_exists():
    from pipeline.console import COMMANDS, main

    ctx = click.Context(main)
    checked, wrong = 0, []
    for page in pages():
        for block in code_blocks(page.read_text()):
            for line in command_lines(block):
                found = invoked(line)
                if found is None:
                    continue
                name, args = found
                if name not in COMMANDS:
                    wrong.append(f"{page.name}: unknown command {name!r} in: {line}")
                    continue
                command = main.get_command(ctx, name)
                if isinstance(command, click.Group) and args and not args[0].startswith("-"):
                    command = command.get_command(ctx, args[0]) or command
                options = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
                options |= {"--help", "-h"}
                for arg in args:
                    if arg.startswith("--") and "$" not in arg:
                        checked += 1
                        if arg.split("=", 1)[0] not in options:
                            wrong.append(f"{page.relative_to(REPO)}: {name} has no option {arg.split('=', 1)[0]} "
                                         f"in: {line}")
    assert checked > 100, checked
    assert not wrong, "\n".join(wrong)


def test_the_generated_parts_are_current():
    """Checked against the committed metrics files: after a local run changed them (dvc repro on
    another machine can round differently), the pages follow only once regenerated."""
    from pipeline.docs import orphans, read_config, render, stale

    local = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "metrics", "results"],
                           cwd=REPO, capture_output=True, text=True)
    if local.returncode == 0 and local.stdout.strip():
        pytest.skip("metrics files differ from the commit (a local run): python -m pipeline.docs docs/results.yaml "
                    "writes the pages from them")

    config = read_config(DOCS / "results.yaml")
    files = render(config)
    old = [str(p.relative_to(REPO)) for p in stale(files) + orphans(config, files)]
    assert not old, f"not current: {old}; run: python -m pipeline.docs docs/results.yaml"


def test_the_readme_is_a_short_read():
    readme = (REPO / "README.md").read_text()
    assert len(readme.encode()) <= 15_000
    assert max(len(line) for line in readme.splitlines() if not line.startswith("|")) <= 300


def test_the_readme_commands_are_what_ci_runs():
    """The README's two commands: the set-up-and-run line, and the test line .ci/run runs."""
    readme, ci = (REPO / "README.md").read_text(), (REPO / ".ci" / "run").read_text()
    blocks = code_blocks(readme)
    assert blocks[0].strip() == ("python3 -m venv .venv && . .venv/bin/activate && pip install -e . && dvc repro "
                                 "&& ffad report summary metrics --params params.yaml")
    assert blocks[1].strip() in ci.splitlines()


def test_the_site_builds_without_a_warning(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    warnings = [line for line in result.stderr.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert result.returncode == 0 and not warnings, result.stderr[-3000:]
    assert (tmp_path / "site" / "results" / "report.html").is_file()
    assert time.monotonic() - started < 120
