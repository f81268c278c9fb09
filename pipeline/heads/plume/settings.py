"""The PLUME head's parameters, declared once (``pipeline.declare``): the head's fields, the
command's options, params.yaml's ``plume`` section and the report's words all come from here.
The defaults are params.yaml's (what ``benchmarks/plume_study.py`` picked on CIFAR-10); the
paper's eq. 1 taken literally and the authors' code are the presets ``paper`` and ``authors``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from pipeline.declare import param
from pipeline.heads.settings import SeedsParams, TorchHeadParams

PERTURBATIONS = ("linear", "addmult", "add", "mult", "gaussian")
GUIDANCES = ("contrastive", "mean", "none")
BATCH_MODES = ("separate", "joint")
IDENTITY_LOSSES = ("sum", "mean")
# Where the near-identity loss pulls the linear map's (alpha, beta): paper eq. 1 (1, 0) or the
# authors' code (0, 1). Both make (I + alpha beta^T) the identity; they differ in the
# perturbation x~ - x = alpha (beta . x) they allow near it.
IDENTITY_TARGETS = ("paper", "authors")
# The guidance losses as the paper writes them (eq. 7, appendix eq. 9) or as the authors' code computes them.
GUIDANCE_FORMS = ("paper", "authors")
# How a range test picks the one-cycle peak learning rate (besides a number).
LR_RULES = ("lowest-loss", "steepest")
# Which epoch's weights the head keeps: the last one's, or those of the epoch that scored best on
# normal training images held out of training, against their own pseudo-anomalies.
SELECTIONS = ("final", "held-out")

# What the paper's eq. 1 and the authors' code share besides the settings they differ in: no
# held-out images (the last epoch's weights), no weight average, no limit on the shifts, no step
# floor, and the paper's training length and classifier input (D = 3072 on ResNet50 features).
_PAPER_RUN = {"lam": 5.0, "gamma": 1.0, "tau": 0.5, "epochs": 100, "min_steps": 0, "batch_size": 32, "dim": 3072,
              "val_fraction": 0.0, "select": "final", "ema": 0.0, "max_shift": 0.0}


@dataclass(eq=False, repr=False, kw_only=True)
class PlumeParams(TorchHeadParams):
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {"about": "the paper's eq. 1 taken literally: joint batches, alpha -> 1 and beta -> 0, the summed "
                           "near-identity loss, the guidance as written, a lowest-loss range test, the last of 100 "
                           "epochs, D = 3072 (the paper averages 5 seeds: add --seeds 5)",
                  "batch_mode": "joint", "identity_target": "paper", "identity_loss": "sum", "guidance_form": "paper",
                  "lr": "lowest-loss", **_PAPER_RUN},
        "authors": {"about": "the authors' code: separate batches, alpha -> 0 and beta -> 1, the element-mean "
                             "near-identity loss, their guidance form, Lightning's steepest-slope rate, the last of "
                             "100 epochs, D = 3072",
                    "batch_mode": "separate", "identity_target": "authors", "identity_loss": "mean",
                    "guidance_form": "authors", "lr": "steepest", **_PAPER_RUN},
    }

    perturbation: str = param("linear", "linear: (I + alpha beta^T) x (PLUME); addmult: alpha*x + beta (PLAD); add; "
                                        "mult; gaussian: x + sigma*eps, no perturbator.",
                              choices=PERTURBATIONS, paper="linear")
    guidance: str = param("contrastive", "contrastive (eq. 7), mean (appendix eq. 9) or none.",
                          choices=GUIDANCES, paper="contrastive")
    guidance_form: str = param(
        "paper", "The guidance loss as the paper writes it (eq. 7; appendix eq. 9 for mean) or as the authors' code "
                 "computes it (contrastive: each sample's own pseudo-anomaly against all normal ones in the "
                 "denominator; mean: cos(z, mean z~) - cos(z, mean z), no tau).",
        choices=GUIDANCE_FORMS, paper="paper", report="guidance form {}")
    lam: float = param(5.0, "lambda: weight of the near-identity loss on alpha, beta (eq. 1); the paper tries 5, 10 "
                            "and 20.", low=0, paper=5.0, report="lambda = {}")
    nu: float = param(1.0, "Weight of the VAE's KL divergence (eq. 4).", low=0)
    gamma: float = param(1.0, "Weight of the guidance loss.", low=0)
    tau: float = param(0.5, "Temperature of the cosine similarities in the guidance loss.", low=0, low_open=True)
    epochs: int = param(5, "Training epochs.", low=1, high=100_000, paper=100, report="{} epochs")
    min_steps: int = param(40, "Train at least this many optimiser steps: a class too small for them in --epochs "
                               "epochs trains more epochs (0: --epochs only; the paper has no such floor).",
                           low=0, paper=0, report="at least {} steps", report_skip=0)
    batch_size: int = param(32, "Normal samples per step; as many pseudo-anomalies are generated (at least 2: batch "
                                "norm and the contrastive loss need pairs).", low=2, high=1 << 16, paper=32)
    lr: float | str = param(
        "steepest", "Peak learning rate of the one-cycle schedule, or a learning-rate range test on the training "
                    "data picks it (as the paper does), by one of two rules: lowest-loss, a tenth of the rate at the "
                    "lowest smoothed loss; steepest, the rate where the smoothed loss falls fastest (Lightning's "
                    "lr_find suggestion, the authors' code). The rate used is recorded per class and seed (lr_used "
                    "in the metrics).",
        kind="float", low=0, low_open=True, words=LR_RULES, paper="lowest-loss", report="lr {}")
    weight_decay: float = param(0.01, "AdamW weight decay.", low=0)
    dim: int | str = param("native", "Classifier input size: the cached vector is adaptive-average-pooled to DIM, or "
                                     "native to keep the backbone's size.",
                           kind="int", low=2, words=("native",), paper=3072, report="D = {}")
    identity_loss: str = param("sum", "Near-identity loss over the D entries: sum (paper, eq. 1) or mean (authors' "
                                      "code).", choices=IDENTITY_LOSSES, paper="sum", report="identity loss {}")
    identity_target: str = param(
        "authors", "Where the near-identity loss pulls the linear map's alpha and beta: paper (eq. 1: alpha -> 1, "
                   "beta -> 0, so x~ - x stays near the all-ones direction) or authors (their code: alpha -> 0, "
                   "beta -> 1, so x~ - x lies along the learnt alpha). No effect on the other perturbations, whose "
                   "identity is the same in both.",
        choices=IDENTITY_TARGETS, paper="paper", report="identity target {}")
    batch_mode: str = param("joint", "separate: normal and perturbed batches go through the classifier apart, so "
                                     "batch norm normalises each alone (authors' code); joint: one batch (PLAD).",
                            choices=BATCH_MODES, report="batch mode {}")
    noise_std: float = param(0.1, "sigma of the gaussian perturbation, on batch-normalised features (the paper does "
                                  "not give it).", low=0)
    max_shift: float = param(0.25, "Longest shift of a pseudo-anomaly from its normal feature, as a fraction of the "
                                   "feature's norm (in batch-normalised coordinates): longer shifts x~ - x are pulled "
                                   "back to it, keeping their direction. 0: no limit (the paper).",
                             low=0, paper=0.0, report="max shift {}")
    select: str = param("held-out", "Which epoch's weights to keep: final, the last epoch's; held-out, the epoch with "
                                    "the best validation AUROC (needs --val-fraction above 0). Neither reads the test "
                                    "set; the kept epoch is in the metrics (selected_epoch).",
                        choices=SELECTIONS, report="kept epoch {}")
    val_fraction: float = param(0.1, "Fraction of the normal class's training images held out of training (drawn "
                                     "from the seed), scored after every epoch against their own pseudo-anomalies: "
                                     "the validation AUROC (val_auroc in the training curves). 0: none; every image "
                                     "trains.", low=0, high=1, high_open=True, paper=0.0, report="{} held out")
    ema: float = param(0.0, "Score with an exponential moving average of the classifier's weights (and batch-norm "
                            "statistics), updated after every step with this decay (torch.optim.swa_utils); 0: off.",
                       low=0, high=1, high_open=True, paper=0.0, report="EMA {}")
    seed: int = param(0, "Seed of the weights' initialisation, the batches and the held-out rows (set by the "
                         "evaluation, one per run).", low=0, config=False)


PARAMS = PlumeParams
RUN = SeedsParams
