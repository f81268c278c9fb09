"""PLUME head over a feature cache, one-vs-all for each class, over several seeds.

    python -m stages.plume --cache cache/digits_efficientnet_lite0_224.zarr --epochs 20 --dim native
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import click

from pipeline import params
from pipeline.heads.plume import (BATCH_MODES, GUIDANCE_FORMS, GUIDANCES, IDENTITY_LOSSES, IDENTITY_TARGETS,
                                  LR_RULES, PERTURBATIONS, SELECTIONS)
from pipeline.heads.stage import CONTEXT, apply_options, common_options, open_cache, saver_for, shift_plan

if TYPE_CHECKING:
    from distributed import Client

    from pipeline.store.cache import FeatureCache
    from pipeline.evaluate import AfterFit
    from pipeline.protocol import Task
    from pipeline.shift import ShiftPlan



def _number_or_word(value: str, words: tuple[str, ...], convert: Callable[[str], float | int],
                    kind: str) -> float | int | str:
    """An option that takes a number or one of some keywords (``--lr steepest``, ``--dim native``)."""
    if str(value).strip().lower() in words:
        return str(value).strip().lower()
    try:
        return convert(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither {kind} nor {' nor '.join(words)}") from None


def parse_lr(value: str) -> float | str:
    return _number_or_word(value, LR_RULES, float, "a number")


def parse_dim(value: str) -> int | str:
    return _number_or_word(value, ("native",), int, "an integer")


def parse_seeds(value: str) -> list[int]:
    """'3' -> [0, 1, 2]; '0,4,7' -> [0, 4, 7]."""
    value = str(value)
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
    """PLUME's training parameters (every PlumeHead field but the variant), defaults from params.yaml."""
    return apply_options(command, [
        params.option("plume", "lam", type=float,
                      help="lambda: weight of the near-identity loss on alpha, beta (eq. 1). Paper: 5, 10, 20."),
        params.option("plume", "nu", type=float, help="Weight of the VAE's KL divergence (eq. 4)."),
        params.option("plume", "gamma", type=float, help="Weight of the guidance loss."),
        params.option("plume", "tau", type=float, help="Temperature of the cosine similarities in the guidance loss."),
        params.option("plume", "epochs", type=click.IntRange(1, 100_000), help="Training epochs (paper: 100)."),
        params.option("plume", "min_steps", type=click.IntRange(0),
                      help="Train at least this many optimiser steps: a class too small for them in --epochs "
                           "epochs trains more epochs (0: --epochs only; the paper has no such floor)."),
        params.option("plume", "batch_size", type=click.IntRange(2, 1 << 16),
                      help="Normal samples per step (paper: 32); as many pseudo-anomalies are generated."),
        params.option("plume", "lr", callback=lambda c, p, v: parse_lr(v),
                      help="Peak learning rate of the one-cycle schedule, or a learning-rate range test on the "
                           "training data picks it (as the paper does), by one of two rules: lowest-loss, a tenth "
                           "of the rate at the lowest smoothed loss; steepest, the rate where the smoothed loss "
                           "falls fastest (Lightning's lr_find suggestion, the authors' code). The rate used is "
                           "recorded per class and seed (lr_used in the metrics)."),
        params.option("plume", "weight_decay", type=float, help="AdamW weight decay."),
        params.option("plume", "dim", callback=lambda c, p, v: parse_dim(v),
                      help="Classifier input size: the cached vector is adaptive-average-pooled to DIM (paper: "
                           "3072), or native to keep the backbone's size."),
        params.option("plume", "identity_loss", type=click.Choice(IDENTITY_LOSSES),
                      help="Near-identity loss over the D entries: sum (paper, eq. 1) or mean (authors' code)."),
        params.option("plume", "identity_target", type=click.Choice(IDENTITY_TARGETS),
                      help="Where the near-identity loss pulls the linear map's alpha and beta: paper (eq. 1: "
                           "alpha -> 1, beta -> 0, so x~ - x stays near the all-ones direction) or authors (their "
                           "code: alpha -> 0, beta -> 1, so x~ - x lies along the learnt alpha). No effect on the "
                           "other perturbations, whose identity is the same in both."),
        params.option("plume", "guidance_form", type=click.Choice(GUIDANCE_FORMS),
                      help="The guidance loss as the paper writes it (eq. 7; appendix eq. 9 for mean) or as the "
                           "authors' code computes it (contrastive: each sample's own pseudo-anomaly against all "
                           "normal ones in the denominator; mean: cos(z, mean z~) - cos(z, mean z), no tau)."),
        params.option("plume", "batch_mode", type=click.Choice(BATCH_MODES),
                      help="separate: normal and perturbed batches go through the classifier apart, so batch norm "
                           "normalises each alone (authors' code); joint: one batch (PLAD)."),
        params.option("plume", "noise_std", type=float,
                      help="sigma of the gaussian perturbation, on batch-normalised features."),
        params.option("plume", "max_shift", type=click.FloatRange(0),
                      help="Longest shift of a pseudo-anomaly from its normal feature, as a fraction of the "
                           "feature's norm (in batch-normalised coordinates): longer shifts x~ - x are pulled back "
                           "to it, keeping their direction. 0: no limit (the paper)."),
        params.option("plume", "val_fraction", type=click.FloatRange(0, 1, max_open=True),
                      help="Fraction of the normal class's training images held out of training (drawn from the "
                           "seed), scored after every epoch against their own pseudo-anomalies: the validation "
                           "AUROC (val_auroc in the training curves). 0: none; every image trains."),
        params.option("plume", "select", type=click.Choice(SELECTIONS),
                      help="Which epoch's weights to keep: final, the last epoch's; held-out, the epoch with the "
                           "best validation AUROC (needs --val-fraction above 0). Neither reads the test set; the "
                           "kept epoch is in the metrics (selected_epoch)."),
        params.option("plume", "ema", type=click.FloatRange(0, 1, max_open=True),
                      help="Score with an exponential moving average of the classifier's weights (and batch-norm "
                           "statistics), updated after every step with this decay (torch.optim.swa_utils); 0: off."),
        params.option("plume", "seeds", type=str, callback=lambda c, p, v: parse_seeds(v),
                      help="Number of seeds (0..N-1) or a comma-separated list; mean and standard deviation are "
                           "reported."),
    ])


