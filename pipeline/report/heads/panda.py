"""The PANDA head in the results table (``python -m pipeline.report``): its name, title,
settings, rows and published figures (PANDA paper, table 1). Reads metrics payloads only: no
torch, no head class."""

from __future__ import annotations

from pipeline.report.published import Published, has_published_column, paper_section, published
from pipeline.report.rows import Row, Run, final_and_best_epoch_rows

DISPLAY_NAME = "PANDA"
ORDER = 0.5  # right after the DN2 kNN rows, whose features it adapts
ROC_CURVES = "final model"


def panda_paper(fisher: str) -> float | None:
    """Published CIFAR-10 mean AUROC (%) of PANDA-Early (no EWC) or PANDA-EWC."""
    section = paper_section("panda")["panda_early_stopping" if fisher == "none" else "panda_ewc"]
    return section.get("cifar10")


def _paper(about: dict) -> Published | None:
    if not has_published_column(about):
        return None
    fisher = str(about.get("fisher", "none"))
    kind = "PANDA-Early, 15 epochs" if fisher == "none" else "PANDA-EWC with an ImageNet Fisher, 50 epochs"
    note = (f"PANDA paper, table 1, CIFAR-10, {kind}: {paper_section('panda')['backbone']}, layer3 + layer4 "
            f"fine-tuned on images, then kNN.")
    return published(panda_paper(fisher), "PANDA", note)


def _setting(about: dict) -> str:
    fisher = str(about.get("fisher", "none"))
    return "early stopping" if fisher == "none" else f"EWC ({fisher} Fisher)"


def title(about: dict) -> str:
    return f"{DISPLAY_NAME} ({_setting(about)}), kNN k = {about.get('k')}"


def rows(run: Run, extra: str) -> list[Row]:
    """The final-epoch row (the paper's early stopping is a fixed epoch, so the published
    figure sits beside it) and the best-epoch row (picked on the test set)."""
    final, *best = final_and_best_epoch_rows(DISPLAY_NAME, _setting(run.about), run, extra, None)
    final.published = _paper(run.about)
    return [final, *best]
