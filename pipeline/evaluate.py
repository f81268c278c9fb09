"""The one data path shared by every head: cache -> head -> scores -> metrics."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

import numpy as np

from pipeline.cli import cache_label, progress, write_json
from pipeline.extract.datasets import OneVsAll, one_vs_all
from pipeline.metrics import detection_metrics, roc_points, summarise
from pipeline.store.cache import FeatureCache, once_per_process

if TYPE_CHECKING:
    from distributed import Client


class Head(Protocol):
    def fit(self, train_features: np.ndarray) -> "Head": ...

    def score(self, test_features: np.ndarray) -> np.ndarray: ...


# Called with (normal class index, fitted head, its training features) after each class is trained.
AfterFit = Callable[[int, Any, Any], None]


def evaluate_one_vs_all(cache: FeatureCache, make_head: Callable[[], Head], classes: list[int],
                        desc: str = "classes", stream_train: bool = False, out_of_core: bool = False,
                        client: "Client | None" = None, after_fit: "AfterFit | None" = None) -> dict[str, dict]:
    """Fit a fresh head on each normal class and score the whole test set.

    Returns, per class name, its metrics and its ROC points. With ``stream_train`` the
    head gets its training features as a stream of cache chunks (for heads that accept
    one, such as kNN) instead of an array, so the training split never sits in memory.
    With ``out_of_core`` it gets them as a Dask array over the cache chunks (one task per
    chunk, computed on ``client``'s cluster if given, else by Dask's threads here).
    With ``client`` (and not ``out_of_core``) each class is a job on that Dask cluster;
    ``make_head`` must then be picklable (a class or a ``functools.partial`` of one).
    ``after_fit(class, head, train)`` is called once each class's head is fitted (to save it;
    pipeline.saved_heads.HeadSaver); with ``client`` it runs on the worker, so it must pickle too.
    """
    if client is not None and not out_of_core:
        jobs = [Job(str(cache.path), c, make_head, stream_train=stream_train, after_fit=after_fit) for c in classes]
        results = _run_jobs(client, jobs, desc, unit="class")
        return {cache.classes[c]: r for c, r in zip(classes, results)}
    train_labels, test_labels = cache.labels("train"), cache.labels("test")
    # Read (and checksum) each split once; every class takes its rows from memory.
    train_features = None if stream_train or out_of_core else cache.features("train")
    test_features = cache.features("test")
    names = cache.classes
    results = {}
    with progress(total=len(classes), desc=desc, unit="class") as bar:
        for c in classes:
            protocol = one_vs_all(train_labels, test_labels, c)
            if out_of_core:
                train = cache.dask_rows("train", "features", protocol.train_index)
            elif stream_train:
                train = lambda rows=protocol.train_index: cache.iter_rows("train", "features", rows)  # noqa: E731
            else:
                train = train_features[protocol.train_index]
            results[names[c]] = _score_class(make_head, protocol, train, test_features, after_fit)
            bar.update(1)
    return results


def _score_class(make_head: Callable[[], Head], protocol: OneVsAll, train, test_features: np.ndarray,
                 after_fit: "AfterFit | None" = None) -> dict:
    """One class of a head fitted in one go: its metrics and ROC points."""
    head = make_head().fit(train)
    if after_fit is not None:
        after_fit(protocol.normal_class, head, train)
    scores = head.score(test_features)
    return {"metrics": detection_metrics(protocol.test_is_anomaly, scores),
            "roc": roc_points(protocol.test_is_anomaly, scores)}


class TrainedHead(Protocol):
    history: list[dict]

    def fit(self, train_features: np.ndarray, monitor: tuple[np.ndarray, np.ndarray] | None = None,
            progress: Callable[[dict], None] | None = None) -> "TrainedHead": ...

    def score(self, test_features: np.ndarray) -> np.ndarray: ...


def evaluate_trained_one_vs_all(cache: FeatureCache, make_head: Callable[[int], TrainedHead], classes: list[int],
                                seeds: Sequence[int] = (0,), desc: str = "classes",
                                client: "Client | None" = None, after_fit: "AfterFit | None" = None
                                ) -> dict[str, dict]:
    """Like ``evaluate_one_vs_all`` for heads trained by epochs, over several seeds.

    Each run tracks the test AUROC after every epoch (``history``). Per class: the metrics
    of the final model (mean over seeds, with ``auroc_std``), and, separately named, the
    best test AUROC seen during training (``best_epoch_auroc``: the paper's protocol, which
    picks the epoch on the test set), ROC points of the first seed and the training curves.
    With ``client`` every (class, seed) run is a job on that Dask cluster (``make_head`` must
    then be picklable, e.g. a ``functools.partial`` of a module-level function).
    ``after_fit`` as in ``evaluate_one_vs_all``, for the first seed of each class only.
    """
    if client is not None:
        jobs = [Job(str(cache.path), c, make_head, seed=seed, with_roc=i == 0,
                    after_fit=after_fit if i == 0 else None)
                for c in classes for i, seed in enumerate(seeds)]
        runs = _run_jobs(client, jobs, desc, unit="run")  # class-major, seeds in order
        n = len(seeds)
        return {cache.classes[c]: _combine_runs(runs[k * n:(k + 1) * n]) for k, c in enumerate(classes)}
    train_labels, test_labels = cache.labels("train"), cache.labels("test")
    train_features, test_features = cache.features("train"), cache.features("test")
    names = cache.classes
    results = {}
    with progress(total=len(classes) * len(seeds), desc=desc, unit="run") as bar:
        for c in classes:
            protocol = one_vs_all(train_labels, test_labels, c)
            runs = []
            for i, seed in enumerate(seeds):
                bar.set_postfix_str(f"{names[c]} seed {seed}")
                runs.append(_train_run(make_head, seed, protocol, train_features[protocol.train_index],
                                       test_features, with_roc=i == 0, after_fit=after_fit if i == 0 else None,
                                       on_epoch=lambda r, c=c, seed=seed: bar.set_postfix_str(
                                           f"{names[c]} seed {seed} epoch {r['epoch']} AUROC "
                                           f"{100 * r['test_auroc']:.1f}")))
                bar.update(1)
            results[names[c]] = _combine_runs(runs)
    return results


def _train_run(make_head: Callable[[int], TrainedHead], seed: int, protocol: OneVsAll, train: np.ndarray,
               test_features: np.ndarray, with_roc: bool,
               on_epoch: Callable[[dict], None] | None = None, after_fit: "AfterFit | None" = None) -> dict:
    """One (class, seed) run of a head trained by epochs: final metrics, best epoch, curves."""
    head = make_head(seed)
    head.fit(train, monitor=(test_features, protocol.test_is_anomaly), progress=on_epoch)
    if after_fit is not None:
        after_fit(protocol.normal_class, head, train)
    scores = head.score(test_features)
    best = max(head.history, key=lambda r: r["test_auroc"])
    return {"run": {**detection_metrics(protocol.test_is_anomaly, scores),
                    "best_epoch_auroc": best["test_auroc"], "best_epoch": best["epoch"]},
            "curves": [{"seed": seed, **record} for record in head.history],
            "roc": roc_points(protocol.test_is_anomaly, scores) if with_roc else None}


def _combine_runs(parts: list[dict]) -> dict:
    """A class's result from its runs (in seed order): means over seeds, the first seed's ROC."""
    runs = [p["run"] for p in parts]
    metrics = {name: float(np.mean([r[name] for r in runs])) for name in runs[0]}
    metrics["auroc_std"] = float(np.std([r["auroc"] for r in runs]))
    metrics["best_epoch_auroc_std"] = float(np.std([r["best_epoch_auroc"] for r in runs]))
    return {"metrics": metrics, "roc": parts[0]["roc"], "curves": [c for p in parts for c in p["curves"]],
            "runs": runs}


# --- jobs on a Dask cluster (python -m stages.* --scheduler ...) --------------------------

@dataclass(frozen=True)
class Job:
    """One (head, class, seed) unit of work, small enough to ship to a worker: the worker
    opens the cache at ``cache_path`` itself (so that path must be shared by the workers)."""

    cache_path: str
    normal_class: int
    make_head: Callable  # picklable: a class, or functools.partial of a module-level function
    seed: int | None = None  # None: a head fitted in one go (kNN); else a run of a trained head
    with_roc: bool = True
    stream_train: bool = False
    after_fit: "AfterFit | None" = None  # picklable too (pipeline.saved_heads.HeadSaver)


@dataclass
class _WorkerData:
    cache: FeatureCache
    train_labels: np.ndarray
    test_labels: np.ndarray
    test_features: np.ndarray


def _job_data(cache: FeatureCache) -> _WorkerData:
    return _WorkerData(cache, cache.labels("train"), cache.labels("test"), cache.features("test"))


def _open_for_job(path: str) -> _WorkerData:
    """The cache and its test split, read once per worker process and reused by its later jobs."""
    return once_per_process(path, _job_data)


def run_job(job: Job) -> dict:
    """What a worker does for one job. Training features are read for this class only."""
    data = _open_for_job(job.cache_path)
    protocol = one_vs_all(data.train_labels, data.test_labels, job.normal_class)
    if job.seed is None:
        if job.stream_train:
            train = lambda: data.cache.iter_rows("train", "features", protocol.train_index)  # noqa: E731
        else:
            train = data.cache.features("train", protocol.train_index)
        return _score_class(job.make_head, protocol, train, data.test_features, job.after_fit)
    return _train_run(job.make_head, job.seed, protocol, data.cache.features("train", protocol.train_index),
                      data.test_features, job.with_roc, after_fit=job.after_fit)


def _run_jobs(client: "Client", jobs: list, desc: str, unit: str,
              fn: Callable[[Any], dict] | None = None) -> list[dict]:
    """``fn(job)`` (default ``run_job``) for every job on the cluster, with a progress bar;
    results in the order of ``jobs``."""
    from pipeline.distributed import map_jobs

    with progress(total=len(jobs), desc=desc, unit=unit) as bar:
        return map_jobs(client, fn or run_job, jobs, on_done=lambda: bar.update(1))


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
        if "best_epoch_auroc" in mean:
            mean["best_epoch_auroc_std"] = seed_spread(results, "best_epoch_auroc")
    return {
        "mean": {k: round(v, 6) for k, v in mean.items()},
        "per_class": per_class,
        "about": {**cache_label(metadata), "protocol": "one-vs-all", **head},
    }


def write_plots(results: dict[str, dict], plots_dir: str | Path | None, curves_dir: str | Path | None = None) -> None:
    """For ``dvc plots``: one ROC file per class in ``plots_dir`` and, for heads trained by
    epochs, one training-curve file per class in ``curves_dir`` (loss terms and test AUROC
    per epoch and seed). Separate folders, since DVC gives each folder one x and y."""
    for folder, pattern in ((plots_dir, "roc_*.json"), (curves_dir, "train_*.json")):
        if folder is not None:
            Path(folder).mkdir(parents=True, exist_ok=True)
            for old in Path(folder).glob(pattern):
                old.unlink()
    for name, r in results.items():
        if plots_dir is not None:
            write_json(Path(plots_dir) / f"roc_{name}.json", r["roc"])
        if curves_dir is not None and r.get("curves"):
            write_json(Path(curves_dir) / f"train_{name}.json",
                       [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in rec.items()}
                        for rec in r["curves"]])


def write_results(results: dict[str, dict], metadata: dict, head: dict, metrics_path: str | Path,
                  plots_dir: str | Path | None, curves_dir: str | Path | None = None) -> dict:
    """Metrics JSON for ``dvc metrics`` and the files for ``dvc plots``."""
    payload = metrics_payload(results, metadata, head)
    write_json(metrics_path, payload)
    write_plots(results, plots_dir, curves_dir)
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


# --- heads that need maps, views and labelled anomalies (AnoMem) ----------------------------

@dataclass
class MultiScaleData:
    """What AnoMem trains and scores on, read once: per scale (pooled vector and any maps),
    the plain training and test features, and the cached views of the rows that have them."""

    train: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    views: dict[str, np.ndarray]
    view_rows: np.ndarray  # training rows that have views, in the order of ``views``
    train_labels: np.ndarray  # of the rows that have views
    test_labels: np.ndarray
    all_train_labels: np.ndarray

    @classmethod
    def read(cls, cache: FeatureCache, scales: Sequence[str] | None = None) -> "MultiScaleData":
        from pipeline.extract.views import open_views

        views_store = open_views(cache)
        names = ["pooled"] + cache.map_names() if scales is None else list(scales)
        array = lambda name: "features" if name == "pooled" else f"maps/{name}"  # noqa: E731
        view_rows = views_store.read("train", "rows")
        return cls(train={n: cache.read("train", array(n), view_rows) for n in names},
                   test={n: cache.read("test", array(n)) for n in names},
                   views={n: views_store.read("train", array(n)) for n in names},
                   view_rows=view_rows, train_labels=cache.labels("train")[view_rows],
                   test_labels=cache.labels("test"), all_train_labels=cache.labels("train"))

    def rows(self, index: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(plain, views) of the given positions among the rows that have views."""
        return ({n: a[index] for n, a in self.train.items()}, {n: a[index] for n, a in self.views.items()})


