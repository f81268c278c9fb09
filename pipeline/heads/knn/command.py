"""DN2 kNN head over a feature cache, one-vs-all for each class.

    python -m stages.knn --cache cache/digits_efficientnet_lite0_224.zarr --k 2
"""

from __future__ import annotations

import functools

import click

from pipeline.cli import parse_expectations, resolve_device
from pipeline.distributed import open_client, scheduler_option
from pipeline.errors import PipelineError
from pipeline.evaluate import evaluate_one_vs_all, format_summary, write_results
from pipeline.extract.datasets import resolve_classes
from pipeline.heads import KNNHead
from pipeline.saved_heads import HeadSaver, saved_heads_note, threshold_quantile_option
from pipeline.store.cache import FeatureCache


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--cache", "cache_path", required=True, type=click.Path(file_okay=False),
              help="Feature cache made by python -m pipeline.extract (or imported from HDF5).")
@click.option("--k", default=2, show_default=True, type=click.IntRange(1, 10_000),
              help="Number of nearest normal training features whose squared distances are summed.")
@click.option("--classes", default="all", show_default=True,
              help="Normal classes to evaluate: all, or comma-separated names or indices.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:<i>.")
@click.option("--stream", is_flag=True,
              help="Read each class's gallery chunk by chunk from the cache instead of loading the "
                   "training split, for galleries larger than memory.")
@click.option("--out-of-core", is_flag=True,
              help="Score each class with a Dask computation over the cache's chunks: one task per chunk "
                   "keeps its K nearest distances, partial results are merged in a tree, so memory stays "
                   "at a few chunks per worker whatever the gallery's size (the test split is held in "
                   "memory). With --scheduler the chunk tasks are spread over the cluster's workers.")
@scheduler_option
@click.option("--expect", multiple=True, metavar="KEY=VALUE",
              help="Refuse a cache whose metadata differs, e.g. backbone.name=resnet50 "
                   "or preprocessing.image_size=224 (repeatable).")
@click.option("--metrics", "metrics_path", default="metrics/knn.json", show_default=True,
              help="Where to write the metrics JSON (per class and mean AUROC, AUPR, FPR@95%TPR).")
@click.option("--plots", "plots_dir", default=None, help="Folder for per-class ROC curves (DVC plots).")
@click.option("--save-heads", "save_dir", default=None, type=click.Path(file_okay=False), metavar="DIR",
              help="Also save each class's head as DIR/<class>.head, to score new images with python -m "
                   "stages.score: k, the gallery (float16 unless --save-float32), the cache's metadata and a "
                   "threshold, the --threshold-quantile quantile of the training features' leave-one-out "
                   "scores. Metrics are unchanged. With --scheduler each file is written by the worker that "
                   "trains the class, so DIR must be on storage the workers share (like the cache); with "
                   "--stream or --out-of-core each class's gallery is read into memory once to be saved.")
@threshold_quantile_option
@click.option("--save-float32", is_flag=True,
              help="With --save-heads: keep the gallery in float32 (a file twice as large) instead of float16.")
def main(cache_path, k, classes, device, stream, out_of_core, scheduler, expect, metrics_path, plots_dir, save_dir,
         threshold_quantile, save_float32):
    """Score every test image by the sum of squared L2 distances to its K nearest normal
    training features (DN2), for each normal class in turn."""
    cache = FeatureCache.open(cache_path)
    cache.check_matches(parse_expectations(expect))
    device_ = str(resolve_device(device))
    chosen = resolve_classes(classes, cache.classes)
    if stream and out_of_core:
        raise PipelineError("--stream and --out-of-core are two ways of reading a large gallery; give one of them.")
    # A partial of the class, not a lambda: with --scheduler it is pickled and sent to the workers.
    make_head = functools.partial(KNNHead, k=k, device=device_)
    saver = None
    if save_dir is not None:
        saver = HeadSaver.for_cache(save_dir, "knn", cache, threshold_quantile=threshold_quantile, device=device_,
                                    state_options={"gallery_dtype": "float32" if save_float32 else "float16"})
    with open_client(scheduler) as client:
        results = evaluate_one_vs_all(cache, make_head, chosen, desc=f"kNN k={k}", stream_train=stream,
                                      out_of_core=out_of_core, client=client, after_fit=saver)
    payload = write_results(results, cache.metadata, {"head": "knn", "k": k}, metrics_path, plots_dir)
    click.echo(format_summary(payload))
    if saver is not None:
        click.echo(saved_heads_note(saver, [cache.classes[c] for c in chosen]))


if __name__ == "__main__":
    main()
