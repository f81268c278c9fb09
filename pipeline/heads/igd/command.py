"""IGD head over a feature cache, one-vs-all for each class, over several seeds.

    python -m stages.igd --cache cache/digits_efficientnet_lite0_224.zarr --curves plots/igd_training
"""

from __future__ import annotations

import click

from pipeline import params
from pipeline.heads.igd import RECONSTRUCTIONS, STANDARDISATIONS
from pipeline.heads.stage import CONTEXT, common_options, open_cache, saver_for, shift_plan

# Parameters that do not decide the metrics, left out of the metrics file's description.
NOT_REPORTED = ("device", "seed", "threshold_quantile")


@click.command(context_settings=CONTEXT)
@common_options("igd", "the input statistics, encoder, decoder and Gaussian descriptor (first seed)")
@params.option("igd", "latent_dim", type=click.IntRange(1), help="Z, the size of the encoder's code (paper: 128).")
@params.option("igd", "hidden", type=click.IntRange(0),
               help="Hidden width of the encoder, decoder and critic MLPs; 0: one linear layer each (the paper's "
                    "encoder on a frozen pretrained backbone is one linear layer to Z).")
@params.option("igd", "epochs", type=click.IntRange(1), help="Training epochs, an E-step after each (paper: 256 on images).")
@params.option("igd", "batch_size", type=click.IntRange(2), help="Normal samples per step (paper: 64).")
@params.option("igd", "lr", type=click.FloatRange(0, min_open=True), help="Adam learning rate (paper: 1e-4).")
@params.option("igd", "weight_decay", type=click.FloatRange(0), help="Adam weight decay of the autoencoder (paper: 1e-6).")
@params.option("igd", "lambda_1", type=click.FloatRange(0), help="Weight of the critic loss l_d, eq. 7 (paper: 1).")
@params.option("igd", "lambda_2", type=click.FloatRange(0),
               help="Weight of the reconstruction constraint l_fg, eq. 7 (paper: 1).")
@params.option("igd", "lambda_3", type=click.FloatRange(0),
               help="Weight of the adversarial term in l_fg, eq. 11 (paper: 0.1).")
@params.option("igd", "alpha_max", type=click.FloatRange(0, 1),
               help="Interpolation coefficients alpha ~ U(0, ALPHA_MAX) (paper: 0.5).")
@params.option("igd", "reconstruction", type=click.Choice(RECONSTRUCTIONS),
               help="Reconstruction error of the feature vector: mae (the paper's MAE term; its MS-SSIM term needs "
                    "an image) or mse.")
@params.option("igd", "standardise", type=click.Choice(STANDARDISATIONS),
               help="Input standardisation from the normal training features: dimension (per-dimension mean and "
                    "std, the std floored at the median std of the varying dimensions), global (one divisor for "
                    "all dimensions) or none.")
@params.option("igd", "seeds", type=click.IntRange(1),
               help="Seeds 0..N-1, one training each; the mean and standard deviation over them are reported.")
@click.option("--curves", "curves_dir", default=None,
              help="Folder for training curves (train_<class>.json: loss terms and test AUROC per epoch and seed).")
def main(cache_path, protocol, seeds, classes, device, expect, scheduler, metrics_path, plots_dir, curves_dir, save_dir,
         threshold_quantile, shift, shift_labels, **settings):
    """Train IGD (an autoencoder whose codes a Gaussian descriptor gathers, with an adversarial
    critic on interpolated codes) on each normal class in turn, and score the test set with the
    reconstruction error plus 1 - p(normal). The test AUROC is recorded after every epoch: the
    reported AUROC is the final epoch's; the best epoch's is reported separately, since choosing
    it reads the test set."""
    from pipeline.cli import check_outputs, resolve_device
    from pipeline.distributed import open_client
    from pipeline.evaluate import evaluate_one_vs_all, format_summary, write_results
    from pipeline.heads.igd.head import IGDHead
    from pipeline.heads.saving import saved_heads_note

    check_outputs(files={"--metrics": metrics_path},
                  folders={"--plots": plots_dir, "--curves": curves_dir, "--save-heads": save_dir})
    cache, tasks = open_cache(cache_path, expect, classes, protocol)
    shifted = shift_plan(cache, shift, shift_labels)
    head = IGDHead(device=str(resolve_device(device)), threshold_quantile=threshold_quantile, **settings)
    saver = saver_for(save_dir, "igd", cache, threshold_quantile, head.device)
    with open_client(scheduler) as client:
        results = evaluate_one_vs_all(cache, head, tasks, seeds=range(seeds), track_epochs=True, desc="IGD", client=client,
                                      after_fit=saver, shift=shifted)
    about = {"head": "igd", **{k: v for k, v in head.params().items() if k not in NOT_REPORTED},
             "seeds": seeds,
             "auroc_is": "final epoch; best_epoch_auroc = best test AUROC over epochs (peeks at the test set)"}
    payload = write_results(results, cache.metadata, about, metrics_path, plots_dir, curves_dir)
    click.echo(format_summary(payload))
    if saver is not None:
        click.echo(saved_heads_note(saver, [task.name for task in tasks]))


if __name__ == "__main__":
    main()
