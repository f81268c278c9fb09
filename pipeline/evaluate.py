"""One evaluation loop for every head: cache -> head -> scores -> metrics.

For each task of the protocol (``pipeline.protocol``: one-vs-all, a task per normal class;
normal-vs-anomalies, one task on the normal classes, graded per anomaly type too) and each run
(a seed; for heads that use labelled anomalies, also a draw of them), a clone of the given head
is fitted on the task's training rows and scores the whole test set. Runs are done here or,
with a Dask ``client``, as jobs on its workers; both go through ``fit_and_score``, so they agree.

With a ``ShiftPlan`` (the robustness protocol, ``pipeline.shift``), the head fitted for a run
also scores the cache's corrupted copies of the test split, with the same fitted state, and
the metrics gain a ``shift`` section (SD, SPD, per corruption and severity).

Heads do not grade themselves: for heads trained by epochs, the test AUROC after each epoch
is recorded by a callback this module passes to ``fit`` (``curves``); a head's control scores
(``Head.control_scores``) are graded here too, and its ``diagnostics`` recorded, on one-class
runs (``controls`` and ``diagnostics`` in the metrics payload).

Heads that localise, on a cache of an anomaly folder with masks, also have their anomaly maps
graded by pixel (``grade_maps``), and the first seed's run keeps a small gallery (``gallery_of``):
per defect type and for the normal test images, the 3 highest- and 3 lowest-scoring images'
maps, which ``write_gallery`` draws over the cache's ``test/inputs`` beside the ROC plots.
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
from sklearn.base import clone

from pipeline.store.cache import FeatureCache, once_per_process
from pipeline.cli import cache_label, detail, is_verbose, progress, safe_filename, write_json
from pipeline.errors import PipelineError
from pipeline.heads.base import Features, Head
from pipeline import metrics_file
from pipeline.metrics import detection_metrics, roc_points, summarise
from pipeline.protocol import NORMAL_VS_ANOMALIES, ONE_VS_ALL, Task, draw_anomalies, one_vs_all, split_for
from pipeline.shift import ShiftPlan, mean_over_runs, shift_metrics, shift_section, summary_line

if TYPE_CHECKING:
    from distributed import Client

# Called with (task name, fitted head, its training Features) after the first run of
# each task is fitted (to save it: pipeline.heads.saving.HeadSaver); with a client it runs on
# the worker, so it must pickle.
AfterFit = Callable[[str, Head, Features], None]

# How a head gets its training rows: an array in memory, a stream of cache chunks read again
# at each score call (kNN --stream), or a Dask array over the cache chunks (kNN --out-of-core).
TRAIN_ACCESS = ("memory", "stream", "dask")


@dataclass(frozen=True)
class Plan:
    """What to run for each task: everything but the task, small enough to ship to a worker."""

    cache_path: str
    head: Head                      # unfitted: each run fits a clone
    seeds: tuple[int, ...] = (0,)   # one run per seed (and per draw of labelled anomalies)
    gamma: float = 0.0              # labelled anomalies per normal training image (0: one-class)
    track_epochs: bool = False      # record the test AUROC after every epoch (heads trained by epochs)
    train_access: str = "memory"
    keep_heads: bool = False        # return each task's first fitted head
    after_fit: AfterFit | None = None
    shift: ShiftPlan | None = None  # corrupted test splits the fitted head also scores
    curve_epochs: tuple[int, ...] = ()  # with track_epochs: only after these epochs (empty: every epoch)


@dataclass
class Run:
    """One (task, seed) unit: the plan, and for ``warm_start`` heads a fitted head to go on from."""

    plan: Plan
    task: Task
    index: int                       # position in plan.seeds
    start_from: Head | None = None   # fitted one-class head whose stage A is kept (AnoMem reuse)


# --- what a process reads once --------------------------------------------------------------

@dataclass
class EvaluationData:
    """Labels, the test split and (in memory) the training split of one cache, with the maps
    and views a head needs; read once per process and shared by its runs."""

    cache: FeatureCache
    train_labels: np.ndarray
    test_labels: np.ndarray
    test: Features
    train: Features | None = None   # None unless read in memory
    train_rows: np.ndarray | None = None  # the training rows ``train`` holds (those with views, if needed)
    # Corrupted test splits: name -> (Features, labels, the clean test rows they were made from).
    shifted: dict[str, tuple[Features, np.ndarray, np.ndarray]] = field(default_factory=dict)
    # The test images' ground-truth masks (N, S, S) uint8 (``pipeline.extract.masks``), read for
    # heads that localise when the cache has them.
    test_masks: np.ndarray | None = None

    def training_rows(self, normal: tuple[int, ...]) -> np.ndarray:
        """Positions in ``train_rows`` of the normal classes' training images."""
        return np.flatnonzero(np.isin(self.train_labels[self.train_rows], normal))


