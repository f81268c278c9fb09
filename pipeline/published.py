"""The published figures this project's results are put beside, and the ablation metrics
files they are compared with.

The figures are a copy of the project's reference file (``paper_results.json``, shipped with
the package so that a clone without the papers still has them). They are always labelled with
the paper's backbone and protocol: they were not measured here. Both the tables of
``pipeline.report`` and the results page of ``pipeline.results_table`` read them from here.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

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


def gamma_key(gamma: str) -> str:
    return f"{float(gamma):.2f}"
