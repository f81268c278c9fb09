"""The IGD head's parameters, declared once (``pipeline.declare``): the head's fields, the
command's options, params.yaml's ``igd`` section and the report's words all come from here."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.declare import NOT_GIVEN, param, specs
from pipeline.heads.settings import SeedsParams, TorchHeadParams

# mae: the paper's MAE term (its MS-SSIM term needs an image lattice); mse.
RECONSTRUCTIONS = ("mae", "mse")
# dimension: per-dimension mean and std (floored at the median std); global: one divisor; none.
STANDARDISATIONS = ("dimension", "global", "none")


@dataclass(eq=False, repr=False, kw_only=True)
class IGDParams(TorchHeadParams):
    latent_dim: int = param(128, "Z, the size of the encoder's code.", low=1, paper=128, report="Z = {}")
    hidden: int = param(512, "Hidden width of the encoder, decoder and critic MLPs; 0: one linear layer each (the "
                             "paper's encoder on a frozen pretrained backbone is one linear layer to Z).",
                        low=0, paper=0, report="hidden {}")
    epochs: int = param(20, "Training epochs, an E-step after each (20 fit a CIFAR-10 class in about a minute on a "
                            "CPU).", low=1, paper=256, report="{} epochs")
    batch_size: int = param(64, "Normal samples per step (at least 2: interpolation needs pairs).", low=2, paper=64,
                            report="batch {}")
    lr: float = param(1e-4, "Adam learning rate.", low=0, low_open=True, paper=1e-4, report="lr {}")
    weight_decay: float = param(1e-6, "Adam weight decay of the autoencoder (the critic has none, as in the "
                                      "authors' code).", low=0, paper=1e-6)
    lambda_1: float = param(1.0, "Weight of the critic loss l_d, eq. 7.", low=0, paper=1.0)
    lambda_2: float = param(1.0, "Weight of the reconstruction constraint l_fg, eq. 7.", low=0, paper=1.0)
    lambda_3: float = param(0.1, "Weight of the adversarial term in l_fg, eq. 11.", low=0, paper=0.1)
    alpha_max: float = param(0.5, "Interpolation coefficients alpha ~ U(0, ALPHA_MAX) (ACAI).", low=0, high=1,
                             paper=0.5)
    reconstruction: str = param("mae", "Reconstruction error of the feature vector: mae (the paper's MAE term; its "
                                       "MS-SSIM term needs an image) or mse.",
                                choices=RECONSTRUCTIONS, paper="mae", report="reconstruction {}")
    standardise: str = param("dimension", "Input standardisation from the normal training features: dimension "
                                          "(per-dimension mean and std, the std floored at the median std of the "
                                          "varying dimensions), global (one divisor for all dimensions) or none.",
                             choices=STANDARDISATIONS, report="standardise {}")
    seed: int = param(0, "Seed of the weights' initialisation and the batches (set by the evaluation, one per run).",
                      low=0, config=False)


IGDParams.PRESETS = {"paper": {
    "about": "the IGD paper's training on a frozen pretrained backbone: 256 epochs, one linear layer to Z = 128",
    **{name: spec.paper for name, spec in specs(IGDParams).items() if spec.paper is not NOT_GIVEN}}}

PARAMS = IGDParams
RUN = SeedsParams