@dataclass(frozen=True)
class _Reader:
    """``read_data`` with given needs, as a value: equal reads share one per-process copy."""

    maps: bool
    views: bool
    train_in_memory: bool
    trunk: bool = False
    shifted: tuple[str, ...] = ()
    masks: bool = False

    def __call__(self, cache: FeatureCache) -> EvaluationData:
        return read_data(cache, self.maps, self.views, self.train_in_memory, self.trunk, self.shifted, self.masks)


def read_features(cache: FeatureCache, split: str, rows: np.ndarray | None = None, maps: bool = False,
                  views: bool = False, trunk: bool = False) -> Features:
    """A split's Features as float32: pooled vectors, and the cache's maps and augmented views
    (``<cache>.views.zarr``) if asked for. ``views`` needs ``rows`` to be the rows with views.
    ``trunk``: also the full-resolution trunk maps, kept float16 as stored (they are large)."""
    names = cache.map_names(split) if maps else []
    map_arrays = {n: cache.read(split, f"maps/{n}", rows).astype(np.float32) for n in names}
    trunk_arrays = {n: cache.read(split, f"trunk/{n}", rows) for n in (cache.trunk_names(split) if trunk else [])}
    view_arrays = None
    if views:
        from pipeline.store.views import load_views

        stored = load_views(cache, rows, ["features", *(f"maps/{n}" for n in names)])
        view_arrays = {"pooled": stored.pop("features"), **{k.removeprefix("maps/"): v for k, v in stored.items()}}
    return Features(cache.features(split, rows), map_arrays, view_arrays, trunk_arrays)


def read_data(cache: FeatureCache, maps: bool, views: bool, train_in_memory: bool = True,
              trunk: bool = False, shifted: Sequence[str] = (), masks: bool = False) -> EvaluationData:
    train_labels = cache.labels("train")
    train_rows = np.arange(len(train_labels))
    if views:
        from pipeline.store.views import open_views

        train_rows = open_views(cache).read("train", "rows")
    train = read_features(cache, "train", train_rows, maps, views, trunk) if train_in_memory else None
    test = read_features(cache, "test", maps=maps, trunk=trunk)
    corrupted = {split: (read_features(cache, split, maps=maps, trunk=trunk), cache.labels(split),
                         cache.read(split, "rows")) for split in shifted}
    test_masks = cache.read("test", "masks") if masks and "masks" in cache.array_names("test") else None
    return EvaluationData(cache, train_labels, cache.labels("test"), test, train, train_rows, corrupted, test_masks)


def _reader(plan: Plan) -> _Reader:
    return _Reader(plan.head.needs_maps, plan.head.needs_views, plan.train_access == "memory", plan.head.needs_trunk,
                   plan.shift.splits if plan.shift is not None else (), plan.head.localises)


def _data(plan: Plan) -> EvaluationData:
    return once_per_process(plan.cache_path, _reader(plan))


# --- one run ------------------------------------------------------------------------------------