def run_plume(cache: "FeatureCache", classes: "list[int] | list[Task]", seeds: list[int], device: str, perturbation: str,
              guidance: str, desc: str, client: "Client | None" = None, after_fit: "AfterFit | None" = None,
              threshold_quantile: float | None = None, shift: "ShiftPlan | None" = None,
              **settings) -> dict[str, dict]:
    """Train and evaluate one PLUME variant on every chosen class (or task of a protocol) and
    seed, the test AUROC recorded after every epoch (each (class, seed) a job on ``client``'s Dask cluster if given).
    ``after_fit`` is called with each class's first-seed head (to save it)."""
    from pipeline.evaluate import evaluate_one_vs_all
    from pipeline.heads.plume.head import PlumeHead

    head = PlumeHead(perturbation=perturbation, guidance=guidance, device=device,
                     threshold_quantile=threshold_quantile, **settings)
    return evaluate_one_vs_all(cache, head, classes, seeds=seeds, track_epochs=True, desc=desc, client=client,
                               after_fit=after_fit, shift=shift)


# What a PLUME metrics file's ``auroc`` is the test AUROC of, by ``select``.
AUROC_EPOCH = {"final": "final epoch", "held-out": "epoch chosen on held-out normal images"}


def head_label(settings: dict, perturbation: str, guidance: str, seeds: list[int], **resolved) -> dict:
    """The about sidecar's description of a run: every setting as given, how ``lr`` was
    resolved (the rates themselves are numbers in the metrics, lr_used), and ``resolved``
    (the device, the classifier's input size)."""
    lr = settings["lr"]
    return {"head": "plume", "perturbation": perturbation, "guidance": guidance,
            **{k: v for k, v in settings.items() if k not in ("lr", "seeds")},
            "lr": f"{lr} range test" if isinstance(lr, str) else lr, "seeds": len(seeds), "seed_list": list(seeds),
            **resolved, "lr_used_is": "the one-cycle peak rate each class and seed trained at (per_class.lr_used)",
            "auroc_epoch": AUROC_EPOCH[settings["select"]],
            "auroc_is": f"{AUROC_EPOCH[settings['select']]}; best_epoch_auroc = best test AUROC over epochs "
                        f"(paper protocol, peeks at test)"}


