"""PLUME head over a feature cache, one-vs-all for each class (or the cache's protocol), over
several seeds.

    python -m stages.plume --cache cache/digits_efficientnet_lite0_224.zarr --epochs 20 --dim native
    python -m stages.plume --cache ... --preset paper      # the paper's eq. 1 taken literally

Its parameters are the head's (``pipeline/heads/plume/settings.py``); what is its own here:
the figures of each training added to the metrics (the learning rate each seed trained at, the
kept epoch and its validation AUROC) and the description of how ``lr``, ``dim`` and the kept
epoch resolved.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.commands.stage import Stage, head_command

if TYPE_CHECKING:
    from pipeline.heads.plume.head import PlumeHead
    from pipeline.store.cache import FeatureCache

# What a PLUME metrics file's ``auroc`` is the test AUROC of, by ``select``.
AUROC_EPOCH = {"final": "final epoch", "held-out": "epoch chosen on held-out normal images"}


def head_class() -> type:
    from pipeline.heads.plume.head import PlumeHead

    return PlumeHead


def plume_about(head: PlumeHead, cache: FeatureCache, seeds: list[int]) -> dict:
    """The metrics file's description besides the declared settings: how ``lr`` was chosen (the
    rates themselves are numbers in the metrics, lr_used), the seeds, the device, the
    classifier's input size on this cache, and which epoch ``auroc`` is."""
    feature_dim = int(cache.features("train", slice(0, 1)).shape[1])
    epoch = AUROC_EPOCH[head.select]
    return {"lr": f"{head.lr} range test" if isinstance(head.lr, str) else head.lr, "seed_list": list(seeds),
            "device": str(head.device),
            "classifier_input_dim": feature_dim if head.dim == "native" else int(head.dim),
            "lr_used_is": "the one-cycle peak rate each class and seed trained at (per_class.lr_used)",
            "auroc_epoch": epoch,
            "auroc_is": f"{epoch}; best_epoch_auroc = best test AUROC over epochs (paper protocol, peeks at test)"}


def add_training_figures(payload: dict, results: dict[str, dict]) -> None:
    """Add to a metrics payload, per class (normal-vs-anomalies: in ``overall``, the one
    training's), from the epoch records: the learning rate each seed trained at (``lr_used:
    {seed_<n>: rate}``) and, with a held-out validation split, the epoch whose weights each seed
    kept (``selected_epoch``: the best validation epoch with ``select: held-out``, else the last)
    and its validation AUROC (``val_auroc``)."""
    held_out = payload["about"].get("select") == "held-out"
    for name, result in results.items():
        trained = payload["overall"] if "overall" in payload else payload["per_class"][name]
        trained["lr_used"] = {f"seed_{r['seed']}": r["lr_used"] for r in result["curves"]}
        last = {r["seed"]: r for r in result["curves"]}  # each seed's last epoch record
        if any("val_auroc" in r for r in last.values()):
            kept = {seed: r["val_best_epoch"] if held_out else r["epoch"] for seed, r in last.items()}
            trained["selected_epoch"] = {f"seed_{seed}": epoch for seed, epoch in kept.items()}
            trained["val_auroc"] = {f"seed_{r['seed']}": round(r["val_auroc"], 6) for r in result["curves"]
                                    if r["epoch"] == kept[r["seed"]]}


STAGE = Stage(
    "plume", head_class=head_class, what_saved="the classifier, its input normalisation, the parameters (first seed)",
    doc="""Train PLUME (a perturbator generating pseudo-anomalies and a classifier telling them from
    normal features) on each normal class in turn and score the test set with minus the
    classifier's logit. The test AUROC is recorded after every epoch: the reported AUROC is the
    kept epoch's (--select); the best epoch's is reported separately, since choosing it reads the
    test set.""",
    curves=True, desc=lambda run: f"PLUME {run.head.perturbation}/{run.head.guidance}",
    describe=lambda run: plume_about(run.head, run.cache, run.seeds),
    finish=lambda run, payload, results: add_training_figures(payload, results))
main = head_command(STAGE)

if __name__ == "__main__":
    main()
