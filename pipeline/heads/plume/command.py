"""PLUME head over a feature cache, one-vs-all for each class, over several seeds.

    python -m stages.plume --cache cache/digits_efficientnet_lite0_224.zarr --epochs 20 --dim native
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Callable

import click

from pipeline.cli import parse_expectations, resolve_device
from pipeline.distributed import open_client, scheduler_option
from pipeline.evaluate import evaluate_trained_one_vs_all, format_summary, write_results
from pipeline.extract.datasets import resolve_classes
from pipeline.heads.plume.head import BATCH_MODES, PlumeConfig, PlumeHead
from pipeline.heads.plume.model import GUIDANCES, PERTURBATIONS
from pipeline.saved_heads import HeadSaver, saved_heads_note, threshold_quantile_option
from pipeline.store.cache import FeatureCache

if TYPE_CHECKING:
    from distributed import Client

    from pipeline.evaluate import AfterFit


def _number_or_word(value: str, word: str, convert: Callable[[str], float | int], kind: str) -> float | int | str:
    """An option that takes a number or one keyword (``--lr auto``, ``--dim native``)."""
    if value.strip().lower() == word:
        return word
    try:
        return convert(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither {kind} nor {word}") from None


def parse_lr(value: str) -> float | str:
    return _number_or_word(value, "auto", float, "a number")


def parse_dim(value: str) -> int | str:
    return _number_or_word(value, "native", int, "an integer")


def parse_seeds(value: str) -> list[int]:
    """'3' -> [0, 1, 2]; '0,4,7' -> [0, 4, 7]."""
    try:
        if "," in value:
            return [int(s) for s in value.split(",") if s.strip()]
        count = int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r}: give a number of seeds or a comma-separated list") from None
    if count < 1:
        raise click.BadParameter("at least one seed")
    return list(range(count))


def training_options(command: Callable) -> Callable:
    """The options every PLUME command shares (everything in PlumeConfig but the variant)."""
    options = [
        click.option("--cache", "cache_path", required=True, type=click.Path(file_okay=False),
                     help="Feature cache made by python -m pipeline.extract (or imported from HDF5)."),
        click.option("--lam", default=5.0, show_default=True, type=float,
                     help="lambda: weight of the near-identity loss on alpha, beta (eq. 1). Paper: 5, 10, 20."),
        click.option("--nu", default=1.0, show_default=True, type=float, help="Weight of the VAE's KL divergence (eq. 4)."),
        click.option("--gamma", default=1.0, show_default=True, type=float, help="Weight of the guidance loss."),
        click.option("--tau", default=0.5, show_default=True, type=float,
                     help="Temperature of the cosine similarities in the guidance loss."),
        click.option("--epochs", default=100, show_default=True, type=click.IntRange(1, 100_000),
                     help="Training epochs (paper: 100)."),
        click.option("--batch-size", default=32, show_default=True, type=click.IntRange(2, 1 << 16),
                     help="Normal samples per step (paper: 32); as many pseudo-anomalies are generated."),
        click.option("--lr", default="auto", show_default=True, callback=lambda c, p, v: parse_lr(v),
                     help="Peak learning rate of the one-cycle schedule, or auto: a learning-rate range test "
                          "on the training data picks it (as the paper does)."),
        click.option("--weight-decay", default=0.01, show_default=True, type=float, help="AdamW weight decay."),
        click.option("--dim", default="3072", show_default=True, callback=lambda c, p, v: parse_dim(v),
                     help="Classifier input size: the cached vector is adaptive-average-pooled to DIM "
                          "(paper: 3072), or native to keep the backbone's size."),
        click.option("--identity-loss", default="sum", show_default=True, type=click.Choice(["sum", "mean"]),
                     help="Near-identity loss over the D entries: sum (paper, eq. 1) or mean (authors' code)."),
        click.option("--batch-mode", default="joint", show_default=True, type=click.Choice(BATCH_MODES),
                     help="separate: normal and perturbed batches go through the classifier apart, so batch "
                          "norm normalises each alone (authors' code); joint: one batch (PLAD)."),
        click.option("--noise-std", default=0.1, show_default=True, type=float,
                     help="sigma of the gaussian perturbation, on batch-normalised features."),
        click.option("--seeds", default="1", show_default=True, callback=lambda c, p, v: parse_seeds(v),
                     help="Number of seeds (0..N-1) or a comma-separated list; mean and standard deviation "
                          "are reported."),
        click.option("--classes", default="all", show_default=True,
                     help="Normal classes to evaluate: all, or comma-separated names or indices."),
        click.option("--device", default="auto", show_default=True, help="auto (GPU if there is one), cpu, cuda, cuda:<i>."),
        click.option("--expect", multiple=True, metavar="KEY=VALUE",
                     help="Refuse a cache whose metadata differs, e.g. backbone.name=resnet50 (repeatable)."),
        scheduler_option,
    ]
    for option in reversed(options):
        command = option(command)
    return command


def run_plume(cache: FeatureCache, classes: list[int], seeds: list[int], device: str, perturbation: str,
              guidance: str, desc: str, client: "Client | None" = None, after_fit: "AfterFit | None" = None,
              **settings) -> dict[str, dict]:
    """Train and evaluate one PLUME variant on every chosen class and seed (each (class, seed)
    a job on ``client``'s Dask cluster if given; see pipeline.distributed). ``after_fit`` is
    called with each class's first-seed head (to save it)."""
    base = PlumeConfig(perturbation=perturbation, guidance=guidance, device=device, **settings)
    make_head = functools.partial(_make_head, base)
    return evaluate_trained_one_vs_all(cache, make_head, classes, seeds=seeds, desc=desc, client=client,
                                       after_fit=after_fit)


def _make_head(base: PlumeConfig, seed: int) -> PlumeHead:
    return PlumeHead(PlumeConfig(**{**base.__dict__, "seed": seed}))


def open_cache(cache_path: str, expect: tuple[str, ...], classes: str) -> tuple[FeatureCache, list[int]]:
    cache = FeatureCache.open(cache_path)
    cache.check_matches(parse_expectations(expect))
    return cache, resolve_classes(classes, cache.classes)


def head_label(settings: dict, perturbation: str, guidance: str, seeds: list[int], lr_note: str) -> dict:
    return {"head": "plume", "perturbation": perturbation, "guidance": guidance, **settings,
            "lr": lr_note, "seeds": len(seeds),
            "auroc_is": "final epoch; best_epoch_auroc = best test AUROC over epochs (paper protocol, peeks at test)"}


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@training_options
@click.option("--perturbation", default="linear", show_default=True, type=click.Choice(PERTURBATIONS),
              help="linear: (I + alpha beta^T) x (PLUME); addmult: alpha*x + beta (PLAD); add; mult; "
                   "gaussian: x + sigma*eps, no perturbator.")
@click.option("--guidance", default="contrastive", show_default=True, type=click.Choice(GUIDANCES),
              help="contrastive (eq. 7), mean (appendix eq. 9) or none.")
@click.option("--metrics", "metrics_path", default="metrics/plume.json", show_default=True,
              help="Metrics JSON: per class and mean AUROC (final epoch, std over seeds), best-epoch AUROC, "
                   "AUPR, FPR@95%TPR.")
@click.option("--plots", "plots_dir", default=None, help="Folder for ROC curves (roc_<class>.json, first seed).")
@click.option("--curves", "curves_dir", default=None,
              help="Folder for training curves (train_<class>.json: loss terms and test AUROC per epoch and seed).")
@click.option("--save-heads", "save_dir", default=None, type=click.Path(file_okay=False), metavar="DIR",
              help="Also save each class's head (its first seed) as DIR/<class>.head, to score new images with "
                   "python -m stages.score: the classifier, its input normalisation, the config, the cache's "
                   "metadata and a threshold, the --threshold-quantile quantile of the head's scores on its "
                   "training features. Metrics are unchanged. With --scheduler each file is written by the "
                   "worker that trains the class, so DIR must be on storage the workers share (like the cache).")
@threshold_quantile_option
def main(cache_path, perturbation, guidance, seeds, classes, device, expect, scheduler, metrics_path, plots_dir,
         curves_dir, save_dir, threshold_quantile, **settings):
    """Train PLUME (a perturbator generating pseudo-anomalies and a classifier telling them from
    normal features) on each normal class in turn and score the test set with minus the
    classifier's logit. The test AUROC is recorded after every epoch: the reported AUROC is the
    final epoch's; the best epoch's is reported separately, since choosing it reads the test set."""
    cache, chosen = open_cache(cache_path, expect, classes)
    device_ = str(resolve_device(device))
    saver = None if save_dir is None else HeadSaver.for_cache(save_dir, "plume", cache, device=device_,
                                                                threshold_quantile=threshold_quantile)
    with open_client(scheduler) as client:
        results = run_plume(cache, chosen, seeds, device_, perturbation, guidance,
                            desc=f"PLUME {perturbation}/{guidance}", client=client, after_fit=saver, **settings)
    lr_note = "range test" if settings["lr"] == "auto" else settings["lr"]
    payload = write_results(results, cache.metadata, head_label({k: v for k, v in settings.items() if k != "lr"},
                                                                perturbation, guidance, seeds, lr_note),
                            metrics_path, plots_dir, curves_dir)
    click.echo(format_summary(payload))
    if saver is not None:
        click.echo(saved_heads_note(saver, [cache.classes[c] for c in chosen]))


if __name__ == "__main__":
    main()