def draw_anomalies(labels: np.ndarray, normal_class: int, gamma: float, draw: int) -> tuple[np.ndarray, np.ndarray]:
    """Training positions for one semi-supervised run: every normal one, plus
    round(gamma x n_normal) (at least 1) labelled anomalies drawn at random from the other
    classes' training images. Returns (positions, is_normal)."""
    normal = np.flatnonzero(labels == normal_class)
    if gamma <= 0:
        return normal, np.ones(len(normal), dtype=bool)
    others = np.flatnonzero(labels != normal_class)
    count = min(len(others), max(1, int(round(gamma * len(normal)))))
    rng = np.random.default_rng([normal_class, draw, int(round(gamma * 1e6))])
    anomalies = np.sort(rng.choice(others, size=count, replace=False))
    return np.concatenate([normal, anomalies]), np.concatenate([np.ones(len(normal), bool), np.zeros(count, bool)])


def evaluate_semi_supervised(data: MultiScaleData, class_names: list[str], make_head: Callable[[int], Head],
                             classes: list[int], gamma: float, draws: int, desc: str = "classes",
                             stage_a_heads: dict[str, Any] | None = None, client: "Client | None" = None,
                             cache_path: str | None = None, scales: Sequence[str] | None = None) -> dict[str, dict]:
    """One-vs-all for a head that may use labelled anomalies, ``draws`` random draws (and
    seeds) per class: per class, the mean metrics over draws with ``auroc_std``, the first
    draw's ROC points and fitted head, and every draw's metrics (``runs``). gamma = 0 is the
    one-class case. With ``stage_a_heads`` (class name -> a fitted one-class head), each draw
    trains only the classifiers on a copy of that class's head (``fit_classifiers``).

    With ``client``, each (class, draw) is a job on its Dask cluster; the workers read the
    cache at ``cache_path`` (with ``scales``, as ``data`` was read) once per process."""
    stage_a = lambda c: None if stage_a_heads is None or gamma <= 0 else stage_a_heads[class_names[c]]  # noqa: E731
    pairs = [(c, draw) for c in classes for draw in range(draws)]
    if client is not None:
        if cache_path is None:
            raise ValueError("jobs on a cluster need the cache path (the workers read the cache themselves)")
        jobs = [SemiSupervisedJob(str(cache_path), None if scales is None else tuple(scales), c, gamma, draw,
                                  make_head, stage_a(c)) for c, draw in pairs]
        done = _run_jobs(client, jobs, desc, "run", run_semi_supervised_job)
    else:
        done = []
        with progress(total=len(pairs), desc=desc, unit="run") as bar:
            for c, draw in pairs:
                bar.set_postfix_str(f"{class_names[c]} gamma {gamma} draw {draw}")
                done.append(semi_supervised_run(data, c, gamma, draw, make_head, stage_a(c)))
                bar.update(1)
    results = {}
    for c in classes:
        mine = [run for (normal, _), run in zip(pairs, done) if normal == c]
        runs = [run["metrics"] for run in mine]
        metrics = {name: float(np.mean([r[name] for r in runs])) for name in runs[0]}
        metrics["auroc_std"] = float(np.std([r["auroc"] for r in runs]))
        results[class_names[c]] = {"metrics": metrics, "roc": mine[0]["roc"], "runs": runs, "head": mine[0]["head"]}
    return results


