"""What a study folder under ``results/`` holds and how it was made: its ``manifest.json``.

A manifest records the command, the commit, the date, the machine and what the study measured,
so that a folder says what it is without the README or the history. The tool that makes a folder
writes it; any command can be recorded so::

    python -m pipeline.manifest record results/my_study --what "kNN on ..." -- \\
        python -m stages.knn --cache ... --metrics results/my_study/knn.json

which runs the command, then adds a run to ``results/my_study/manifest.json`` (the command, its
exit status and wall time, the commit and whether the work tree had changes, the date, the
machine). ``python -m pipeline.manifest index`` writes ``results/README.md``, the index of every
study folder and file; ``python -m pipeline.docs`` gives the same index to the documentation
(``docs/results/studies.md``). Manifests of folders made before manifests existed were written
from the git history (the commit and date that added the folder, the command the README stated)
and say so: ``"reconstructed": true``.

Torch-free and light: the index is built in CI's docs test."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

NAME = "manifest.json"
LOOSE = "files.manifest.json"  # the entries of the files lying directly in results/
FORMAT = 1
KEYS = ("what", "tool", "runs", "reconstructed", "note", "renamed_from")


def _git(*args: str, cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def machine() -> str:
    """The machine in words: CPU model, cores, GPU if torch is already loaded and sees one."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    words = f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        words += f", GPU {torch.cuda.get_device_name(0)}"
    try:
        words += f", load average {os.getloadavg()[0]:.2f} at the start"
    except OSError:
        pass
    return words