def fit_and_score(run: Run, data: EvaluationData | None = None, on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Fit a clone of the plan's head on one task for one seed and score the test set: its
    metrics (and, per anomaly type, ``per_type``), its curves (per-epoch test AUROC), and for
    the first seed its ROC points (and the fitted head if the plan keeps heads). ``data``: what
    this process read of the cache (on a Dask worker, read once per process and kept for its
    later runs)."""
    plan, task, first = run.plan, run.task, run.index == 0
    data = data or _data(plan)
    seed = plan.seeds[run.index]
    protocol = split_for(task, data.train_labels, data.test_labels, data.cache.classes)
    head = _fresh_head(plan.head, run.start_from, seed)
    labels = None
    if plan.train_access == "memory":
        if plan.gamma > 0:  # one-vs-all only (evaluate_one_vs_all): one normal class
            index, is_normal = draw_anomalies(data.train_labels[data.train_rows], task.normal[0], plan.gamma, seed)
            labels = (~is_normal).astype(int)
        else:
            index = data.training_rows(task.normal)
        train = data.train.take(index)
    elif plan.train_access == "stream":
        train = Features(lambda rows=protocol.train_index: data.cache.iter_rows("train", "features", rows))
    else:
        train = Features(data.cache.dask_rows("train", "features", protocol.train_index))
    curve: list[dict] = []

    def record_epoch(fitted: Head, record: dict) -> None:
        entry = {"seed": seed, **record}
        if plan.track_epochs:  # every epoch's training record; the test AUROC where it is scored
            if not plan.curve_epochs or record["epoch"] in plan.curve_epochs:
                entry["test_auroc"] = detection_metrics(protocol.test_is_anomaly,
                                                        fitted.score_samples(data.test))["auroc"]
            curve.append(entry)
        if on_epoch is not None:
            on_epoch(entry)

    # Without tracked epochs the callback only reports them (with -v); it never changes the training.
    wants_epochs = plan.track_epochs or (on_epoch is not None and is_verbose())
    head.fit(train, labels, callback=record_epoch if wants_epochs else None)
    if first and plan.after_fit is not None:
        plan.after_fit(task.name, head, train)
    scores = np.asarray(head.score_samples(data.test))
    shift = {}
    if plan.shift is not None:  # the same fitted head on every corrupted copy of the test split
        shift = shift_metrics(plan.shift, task.normal, scores,
                              {split: (head.score_samples(features), labels, rows)
                               for split, (features, labels, rows) in data.shifted.items()})
    controls = {}
    if labels is None:  # one-class: what the head's score is made of
        controls = {name: np.asarray(control) for name, control in head.control_scores(data.test).items()}
    diagnostics = head.diagnostics(data.test)
    result = grade(protocol.test_is_anomaly, scores, controls, first)
    scored = [r for r in curve if "test_auroc" in r]
    if scored:
        best = max(scored, key=lambda r: r["test_auroc"])
        result["metrics"].update(best_epoch_auroc=best["test_auroc"], best_epoch=best["epoch"])
    result.update(curves=curve, diagnostics=diagnostics, shift=shift, head=head if first and plan.keep_heads else None)
    if protocol.types:  # normal-vs-anomalies: each anomaly type against the normal test rows
        result["per_type"] = {name: grade(protocol.test_is_anomaly[rows], scores[rows],
                                          {k: v[rows] for k, v in controls.items()}, first)
                              for name, rows in protocol.types.items()}
    if data.test_masks is not None and head.localises:
        maps = head.anomaly_maps(data.test, data.test_masks.shape[-1])
        result["pixel"] = grade_maps(data.test_masks, maps, protocol.types)
        # The gallery: the first seed's, for normal-vs-anomalies, where the cache has the images as
        # the backbone saw them (the command reads them, only the gallery's rows: ``write_gallery``).
        if first and protocol.types and "inputs" in data.cache.array_names("test"):
            result["gallery"] = gallery_of(scores, maps, protocol.test_is_anomaly, protocol.types, task.name, seed)
    return result


GALLERY_SIZE = 3  # images per end (highest, lowest) of each group of a gallery


def gallery_of(scores: np.ndarray, maps: np.ndarray, is_anomaly: np.ndarray, types: dict[str, np.ndarray],
               normal: str, seed: int, size: int = GALLERY_SIZE) -> dict:
    """What a run keeps for its heat-map gallery (small: it may come back from a Dask worker):
    per anomaly type (``types``: its test rows and the normal ones), then for the normal test
    images as a group named ``normal``, the test rows of its ``size`` highest-scoring images
    (``high``, highest first) and ``size`` lowest (``low``, lowest first; ties in test order),
    and, for each row kept (``rows``, ascending), its score and its anomaly map as float16."""
    groups = {name: rows[is_anomaly[rows] == 1] for name, rows in types.items()}
    groups[normal] = np.flatnonzero(is_anomaly == 0)
    chosen = {name: {"high": rows[np.argsort(-scores[rows], kind="stable")][:size].tolist(),
                     "low": rows[np.argsort(scores[rows], kind="stable")][:size].tolist()}
              for name, rows in groups.items() if len(rows)}
    rows = np.array(sorted({row for ends in chosen.values() for end in ends.values() for row in end}), dtype=np.int64)
    return {"groups": chosen, "normal": normal, "seed": seed, "rows": rows,
            "scores": np.asarray(scores, dtype=np.float64)[rows], "maps": np.asarray(maps)[rows].astype(np.float16)}


def grade_maps(masks: np.ndarray, maps: np.ndarray, types: dict[str, np.ndarray]) -> dict:
    """Pixel AUROC and AUPRO of the anomaly maps against the masks: over the whole test split
    (``overall``) and, per anomaly type, over its images and the normal ones (``per_type``); a
    part none of whose defect images has a mask is left out."""
    from pipeline.pixel_metrics import pixel_metrics

    def graded(rows: np.ndarray | slice) -> dict | None:
        return pixel_metrics(masks[rows], maps[rows]) if (masks[rows] == 1).any() else None

    per_type = {name: graded(rows) for name, rows in types.items()}
    return {"overall": graded(slice(None)), "per_type": {k: v for k, v in per_type.items() if v is not None}}


def grade(is_anomaly: np.ndarray, scores: np.ndarray, controls: dict[str, np.ndarray], with_roc: bool) -> dict:
    """The detection metrics of ``scores`` and of each control score, and (``with_roc``) the ROC points."""
    return {"metrics": detection_metrics(is_anomaly, scores),
            "controls": {name: detection_metrics(is_anomaly, control) for name, control in controls.items()},
            "roc": roc_points(is_anomaly, scores) if with_roc else None}


def _fresh_head(prototype: Head, start_from: Head | None, seed: int) -> Head:
    """A clone of the prototype for this seed, or a copy of a fitted head to go on from."""
    if start_from is not None:
        import copy

        head = copy.deepcopy(start_from)
        return head.set_params(warm_start=True, seed=seed)
    head = clone(prototype)
    return head.set_params(seed=seed) if "seed" in head.get_params() else head


# --- the loop --------------------------------------------------------------------------------

def evaluate_one_vs_all(cache: FeatureCache, head: Head, classes: Sequence[int] | Sequence[Task], *,
                        seeds: Sequence[int] = (0,), gamma: float = 0.0, track_epochs: bool = False,
                        train_access: str = "memory", client: "Client | None" = None,
                        after_fit: AfterFit | None = None, keep_heads: bool = False,
                        start_from: dict[str, Head] | None = None, desc: str = "classes",
                        shift: ShiftPlan | None = None, curve_epochs: Sequence[int] = ()) -> dict[str, dict]:
    """Fit a fresh clone of ``head`` on each task, once per seed, and score the test set.

    ``classes``: the protocol's tasks (``pipeline.protocol.tasks``), or class indices, each in
    turn normal (one-vs-all). A normal-vs-anomalies task's result also holds, per anomaly type
    (that type's test images against the normal ones), ``per_type``: the same entries but the
    curves, diagnostics and head, which are the task's.

    Returns, per task name (one-vs-all: the class name): ``metrics`` (the mean over seeds; for heads with a seed, also
    ``auroc_std`` and every run's metrics under ``runs``), the first seed's ``roc`` points and
    ``head`` (with ``keep_heads``), and the ``curves`` of every seed (``track_epochs``: the
    test AUROC after each epoch, or only after those in ``curve_epochs``, and
    ``best_epoch_auroc``, the paper's protocol, which picks the epoch on the test set, in the
    metrics). With ``gamma`` > 0, each seed also draws its
    labelled anomalies from the other classes' training images (heads that use labels;
    one-vs-all only); ``start_from`` (task name -> a fitted head) makes each run go on from a copy of that head
    (``warm_start``). ``train_access`` "stream" or "dask" hands kNN its gallery chunk by chunk.
    With ``client``, each (class, seed) is a job on that Dask cluster, except with "dask",
    whose chunk tasks run there instead. With ``shift``, each run's fitted head also scores
    the plan's corrupted test splits (``shift`` per class: figures per split, mean over seeds)."""
    if train_access not in TRAIN_ACCESS:
        raise ValueError(f"train_access must be one of {TRAIN_ACCESS}")
    names = cache.classes
    tasks = [c if isinstance(c, Task) else one_vs_all(names, [c])[0] for c in classes]
    if gamma > 0 and any(task.by_type for task in tasks):
        raise PipelineError(f"semi-supervised runs draw labelled anomalies from the training images of the other "
                            f"classes, and under {NORMAL_VS_ANOMALIES} the head trains on the normal images only "
                            f"(an anomaly_folder has no anomalies in train/): run one-class.")
    plan = Plan(str(Path(cache.path).resolve()), head, tuple(seeds), gamma, track_epochs, train_access, keep_heads,
                after_fit, shift, tuple(curve_epochs))
    runs = [Run(plan, task, i, None if start_from is None else start_from[task.name])
            for task in tasks for i in range(len(seeds))]
    if client is not None and train_access != "dask":
        done = _run_jobs(client, runs, desc)
    else:
        done = []
        data = _reader(plan)(cache)  # read once here, and let go when the loop ends
        with progress(total=len(runs), desc=desc, unit="run") as bar:
            for run in runs:
                label = f"{run.task.name} seed {seeds[run.index]}"
                bar.set_postfix_str(label)

                def on_epoch(record: dict, label: str = label) -> None:
                    auroc = f" AUROC {100 * record['test_auroc']:.1f}" if "test_auroc" in record else ""
                    bar.set_postfix_str(f"{label} epoch {record['epoch']}{auroc}")
                    detail(f"{desc} {label} {epoch_line(record)}")

                done.append(fit_and_score(run, data, on_epoch=on_epoch))
                bar.update(1)
    stochastic = "seed" in head.get_params()
    n = len(seeds)
    return {task.name: _combine(done[k * n:(k + 1) * n], stochastic) for k, task in enumerate(tasks)}


def epoch_line(record: dict) -> str:
    """``epoch 3: loss 0.6931, ce 0.5, ..., test AUROC 91.2%`` for the -v lines."""
    values = [f"{name} {value:.4g}" for name, value in record.items()
              if name not in ("epoch", "seed", "test_auroc") and isinstance(value, numbers.Real)
              and not isinstance(value, bool)]
    if "test_auroc" in record:
        values.append(f"test AUROC {100 * record['test_auroc']:.1f}%")
    return f"epoch {record['epoch']}: {', '.join(values)}"


def _combine(parts: list[dict], stochastic: bool) -> dict:
    """A task's result from its runs (in seed order): means over seeds, the first seed's ROC."""
    diagnostics = {name: float(np.mean([p["diagnostics"][name] for p in parts])) for name in parts[0]["diagnostics"]}
    result = {**_graded_over_seeds(parts, stochastic), "curves": [c for p in parts for c in p["curves"]],
              "head": parts[0]["head"], "diagnostics": diagnostics,
              "shift": mean_over_runs([p["shift"] for p in parts]) if parts[0]["shift"] else {}}
    if "per_type" in parts[0]:
        result["per_type"] = {name: _graded_over_seeds([p["per_type"][name] for p in parts], stochastic)
                              for name in parts[0]["per_type"]}
    if parts[0].get("pixel"):
        result["pixel"] = _pixel_over_seeds([p["pixel"] for p in parts])
    if parts[0].get("gallery"):
        result["gallery"] = parts[0]["gallery"]
    return result


def _pixel_over_seeds(parts: list[dict]) -> dict:
    """``grade_maps``' figures of each run, as means over seeds."""
    def mean(figures: list[dict | None]) -> dict | None:
        return None if figures[0] is None else {k: float(np.mean([f[k] for f in figures])) for k in figures[0]}

    return {"overall": mean([p["overall"] for p in parts]),
            "per_type": {name: mean([p["per_type"][name] for p in parts]) for name in parts[0]["per_type"]}}


def _graded_over_seeds(parts: list[dict], stochastic: bool) -> dict:
    """What ``grade`` gave for each run, as means over seeds (with the spread and every run's
    metrics for heads with a seed) and the first seed's ROC."""
    runs = [p["metrics"] for p in parts]
    metrics = {name: float(np.mean([r[name] for r in runs])) for name in runs[0]}
    controls = {control: {name: float(np.mean([p["controls"][control][name] for p in parts]))
                          for name in values} for control, values in parts[0]["controls"].items()}
    result = {"metrics": metrics, "roc": parts[0]["roc"], "controls": controls}
    if stochastic:
        metrics["auroc_std"] = float(np.std([r["auroc"] for r in runs]))
        if "best_epoch_auroc" in metrics:
            metrics["best_epoch_auroc_std"] = float(np.std([r["best_epoch_auroc"] for r in runs]))
        result["runs"] = runs
    return result


def _run_jobs(client: "Client", runs: list[Run], desc: str) -> list[dict]:
    """``fit_and_score(run)`` for every run on the cluster, with a progress bar; results in
    the order of ``runs``."""
    from pipeline.distributed import map_jobs

    with progress(total=len(runs), desc=desc, unit="run") as bar:
        return map_jobs(client, fit_and_score, runs, on_done=lambda: bar.update(1))


# --- metrics files and plots -----------------------------------------------------------------

def seed_spread(results: dict[str, dict], metric: str) -> float:
    """Standard deviation over seeds of the class-mean of ``metric`` (0 for one seed)."""
    per_seed = np.array([[run[metric] for run in r["runs"]] for r in results.values()])  # classes x seeds
    return float(np.std(per_seed.mean(axis=0)))


def graded_parts(results: dict[str, dict]) -> tuple[dict[str, dict], dict | None]:
    """What a metrics file's ``per_class`` holds: the result of each class (one-vs-all), or of
    each anomaly type of the one normal-vs-anomalies task, with that task's result (the whole
    test split, the metrics file's ``overall``; None for one-vs-all)."""
    if any("per_type" in r for r in results.values()):
        (task,) = results.values()
        return task["per_type"], task
    return results, None


def _rounded(metrics: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 6) for k, v in metrics.items()}


def metrics_payload(results: dict[str, dict], metadata: dict, head: dict) -> dict:
    """Per class (per anomaly type, normal-vs-anomalies) and mean metrics, and for
    normal-vs-anomalies ``overall`` (every anomaly against the normal test images), labelled
    with dataset, backbone, preprocessing, protocol and head."""
    graded, task = graded_parts(results)
    per_class = {name: _rounded(r["metrics"]) for name, r in graded.items()}
    mean = summarise(per_class)
    if all("runs" in r for r in graded.values()):
        # Over seeds, the spread of the mean over classes (what a table's mean row varies by).
        mean["auroc_std"] = seed_spread(graded, "auroc")
        if "best_epoch_auroc" in mean:
            mean["best_epoch_auroc_std"] = seed_spread(graded, "best_epoch_auroc")
    protocol = {"protocol": ONE_VS_ALL} if task is None else {"protocol": NORMAL_VS_ANOMALIES,
                                                              "normal": next(iter(results))}
    payload = {"mean": _rounded(mean), **({"overall": _rounded(task["metrics"])} if task else {}),
               "per_class": per_class, "about": {**cache_label(metadata), **protocol, **head}}
    # Control scores (graded like the head's score) and diagnostics, where the head has them.
    first = next(iter(results.values()))
    if first.get("controls"):
        payload["controls"] = {control: _mean_and_per_class({name: r["controls"][control]
                                                             for name, r in graded.items()})
                               for control in first["controls"]}
        if task is not None:
            for control, figures in payload["controls"].items():
                figures["overall"] = _rounded(task["controls"][control])
    if task is not None and task.get("pixel", {}).get("overall"):  # localisation, where the test images have masks
        pixel = task["pixel"]
        payload["pixel"] = {"overall": _rounded(pixel["overall"]), **_mean_and_per_class(pixel["per_type"])}
    if first.get("diagnostics"):
        payload["diagnostics"] = _mean_and_per_class({name: r["diagnostics"] for name, r in results.items()})
    if first.get("shift"):
        clean = mean["auroc"] if task is None else task["metrics"]["auroc"]  # SD: the clean figure it is beside
        payload["shift"] = shift_section({name: r["shift"] for name, r in results.items()}, clean)
    return payload


def _mean_and_per_class(per_class: dict[str, dict[str, float]]) -> dict:
    """``{"mean": ..., "per_class": ...}`` of figures by class, rounded as in metrics files."""
    return {"mean": {k: round(v, 6) for k, v in summarise(per_class).items()},
            "per_class": {name: {k: round(v, 6) for k, v in m.items()} for name, m in per_class.items()}}


def write_plots(results: dict[str, dict], plots_dir: str | Path | None, curves_dir: str | Path | None = None,
                maps_dir: str | Path | None = None, cache: FeatureCache | None = None) -> None:
    """For ``dvc plots``: one ROC file per class (per anomaly type, normal-vs-anomalies) in
    ``plots_dir`` and, for heads trained by epochs, one training-curve file per task in
    ``curves_dir`` (loss terms and test AUROC per epoch and seed). Separate folders, since DVC
    gives each folder one x and y. File names come from class names made safe
    (``safe_filename``): never outside the folder, never two classes in one file. In
    ``maps_dir`` (``gallery_folder``), the heat-map gallery of a localising head, drawn over the
    test images of ``cache`` (``write_gallery``)."""
    if maps_dir is not None:
        write_gallery(results, maps_dir, cache)
    for folder, pattern in ((plots_dir, "roc_*.json"), (curves_dir, "train_*.json")):
        if folder is not None:
            Path(folder).mkdir(parents=True, exist_ok=True)
            for old in Path(folder).glob(pattern):
                old.unlink()
    if plots_dir is not None:
        for name, r in graded_parts(results)[0].items():
            write_json(Path(plots_dir) / safe_filename(f"roc_{name}", ".json"), r["roc"])
    for name, r in results.items():
        if curves_dir is not None and r.get("curves"):
            write_json(Path(curves_dir) / safe_filename(f"train_{name}", ".json"),
                       [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in rec.items()}
                        for rec in r["curves"]])


