"""PANDA head over a feature cache with trunk maps, one-vs-all for each class.

    python -m pipeline.extract --dataset digits --trunk-maps --out cache/digits_panda.zarr
    python -m stages.panda --cache cache/digits_panda.zarr --curves plots/panda_training
"""

from __future__ import annotations

import click

from pipeline import params
from pipeline.errors import PipelineError
from pipeline.heads.panda import FISHER_SOURCES, PRECISIONS
from pipeline.heads.stage import CONTEXT, common_options, open_cache, saver_for, shift_plan

# Parameters that do not decide the metrics, or that the cache's label already gives (backbone,
# image size), left out of the metrics file's description.
NOT_REPORTED = ("device", "seed", "threshold_quantile", "backbone", "image_size", "weights_tag", "weights_file",
                "weights_sha256")


@click.command(context_settings=CONTEXT)
@common_options("panda", "the adapted tail's weights, the centre and the kNN gallery of adapted features (first seed)")
@params.option("panda", "epochs", type=click.IntRange(0),
               help="Training epochs (PANDA-Early, the paper's early stopping: a fixed number; 15 on CIFAR-10, "
                    "about 2.3k minibatches; its code runs 50 with EWC). 0: no adaptation, DN2 through the tail.")
@params.option("panda", "batch_size", type=click.IntRange(1), help="Trunk maps per SGD step (paper: 32).")
@params.option("panda", "lr", type=click.FloatRange(0, min_open=True), help="SGD learning rate (paper's code: 1e-2).")
@params.option("panda", "momentum", type=click.FloatRange(0), help="SGD momentum (paper: 0.9).")
@params.option("panda", "weight_decay", type=click.FloatRange(0), help="SGD weight decay (paper: 5e-5).")
@params.option("panda", "grad_clip", type=click.FloatRange(0, min_open=True),
               help="Largest gradient norm, clipped each step (paper: 1e-3).")
@params.option("panda", "fisher", type=click.Choice(FISHER_SOURCES),
               help="EWC (PANDA-EWC): none (no EWC, PANDA-Early); uniform (F = 1 for every weight, the paper's "
                    "ablation); normal_class (the Fisher of the pretrained ImageNet classifier's cross-entropy "
                    "against its own top-1 predictions, on the normal class's training images: the paper's "
                    "ImageNet Fisher is not available here, and other classes' images are not the one-class "
                    "protocol's).")
@params.option("panda", "ewc_lambda", type=click.FloatRange(0), help="Weight of the EWC term (paper: 1e4).")
@params.option("panda", "fisher_batches", type=click.IntRange(1),
               help="Minibatches the normal_class Fisher is averaged over (paper: 100; fewer if the class has "
                    "fewer images).")
@params.option("panda", "k", type=click.IntRange(1), help="Nearest adapted training features summed (paper: 2).")
@params.option("panda", "precision", type=click.Choice(PRECISIONS),
               help="Compute precision of the tail's passes: bfloat16 uses autocast (mixed precision, for GPUs).")
@params.option("panda", "seeds", type=click.IntRange(1),
               help="Seeds 0..N-1 (the order of the minibatches), one training each; the mean and standard "
                    "deviation over them are reported.")
@click.option("--weights", "weights_file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="The backbone weights file the cache was made with, if it was not the default (checked "
                   "against the SHA-256 the cache records).")
@click.option("--curves", "curves_dir", default=None,
              help="Folder for training curves (train_<class>.json: loss terms and test AUROC per epoch and seed; "
                   "epoch 0 is the model before adaptation).")
def main(cache_path, protocol, seeds, classes, device, expect, scheduler, metrics_path, plots_dir, curves_dir,
         save_dir, threshold_quantile, weights_file, shift, shift_labels, **settings):
    """Adapt a copy of the backbone's later stages to each normal class in turn with PANDA's
    compactness loss, trained on the cache's full-resolution trunk maps (only the tail runs),
    and score the test set by kNN on the adapted features. The test AUROC is recorded after
    every epoch: the reported AUROC is the final epoch's; the best epoch's is reported
    separately, since choosing it reads the test set."""
    from pipeline.cli import check_outputs, resolve_device
    from pipeline.distributed import open_client
    from pipeline.evaluate import evaluate_one_vs_all, format_summary, write_results
    from pipeline.heads.panda.head import PandaHead
    from pipeline.heads.saving import saved_heads_note

    check_outputs(files={"--metrics": metrics_path},
                  folders={"--plots": plots_dir, "--curves": curves_dir, "--save-heads": save_dir})
    cache, tasks = open_cache(cache_path, expect, classes, protocol)
    shifted = shift_plan(cache, shift, shift_labels)
    trunk = cache.metadata.get("features", {}).get("trunk")
    if not trunk or trunk.get("stage") not in cache.trunk_names("train"):
        raise PipelineError(f"the feature cache {cache.path} has no full-resolution trunk maps, which the PANDA head "
                            f"trains on. Extract it again with them: the python -m pipeline.extract command that "
                            f"made it, with --trunk-maps (and --overwrite).")
    backbone = cache.metadata["backbone"]
    head = PandaHead(backbone=backbone["name"], image_size=int(cache.metadata["preprocessing"]["image_size"]),
                     weights_tag=backbone.get("weights"), weights_file=weights_file,
                     weights_sha256=backbone.get("weights_sha256"), trunk_end=trunk["stage"],
                     device=str(resolve_device(device)), threshold_quantile=threshold_quantile, **settings)
    saver = saver_for(save_dir, "panda", cache, threshold_quantile, head.device)
    with open_client(scheduler) as client:
        results = evaluate_one_vs_all(cache, head, tasks, seeds=range(seeds), track_epochs=True, desc="PANDA",
                                      client=client, after_fit=saver, shift=shifted)
    about = {"head": "panda", **{k: v for k, v in head.params().items() if k not in NOT_REPORTED},
             "seeds": seeds, "fisher_is": _fisher_words(head.fisher),
             "auroc_is": "final epoch; best_epoch_auroc = best test AUROC over epochs 0..N, epoch 0 before "
                         "adaptation (peeks at the test set)"}
    payload = write_results(results, cache.metadata, about, metrics_path, plots_dir, curves_dir)
    click.echo(format_summary(payload))
    if saver is not None:
        click.echo(saved_heads_note(saver, [task.name for task in tasks]))


def _fisher_words(fisher: str) -> str:
    return {"none": "no EWC (PANDA-Early: a fixed number of epochs)",
            "uniform": "EWC with F = 1 for every weight (uniform, the paper's ablation)",
            "normal_class": "EWC with the Fisher of the pretrained classifier's cross-entropy against its own top-1 "
                            "predictions on the normal class's training images (not the paper's ImageNet Fisher)",
            }[fisher]


if __name__ == "__main__":
    main()
