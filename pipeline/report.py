"""Tables that put this project's figures beside the published ones.

The published figures are a copy of the project's reference file (``paper_results.json``,
shipped with the package so that a clone without the papers still has them). They are
always labelled with the paper's backbone and protocol: they were not measured here.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import click

from pipeline.cli import write_text
from pipeline.errors import PipelineError

PAPER_RESULTS = Path(__file__).with_name("paper_results.json")

# Table 1c / 8 of the PLUME paper: (perturbation, guidance) -> key in paper_results.json.
PLUME_ABLATION_KEYS = {
    ("gaussian", "none"): "gaussian_noise_no_guidance",
    ("gaussian", "contrastive"): "gaussian_noise_contrastive",
    ("addmult", "none"): "addmult_no_guidance",
    ("addmult", "contrastive"): "addmult_contrastive",
    ("add", "contrastive"): "add_contrastive",
    ("mult", "contrastive"): "mult_contrastive",
    ("linear", "none"): "linearmap_no_guidance",
    ("linear", "mean"): "linearmap_mean_contrastive",
    ("linear", "contrastive"): "linearmap_contrastive",
}
PLUME_NAMES = {"linear": "LinearMap", "addmult": "AddMult", "add": "Add", "mult": "Mult", "gaussian": "Gaussian"}
GUIDANCE_NAMES = {"contrastive": "contrastive", "mean": "mean", "none": "-"}


@lru_cache(maxsize=1)
def paper_results() -> dict:
    return json.loads(PAPER_RESULTS.read_text())


def plume_paper_mean(perturbation: str, guidance: str) -> float | None:
    """Published CIFAR-10 mean AUROC (%) of a PLUME ablation variant (ResNet50, lambda = 5)."""
    key = PLUME_ABLATION_KEYS.get((perturbation, guidance))
    return paper_results()["plume"]["ablation_cifar10_mean_lambda5"].get(key) if key else None


def has_published_column(about: dict) -> bool:
    """The published ablation figures are CIFAR-10's (the JPEG copy reads imagefolder:cifar10-jpg)."""
    dataset = str(about.get("dataset")).lower()
    return "cifar10" in dataset and "cifar100" not in dataset


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def plume_ablation_table(variants: dict[str, dict], knn: dict | None = None, paper_column: bool = True) -> str:
    """Markdown table laid out like table 1c of the PLUME paper: one row per variant, AUROC
    per class (final epoch, mean +/- std over seeds), the mean, the best-epoch mean, and the
    paper's mean for the same variant. ``variants`` maps "perturbation/guidance" to metrics
    payloads as written by ``pipeline.evaluate.write_results``; ``knn`` is a kNN payload."""
    first = next(iter(variants.values()))
    classes = list(first["per_class"])
    about = first["about"]
    paper_label = "paper mean (ResNet50, best epoch, 5 runs)"
    header = ["Perturbation", "Guidance", *classes, "Mean (final epoch)", "Mean (best epoch)"]
    if paper_column:
        header.append(paper_label)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, payload in variants.items():
        perturbation, guidance = name.split("/")
        per_class = payload["per_class"]
        cells = [PLUME_NAMES.get(perturbation, perturbation), GUIDANCE_NAMES.get(guidance, guidance)]
        for c in classes:
            m = per_class[c]
            cells.append(_pct(m["auroc"]) + (f" ± {_pct(m['auroc_std'])}" if about.get("seeds", 1) > 1 else ""))
        mean = payload["mean"]
        cells.append(f"**{_pct(mean['auroc'])}**" + (f" ± {_pct(mean['auroc_std'])}" if about.get("seeds", 1) > 1 else ""))
        cells.append(_pct(mean["best_epoch_auroc"]))
        if paper_column:
            paper = plume_paper_mean(perturbation, guidance)
            cells.append("" if paper is None else f"{paper:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    if knn is not None:
        cells = ["kNN (DN2)", f"k = {knn['about'].get('k')}", *(_pct(knn["per_class"][c]["auroc"]) for c in classes),
                 f"**{_pct(knn['mean']['auroc'])}**", "(no training)"]
        if paper_column:
            cells.append("")
        lines.append("| " + " | ".join(cells) + " |")
    caption = (f"AUROC %, {about['dataset']}, {about['backbone']} @ {about['image_size']} "
               f"({about['preprocessing']}), one-vs-all; PLUME lambda = {about.get('lam')}, "
               f"{about.get('epochs')} epochs, D = {about.get('dim')}, batch mode {about.get('batch_mode')}, "
               f"lr {about.get('lr')}, {about.get('seeds')} seed(s). Final epoch = the model after the last "
               f"epoch; best epoch = the best test AUROC seen during training (the paper's protocol, which "
               f"reads the test set).")
    return caption + "\n\n" + "\n".join(lines) + "\n"


def ablation_payloads(paths: list[str | Path]) -> dict[str, dict]:
    """Variants from one or more ablation metrics files (python -m stages.plume_ablation), in order."""
    payloads: dict[str, dict] = {}
    for path in paths:
        data = json.loads(Path(path).read_text())
        if "variants" not in data:
            raise PipelineError(f"{path} is not a PLUME ablation metrics file (no 'variants' section).")
        for name, payload in data["variants"].items():
            about = {**data["about"], **payload.get("about", {})}
            payloads[name] = {**payload, "about": about}
    return payloads


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Tables of this project's results beside the published figures."""


@main.command("plume-table")
@click.argument("metrics", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--knn-metrics", default=None, type=click.Path(exists=True, dir_okay=False),
              help="A kNN metrics file on the same cache, added as a row.")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Write the Markdown table here too.")
def plume_table(metrics: tuple[str, ...], knn_metrics: str | None, out: str | None) -> None:
    """Table 1c layout from one or more PLUME ablation metrics files (for variants run
    separately, for example in parallel processes)."""
    payloads = ablation_payloads(list(metrics))
    knn = json.loads(Path(knn_metrics).read_text()) if knn_metrics else None
    table = plume_ablation_table(payloads, knn, paper_column=has_published_column(next(iter(payloads.values()))["about"]))
    if out:
        write_text(out, table)
    click.echo(table)


if __name__ == "__main__":
    main()