def run_record(command: list[str] | str, *, root: Path | None = None, status: int | None = None,
               seconds: float | None = None, started: datetime | None = None) -> dict[str, Any]:
    root = root or Path.cwd()
    commit = _git("rev-parse", "--short=12", "HEAD", cwd=root)
    dirty = _git("status", "--porcelain", "--untracked-files=no", cwd=root)
    record: dict[str, Any] = {
        "command": command if isinstance(command, str) else shlex.join(command),
        "commit": commit, "work_tree_changed": bool(dirty) if dirty is not None else None,
        "date": (started or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
    }
    if status is not None:
        record["exit_status"] = status
    if seconds is not None:
        record["wall_seconds"] = round(seconds, 1)
    return record


def read(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise PipelineError(f"cannot read {path} as a manifest: {error}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("what"), str) \
            or not isinstance(data.get("runs"), list):
        raise PipelineError(f"{path} is not a manifest (format {FORMAT}, 'what' and a list of 'runs').")
    return data


def write(folder: str | Path, what: str, run: dict[str, Any], tool: str = "", **extra: Any) -> Path:
    """Add ``run`` to ``folder``'s manifest (made if missing; ``what`` replaces the old words)."""
    from pipeline.files import write_text

    folder = Path(folder)
    path = folder / NAME
    data = read(path) if path.is_file() else {"format": FORMAT, "what": what, "tool": tool, "runs": []}
    data["what"] = what or data["what"]
    if tool:
        data["tool"] = tool
    data.update(extra)
    data["runs"].append(run)
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return path


# --- the index ---------------------------------------------------------------------------------

def committed(results: Path) -> set[str] | None:
    """The names directly under ``results`` that git tracks (a folder: any file in it), or None
    outside a git work tree: the index describes what a clone holds, not a run still going on."""
    listed = _git("ls-files", "-z", "--", ".", cwd=results)
    if listed is None:
        return None
    return {name.split("/", 1)[0] for name in listed.split("\0") if name}


def entries(results: Path) -> list[tuple[str, dict[str, Any] | None]]:
    """(name, manifest or None) for every folder under ``results`` and every loose file's entry."""
    tracked = committed(results)
    shown = [p for p in sorted(results.iterdir()) if tracked is None or p.name in tracked]
    found: list[tuple[str, dict[str, Any] | None]] = []
    for folder in (p for p in shown if p.is_dir()):
        found.append((folder.name + "/", read(folder / NAME) if (folder / NAME).is_file() else None))
    loose = results / LOOSE
    listed = json.loads(loose.read_text()) if loose.is_file() else {}
    for file in (p for p in shown if p.is_file() and p.name not in (LOOSE, "README.md")):
        found.append((file.name, listed.get(file.name)))
    return found


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def index_markdown(results: Path, link: str = "") -> str:
    """The index of ``results``: one row per study folder or file, from the manifests."""
    rows, missing = [], []
    for name, data in entries(results):
        if data is None:
            missing.append(name)
            continue
        runs = data.get("runs", [])
        first = runs[0] if runs else {}
        made = (f"{first.get('date', '?')[:10]}, {first.get('commit') or '?'}"
                + (" (reconstructed)" if data.get("reconstructed") else ""))
        commands = "<br>".join(f"`{_cell(r.get('command', ''))}`" for r in runs[:3])
        if len(runs) > 3:
            commands += f"<br>... {len(runs) - 3} more in its manifest"
        renamed = f" (was `{data['renamed_from']}`)" if data.get("renamed_from") else ""
        rows.append(f"| `{link}{name}`{renamed} | {_cell(data['what'])} | {commands} | {made} | "
                    f"{_cell(first.get('machine', ''))} |")
    lines = ["| Folder or file | What it measured | Command | Made (date, commit) | Machine |",
             "|---|---|---|---|---|", *rows]
    if missing:
        lines += ["", "Without a manifest yet: " + ", ".join(f"`{link}{m}`" for m in missing) + "."]
    return "\n".join(lines)


def index_page(results: Path) -> str:
    return ("# Index of results/\n\nEvery study folder (and file) under `results/`: what it measured and how it was "
            "made, from the folders' `manifest.json` (and `files.manifest.json` for the files lying in `results/` "
            "itself). Written by `python -m pipeline.manifest index`; do not edit. \"Reconstructed\": the folder "
            "was made before manifests existed; its manifest was written from the git history (the commit and date "
            "that added it) and the command the README stated, on the machine the README named. The log files "
            "beside some results keep the paths of the day, also where a folder was renamed since.\n\n"
            + index_markdown(results) + "\n")


def main(argv: list[str] | None = None) -> None:
    import click

    @click.group(context_settings={"help_option_names": ["-h", "--help"]})
    def cli() -> None:
        """Manifests of the study folders under results/, and their index."""

    @cli.command(context_settings={"ignore_unknown_options": True})
    @click.argument("folder", type=click.Path(file_okay=False))
    @click.option("--what", required=True, help="What the study measures, in words.")
    @click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
    def record(folder: str, what: str, command: tuple[str, ...]) -> None:
        """Run COMMAND, then add it to FOLDER/manifest.json (command, exit status, wall time,
        commit, date, machine)."""
        Path(folder).mkdir(parents=True, exist_ok=True)
        started, clock = datetime.now(timezone.utc), time.monotonic()
        status = subprocess.call(list(command))
        run = run_record(list(command), status=status, seconds=time.monotonic() - clock, started=started)
        path = write(folder, what, run, tool="python -m pipeline.manifest record")
        click.echo(f"{path}: run recorded (exit status {status})", err=True)
        raise SystemExit(status)

    @cli.command("write")
    @click.argument("folder", type=click.Path(file_okay=False))
    @click.option("--what", required=True, help="What the study measured, in words.")
    @click.option("--command", "command", required=True, help="The command that made the folder, as one line.")
    @click.option("--seconds", type=float, default=None, help="Its wall time.")
    def write_command(folder: str, what: str, command: str, seconds: float | None) -> None:
        """Add a run already made (COMMAND, by a script that made FOLDER) to FOLDER/manifest.json."""
        Path(folder).mkdir(parents=True, exist_ok=True)
        path = write(folder, what, run_record(command, seconds=seconds), tool=command)
        click.echo(f"{path}: run recorded", err=True)

    @cli.command()
    @click.option("--results", default="results", show_default=True, type=click.Path(exists=True, file_okay=False))
    @click.option("--check", is_flag=True, help="Write nothing; exit 1 if the index is not current.")
    def index(results: str, check: bool) -> None:
        """Write RESULTS/README.md, the index of every study folder and file."""
        from pipeline.files import write_text

        path, text = Path(results) / "README.md", index_page(Path(results))
        if check:
            current = path.is_file() and path.read_text() == text
            click.echo(f"{path} is {'current' if current else 'not current: run python -m pipeline.manifest index'}")
            raise SystemExit(0 if current else 1)
        write_text(path, text)
        click.echo(f"wrote {path}")

    try:
        cli.main(args=argv, standalone_mode=True)
    except PipelineError as error:
        raise SystemExit(f"Error: {error}") from None


if __name__ == "__main__":
    main()
