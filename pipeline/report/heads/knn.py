"""The kNN head in the results table (``python -m pipeline.report``): its name, title, rows
and published figure (PANDA's DN2 kNN). Reads metrics payloads only: no torch, no head class."""

from __future__ import annotations

from pipeline.report.published import Published, has_published_column, paper_section, published
from pipeline.report.rows import Figure, Row, Run, figures

DISPLAY_NAME = "kNN (DN2)"
ORDER = 0
ROC_CURVES = "per class"


def knn_paper(dataset: str = "cifar10") -> float | None:
    """Published DN2 kNN mean AUROC (%) of the PANDA paper (ResNet152, ImageNet, 256 -> centre
    224, k = 2, no adaptation) for a dataset key of paper_results.json such as 'cifar10'."""
    return paper_section("panda")["dn2_knn_no_adaptation"].get(dataset)


def _panda(about: dict) -> Published | None:
    if not has_published_column(about):
        return None
    note = f"PANDA paper, DN2 kNN without adaptation: {paper_section('panda')['backbone']}."
    return published(knn_paper(), "PANDA", note)


def title(about: dict) -> str:
    return f"{DISPLAY_NAME}, k = {about.get('k')}"


def rows(run: Run, extra: str) -> list[Row]:
    p, about = run.payload, run.about
    return [Row(DISPLAY_NAME, f"k = {about.get('k')}{extra}", figures(p["per_class"], "auroc", None),
                Figure(p["mean"]["auroc"]), _panda(about))]
