"""The PLUME head in the results table (``python -m pipeline.report``): its name, title,
settings, rows and published figures (table 1c of the PLUME paper), and the ablation table
of ``python -m stages.plume_ablation`` and ``python -m pipeline.report plume-table``.
Reads metrics payloads only: no torch, no head class."""

from __future__ import annotations

from pipeline.errors import PipelineError
from pipeline.report.published import Published, has_published_column, paper_section, published
from pipeline.report.rows import Row, Run, final_and_best_epoch_rows

DISPLAY_NAME = "PLUME"
ORDER = 1
ROC_CURVES = "final model"

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
    return paper_section("plume")["ablation_cifar10_mean_lambda5"].get(key) if key else None


def _paper(about: dict) -> Published | None:
    if not has_published_column(about):
        return None
    paper = paper_section("plume")
    note = (f"PLUME paper, table 1c (lambda = 5), mean over classes: {paper['backbone']}; "
            f"{paper['protocol']}.")
    return published(plume_paper_mean(str(about.get("perturbation")), str(about.get("guidance"))), "PLUME", note)


def variant_label(about: dict) -> str:
    perturbation, guidance = about.get("perturbation"), about.get("guidance")
    guidance_words = "no guidance" if guidance == "none" else f"{GUIDANCE_NAMES.get(guidance, guidance)} guidance"
    return f"{PLUME_NAMES.get(perturbation, perturbation)}, {guidance_words}"


def title(about: dict) -> str:
    return f"{DISPLAY_NAME} {variant_label(about)}"


def rows(run: Run, extra: str) -> list[Row]:
    """The final-epoch row and the best-epoch row (picked on the test set), the paper's figure
    beside the latter."""
    return final_and_best_epoch_rows(DISPLAY_NAME, variant_label(run.about), run, extra, _paper(run.about))


# --- the ablation table (table 1c of the paper) ---------------------------------------------

def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def check_same_cache(knn_about: dict, about: dict) -> None:
    """A kNN row belongs in the table only if it was scored on the same cache's features."""
    keys = ("dataset", "backbone", "image_size", "preprocessing", "protocol")
    differ = {k: (knn_about.get(k), about.get(k)) for k in keys if knn_about.get(k) != about.get(k)}
    if differ:
        raise PipelineError("the kNN metrics come from other features than the PLUME runs: "
                            + ", ".join(f"{k} {a} against {b}" for k, (a, b) in differ.items())
                            + ". Give the kNN metrics of the same cache (python -m stages.knn --cache ...).")


def seeds_words(variants: dict[str, dict]) -> str:
    """"3 seed(s)", or each variant's count where they differ (files run apart, combined)."""
    counts = {name: payload["about"].get("seeds") for name, payload in variants.items()}
    if len(set(counts.values())) == 1:
        return f"{next(iter(counts.values()))} seed(s)"
    return "seeds: " + ", ".join(f"{name} {count}" for name, count in counts.items())


def plume_ablation_table(variants: dict[str, dict], knn: dict | None = None, paper_column: bool = True) -> str:
    """Markdown table laid out like table 1c of the PLUME paper: one row per variant, AUROC
    per class (final epoch, mean +/- std over seeds), the mean, the best-epoch mean, and the
    paper's mean for the same variant. ``variants`` maps "perturbation/guidance" to metrics
    payloads as written by ``pipeline.evaluate.write_results``; ``knn`` is a kNN payload."""
    first = next(iter(variants.values()))
    classes = list(first["per_class"])
    about = first["about"]
    if knn is not None:
        check_same_cache(knn["about"], about)
    paper_label = "paper mean (ResNet50, best epoch, 5 runs)"
    header = ["Perturbation", "Guidance", *classes, f"Mean ({about.get('auroc_epoch', 'final epoch')})",
              "Mean (best epoch)"]
    if paper_column:
        header.append(paper_label)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, payload in variants.items():
        perturbation, guidance = name.split("/")
        per_class = payload["per_class"]
        spread = payload["about"].get("seeds", 1) > 1  # each variant's own seeds: files may be combined
        cells = [PLUME_NAMES.get(perturbation, perturbation), GUIDANCE_NAMES.get(guidance, guidance)]
        for c in classes:
            m = per_class[c]
            cells.append(_pct(m["auroc"]) + (f" ± {_pct(m['auroc_std'])}" if spread else ""))
        mean = payload["mean"]
        cells.append(f"**{_pct(mean['auroc'])}**" + (f" ± {_pct(mean['auroc_std'])}" if spread else ""))
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
               f"identity loss {about.get('identity_loss')}, identity target {about.get('identity_target')}, "
               f"guidance form {about.get('guidance_form')}, lr {about.get('lr')}, "
               f"{about.get('val_fraction', 0)} of the training images held out, kept epoch "
               f"{about.get('select', 'final')}, EMA {about.get('ema', 0)}, max shift {about.get('max_shift', 0)}, "
               f"{seeds_words(variants)}. "
               f"Final epoch = the model after the last epoch; epoch chosen on held-out normal images = the "
               f"epoch whose held-out normal images were told best from their own pseudo-anomalies (no test "
               f"image read); best epoch = the best test AUROC seen during training (the paper's protocol, "
               f"which reads the test set).")
    return caption + "\n\n" + "\n".join(lines) + "\n"
