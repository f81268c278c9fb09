"""The IGD head in the results table (``python -m pipeline.report``): its name, title,
settings, rows and published figure (table 1 of the IGD paper). Reads metrics payloads only:
no torch, no head class."""

from __future__ import annotations

from pipeline.report.published import Published, has_published_column, paper_section, published
from pipeline.report.rows import Row, Run, final_and_best_epoch_rows

DISPLAY_NAME = "IGD"
ORDER = 3
ROC_CURVES = "final model"


def igd_paper() -> float | None:
    """Published CIFAR-10 mean AUROC (%) of IGD with an ImageNet-pretrained encoder (table 1)."""
    value = paper_section("igd")["mean_auc_fraction"].get("cifar10_imagenet_pretrained")
    return None if value is None else 100 * value


def _paper(about: dict) -> Published | None:
    if not has_published_column(about):
        return None
    note = ("IGD paper, table 1, CIFAR-10, ImageNet-pretrained: a ResNet18 distilled from ImageNet, frozen, with a "
            "trained linear layer to Z = 128 and an image decoder, 256 epochs, global and local models; the paper "
            "does not say which epoch it reports (the authors' code records the best test AUROC over evaluations).")
    return published(igd_paper(), "IGD", note)


def _setting(about: dict) -> str:
    encoder = "linear encoder" if about.get("hidden") == 0 else "MLP encoder"
    return f"{encoder}, {about.get('reconstruction', 'mae')} + Gaussian score"


def title(about: dict) -> str:
    return f"{DISPLAY_NAME} ({_setting(about)})"


def rows(run: Run, extra: str) -> list[Row]:
    """The final-epoch row and the best-epoch row (picked on the test set), the paper's figure
    beside the latter."""
    return final_and_best_epoch_rows(DISPLAY_NAME, _setting(run.about), run, extra, _paper(run.about))
