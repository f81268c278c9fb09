"""The classical detectors in the results table (``python -m pipeline.report``): one row per
detector, named by it (OC-SVM, Isolation Forest, LOF, ECOD (PyOD), ...), with the settings
that tell it apart. Reads metrics payloads only: no torch, no head class, no scikit-learn."""

from __future__ import annotations

from pipeline.report.rows import Figure, Row, Run, figures

DISPLAY_NAME = "Classical detectors"
ORDER = 5
ROC_CURVES = "per class"
NAMES = {"ocsvm": "OC-SVM", "iforest": "Isolation Forest", "lof": "LOF"}
ESTIMATORS = {"ocsvm": "OneClassSVM, RBF kernel", "iforest": "IsolationForest", "lof": "LocalOutlierFactor, novelty"}


def detector_name(detector: str) -> str:
    """``ocsvm`` -> OC-SVM, ``pyod:ECOD`` -> ECOD (PyOD)."""
    detector = str(detector)
    if detector in NAMES:
        return NAMES[detector]
    return f"{detector.split(':', 1)[1]} (PyOD)" if detector.startswith("pyod:") else detector


def _library(about: dict) -> str:
    library = str(about.get("library") or "")
    estimator = ESTIMATORS.get(about.get("detector"), about.get("estimator") or "")
    return f"{library} {estimator}".strip() or "-"


def title(about: dict) -> str:
    return f"{detector_name(about.get('detector'))} ({_library(about)})"


def rows(run: Run, extra: str) -> list[Row]:
    p, about = run.payload, run.about
    several = run.several_seeds
    return [Row(detector_name(about.get("detector")), f"{_library(about)}{extra}",
                figures(p["per_class"], "auroc", "auroc_std" if several else None),
                Figure(p["mean"]["auroc"], p["mean"].get("auroc_std") if several else None))]
