"""The PANDA head's parameters, declared once (``pipeline.declare``): the head's fields, the
command's options, params.yaml's ``panda`` section and the report's words all come from here.
The backbone that made the cache is not a setting: the stage reads it from the cache
(``pipeline/commands/panda.py``)."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.declare import NOT_GIVEN, param, specs
from pipeline.heads.settings import SeedsParams, TorchHeadParams

# Where EWC's Fisher information comes from: none (no EWC: PANDA-Early, a fixed number of
# epochs), uniform (F = 1 for every weight, the paper's ablation) or normal_class (the
# pretrained classifier's loss on the normal class's own training images; PANDA's Fisher is
# from ImageNet, which is not here, and other classes' images are not the one-class protocol's).
FISHER_SOURCES = ("none", "uniform", "normal_class")
# Compute precision of the tail's forward and backward passes (autocast; bfloat16 for GPUs).
PRECISIONS = ("float32", "bfloat16")
FROM_CACHE = "Set from the cache's metadata by the stage."


@dataclass(eq=False, repr=False, kw_only=True)
class PandaParams(TorchHeadParams):
    # The backbone that made the cache: the tail must continue the cached trunk maps.
    backbone: str = param("efficientnet_lite0", f"The backbone whose tail is adapted. {FROM_CACHE}", config=False)
    image_size: int = param(224, f"The images' size. {FROM_CACHE}", low=1, config=False)
    weights_tag: str | None = param(None, f"The backbone's weights tag. {FROM_CACHE}", kind="str", none_word="none",
                                    config=False)
    weights_file: str | None = param(None, "The backbone weights file the cache was made with, if it was not the "
                                           "default (the stage's --weights).", kind="str", none_word="none",
                                     config=False)
    weights_sha256: str | None = param(None, f"The SHA-256 of the weights that made the cache's maps. {FROM_CACHE}",
                                       kind="str", none_word="none", config=False)
    trunk_end: str | None = param(None, f"The stage of the cached trunk maps (none: the backbone's PANDA split). "
                                        f"{FROM_CACHE}", kind="str", none_word="none", config=False,
                                  report="trunk to {}")
    # Training, as the authors' code.
    epochs: int = param(15, "Training epochs (PANDA-Early, the paper's early stopping: a fixed number; 15 on "
                            "CIFAR-10, about 2.3k minibatches; its code runs 50 with EWC). 0: no adaptation, DN2 "
                            "through the tail.", low=0, paper=15, report="{} epochs")
    batch_size: int = param(32, "Trunk maps per SGD step.", low=1, paper=32, report="batch {}")
    lr: float = param(1e-2, "SGD learning rate (the paper's code).", low=0, low_open=True, paper=1e-2, report="lr {}")
    momentum: float = param(0.9, "SGD momentum.", low=0, paper=0.9)
    weight_decay: float = param(5e-5, "SGD weight decay.", low=0, paper=5e-5)
    grad_clip: float = param(1e-3, "Largest gradient norm, clipped each step.", low=0, low_open=True, paper=1e-3)
    fisher: str = param("none", "EWC (PANDA-EWC): none (no EWC, PANDA-Early); uniform (F = 1 for every weight, the "
                                "paper's ablation); normal_class (the Fisher of the pretrained ImageNet classifier's "
                                "cross-entropy against its own top-1 predictions, on the normal class's training "
                                "images: the paper's ImageNet Fisher is not available here, and other classes' "
                                "images are not the one-class protocol's).",
                        choices=FISHER_SOURCES, paper="none", report="Fisher {}")
    ewc_lambda: float = param(1e4, "Weight of the EWC term.", low=0, paper=1e4)
    fisher_batches: int = param(100, "Minibatches the normal_class Fisher is averaged over (fewer if the class has "
                                     "fewer images).", low=1, paper=100)
    k: int = param(2, "Nearest adapted training features summed.", low=1, paper=2, report="k = {}")
    precision: str = param("float32", "Compute precision of the tail's passes: bfloat16 uses autocast (mixed "
                                      "precision, for GPUs).", choices=PRECISIONS)
    seed: int = param(0, "Seed of the minibatches' order (set by the evaluation, one per run).", low=0, config=False)


_PAPER = {name: spec.paper for name, spec in specs(PandaParams).items() if spec.paper is not NOT_GIVEN}
PandaParams.PRESETS = {
    "paper": {"about": "PANDA-Early as the authors' code runs it: 15 epochs, no EWC", **_PAPER},
    "ewc": {"about": "PANDA-EWC as the authors' code runs it, 50 epochs, lambda 1e4, with the normal class's "
                     "Fisher (the paper's ImageNet Fisher is not available here)",
            **_PAPER, "epochs": 50, "fisher": "normal_class"},
}

PARAMS = PandaParams
RUN = SeedsParams
