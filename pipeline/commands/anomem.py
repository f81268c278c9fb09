"""AnoMem head over a feature cache with maps and views: one-class and semi-supervised.

    python -m pipeline.extract --dataset digits --maps intermediate --views 2
    python -m stages.anomem --cache cache/digits_efficientnet_lite0_224.zarr --gammas 0.01,0.05,0.1

Its parameters are the head's and its stage's (``AnoMemParams`` and ``RUN`` in
``pipeline/heads/anomem/settings.py``); what is its own here: the checks of the views before
any training, the semi-supervised runs after the one-class run, the kNN baseline on the same
training images, the head's footprint and the controls line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from pipeline.commands.stage import Stage, StageRun, head_command
from pipeline.errors import PipelineError
from pipeline.protocol import NORMAL_VS_ANOMALIES
from pipeline.report.heads.anomem import CONTROLS, retrieval_words

if TYPE_CHECKING:
    import numpy as np

    from pipeline.heads.anomem.head import AnoMemHead
    from pipeline.protocol import Task
    from pipeline.store.cache import FeatureCache


def head_class() -> type:
    from pipeline.heads.anomem.head import AnoMemHead

    return AnoMemHead


def view_rows_of(cache: "FeatureCache") -> "np.ndarray":
    """The training rows that have cached views (AnoMem trains on those alone)."""
    from pipeline.store.views import open_views

    return open_views(cache).read("train", "rows")


def check(run: StageRun) -> None:
    """Refuse, before any training, what would otherwise fail after some of it: a cache without
    views, views without a scale the head trains on or with fewer than 2 per image, a task with
    no training image with views, a kNN baseline whose k is above a task's training images with
    views. Under normal-vs-anomalies, drop the semi-supervised runs (no anomalies to label)."""
    import numpy as np

    from pipeline.heads.base import POOLED
    from pipeline.store.views import open_views

    cache, head = run.cache, run.head
    views = open_views(cache)
    scales = head._choose_scales(dict.fromkeys([POOLED, *cache.map_names("train")]))
    stored = {POOLED: "features", **{name: f"maps/{name}" for name in views.map_names("train")}}
    for scale in scales:
        if scale not in stored:
            raise PipelineError(f"no cached views of scale {scale!r}: extract with --views 2 (and the same --maps).")
        if views.array("train", stored[scale]).shape[1] < 2:
            raise PipelineError(f"the views of {scale!r} must hold at least 2 views per image: extract with --views 2.")
    with_views = cache.labels("train")[views.read("train", "rows")]
    counts = {task.name: int(np.isin(with_views, task.normal).sum()) for task in run.tasks}
    fewest = min(counts, key=counts.get)
    if counts[fewest] == 0:
        raise PipelineError(f"{fewest} has no training images with views (the views were made with "
                            f"--views-per-class): AnoMem trains on those alone.")
    k = run.run["knn_baseline"]
    if k > counts[fewest]:
        raise PipelineError(f"the kNN baseline's k = {k} is above the {counts[fewest]} training images with views of "
                            f"{fewest}: lower --knn-baseline, or 0 to skip it.")
    if run.run["gammas"] and run.tasks[0].by_type:
        # An anomaly folder's training split holds normal images only: no anomalies to label.
        click.echo(f"{NORMAL_VS_ANOMALIES}: the head trains on the normal images only, so the semi-supervised runs "
                   f"(--gammas {','.join(map(str, run.run['gammas']))}) are not made; one-class only.", err=True)
        run.run["gammas"] = ()


def evaluate(run: StageRun) -> dict:
    """The one-class run (its heads kept, for the footprint and for --semi-stage-a reuse), then
    each gamma's semi-supervised draws; a task's result holds its draws' metrics and runs under
    ``semi_supervised`` by gamma (``semi_supervised`` below sums them up)."""
    from pipeline.evaluate import evaluate_one_vs_all

    label = f"AnoMem {run.head.scales}/{run.head.memory}"
    results = evaluate_one_vs_all(run.cache, run.head, run.tasks, seeds=run.seeds, keep_heads=True, client=run.client,
                                  after_fit=run.saver, desc=label, shift=run.shift)
    stage_a = {name: r["head"] for name, r in results.items()} if run.run["semi_stage_a"] == "reuse" else None
    for gamma in run.run["gammas"] or ():
        semi = evaluate_one_vs_all(run.cache, run.head, run.tasks, seeds=range(run.run["draws"]), gamma=gamma,
                                   start_from=stage_a, client=run.client, desc=f"{label} gamma {gamma}")
        for name, r in semi.items():
            results[name].setdefault("semi_supervised", {})[str(gamma)] = {"metrics": r["metrics"], "runs": r["runs"],
                                                                            "diagnostics": r["diagnostics"]}
    return results


def semi_supervised(results: dict[str, dict], draws: int, stage_a: str) -> dict:
    """Per gamma: the mean AUROC over classes and draws, its spread over draws (of the mean over
    classes), and per class the mean and std over draws (and the mean weight the combined score
    gave the classifiers, where it has one)."""
    import numpy as np

    section = {}
    for gamma in next(iter(results.values())).get("semi_supervised", {}):
        by_class = {name: r["semi_supervised"][gamma] for name, r in results.items()}
        # semi_weight: the classifiers' weight beside the one-class score (semi_score "combined"), mean over draws.
        per_class = {name: {"auroc": round(r["metrics"]["auroc"], 6), "auroc_std": round(r["metrics"]["auroc_std"], 6),
                            **{k: round(v, 6) for k, v in r.get("diagnostics", {}).items() if k == "semi_weight"}}
                     for name, r in by_class.items()}
        per_draw = np.array([[one["auroc"] for one in r["runs"]] for r in by_class.values()])  # classes x draws
        section[gamma] = {"mean": {"auroc": round(float(per_draw.mean()), 6),
                                   "auroc_std": round(float(per_draw.mean(axis=0).std()), 6)},
                          "per_class": per_class, "draws": draws, "stage_a": stage_a}
    return section


def footprint(cache: "FeatureCache", head: "AnoMemHead", normal: tuple[int, ...]) -> dict:
    """The head's memories against the kNN gallery it replaces (the normal classes' training
    features, all of them, not only those with views), in stored values."""
    import numpy as np

    n_normal = int(np.isin(cache.labels("train"), normal).sum())
    gallery = n_normal * int(cache.array("train", "features").shape[1])
    return {**head.footprint(), "knn_gallery_values": gallery,
            "memory_slots_x_dims": {s: list(m.patterns.shape) for s, m in head.memories_.items()}}


def knn_same_rows(cache: "FeatureCache", rows: "np.ndarray", tasks: "list[Task]", k: int, device: str) -> dict:
    """DN2 kNN on the pooled features of the same training rows AnoMem was given (``rows``),
    graded as the head is: per class, or per anomaly type and overall (normal-vs-anomalies); on
    the features as they are and L2-normalised (``l2``: AnoMem's default scaling, so a reader can
    tell what the memory adds beyond the normalisation)."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from pipeline.heads.knn.head import KNNHead
    from pipeline.heads.scaling import Scaler
    from pipeline.protocol import split_for

    labels, test = cache.labels("train")[rows], cache.features("test")
    train = cache.features("train", rows)
    result: dict = {"k": k, "gallery": "the training images with views"}
    for scaling in ("none", "l2"):
        scale = Scaler.fit(scaling, train)
        per_class, overall = {}, None
        for task in tasks:
            graded = split_for(task, labels, cache.labels("test"), cache.classes)
            scores = KNNHead(k=k, device=device, threshold_quantile=None).fit(
                scale(train[graded.train_index])).score_samples(scale(test))

            def auroc(where: "slice | np.ndarray" = slice(None)) -> dict:
                return {"auroc": round(float(roc_auc_score(graded.test_is_anomaly[where], scores[where])), 6)}

            if graded.types:
                per_class.update({name: auroc(where) for name, where in graded.types.items()})
                overall = auroc()
            else:
                per_class[task.name] = auroc()
        mean = float(np.mean([m["auroc"] for m in per_class.values()]))
        figures = {"mean": {"auroc": round(mean, 6)}, **({"overall": overall} if overall else {}),
                   "per_class": per_class}
        if scaling == "none":
            result.update(figures)
        else:
            result[scaling] = figures
    return result


