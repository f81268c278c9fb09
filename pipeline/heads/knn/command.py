"""DN2 kNN head over a feature cache, one-vs-all for each class (or the cache's protocol).

    python -m stages.knn --cache cache/digits_efficientnet_lite0_224.zarr --k 2
"""

from __future__ import annotations

import click

from pipeline import params
from pipeline.errors import PipelineError
from pipeline.heads.knn import PRECISIONS
from pipeline.heads.stage import CONTEXT, common_options, open_cache, saver_for, shift_plan


@click.command(context_settings=CONTEXT)
@common_options("knn", "k, the gallery (float16 unless --save-float32)")
@params.option("knn", "k", type=click.IntRange(1, 10_000),
               help="Number of nearest normal training features whose squared distances are summed.")
@params.option("knn", "precision", type=click.Choice(PRECISIONS),
               help="float32: blocked float32 matrix products. bfloat16: the same k nearest, exactly, found "
                    "faster where bfloat16 products are (CPUs with AVX512-BF16 or AMX, GPUs): a bfloat16 screen "
                    "keeps a few candidates per image with an error bound proving the k nearest are among them, "
                    "their distances are computed in float64, and images it cannot certify are searched again "
                    "exactly. -v prints the fraction certified at once.")
@click.option("--stream", is_flag=True,
              help="Read each class's gallery chunk by chunk from the cache instead of loading the "
                   "training split, for galleries larger than memory.")
@click.option("--out-of-core", is_flag=True,
              help="Score each class with a Dask computation over the cache's chunks: one task per chunk "
                   "keeps its K nearest distances, partial results are merged in a tree, so memory stays "
                   "at a few chunks per worker whatever the gallery's size (the test split is held in "
                   "memory). With --scheduler the chunk tasks are spread over the cluster's workers.")
@click.option("--save-float32", is_flag=True,
              help="With --save-heads: keep the gallery in float32 (a file twice as large) instead of float16.")
def main(cache_path, protocol, k, classes, device, precision, stream, out_of_core, scheduler, expect, metrics_path,
         plots_dir, save_dir, threshold_quantile, save_float32, shift, shift_labels):
    """Score every test image by the sum of squared L2 distances to its K nearest normal
    training features (DN2), for each normal class in turn."""
    from pipeline.cli import check_outputs, detail, resolve_device
    from pipeline.distributed import open_client
    from pipeline.evaluate import evaluate_one_vs_all, format_summary, write_results
    from pipeline.heads.knn.head import KNNHead
    from pipeline.heads.saving import saved_heads_note

    if stream and out_of_core:
        raise PipelineError("--stream and --out-of-core are two ways of reading a large gallery; give one of them.")
    check_outputs(files={"--metrics": metrics_path}, folders={"--plots": plots_dir, "--save-heads": save_dir})
    cache, tasks = open_cache(cache_path, expect, classes, protocol)
    shifted = shift_plan(cache, shift, shift_labels)
    device_ = str(resolve_device(device))
    saver = saver_for(save_dir, "knn", cache, threshold_quantile, device_,
                      gallery_dtype="float32" if save_float32 else "float16")
    access = "stream" if stream else "dask" if out_of_core else "memory"
    # A gallery read chunk by chunk is not scored against itself for a threshold unless saved
    # (the saver does it): leave-one-out over a gallery larger than memory is the costly part.
    head = KNNHead(k=k, device=device_, precision=precision,
                   threshold_quantile=threshold_quantile if access == "memory" else None)
    with open_client(scheduler) as client:
        results = evaluate_one_vs_all(cache, head, tasks, desc=f"kNN k={k}", train_access=access, client=client,
                                      after_fit=saver, shift=shifted)
    payload = write_results(results, cache.metadata, {"head": "knn", "k": k, "precision": precision}, metrics_path,
                            plots_dir)
    click.echo(format_summary(payload))
    if "diagnostics" in payload:
        certified = payload["diagnostics"]["per_class"]
        detail(f"kNN bfloat16 screen: test images certified at once, mean "
               f"{100 * payload['diagnostics']['mean']['certified_fraction']:.2f}% ("
               + ", ".join(f"{name} {100 * c['certified_fraction']:.2f}" for name, c in certified.items())
               + "); the others were searched again, exactly.")
    if saver is not None:
        click.echo(saved_heads_note(saver, [task.name for task in tasks]))


if __name__ == "__main__":
    main()
