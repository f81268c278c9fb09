"""AnoMem head over a feature cache with maps and views: one-class and semi-supervised.

    python -m pipeline.extract --dataset digits --maps intermediate --views 2
    python -m stages.anomem --cache cache/digits_efficientnet_lite0_224.zarr --gammas 0.01,0.05,0.1
"""

from __future__ import annotations

import functools

import click
import numpy as np

from pipeline.cli import resolve_device, write_json
from pipeline.distributed import open_client, scheduler_option
from pipeline.evaluate import MultiScaleData, evaluate_semi_supervised, format_summary, metrics_payload, write_plots
from pipeline.heads.anomem.head import MEMORY_CHOICES, SCALE_CHOICES, AnoMemConfig, AnoMemHead
from pipeline.saved_heads import HeadSaver, saved_heads_note, threshold_quantile_option
from pipeline.heads.plume.command import open_cache


def parse_gammas(value: str) -> list[float]:
    """'0.01,0.05,0.1' -> [0.01, 0.05, 0.1]; '' or 'none' -> [] (one-class only)."""
    if value.strip().lower() in ("", "none", "0"):
        return []
    try:
        gammas = [float(g) for g in value.split(",") if g.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: give comma-separated fractions such as 0.01,0.05,0.1") from None
    if any(not 0 < g <= 1 for g in gammas):
        raise click.BadParameter("every gamma must be in (0, 1]")
    return gammas


def _make_head(base: AnoMemConfig, seed: int) -> AnoMemHead:
    return AnoMemHead(AnoMemConfig(**{**base.to_dict(), "seed": base.seed + seed}))


def footprint(data: MultiScaleData, head: AnoMemHead, normal_class: int) -> dict:
    """The head's memories against the kNN gallery it replaces (the class's normal training
    features, all of them, not only those with views), in stored values."""
    n_normal = int((data.all_train_labels == normal_class).sum())
    gallery = n_normal * data.train["pooled"].shape[1]
    return {**head.footprint(), "knn_gallery_values": gallery,
            "memory_slots_x_dims": {s: list(m.patterns.shape) for s, m in head.memories.items()}}


def knn_same_rows(data: MultiScaleData, class_names: list[str], classes: list[int], k: int, device: str) -> dict:
    """DN2 kNN on the pooled features of the same training rows AnoMem was given."""
    from sklearn.metrics import roc_auc_score

    from pipeline.heads.knn.head import KNNHead

    per_class = {}
    for c in classes:
        gallery = data.train["pooled"][data.train_labels == c]
        scores = KNNHead(k=k, device=device).fit(gallery).score(data.test["pooled"])
        per_class[class_names[c]] = {"auroc": round(float(roc_auc_score(data.test_labels != c, scores)), 6)}
    mean = float(np.mean([m["auroc"] for m in per_class.values()]))
    return {"k": k, "gallery": "the training images with views", "mean": {"auroc": round(mean, 6)},
            "per_class": per_class}


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--cache", "cache_path", required=True, type=click.Path(file_okay=False),
              help="Feature cache made with --maps intermediate and --views 2 (python -m pipeline.extract).")
@click.option("--scales", default="multi", show_default=True, type=click.Choice(SCALE_CHOICES),
              help="multi: the intermediate map and the pooled vector (paper); last: the pooled vector only "
                   "(ablation).")
@click.option("--memory", default="learnt", show_default=True, type=click.Choice(MEMORY_CHOICES),
              help="learnt: Hopfield memories trained with the contrasted-memory loss (paper); kmeans: train "
                   "without memory, then use k-means centroids of the normal features (ablation, table 4b).")
@click.option("--slots-intermediate", default=512, show_default=True, type=click.IntRange(1),
              help="Memory slots of the intermediate scale (paper: 512).")
@click.option("--slots-last", default=256, show_default=True, type=click.IntRange(1),
              help="Memory slots of the last scale (paper: 256).")
@click.option("--beta", default=2.0, show_default=True, type=float, help="Hopfield inverse temperature (paper: 2).")
@click.option("--hopfield-steps", default=1, show_default=True, type=click.IntRange(1),
              help="Retrieval update steps per memory call.")
@click.option("--sampling-ratio", default=0.3, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Fraction r of the intermediate map's positions used per step of stage A (paper: 0.3).")
@click.option("--tau", default=0.1, show_default=True, type=float, help="NT-Xent temperature (paper: 0.1).")
@click.option("--lambda-v", default=0.05, show_default=True, type=float,
              help="Weight of the variance loss that keeps the memory from collapsing (paper: 0.05).")
@click.option("--proj-hidden", default=512, show_default=True, type=click.IntRange(1),
              help="Hidden width of each scale's projection MLP.")
@click.option("--proj-dim", default=128, show_default=True, type=click.IntRange(1),
              help="Output size of the projections, i.e. the memories' pattern size.")
@click.option("--epochs", default=30, show_default=True, type=click.IntRange(1), help="Stage A epochs.")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(2),
              help="Images per step (paper: 1024).")
@click.option("--lr", default=1e-3, show_default=True, type=float,
              help="AdamW learning rate, cosine-annealed (both stages).")
@click.option("--weight-decay", default=1e-4, show_default=True, type=float)
@click.option("--margin", default=2.0, show_default=True, type=float, help="Double-hinge margin M (paper: 2).")
@click.option("--sup-epochs", default=30, show_default=True, type=click.IntRange(1),
              help="Stage B epochs of the semi-supervised classifiers.")
