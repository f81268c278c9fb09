"""The AnoMem head in the results table (``python -m pipeline.report``): its name, title,
settings, rows (one-class, semi-supervised, and the stage's kNN baseline on the same images)
and published figures (the AnoMem paper). Reads metrics payloads only: no torch, no head class."""

from __future__ import annotations

from pipeline.report.published import Published, has_published_column, paper_section, published
from pipeline.report.rows import Figure, Row, Run, figures, plural

DISPLAY_NAME = "AnoMem"
ORDER = 2
# The kNN baseline the stage computes on AnoMem's training images, named as the knn head names itself.
KNN_NAME = "kNN (DN2)"


def _slots(about: dict) -> str | None:
    """Memory slots: intermediate + last scale (what the stage records), or one number."""
    if "slots_intermediate" in about:
        return f"{about['slots_intermediate']} + {about.get('slots_last')} memory slots"
    return f"{about['slots']} memory slots" if "slots" in about else None


SETTINGS = {"slots": _slots, "proj_dim": "{} dims", "beta": "beta {}", "epochs": "{} epochs (stage A)",
            "sup_epochs": "{} epochs (stage B)", "seeds": "{}",
            "views": "trained on the {} training images with views"}
ROC_CURVES = "one-class"
STAGE_A = {"retrain": ", stage A retrained with the anomalies (paper)",
           "reuse": ", stage B only on the one-class stage A"}


def anomem_paper(key: str) -> float | None:
    """Published CIFAR-10 AnoMem figures (ResNet50 trained from scratch, not frozen features):
    'one_class', a gamma such as '0.01', or an ablation key of paper_results.json."""
    paper = paper_section("anomem")
    if key == "one_class":
        return paper["one_class"]["cifar10"]
    if key in paper["semi_supervised_anomaly_ratio"]["cifar10"]:
        return paper["semi_supervised_anomaly_ratio"]["cifar10"][key]
    return paper["ablation_one_class"].get(key, {}).get("cifar10")


def _gamma_key(gamma: str) -> str:
    return f"{float(gamma):.2f}"


def anomem_setting(about: dict) -> str:
    scales = "multi-scale" if about.get("scales") == "multi" else "last scale"
    return f"{scales}, {about.get('memory')} memory"


def _one_class_key(about: dict) -> str | None:
    if about.get("scales") == "multi" and about.get("memory") == "learnt":
        return "one_class"
    return {("last", "learnt"): "memory_last_scale", ("last", "kmeans"): "kmeans_last_scale"}.get(
        (about.get("scales"), about.get("memory")))


def _published(about: dict, key: str | None) -> Published | None:
    if not key or not has_published_column(about):
        return None
    note = f"AnoMem paper, mean over classes: {paper_section('anomem')['backbone']}."
    return published(anomem_paper(key), "AnoMem", note)


def title(about: dict) -> str:
    return f"{DISPLAY_NAME} one-class, {anomem_setting(about)}"


def rows(run: Run, extra: str) -> list[Row]:
    """One-class (std over seeds), each semi-supervised gamma (std over draws) and kNN on the
    same training images, the like-for-like baseline the stage computes."""
    p, about = run.payload, run.about
    several = run.several_seeds
    result = [Row(DISPLAY_NAME, f"one-class; {anomem_setting(about)}{extra}",
                  figures(p["per_class"], "auroc", "auroc_std" if several else None),
                  Figure(p["mean"]["auroc"], p["mean"].get("auroc_std") if several else None),
                  _published(about, _one_class_key(about)))]
    for gamma, semi in p.get("semi_supervised", {}).items():
        draws = semi.get("draws", 1) > 1
        result.append(Row(DISPLAY_NAME,
                          f"semi-supervised, gamma = {gamma}, {plural(semi.get('draws'), 'draw')}"
                          f"{STAGE_A.get(semi.get('stage_a'), '')}; {anomem_setting(about)}{extra}",
                          figures(semi["per_class"], "auroc", "auroc_std" if draws else None),
                          Figure(semi["mean"]["auroc"], semi["mean"].get("auroc_std") if draws else None),
                          _published(about, _gamma_key(gamma))))
    same = p.get("knn_same_rows")
    if same:
        result.append(Row(KNN_NAME, f"k = {same.get('k')}, AnoMem's training images (those with views)",
                          figures(same["per_class"], "auroc", None), Figure(same["mean"]["auroc"])))
    return result