GALLERY_FILE = "gallery.json"
# The colour range of a gallery: these percentiles of all its maps' pixels.
GALLERY_PERCENTILES = (1.0, 99.9)


def gallery_folder(plots_dir: str | Path) -> Path:
    """Where a stage with ``--plots DIR`` writes its heat-map gallery: the sibling ``DIR_maps``
    (as ``DIR_training`` for curves), not a subfolder: ``dvc plots`` reads every file under a
    plots folder declared in dvc.yaml, and would take gallery.json for a ROC file and fail."""
    folder = Path(plots_dir)
    if folder.name in ("", ".."):
        folder = Path(os.path.abspath(folder))
    return folder.with_name(f"{folder.name}_maps")


def has_gallery(results: dict[str, dict]) -> bool:
    return any(r.get("gallery") for r in results.values())


def gallery_location(maps_dir: str | Path, metrics_path: str | Path) -> str:
    """The metrics file's ``about.gallery``: the gallery.json in ``maps_dir``, relative to the
    metrics file's folder (with '/'), so the report finds it from any working directory, and
    after the metrics and plots folders are moved together."""
    target = os.path.abspath(Path(maps_dir) / GALLERY_FILE)
    return Path(os.path.relpath(target, os.path.dirname(os.path.abspath(metrics_path)))).as_posix()