@click.option("--sup-pool", default=1, show_default=True, type=click.IntRange(1),
              help="Side of the grid a difference map is average-pooled to before its classifier.")
@click.option("--gammas", default="", show_default=True, callback=lambda c, p, v: parse_gammas(v),
              help="Semi-supervised runs, besides the one-class run: comma-separated ratios of labelled "
                   "anomalies to normal training images, e.g. 0.01,0.05,0.1 (paper).")
@click.option("--draws", default=3, show_default=True, type=click.IntRange(1),
              help="Random draws of the labelled anomalies (and seeds) per class and gamma; mean and std "
                   "are reported (paper: 10).")
@click.option("--semi-stage-a", default="retrain", show_default=True, type=click.Choice(["retrain", "reuse"]),
              help="retrain: every semi-supervised draw trains stage A again with its labelled anomalies "
                   "(paper); reuse: stage B only, on the one-class run's stage A (draws x cheaper; the "
                   "anomalies then do not shape the memories).")
@click.option("--seeds", default=1, show_default=True, type=click.IntRange(1), help="Seeds of the one-class run.")
@click.option("--knn-baseline", default=2, show_default=True, type=click.IntRange(0),
              help="Also score kNN with this k on the same training images (those with views) and add it to "
                   "the metrics as knn_same_rows, for a like-for-like comparison; 0: skip.")
@click.option("--classes", default="all", show_default=True,
              help="Normal classes to evaluate: all, or comma-separated names or indices.")
@click.option("--device", default="auto", show_default=True, help="auto (GPU if there is one), cpu, cuda, cuda:<i>.")
@click.option("--expect", multiple=True, metavar="KEY=VALUE",
              help="Refuse a cache whose metadata differs, e.g. backbone.name=resnet50 (repeatable).")
@click.option("--metrics", "metrics_path", default="metrics/anomem.json", show_default=True,
              help="Metrics JSON: one-class per class and mean AUROC, AUPR, FPR@95%TPR; semi-supervised "
                   "AUROC mean and std over draws per gamma; the head's footprint.")
@click.option("--plots", "plots_dir", default=None, help="Folder for the one-class ROC curves (roc_<class>.json).")
@click.option("--save-heads", "save_dir", default=None, type=click.Path(file_okay=False), metavar="DIR",
              help="Also save each class's one-class head (first seed) as DIR/<class>.head, to score new images "
                   "with python -m stages.score: projections, memories, the cache's metadata and a threshold, "
                   "the --threshold-quantile quantile of its scores on its training images.")
@threshold_quantile_option
@scheduler_option
def main(cache_path, gammas, draws, semi_stage_a, seeds, knn_baseline, classes, device, expect, metrics_path, plots_dir,
         save_dir, threshold_quantile, scheduler, **settings):
    """Train AnoMem on each normal class in turn: stage A learns a projection and a Hopfield
    memory per scale from two cached augmented views of each training image; stage B scores
    test images by how far each scale's features are from their recollection (one-class) or,
    with --gammas, by classifiers trained on that difference with a few labelled anomalies
    drawn from the other classes' training images (semi-supervised)."""
    cache, chosen = open_cache(cache_path, expect, classes)
    config = AnoMemConfig(device=str(resolve_device(device)), **settings)
    scales = None if config.scales == "multi" else ["pooled"]
    data = MultiScaleData.read(cache, scales)
    make_head = functools.partial(_make_head, config)
    label = f"AnoMem {config.scales}/{config.memory}"
    with open_client(scheduler) as client:
        # Each (class, draw) a job on the cluster when there is one; the workers read the cache themselves.
        on = {"client": client, "cache_path": cache_path, "scales": scales}
        one_class = evaluate_semi_supervised(data, cache.classes, make_head, chosen, 0.0, seeds, desc=label, **on)
        about = {"head": "anomem", **config.to_dict(), "seeds": seeds,
                 "training_images_per_class": "those with cached views",
                 "views": len(data.view_rows)}
        about["footprint"] = footprint(data, one_class[cache.classes[chosen[0]]]["head"], chosen[0])
        payload = metrics_payload(one_class, cache.metadata, about)
        semi = {}
        for gamma in gammas:
            stage_a = {name: r["head"] for name, r in one_class.items()} if semi_stage_a == "reuse" else None
            results = evaluate_semi_supervised(data, cache.classes, make_head, chosen, gamma, draws,
                                               desc=f"{label} gamma {gamma}", stage_a_heads=stage_a, **on)
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
        payload["knn_same_rows"] = knn_same_rows(data, cache.classes, chosen, knn_baseline, config.device)
    write_json(metrics_path, payload)
    write_plots(one_class, plots_dir)
    click.echo(format_summary(payload))
    if save_dir:
        saver = HeadSaver.for_cache(save_dir, "anomem", cache, threshold_quantile=threshold_quantile,
                                    device=config.device)
        for c in chosen:
            plain, _ = data.rows(np.flatnonzero(data.train_labels == c))
            saver(c, one_class[cache.classes[c]]["head"], plain)
        click.echo(saved_heads_note(saver, [cache.classes[c] for c in chosen]))


if __name__ == "__main__":
    main()
