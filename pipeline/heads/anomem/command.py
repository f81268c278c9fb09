"""AnoMem head over a feature cache with maps and views: one-class and semi-supervised.

    python -m pipeline.extract --dataset digits --maps intermediate --views 2
    python -m stages.anomem --cache cache/digits_efficientnet_lite0_224.zarr --gammas 0.01,0.05,0.1
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from pipeline import params
from pipeline.heads.anomem import (CONTROLS, MEMORY_CHOICES, PROJECTION_CHOICES, RETRIEVAL_CHOICES, SCALE_CHOICES,
                                   SLOT_INIT_CHOICES, STANDARDISE_CHOICES, retrieval_words)
from pipeline.heads.stage import CONTEXT, common_options, open_cache, saver_for, shift_plan
from pipeline.protocol import NORMAL_VS_ANOMALIES

if TYPE_CHECKING:
    from pipeline.store.cache import FeatureCache
    from pipeline.heads.anomem.head import AnoMemHead
    from pipeline.protocol import Task

# Parameters that do not decide the metrics, left out of the metrics file's description.
NOT_REPORTED = ("warm_start", "threshold_quantile")


def parse_gammas(value: str) -> list[float]:
    """'0.01,0.05,0.1' -> [0.01, 0.05, 0.1]; '' or 'none' -> [] (one-class only)."""
    value = str(value)
    if value.strip().lower() in ("", "none", "0"):
        return []
    try:
        gammas = [float(g) for g in value.split(",") if g.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: give comma-separated fractions such as 0.01,0.05,0.1") from None
    if any(not 0 < g <= 1 for g in gammas):
        raise click.BadParameter("every gamma must be in (0, 1]")
    return gammas


def parse_hinge(value: str) -> float | None:
    """'1.0' -> 1.0; 'none' -> None (the paper's unbounded variance term)."""
    if str(value).strip().lower() in ("none", ""):
        return None
    try:
        hinge = float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r}: give a positive number, or none for the paper's -std") from None
    if hinge <= 0:
        raise click.BadParameter("the hinge target must be above 0 (or none)")
    return hinge


def view_rows_of(cache: "FeatureCache"):
    """The training rows that have cached views (AnoMem trains on those alone)."""
    from pipeline.store.views import open_views

    return open_views(cache).read("train", "rows")


def footprint(cache: "FeatureCache", head: "AnoMemHead", normal: tuple[int, ...]) -> dict:
    """The head's memories against the kNN gallery it replaces (the normal classes' training
    features, all of them, not only those with views), in stored values."""
    import numpy as np

    n_normal = int(np.isin(cache.labels("train"), normal).sum())
    gallery = n_normal * int(cache.array("train", "features").shape[1])
    return {**head.footprint(), "knn_gallery_values": gallery,
            "memory_slots_x_dims": {s: list(m.patterns.shape) for s, m in head.memories_.items()}}


def knn_same_rows(cache: "FeatureCache", rows, tasks: "list[Task]", k: int, device: str) -> dict:
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

            def auroc(where=slice(None)) -> dict:
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


def controls_line(payload: dict) -> str:
    """The one-class controls in a line: ||z|| alone and the nearest slot, graded like the
    head's score, and the retrieval softmax's largest weight and entropy on the test images."""
    graded = [f"{words.removeprefix('control: ')} {100 * payload['controls'][name]['mean']['auroc']:.2f}%"
              for name, words in CONTROLS.items() if name in payload.get("controls", {})]
    return f"  controls, mean AUROC: {', '.join(graded)}{retrieval_words(payload.get('diagnostics', {}))}"


@click.command(context_settings=CONTEXT)
@common_options("anomem", "projections, memories (the one-class head, first seed)")
@params.option("anomem", "scales", type=click.Choice(SCALE_CHOICES),
               help="multi: the intermediate map and the pooled vector (paper); last: the pooled vector only "
                    "(ablation).")
@params.option("anomem", "memory", type=click.Choice(MEMORY_CHOICES),
               help="learnt: Hopfield memories trained with the contrasted-memory loss (paper); kmeans: train "
                    "without memory, then use k-means centroids of the normal features (ablation, table 4b).")
@params.option("anomem", "slots_intermediate", type=click.IntRange(1),
               help="Memory slots of the intermediate scale (paper: 512).")
