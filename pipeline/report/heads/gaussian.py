"""The gaussian head in the results table (``python -m pipeline.report``): its name, title and
rows. Reads metrics payloads only: no torch, no head class."""

from __future__ import annotations

from pipeline.report.rows import Figure, Row, Run, figures

DISPLAY_NAME = "Gaussian (Mahalanobis)"
ORDER = 4
ROC_CURVES = "per class"
SCALING_WORDS = {"none": "no scaling", "standardise": "standardised", "l2": "L2-normalised",
                 "sqrt": "signed square root"}


def setting(about: dict) -> str:
    if about.get("scales") == "multi":
        layers = " + ".join(about.get("layers") or ["pooled", "intermediate maps"])
        combine = about.get("combine", "concatenate")  # metrics written before combine: concatenated
        joined = {"sum": "one Gaussian per level, squared distances summed",
                  "sum-distances": "one Gaussian per level, distances summed"}.get(combine, "concatenated")
        vector = f"{layers} (maps average-pooled), {joined}"
    else:
        vector = "pooled vector"
    scaling = about.get("scaling", "none")
    return f"{vector}, Ledoit-Wolf covariance, {SCALING_WORDS.get(scaling, scaling)}"


def title(about: dict) -> str:
    return f"{DISPLAY_NAME}, {setting(about)}"


def rows(run: Run, extra: str) -> list[Row]:
    p = run.payload
    return [Row(DISPLAY_NAME, f"{setting(run.about)}{extra}", figures(p["per_class"], "auroc", None),
                Figure(p["mean"]["auroc"]))]