def resolved_settings(cache: "FeatureCache", settings: dict, device: str, threshold_quantile: float | None) -> dict:
    """What the options resolve to on this cache and machine."""
    feature_dim = int(cache.features("train", slice(0, 1)).shape[1])
    return {"device": device, "threshold_quantile": threshold_quantile,
            "classifier_input_dim": feature_dim if settings["dim"] == "native" else int(settings["dim"])}


def plume_payload(results: dict[str, dict], metadata: dict, label: dict) -> dict:
    """``metrics_payload`` with, per class (normal-vs-anomalies: in ``overall``, the one
    training's), from the epoch records: the learning rate each seed trained at (``lr_used:
    {seed_<n>: rate}``) and, with a held-out validation split, the epoch whose weights each
    seed kept (``selected_epoch``: the best validation epoch with ``select: held-out``, else
    the last) and its validation AUROC (``val_auroc``)."""
    from pipeline.evaluate import metrics_payload

    payload = metrics_payload(results, metadata, label)
    for name, result in results.items():
        trained = payload["overall"] if "overall" in payload else payload["per_class"][name]
        trained["lr_used"] = {f"seed_{r['seed']}": r["lr_used"] for r in result["curves"]}
        last = {r["seed"]: r for r in result["curves"]}  # each seed's last epoch record
        if any("val_auroc" in r for r in last.values()):
            kept = {seed: r["val_best_epoch"] if label.get("select") == "held-out" else r["epoch"]
                    for seed, r in last.items()}
            trained["selected_epoch"] = {f"seed_{seed}": epoch for seed, epoch in kept.items()}
            trained["val_auroc"] = {f"seed_{r['seed']}": round(r["val_auroc"], 6) for r in result["curves"]
                                    if r["epoch"] == kept[r["seed"]]}
    return payload


@click.command(context_settings=CONTEXT)
@common_options("plume", "the classifier, its input normalisation, the parameters (first seed)")
@training_options
@params.option("plume", "perturbation", type=click.Choice(PERTURBATIONS),
               help="linear: (I + alpha beta^T) x (PLUME); addmult: alpha*x + beta (PLAD); add; mult; "
                    "gaussian: x + sigma*eps, no perturbator.")
@params.option("plume", "guidance", type=click.Choice(GUIDANCES),
               help="contrastive (eq. 7), mean (appendix eq. 9) or none.")
@click.option("--curves", "curves_dir", default=None,
              help="Folder for training curves (train_<class>.json: loss terms and test AUROC per epoch and seed).")
def main(cache_path, protocol, perturbation, guidance, seeds, classes, device, expect, scheduler, metrics_path, plots_dir,
         curves_dir, save_dir, threshold_quantile, shift, shift_labels, **settings):
    """Train PLUME (a perturbator generating pseudo-anomalies and a classifier telling them from
    normal features) on each normal class in turn and score the test set with minus the
    classifier's logit. The test AUROC is recorded after every epoch: the reported AUROC is the
    final epoch's; the best epoch's is reported separately, since choosing it reads the test set."""
    from pipeline.cli import check_outputs, resolve_device
    from pipeline.distributed import open_client
    from pipeline import metrics_file
    from pipeline.evaluate import format_summary, write_plots
    from pipeline.heads.saving import saved_heads_note

    check_outputs(files={"--metrics": metrics_path},
                  folders={"--plots": plots_dir, "--curves": curves_dir, "--save-heads": save_dir})
    cache, tasks = open_cache(cache_path, expect, classes, protocol)
    shifted = shift_plan(cache, shift, shift_labels)
    device_ = str(resolve_device(device))
    saver = saver_for(save_dir, "plume", cache, threshold_quantile, device_)
    with open_client(scheduler) as client:
        results = run_plume(cache, tasks, seeds, device_, perturbation, guidance,
                            desc=f"PLUME {perturbation}/{guidance}", client=client, after_fit=saver,
                            threshold_quantile=threshold_quantile, shift=shifted, **settings)
    label = head_label(settings, perturbation, guidance, seeds,
                       **resolved_settings(cache, settings, device_, threshold_quantile))
    payload = plume_payload(results, cache.metadata, label)
    metrics_file.write(metrics_path, payload)
    write_plots(results, plots_dir, curves_dir)
    click.echo(format_summary(payload))
    if saver is not None:
        click.echo(saved_heads_note(saver, [task.name for task in tasks]))


if __name__ == "__main__":
    main()
