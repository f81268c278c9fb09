"""The one data path shared by every head: cache -> head -> scores -> metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from pipeline.cache import FeatureCache
from pipeline.cli import cache_label, progress, write_json
from pipeline.datasets import one_vs_all
from pipeline.metrics import detection_metrics, roc_points, summarise


class Head(Protocol):
    def fit(self, train_features: np.ndarray) -> "Head": ...

    def score(self, test_features: np.ndarray) -> np.ndarray: ...


def evaluate_one_vs_all(cache: FeatureCache, make_head: Callable[[], Head], classes: list[int],
                        desc: str = "classes", stream_train: bool = False) -> dict[str, dict]:
    """Fit a fresh head on each normal class and score the whole test set.

    Returns, per class name, its metrics and its ROC points. With ``stream_train`` the
    head gets its training features as a stream of cache chunks (for heads that accept
    one, such as kNN) instead of an array, so the training split never sits in memory.
    """
    train_labels, test_labels = cache.labels("train"), cache.labels("test")
    # Read (and checksum) each split once; every class takes its rows from memory.
    train_features = None if stream_train else cache.features("train")
    test_features = cache.features("test")
    names = cache.classes
    results = {}
    with progress(total=len(classes), desc=desc, unit="class") as bar:
        for c in classes:
            protocol = one_vs_all(train_labels, test_labels, c)
            if stream_train:
                head = make_head().fit(lambda rows=protocol.train_index: cache.iter_rows("train", "features", rows))
            else:
                head = make_head().fit(train_features[protocol.train_index])
            scores = head.score(test_features)
            results[names[c]] = {
                "metrics": detection_metrics(protocol.test_is_anomaly, scores),
                "roc": roc_points(protocol.test_is_anomaly, scores),
            }
            bar.update(1)
    return results


def write_results(results: dict[str, dict], metadata: dict, head: dict, metrics_path: str | Path,
                  plots_dir: str | Path | None) -> dict:
    """Metrics JSON for ``dvc metrics`` and one ROC file per class for ``dvc plots``."""
    per_class = {name: {k: round(v, 6) for k, v in r["metrics"].items()} for name, r in results.items()}
    payload = {
        "mean": {k: round(v, 6) for k, v in summarise(per_class).items()},
        "per_class": per_class,
        "about": {**cache_label(metadata), "protocol": "one-vs-all", **head},
    }
    write_json(metrics_path, payload)
    if plots_dir is not None:
        plots_dir = Path(plots_dir)
        plots_dir.mkdir(parents=True, exist_ok=True)
        for old in plots_dir.glob("roc_*.json"):
            old.unlink()
        for name, r in results.items():
            write_json(plots_dir / f"roc_{name}.json", r["roc"])
    return payload


def format_summary(payload: dict) -> str:
    about = payload["about"]
    per_class = ", ".join(f"{name} {100 * m['auroc']:.1f}" for name, m in payload["per_class"].items())
    return (f"{about['head']} on {about['dataset']} / {about['backbone']} @ {about['image_size']}: mean AUROC "
            f"{100 * payload['mean']['auroc']:.2f}% over {len(payload['per_class'])} classes ({per_class}).")


def load_metrics(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