def write_gallery(results: dict[str, dict], folder: str | Path, cache: FeatureCache | None) -> Path | None:
    """The gallery a run kept (``gallery_of``) as PNGs in ``folder``, each ``overlay`` of a test
    image as the backbone saw it (the cache's ``test/inputs``, only the rows shown are read),
    its anomaly map and its ground-truth mask's outline (none where the mask is unknown), all
    in one colour range (``GALLERY_PERCENTILES`` of the gallery's maps), so the same colour is
    the same score in every image: ``<group>_high_<rank>.png`` and ``<group>_low_<rank>.png``,
    names made safe (``safe_filename``); and ``gallery.json``, listing per group (each defect
    type, then the normal images) its files, test rows, image scores, ranks and masks, with the
    colour range. The folder's earlier gallery files are removed first (a run without a gallery
    leaves none behind). Returns the gallery.json written, or None."""
    from pipeline.heatmaps import overlay, write_png
    from pipeline.pixel_metrics import UNKNOWN

    folder = Path(folder)
    if folder.is_dir():
        for old in [*folder.glob("*_high_*.png"), *folder.glob("*_low_*.png"), folder / GALLERY_FILE]:
            old.unlink(missing_ok=True)
    gallery = next((r["gallery"] for r in results.values() if r.get("gallery")), None)
    if gallery is None or cache is None:
        return None
    rows = gallery["rows"]
    inputs, masks = cache.read("test", "inputs", rows), cache.read("test", "masks", rows)
    maps = np.asarray(gallery["maps"], dtype=np.float32)
    low, high = (float(v) for v in np.percentile(maps, GALLERY_PERCENTILES))
    at = {int(row): i for i, row in enumerate(rows)}
    groups: dict[str, list[dict]] = {}
    for name, ends in gallery["groups"].items():
        for end in ("high", "low"):
            for rank, row in enumerate(ends[end], 1):
                i = at[int(row)]
                known = not (masks[i] == UNKNOWN).any()
                file = safe_filename(f"{name}_{end}_{rank}", ".png")
                write_png(folder / file, overlay(inputs[i], maps[i], low, high, masks[i] if known else None))
                groups.setdefault(name, []).append({
                    "file": file, "row": int(row), "score": float(gallery["scores"][i]), "end": end, "rank": rank,
                    "mask_known": known, "mask_pixels": int((masks[i] == 1).sum()) if known else None})
    path = folder / GALLERY_FILE
    write_json(path, {"normal": gallery["normal"], "seed": gallery["seed"], "image_size": int(maps.shape[-1]),
                      "colour_range": {"low": low, "high": high, "percentiles": list(GALLERY_PERCENTILES)},
                      "groups": groups})
    return path


