"""Final-epoch and best-epoch test AUROC of PLUME runs over seeds that were trained apart (one
seed in one run, more in another), per class and as the mean over classes, +- the standard
deviation over seeds (of the per-seed mean over classes, as the metrics files compute it).

A source is a training-curves folder (``--curves`` of ``python -m stages.plume``:
train_<class>.json, a record per seed and epoch) or a one-seed metrics file of a run kept at
its final epoch (``--select final``), whose ``auroc`` is that seed's final epoch:

    python benchmarks/plume_seed_summary.py \\
        --run "authors' code=results/plume_cifar/authors_exact.json,results/plume_cifar/plots_authors_exact_seeds_1_2/training" \\
        --run "new default=results/plume_cifar/plots_max_shift_default/training"

The best epoch is the best test AUROC over epochs: it reads the test set (the paper's protocol).
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from pipeline import metrics_file
from pipeline.cli import write_json
from pipeline.errors import PipelineError

Figures = dict[tuple[str, int], dict[str, float]]  # (class, seed) -> {"final": AUROC, "best": AUROC}


def from_curves(folder: Path) -> Figures:
    figures: Figures = {}
    for path in sorted(folder.glob("train_*.json")):
        records = json.loads(path.read_text())
        name = path.stem.removeprefix("train_")
        for seed in sorted({r["seed"] for r in records}):
            mine = sorted((r for r in records if r["seed"] == seed), key=lambda r: r["epoch"])
            figures[(name, seed)] = {"final": mine[-1]["test_auroc"], "best": max(r["test_auroc"] for r in mine)}
    if not figures:
        raise PipelineError(f"{folder} holds no train_<class>.json training curves")
    return figures


def from_metrics(path: Path) -> Figures:
    data = metrics_file.read(path)
    about = data.get("about", {})
    if about.get("seeds") != 1 or about.get("select", "final") != "final":
        raise PipelineError(f"{path}: only a one-seed run kept at its final epoch gives per-seed final figures "
                            f"(this one: {about.get('seeds')} seeds, select {about.get('select')}); "
                            f"give its training curves instead")
    seed = about["seed_list"][0]
    return {(name, seed): {"final": m["auroc"], "best": m["best_epoch_auroc"]} for name, m in data["per_class"].items()}


def summary(figures: Figures) -> dict:
    classes = list(dict.fromkeys(name for name, _ in figures))
    seeds = sorted({seed for _, seed in figures})
    missing = [(c, s) for c in classes for s in seeds if (c, s) not in figures]
    if missing:
        raise PipelineError(f"not every class has every seed: missing {missing[:5]}")
    out = {"seeds": seeds, "per_class": {}, "mean": {}}
    for kind in ("final", "best"):
        table = np.array([[figures[(c, s)][kind] for s in seeds] for c in classes])  # classes x seeds
        for c, row in zip(classes, table):
            out["per_class"].setdefault(c, {})[kind] = float(row.mean())
        out["mean"][kind] = float(table.mean())
        out["mean"][f"{kind}_std"] = float(np.std(table.mean(axis=0)))
    out["within_2_every_class"] = all(m["best"] - m["final"] <= 0.02 for m in out["per_class"].values())
    out["lowest_final"] = min(out["per_class"].items(), key=lambda item: item[1]["final"])
    return out


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--run", "runs", multiple=True, required=True,
              help="NAME=SOURCE[,SOURCE...]: a run's training-curve folders and one-seed metrics files (repeatable).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), help="Also write the figures as JSON here.")
def main(runs: tuple[str, ...], out_path: str | None) -> None:
    """Print, per run, the mean over classes at the final and the best epoch, +- std over seeds."""
    results = {}
    for item in runs:
        name, _, sources = item.partition("=")
        figures: Figures = {}
        for source in filter(None, sources.split(",")):
            path = Path(source)
            part = from_curves(path) if path.is_dir() else from_metrics(path)
            if set(part) & set(figures):
                raise PipelineError(f"{source} repeats a (class, seed) another source of {name!r} has")
            figures.update(part)
        results[name] = summary(figures)
    lines = ["| run | seeds | final epoch | best epoch (peeking) | final within 2 of best, every class "
             "| lowest class, final |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        m, (low_name, low) = r["mean"], r["lowest_final"]
        lines.append(f"| {name} | {len(r['seeds'])} | {100 * m['final']:.1f} ± {100 * m['final_std']:.1f} | "
                     f"{100 * m['best']:.1f} ± {100 * m['best_std']:.1f} | "
                     f"{'yes' if r['within_2_every_class'] else 'no'} | {low_name} {100 * low['final']:.1f} |")
    click.echo("\n".join(lines))
    if out_path:
        write_json(out_path, results)


if __name__ == "__main__":
    main()
