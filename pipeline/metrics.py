"""Detection metrics (scikit-learn) for one-vs-all anomaly scores; label 1 = anomaly."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


def detection_metrics(is_anomaly: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """AUROC, AUPR (anomalies as positives) and FPR at 95% TPR, as fractions in [0, 1]."""
    is_anomaly = np.asarray(is_anomaly)
    scores = np.asarray(scores, dtype=np.float64)
    fpr, tpr, _ = roc_curve(is_anomaly, scores)
    return {
        "auroc": float(roc_auc_score(is_anomaly, scores)),
        "aupr": float(average_precision_score(is_anomaly, scores)),
        "fpr_at_95_tpr": float(fpr[np.searchsorted(tpr, 0.95, side="left")]),
    }


def roc_points(is_anomaly: np.ndarray, scores: np.ndarray, max_points: int = 200) -> list[dict[str, float]]:
    """The ROC curve thinned to at most ``max_points`` points, for DVC plots."""
    fpr, tpr, _ = roc_curve(is_anomaly, scores, drop_intermediate=True)
    if len(fpr) > max_points:
        keep = np.unique(np.linspace(0, len(fpr) - 1, max_points).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return [{"fpr": round(float(f), 6), "tpr": round(float(t), 6)} for f, t in zip(fpr, tpr)]


def summarise(per_class: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over classes."""
    names = next(iter(per_class.values())).keys()
    return {name: float(np.mean([m[name] for m in per_class.values()])) for name in names}
