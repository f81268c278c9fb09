"""The published figures this project's results are put beside.

They are a copy of the project's reference file (``paper_results.json``, shipped with the
package so that a clone without the papers still has them). They are always labelled with
the paper's backbone and protocol: they were not measured here.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

PAPER_RESULTS = Path(__file__).with_name("paper_results.json")


@lru_cache(maxsize=1)
def paper_results() -> dict:
    """The whole reference file (read once)."""
    return json.loads(PAPER_RESULTS.read_text())


def has_published_column(about: dict) -> bool:
    """The published ablation figures are CIFAR-10's (the JPEG copy reads imagefolder:cifar10-jpg)."""
    dataset = str(about.get("dataset")).lower()
    return "cifar10" in dataset and "cifar100" not in dataset


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


def plume_paper_mean(perturbation: str, guidance: str) -> float | None:
    """Published CIFAR-10 mean AUROC (%) of a PLUME ablation variant (ResNet50, lambda = 5)."""
    key = PLUME_ABLATION_KEYS.get((perturbation, guidance))
    return paper_results()["plume"]["ablation_cifar10_mean_lambda5"].get(key) if key else None


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


def anomem_paper(key: str) -> float | None:
    """Published CIFAR-10 AnoMem figures (ResNet50 trained from scratch, not frozen features):
    'one_class', a gamma such as '0.01', or an ablation key of paper_results.json."""
    paper = paper_results()["anomem"]
    if key == "one_class":
        return paper["one_class"]["cifar10"]
    if key in paper["semi_supervised_anomaly_ratio"]["cifar10"]:
        return paper["semi_supervised_anomaly_ratio"]["cifar10"][key]
    return paper["ablation_one_class"].get(key, {}).get("cifar10")


def knn_paper(dataset: str = "cifar10") -> float | None:
    """Published DN2 kNN mean AUROC (%) of the PANDA paper (ResNet152, ImageNet, 256 -> centre
    224, k = 2, no adaptation) for a dataset key of paper_results.json such as 'cifar10'."""
    return paper_results()["panda"]["dn2_knn_no_adaptation"].get(dataset)


def _gamma_key(gamma: str) -> str:
    return f"{float(gamma):.2f}"