@params.option("anomem", "slots_last", type=click.IntRange(1), help="Memory slots of the last scale (paper: 256).")
@params.option("anomem", "projection", type=click.Choice(PROJECTION_CHOICES),
               help="mlp: a 2-layer MLP per scale trained in stage A, standing in for the paper's encoder, which "
                    "stage A trains; none: z is the (scaled) frozen feature itself, stage A trains the memories "
                    "only (adaptation: on digits, training the MLP with NT-Xent on one class lowered the AUROC).")
@params.option("anomem", "standardise", type=click.Choice(STANDARDISE_CHOICES),
               help="How the frozen features are scaled before the projection. l2: each vector L2-normalised (no "
                    "statistics); global: centred on the normal mean, one scale for all dimensions; dimension: "
                    "centred, per-dimension std floored at the median std (channels dead on the training images "
                    "would otherwise blow up on test images).")
@params.option("anomem", "retrieval", type=click.Choice(RETRIEVAL_CHOICES),
               help="cosine: queries and slots L2-normalised, beta acts on cosine similarities (adaptation); dot: "
                    "the paper's softmax(beta z X) on raw dot products.")
@params.option("anomem", "beta", type=float,
               help="Hopfield inverse temperature (paper: 2, on dot products; for cosine retrieval chosen on "
                    "digits).")
@params.option("anomem", "slot_init", type=click.Choice(SLOT_INIT_CHOICES),
               help="data: the learnt memory starts as projected normal training vectors drawn at random "
                    "(adaptation); random: Gaussian slots (paper).")
@params.option("anomem", "lambda_recall", type=click.FloatRange(0),
               help="Weight of a recollection loss, ||z - HF(z)||^2 of the batch's plain (unaugmented) normal "
                    "features, that trains the memory only and keeps its slots near the normal features "
                    "(adaptation; paper: 0).")
@params.option("anomem", "variance_hinge", callback=lambda c, p, v: parse_hinge(v),
               help="Target std of VICReg's hinge max(0, target - std) on the recollections, which stops "
                    "rewarding spread once reached (adaptation); none: the paper's unbounded -std.")
@params.option("anomem", "min_steps", type=click.IntRange(1),
               help="Stage A runs more epochs where --epochs would make fewer optimiser steps than this (small "
                    "classes: 90 digits at batch 256 make one step per epoch; CIFAR's 2,000 make 240 in 30).")
@params.option("anomem", "hopfield_steps", type=click.IntRange(1), help="Retrieval update steps per memory call.")
@params.option("anomem", "sampling_ratio", type=click.FloatRange(0, 1, min_open=True),
               help="Fraction r of the intermediate map's positions used per step of stage A (paper: 0.3).")
@params.option("anomem", "tau", type=float, help="NT-Xent temperature (paper: 0.1).")
@params.option("anomem", "lambda_v", type=float,
               help="Weight of the variance loss that keeps the memory from collapsing (paper: 0.05).")
@params.option("anomem", "proj_hidden", type=click.IntRange(1), help="Hidden width of each scale's projection MLP.")
@params.option("anomem", "proj_dim", type=click.IntRange(1),
               help="Output size of the projections, i.e. the memories' pattern size.")
@params.option("anomem", "epochs", type=click.IntRange(1), help="Stage A epochs.")
@params.option("anomem", "batch_size", type=click.IntRange(2), help="Images per step (paper: 1024).")
@params.option("anomem", "lr", type=float, help="AdamW learning rate, cosine-annealed (both stages).")
@params.option("anomem", "weight_decay", type=float, help="AdamW weight decay (both stages).")
@params.option("anomem", "margin", type=float, help="Double-hinge margin M (paper: 2).")
@params.option("anomem", "sup_epochs", type=click.IntRange(1), help="Stage B epochs of the semi-supervised classifiers.")
@params.option("anomem", "sup_pool", type=click.IntRange(1),
               help="Side of the grid a difference map is average-pooled to before its classifier.")
@params.option("anomem", "sup_hidden", type=click.IntRange(1), help="Hidden width of the stage B classifiers.")
@params.option("anomem", "gammas", callback=lambda c, p, v: parse_gammas(v),
               help="Semi-supervised runs, besides the one-class run: comma-separated ratios of labelled "
                    "anomalies to normal training images, e.g. 0.01,0.05,0.1 (paper); none: one-class only.")
@params.option("anomem", "draws", type=click.IntRange(1),
               help="Random draws of the labelled anomalies (and seeds) per class and gamma; mean and std are "
                    "reported (paper: 10).")
@params.option("anomem", "semi_stage_a", type=click.Choice(["retrain", "reuse"]),
               help="retrain: every semi-supervised draw trains stage A again with its labelled anomalies "
                    "(paper); reuse: stage B only, on the one-class run's stage A (draws x cheaper; the "
                    "anomalies then do not shape the memories).")