def describe(run: StageRun) -> dict:
    return {"training_images_per_class": "those with cached views", "views": len(view_rows_of(run.cache))}


def finish(run: StageRun, payload: dict, results: dict) -> None:
    """The footprint of the first task's head (first seed), the semi-supervised runs and the kNN
    baseline on the same training images."""
    payload["about"]["footprint"] = footprint(run.cache, next(iter(results.values()))["head"], run.tasks[0].normal)
    semi = semi_supervised(results, run.run["draws"], run.run["semi_stage_a"])
    if semi:
        payload["semi_supervised"] = semi
    if run.run["knn_baseline"]:
        payload["knn_same_rows"] = knn_same_rows(run.cache, view_rows_of(run.cache), run.tasks,
                                                 run.run["knn_baseline"], str(run.head.device))


def controls_line(payload: dict) -> str:
    """The one-class controls in a line: ||z|| alone and the nearest slot, graded like the
    head's score, and the retrieval softmax's largest weight and entropy on the test images."""
    graded = [f"{words.removeprefix('control: ')} {100 * payload['controls'][name]['mean']['auroc']:.2f}%"
              for name, words in CONTROLS.items() if name in payload.get("controls", {})]
    return f"  controls, mean AUROC: {', '.join(graded)}{retrieval_words(payload.get('diagnostics', {}))}"


def report(run: StageRun, payload: dict) -> None:
    if "controls" in payload:
        click.echo(controls_line(payload))
    for gamma, semi in payload.get("semi_supervised", {}).items():
        click.echo(f"  gamma {gamma}: mean AUROC {100 * semi['mean']['auroc']:.2f}% "
                   f"(+/- {100 * semi['mean']['auroc_std']:.2f} over {semi['draws']} draws)")


STAGE = Stage(
    "anomem", head_class=head_class, what_saved="projections, memories (the one-class head, first seed)",
    doc="""Train AnoMem on each normal class in turn: stage A learns a projection and a Hopfield
    memory per scale from two cached augmented views of each training image; stage B scores
    test images by how far each scale's features are from their recollection (one-class) or,
    with --gammas, by classifiers trained on that difference with a few labelled anomalies
    drawn from the other classes' training images (semi-supervised).""",
    check=check, evaluate=evaluate, describe=describe, finish=finish, report=report)
main = head_command(STAGE)

if __name__ == "__main__":
    main()