def semi_supervised_run(data: MultiScaleData, normal_class: int, gamma: float, draw: int,
                        make_head: Callable[[int], Head], stage_a_head: Any = None) -> dict:
    """One draw of one class: its metrics and ROC points, and the fitted head for draw 0 (the
    one kept; later draws' heads are dropped rather than shipped back from a worker)."""
    import copy

    index, is_normal = draw_anomalies(data.train_labels, normal_class, gamma, draw)
    plain, views = data.rows(index)
    if stage_a_head is not None:
        head = copy.deepcopy(stage_a_head).fit_classifiers(plain, is_normal, draw)
    else:
        head = make_head(draw).fit(plain, views, None if gamma <= 0 else is_normal)
    scores = head.score(data.test)
    is_anomaly = data.test_labels != normal_class
    first = draw == 0
    return {"metrics": detection_metrics(is_anomaly, scores), "roc": roc_points(is_anomaly, scores) if first else None,
            "head": head if first else None}


@dataclass(frozen=True)
class _ReadMultiScale:
    """``MultiScaleData.read`` with given scales, as a value: equal jobs share one per-process read."""

    scales: tuple[str, ...] | None

    def __call__(self, cache: FeatureCache) -> MultiScaleData:
        return MultiScaleData.read(cache, self.scales)


@dataclass(frozen=True)
class SemiSupervisedJob:
    """One (class, gamma, draw) AnoMem run, shipped to a Dask worker."""

    cache_path: str
    scales: tuple[str, ...] | None
    normal_class: int
    gamma: float
    draw: int
    make_head: Callable  # picklable: functools.partial of a module-level function
    stage_a_head: Any = None  # a fitted one-class head whose classifiers alone are trained


def run_semi_supervised_job(job: SemiSupervisedJob) -> dict:
    data = once_per_process(job.cache_path, _ReadMultiScale(job.scales))
    return semi_supervised_run(data, job.normal_class, job.gamma, job.draw, job.make_head, job.stage_a_head)
