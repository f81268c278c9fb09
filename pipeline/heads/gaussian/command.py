"""Gaussian (Mahalanobis, Ledoit-Wolf) head over a feature cache, one-vs-all for each class.

    python -m stages.gaussian --cache cache/digits_efficientnet_lite0_224.zarr
    python -m stages.gaussian --cache cache/digits_efficientnet_lite0_224.zarr --scales multi
"""

from __future__ import annotations

import click

from pipeline import params
from pipeline.errors import PipelineError
from pipeline.heads.gaussian import SCALE_CHOICES
from pipeline.heads.scaling import SCALINGS
from pipeline.heads.stage import CONTEXT, common_options, open_cache, saver_for, shift_plan


@click.command(context_settings=CONTEXT)
@common_options("gaussian", "the mean, the Cholesky factor of the shrunk covariance (float64) and the scaler")
@params.option("gaussian", "scales", type=click.Choice(SCALE_CHOICES),
               help="last: the pooled vector; multi: the pooled vector and each intermediate map of the cache "
                    "(extract --maps intermediate), average-pooled over its grid, concatenated.")
@params.option("gaussian", "scaling", type=click.Choice(SCALINGS),
               help="Before the Gaussian: none; standardise (each dimension by its training mean and standard "
                    "deviation); l2 (each vector to unit length).")
def main(cache_path, protocol, scales, scaling, classes, device, expect, scheduler, metrics_path, plots_dir, save_dir,
         threshold_quantile, shift, shift_labels):
    """Score every test image by its squared Mahalanobis distance to the normal class's mean,
    under the class's Ledoit-Wolf shrunk covariance (scikit-learn), in float64, for each
    normal class in turn. CPU only (--device is not used)."""
    from pipeline.cli import check_outputs
    from pipeline.distributed import open_client
    from pipeline.evaluate import evaluate_one_vs_all, format_summary, write_results
    from pipeline.heads.gaussian.head import GaussianHead

    check_outputs(files={"--metrics": metrics_path}, folders={"--plots": plots_dir, "--save-heads": save_dir})
    cache, tasks = open_cache(cache_path, expect, classes, protocol)
    shifted = shift_plan(cache, shift, shift_labels)
    head = GaussianHead(scales=scales, scaling=scaling, threshold_quantile=threshold_quantile)
    if scales == "multi" and not cache.map_names("train"):
        raise PipelineError(f"{cache_path} has no intermediate maps for --scales multi: extract it with --maps "
                            f"intermediate, or use --scales last.")
    saver = saver_for(save_dir, "gaussian", cache, threshold_quantile, "cpu")
    with open_client(scheduler) as client:
        results = evaluate_one_vs_all(cache, head, tasks, desc=f"Gaussian {scales}", client=client,
                                      after_fit=saver, shift=shifted)
    about = {"head": "gaussian", "scales": scales, "scaling": scaling, "covariance": "Ledoit-Wolf (scikit-learn)",
             "score": "squared Mahalanobis distance, float64"}
    if scales == "multi":
        about["layers"] = ["pooled", *sorted(cache.map_names("train"))]
    payload = write_results(results, cache.metadata, about, metrics_path, plots_dir)
    click.echo(format_summary(payload))
    if saver is not None:
        from pipeline.heads.saving import saved_heads_note  # loads torch: only when heads were saved

        click.echo(saved_heads_note(saver, [task.name for task in tasks]))


if __name__ == "__main__":
    main()
