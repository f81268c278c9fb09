"""PANDA head over a feature cache with trunk maps, one-vs-all for each class (or the cache's
protocol), over several seeds.

    python -m pipeline.extract --dataset digits --trunk-maps --out cache/digits_panda.zarr
    python -m stages.panda --cache cache/digits_panda.zarr --curves plots/panda_training

Its parameters are the head's (``pipeline/heads/panda/settings.py``); what is its own here:
the backbone the tail continues, read from the cache (which must hold full-resolution trunk
maps), the backbone's weights file (--weights), and the metrics' words for the Fisher.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from pipeline.commands.stage import Stage, StageRun, head_command
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.store.cache import FeatureCache

FISHER_WORDS = {
    "none": "no EWC (PANDA-Early: a fixed number of epochs)",
    "uniform": "EWC with F = 1 for every weight (uniform, the paper's ablation)",
    "normal_class": "EWC with the Fisher of the pretrained classifier's cross-entropy against its own top-1 "
                    "predictions on the normal class's training images (not the paper's ImageNet Fisher)",
}

OPTIONS = [
    click.option("--weights", "weights", default=None, type=click.Path(exists=True, dir_okay=False),
                 help="The backbone weights file the cache was made with, if it was not the default (checked "
                      "against the SHA-256 the cache records)."),
]


def head_class() -> type:
    from pipeline.heads.panda.head import PandaHead

    return PandaHead


def build(cache: "FeatureCache", extra: dict) -> dict:
    """The backbone that made the cache, its weights and the stage of its trunk maps: the tail
    adapted must continue them. A cache without full-resolution trunk maps is refused."""
    trunk = cache.metadata.get("features", {}).get("trunk")
    if not trunk or trunk.get("stage") not in cache.trunk_names("train"):
        raise PipelineError(f"the feature cache {cache.path} has no full-resolution trunk maps, which the PANDA head "
                            f"trains on. Extract it again with them: the python -m pipeline.extract command that "
                            f"made it, with --trunk-maps (and --overwrite).")
    backbone = cache.metadata["backbone"]
    return {"backbone": backbone["name"], "image_size": int(cache.metadata["preprocessing"]["image_size"]),
            "weights_tag": backbone.get("weights"), "weights_file": extra["weights"],
            "weights_sha256": backbone.get("weights_sha256"), "trunk_end": trunk["stage"]}


def describe(run: StageRun) -> dict:
    # The trunk's stage is set from the cache, not a setting, but it tells runs apart; the
    # backbone itself is in the cache's label.
    return {"trunk_end": run.head.trunk_end, "fisher_is": FISHER_WORDS[run.head.fisher],
            "auroc_is": "final epoch; best_epoch_auroc = best test AUROC over epochs 0..N, epoch 0 before "
                        "adaptation (peeks at the test set)"}


STAGE = Stage(
    "panda", head_class=head_class, what_saved="the adapted tail's weights, the centre and the kNN gallery of adapted features (first seed)",
    doc="""Adapt a copy of the backbone's later stages to each normal class in turn with PANDA's
    compactness loss, trained on the cache's full-resolution trunk maps (only the tail runs),
    and score the test set by kNN on the adapted features. The test AUROC is recorded after
    every epoch (epoch 0: the model before adaptation): the reported AUROC is the final
    epoch's; the best epoch's is reported separately, since choosing it reads the test set.""",
    curves=True, desc=lambda run: "PANDA", options=OPTIONS, build=build, describe=describe)
main = head_command(STAGE)

if __name__ == "__main__":
    main()