def write_results(results: dict[str, dict], metadata: dict, head: dict, metrics_path: str | Path,
                  plots_dir: str | Path | None, curves_dir: str | Path | None = None) -> dict:
    """Metrics JSON for ``dvc metrics`` (numbers; the description beside it, ``metrics_file``)
    and the files for ``dvc plots``."""
    payload = metrics_payload(results, metadata, head)
    metrics_file.write(metrics_path, payload)
    write_plots(results, plots_dir, curves_dir)
    return payload


def format_summary(payload: dict) -> str:
    about, mean = payload["about"], payload["mean"]
    per_class = ", ".join(f"{name} {100 * m['auroc']:.1f}" for name, m in payload["per_class"].items())
    overall = payload.get("overall")
    headline = mean if overall is None else overall
    best = ""
    if "best_epoch_auroc" in headline:
        # The epoch ``auroc`` is of: the last, unless the head kept another (chosen without the test set).
        best = (f" ({about.get('auroc_epoch', 'final epoch')}, +/- {100 * headline['auroc_std']:.2f} over seeds); "
                f"best-epoch AUROC "
                f"{100 * headline['best_epoch_auroc']:.2f}% (picked on the test set, the paper's protocol)")
    where = f"{about['head']} on {about['dataset']} / {about['backbone']} @ {about['image_size']}"
    robustness = f"\n{summary_line(payload['shift'])}" if "shift" in payload else ""
    if overall is None:
        return (f"{where}: mean AUROC {100 * mean['auroc']:.2f}%{best} over {len(payload['per_class'])} classes "
                f"({per_class}).{robustness}")
    pixel = payload.get("pixel", {}).get("overall")
    located = (f"\nWhere: pixel AUROC {100 * pixel['pixel_auroc']:.2f}%, AUPRO (to 30% FPR) {100 * pixel['aupro']:.2f}% "
               f"over the test images with masks." if pixel else "")
    return (f"{where}, normal {about.get('normal')} against every anomaly: AUROC {100 * overall['auroc']:.2f}%{best}; "
            f"per defect type ({per_class}), mean {100 * mean['auroc']:.2f}%.{located}{robustness}")

