"""Metrics files written before the heads declared their parameters carry no ``setting_words``:
``python -m pipeline.commands.describe_metrics FILES_OR_FOLDERS`` adds them, from the same
declarations a head stage writes them from today, so that the report reads words from every
metrics file and no head's words are written twice. Files that have them are left alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from pipeline import metrics_file
from pipeline.commands.classical import options_words
from pipeline.commands.stage import declared_words
from pipeline.files import write_json
from pipeline.heads.registry import HEADS


def words_for(about: dict) -> dict[str, str] | None:
    """The words a head stage would write for this description (None: not a head's)."""
    head = about.get("head")
    if head not in HEADS:
        return None
    words = declared_words(str(head), about)
    if isinstance(about.get("options"), dict) and about["options"]:
        words["options"] = options_words(about["options"])
    return words


def describe_file(path: Path) -> bool:
    """Add ``setting_words`` to the file's description (its .about.json sidecar, or the file
    itself when the description is inline); True if it changed."""
    sidecar = metrics_file.sidecar_path(path)
    target = sidecar if sidecar.is_file() else path
    data = json.loads(target.read_text())
    about = data.get("about") if isinstance(data, dict) else None
    if not isinstance(about, dict) or "setting_words" in about:
        return False
    words = words_for(about)
    if words is None:
        return False
    about["setting_words"] = words
    write_json(target, data)
    return True


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
def main(paths: tuple[str, ...]) -> None:
    """Add the declared settings' words to metrics files that lack them (folders: every
    metrics file in them, recursively)."""
    files = []
    for path in map(Path, paths):
        found = path.rglob("*.json") if path.is_dir() else [path]
        files += [f for f in found if not metrics_file.is_sidecar(f)]
    changed = [f for f in sorted(files) if describe_file(f)]
    click.echo(f"{len(changed)} of {len(files)} files described: " + ", ".join(map(str, changed[:5]))
               + (" ..." if len(changed) > 5 else ""))


if __name__ == "__main__":
    main()
