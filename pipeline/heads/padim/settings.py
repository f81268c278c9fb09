"""The PaDiM head's parameters, declared once (``pipeline.declare``): the head's fields, the
command's options, params.yaml's ``padim`` section and the report's words all come from here.
Torch-free, so that a command's ``--help`` stays fast. The head computes on the CPU in float64
(its statistics are small: one d x d Gaussian per grid position), so it has no device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.declare import NOT_GIVEN, param, specs
from pipeline.heads.settings import HeadParams, SeedsParams

# regularised: the empirical covariance (1/(N-1)) + epsilon I, the paper's; ledoit_wolf: the
# Ledoit-Wolf shrunk covariance (scikit-learn's ledoit_wolf, 1/N) + epsilon I.
COVARIANCES = ("regularised", "ledoit_wolf")
ALL_CHANNELS = "all"


@dataclass(eq=False, repr=False, kw_only=True)
class PadimParams(HeadParams):
    layers: Any = param(None, "The cache's full-resolution maps the patch embeddings are made of (extract "
                              "--patch-maps), brought to the finest one's grid (bilinear) and concatenated; none: "
                              "all the maps the cache holds (the paper: ResNet18 layer1-3).",
                        kind="names", none_word="none", report="maps {}", report_skip=None)
    channels: int | str = param(100, "Channels of the concatenated embedding kept, a random subset drawn from the "
                                     "seed (the paper's random dimensionality reduction: 100 of ResNet18's 448); "
                                     "all: every channel. More than the maps have: all of them (the kept number is "
                                     "saved with the head, channels_used).",
                                low=1, words=(ALL_CHANNELS,), paper=100, report="{} channels")
    covariance: str = param("regularised", "The covariance of each grid position's Gaussian: regularised, the "
                                           "empirical covariance (normalised by N-1) + epsilon I, the paper's; "
                                           "ledoit_wolf, the Ledoit-Wolf shrunk covariance (scikit-learn's "
                                           "ledoit_wolf, normalised by N) + epsilon I.",
                            choices=COVARIANCES, paper="regularised",
                            report={"ledoit_wolf": "Ledoit-Wolf covariances"})
    epsilon: float = param(0.01, "Added to each covariance's diagonal so that it is invertible (the paper's 0.01; "
                                 "with ledoit_wolf, 0 gives scikit-learn's estimate exactly).",
                           low=0, paper=0.01, report="epsilon {}")
    seed: int = param(0, "Seed of the random channel subset (set by the evaluation, one per run).", low=0,
                      config=False)


PadimParams.PRESETS = {"paper": {
    "about": "PaDiM as the paper runs it: 100 random channels, empirical covariance + 0.01 I per position",
    **{name: spec.paper for name, spec in specs(PadimParams).items() if spec.paper is not NOT_GIVEN}}}

PARAMS = PadimParams
RUN = SeedsParams