@params.option("anomem", "seeds", type=click.IntRange(1), help="Seeds of the one-class run.")
@params.option("anomem", "knn_baseline", type=click.IntRange(0),
               help="Also score kNN with this k on the same training images (those with views) and add it to "
                    "the metrics as knn_same_rows, for a like-for-like comparison; 0: skip.")
def main(cache_path, protocol, gammas, draws, semi_stage_a, seeds, knn_baseline, classes, device, expect,
         metrics_path, plots_dir, save_dir, threshold_quantile, scheduler, shift, shift_labels, **settings):
    """Train AnoMem on each normal class in turn: stage A learns a projection and a Hopfield
    memory per scale from two cached augmented views of each training image; stage B scores
    test images by how far each scale's features are from their recollection (one-class) or,
    with --gammas, by classifiers trained on that difference with a few labelled anomalies
    drawn from the other classes' training images (semi-supervised)."""
    import numpy as np

    from pipeline import metrics_file
    from pipeline.cli import check_outputs, resolve_device
    from pipeline.distributed import open_client
    from pipeline.evaluate import evaluate_one_vs_all, format_summary, metrics_payload, write_plots
    from pipeline.heads.anomem.head import AnoMemHead
    from pipeline.heads.saving import saved_heads_note

    check_outputs(files={"--metrics": metrics_path}, folders={"--plots": plots_dir, "--save-heads": save_dir})
    cache, tasks = open_cache(cache_path, expect, classes, protocol)
    shifted = shift_plan(cache, shift, shift_labels)
    if gammas and tasks[0].by_type:
        # An anomaly folder's training split holds normal images only: no anomalies to label.
        click.echo(f"{NORMAL_VS_ANOMALIES}: the head trains on the normal images only, so the semi-supervised runs "
                   f"(--gammas {','.join(map(str, gammas))}) are not made; one-class only.", err=True)
        gammas = []
    head = AnoMemHead(device=str(resolve_device(device)), threshold_quantile=threshold_quantile, **settings)
    saver = saver_for(save_dir, "anomem", cache, threshold_quantile, head.device)
    label = f"AnoMem {head.scales}/{head.memory}"
    view_rows = view_rows_of(cache)
    with open_client(scheduler) as client:
        one_class = evaluate_one_vs_all(cache, head, tasks, seeds=range(seeds), keep_heads=True, client=client,
                                        after_fit=saver, desc=label, shift=shifted)
        about = {"head": "anomem", **{k: v for k, v in head.params().items() if k not in NOT_REPORTED},
                 "seeds": seeds, "training_images_per_class": "those with cached views",
                 "views": len(view_rows)}
        about["footprint"] = footprint(cache, one_class[tasks[0].name]["head"], tasks[0].normal)
        payload = metrics_payload(one_class, cache.metadata, about)
        semi = {}
        stage_a = {name: r["head"] for name, r in one_class.items()} if semi_stage_a == "reuse" else None
        for gamma in gammas:
            results = evaluate_one_vs_all(cache, head, tasks, seeds=range(draws), gamma=gamma, start_from=stage_a,
                                          client=client, desc=f"{label} gamma {gamma}")
            per_class = {name: {"auroc": round(r["metrics"]["auroc"], 6),
                                "auroc_std": round(r["metrics"]["auroc_std"], 6)} for name, r in results.items()}
            per_draw = np.array([[run["auroc"] for run in r["runs"]] for r in results.values()])  # classes x draws
            semi[str(gamma)] = {"mean": {"auroc": round(float(per_draw.mean()), 6),
                                         "auroc_std": round(float(per_draw.mean(axis=0).std()), 6)},
                                "per_class": per_class, "draws": draws, "stage_a": semi_stage_a}
            click.echo(f"  gamma {gamma}: mean AUROC {100 * per_draw.mean():.2f}% "
                       f"(+/- {100 * per_draw.mean(axis=0).std():.2f} over {draws} draws)")
    if semi:
        payload["semi_supervised"] = semi
    if knn_baseline:
        payload["knn_same_rows"] = knn_same_rows(cache, view_rows, tasks, knn_baseline, head.device)
    metrics_file.write(metrics_path, payload)
    write_plots(one_class, plots_dir)
    click.echo(format_summary(payload))
    if "controls" in payload:
        click.echo(controls_line(payload))
    if saver is not None:
        click.echo(saved_heads_note(saver, [task.name for task in tasks]))


if __name__ == "__main__":
    main()
