"""The AnoMem head in the results table (``python -m pipeline.report``): its name, title,
settings, rows (one-class, its controls, semi-supervised, and the stage's kNN baseline on the
same images) and published figures (the AnoMem paper). Reads metrics payloads only: no torch,
no head class."""

from __future__ import annotations

from pipeline.report.published import Published, has_published_column, paper_section, published
from pipeline.report.rows import Figure, Row, Run, figures, plural

# The control scores the evaluation grades on one-class runs (AnoMemHead.control_scores).
CONTROLS = {"norm": "control: ||z|| alone, no memory", "nearest_slot": "control: distance to the nearest slot"}
SCALE_ROLES = ("intermediate", "last")


def retrieval_words(diagnostics: dict) -> str:
    """How peaked the retrieval softmax is on the test images (mean over classes), per scale:
    its largest weight and its entropy over the log of the number of slots (1: flat)."""
    mean = diagnostics.get("mean", {})
    parts = [f"{scale} {mean[f'retrieval_top_weight_{scale}']:.2f} / {mean[f'retrieval_entropy_{scale}']:.2f}"
             for scale in SCALE_ROLES if f"retrieval_top_weight_{scale}" in mean]
    return f" (retrieval on test images, largest weight / entropy: {', '.join(parts)})" if parts else ""


DISPLAY_NAME = "AnoMem"
ORDER = 2
# The kNN baseline the stage computes on AnoMem's training images, named as the knn head names itself.
KNN_NAME = "kNN (DN2)"
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


def control_rows(run: Run, extra: str) -> list[Row]:
    """The one-class run's control scores, graded like its score: if the head's row reads
    like "||z|| alone", the memory adds nothing."""
    p, about = run.payload, run.about
    result = []
    for name, words in CONTROLS.items():
        control = p.get("controls", {}).get(name)
        if control:
            retrieval = retrieval_words(p.get("diagnostics", {})) if name == "nearest_slot" else ""
            result.append(Row(DISPLAY_NAME, f"{words}{retrieval}; {anomem_setting(about)}{extra}",
                              figures(control["per_class"], "auroc", None), Figure(control["mean"]["auroc"])))
    return result


def rows(run: Run, extra: str) -> list[Row]:
    """One-class (std over seeds), its controls, each semi-supervised gamma (std over draws)
    and kNN on the same training images, the like-for-like baseline the stage computes."""
    p, about = run.payload, run.about
    several = run.several_seeds
    result = [Row(DISPLAY_NAME, f"one-class; {anomem_setting(about)}{extra}",
                  figures(p["per_class"], "auroc", "auroc_std" if several else None),
                  Figure(p["mean"]["auroc"], p["mean"].get("auroc_std") if several else None),
                  _published(about, _one_class_key(about)))]
    result += control_rows(run, extra)
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
        if "l2" in same:
            result.append(Row(KNN_NAME, f"k = {same.get('k')}, AnoMem's training images, L2-normalised features "
                                        f"(AnoMem's default scaling)",
                              figures(same["l2"]["per_class"], "auroc", None), Figure(same["l2"]["mean"]["auroc"])))
    return result
