"""The one data path shared by every head: cache -> head -> scores -> metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Protocol, Sequence

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


class TrainedHead(Protocol):
    history: list[dict]

    def fit(self, train_features: np.ndarray, monitor: tuple[np.ndarray, np.ndarray] | None = None,
            progress: Callable[[dict], None] | None = None) -> "TrainedHead": ...

    def score(self, test_features: np.ndarray) -> np.ndarray: ...


def evaluate_trained_one_vs_all(cache: FeatureCache, make_head: Callable[[int], TrainedHead], classes: list[int],
                                seeds: Sequence[int] = (0,), desc: str = "classes") -> dict[str, dict]:
    """Like ``evaluate_one_vs_all`` for heads trained by epochs, over several seeds.

    Each run tracks the test AUROC after every epoch (``history``). Per class: the metrics
    of the final model (mean over seeds, with ``auroc_std``), and, separately named, the
    best test AUROC seen during training (``best_epoch_auroc``: the paper's protocol, which
    picks the epoch on the test set), ROC points of the first seed and the training curves.
    """
    train_labels, test_labels = cache.labels("train"), cache.labels("test")
    train_features, test_features = cache.features("train"), cache.features("test")
    names = cache.classes
    results = {}
    with progress(total=len(classes) * len(seeds), desc=desc, unit="run") as bar:
        for c in classes:
            protocol = one_vs_all(train_labels, test_labels, c)
            runs, curves, roc = [], [], None
            for seed in seeds:
                bar.set_postfix_str(f"{names[c]} seed {seed}")
                head = make_head(seed)
                head.fit(train_features[protocol.train_index], monitor=(test_features, protocol.test_is_anomaly),
                         progress=lambda r: bar.set_postfix_str(
                             f"{names[c]} seed {seed} epoch {r['epoch']} AUROC {100 * r['test_auroc']:.1f}"))
                scores = head.score(test_features)
                best = max(head.history, key=lambda r: r["test_auroc"])
                runs.append({**detection_metrics(protocol.test_is_anomaly, scores),
                             "best_epoch_auroc": best["test_auroc"], "best_epoch": best["epoch"]})
                curves += [{"seed": seed, **record} for record in head.history]
                if roc is None:
                    roc = roc_points(protocol.test_is_anomaly, scores)
                bar.update(1)
            metrics = {name: float(np.mean([r[name] for r in runs])) for name in runs[0]}
            metrics["auroc_std"] = float(np.std([r["auroc"] for r in runs]))
            metrics["best_epoch_auroc_std"] = float(np.std([r["best_epoch_auroc"] for r in runs]))
            results[names[c]] = {"metrics": metrics, "roc": roc, "curves": curves, "runs": runs}
    return results


def seed_spread(results: dict[str, dict], metric: str) -> float:
    """Standard deviation over seeds of the class-mean of ``metric`` (0 for one seed)."""
    per_seed = np.array([[run[metric] for run in r["runs"]] for r in results.values()])  # classes x seeds
    return float(np.std(per_seed.mean(axis=0)))


def metrics_payload(results: dict[str, dict], metadata: dict, head: dict) -> dict:
    """Per class and mean metrics, labelled with dataset, backbone, preprocessing and head."""
    per_class = {name: {k: round(v, 6) for k, v in r["metrics"].items()} for name, r in results.items()}
    mean = summarise(per_class)
    if all("runs" in r for r in results.values()):
        # Over seeds, the spread of the mean over classes (what a table's mean row varies by).
        mean["auroc_std"] = seed_spread(results, "auroc")
        mean["best_epoch_auroc_std"] = seed_spread(results, "best_epoch_auroc")
    return {
        "mean": {k: round(v, 6) for k, v in mean.items()},
        "per_class": per_class,
        "about": {**cache_label(metadata), "protocol": "one-vs-all", **head},
    }


def write_plots(results: dict[str, dict], plots_dir: str | Path) -> None:
    """For ``dvc plots``: one ROC file per class and, for heads trained by epochs, one
    training-curve file per class (loss terms and test AUROC per epoch and seed)."""
    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    for old in [*plots_dir.glob("roc_*.json"), *plots_dir.glob("curves/*.json")]:
        old.unlink()
    for name, r in results.items():
        write_json(plots_dir / f"roc_{name}.json", r["roc"])
        if r.get("curves"):
            write_json(plots_dir / "curves" / f"train_{name}.json",
                       [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in rec.items()}
                        for rec in r["curves"]])


def write_results(results: dict[str, dict], metadata: dict, head: dict, metrics_path: str | Path,
                  plots_dir: str | Path | None) -> dict:
    """Metrics JSON for ``dvc metrics`` and, with ``plots_dir``, the files for ``dvc plots``."""
    payload = metrics_payload(results, metadata, head)
    write_json(metrics_path, payload)
    if plots_dir is not None:
        write_plots(results, plots_dir)
    return payload


def format_summary(payload: dict) -> str:
    about, mean = payload["about"], payload["mean"]
    per_class = ", ".join(f"{name} {100 * m['auroc']:.1f}" for name, m in payload["per_class"].items())
    best = ""
    if "best_epoch_auroc" in mean:
        best = (f" (final epoch, +/- {100 * mean['auroc_std']:.2f} over seeds); best-epoch AUROC "
                f"{100 * mean['best_epoch_auroc']:.2f}% (picked on the test set, the paper's protocol)")
    return (f"{about['head']} on {about['dataset']} / {about['backbone']} @ {about['image_size']}: mean AUROC "
            f"{100 * mean['auroc']:.2f}%{best} over {len(payload['per_class'])} classes ({per_class}).")


def load_metrics(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
