"""The AnoMem head's parameters, declared once (``pipeline.declare``): the head's fields, the
command's options, params.yaml's ``anomem`` section and the report's words all come from here;
``RUN`` is its stage's own (the semi-supervised runs, the kNN baseline). Torch-free.

The defaults are the adaptations to frozen features, chosen on the digits cache (docs/heads/anomem.md); ``PRESETS["paper"]`` is the paper's literal form, one setting away from each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from pipeline.declare import param
from pipeline.heads.settings import SeedsParams, TorchHeadParams

SCALE_CHOICES = ("multi", "last")
MEMORY_CHOICES = ("learnt", "kmeans")
PROJECTION_CHOICES = ("mlp", "none")               # mlp: trained in stage A | none: z is the feature
STANDARDISE_CHOICES = ("l2", "global", "dimension")  # how the frozen features are scaled before the projection
RETRIEVAL_CHOICES = ("cosine", "dot")          # cosine: normalised queries and slots (adaptation); dot: the paper's
SLOT_INIT_CHOICES = ("data", "random")         # data: projected normal training vectors (adaptation); random: paper's
SEMI_STAGE_A_CHOICES = ("retrain", "reuse")
SEMI_SCORE_CHOICES = ("combined", "classifier")  # combined: one-class + weighted classifier (adaptation)


@dataclass(eq=False, repr=False, kw_only=True)
class AnoMemParams(TorchHeadParams):
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {"about": "the paper's literal form (docs/heads/anomem.md): an MLP projection on "
                           "per-dimension standardised features, dot-product retrieval with beta 2 from random "
                           "slots, no recollection loss, the unbounded variance term, no floor on stage A's "
                           "steps, stage A retrained with the labelled anomalies, and the semi-supervised score "
                           "from the classifiers alone",
                  "projection": "mlp", "standardise": "dimension", "retrieval": "dot", "beta": 2.0,
                  "slot_init": "random", "lambda_recall": 0.0, "variance_hinge": None, "min_steps": 1,
                  "semi_stage_a": "retrain", "semi_score": "classifier"},
    }

    scales: str = param("multi", "multi: the intermediate map and the pooled vector (paper); last: the pooled vector "
                                 "only (ablation).", choices=SCALE_CHOICES, paper="multi")
    memory: str = param("learnt", "learnt: Hopfield memories trained with the contrasted-memory loss (paper); kmeans: "
                                  "train without memory, then use k-means centroids of the normal features (ablation, "
                                  "table 4b).", choices=MEMORY_CHOICES, paper="learnt")
    slots_intermediate: int = param(512, "Memory slots of the intermediate scale.", low=1, paper=512,
                                    report="{} intermediate memory slots")
    slots_last: int = param(256, "Memory slots of the last scale.", low=1, paper=256,
                            report="{} last-scale memory slots")
    projection: str = param(
        "none", "mlp: a 2-layer MLP per scale trained in stage A, standing in for the paper's encoder, which stage A "
                "trains; none: z is the (scaled) frozen feature itself, stage A trains the memories only "
                "(adaptation: on digits, training the MLP with NT-Xent on one class lowered the AUROC).",
        choices=PROJECTION_CHOICES, paper="mlp", report="projection {}")
    standardise: str = param(
        "l2", "How the frozen features are scaled before the projection. l2: each vector L2-normalised (no "
              "statistics); global: centred on the normal mean, one scale for all dimensions; dimension: centred, "
              "per-dimension std floored at the median std (channels dead on the training images would otherwise "
              "blow up on test images).", choices=STANDARDISE_CHOICES, paper="dimension", report="{} input scaling")
    retrieval: str = param("cosine", "cosine: queries and slots L2-normalised, beta acts on cosine similarities "
                                     "(adaptation); dot: the paper's softmax(beta z X) on raw dot products.",
                           choices=RETRIEVAL_CHOICES, paper="dot", report="{} retrieval")
    beta: float = param(30.0, "Hopfield inverse temperature (the paper's 2 is on dot products; 30, on cosine "
                              "similarities, was chosen on digits).", low=0, paper=2.0, report="beta {}")
    slot_init: str = param("data", "data: the learnt memory starts as projected normal training vectors drawn at "
                                   "random (adaptation); random: Gaussian slots (paper).",
                           choices=SLOT_INIT_CHOICES, paper="random", report="{} slot init")
    lambda_recall: float = param(
        10.0, "Weight of a recollection loss, ||z - HF(z)||^2 of the batch's plain (unaugmented) normal features, "
              "that trains the memory only and keeps its slots near the normal features (adaptation).",
        low=0, paper=0.0, report="lambda_recall {}", report_skip=0.0)
    variance_hinge: float | None = param(
        1.0, "Target std of VICReg's hinge max(0, target - std) on the recollections, which stops rewarding spread "
             "once reached (adaptation); none: the paper's unbounded -std.",
        low=0, low_open=True, none_word="none", paper=None, report="variance hinge {}")
    min_steps: int = param(
        240, "Stage A runs more epochs where --epochs would make fewer optimiser steps than this (small classes: 90 "
             "digits at batch 256 make one step per epoch; CIFAR's 2,000 make 8 per epoch, 240 in 30).",
        low=1, paper=1, report="at least {} steps (stage A)", report_skip=1)
    hopfield_steps: int = param(1, "Retrieval update steps per memory call.", low=1)
    sampling_ratio: float = param(0.3, "Fraction r of the intermediate map's positions used per step of stage A (the "
                                       "last scale has one position).", low=0, low_open=True, high=1, paper=0.3)
    tau: float = param(0.1, "NT-Xent temperature (as SimCLR).", low=0, low_open=True, paper=0.1)
    lambda_v: float = param(0.05, "Weight of the variance loss that keeps the memory from collapsing.", low=0,
                            paper=0.05)
    proj_hidden: int = param(512, "Hidden width of each scale's projection MLP.", low=1)
    proj_dim: int = param(128, "Output size of the projections, i.e. the memories' pattern size.", low=1)
    epochs: int = param(30, "Stage A epochs.", low=1, report="{} epochs (stage A)")
    batch_size: int = param(256, "Images per step.", low=2, paper=1024)
    lr: float = param(0.001, "AdamW learning rate, cosine-annealed (both stages).", low=0, low_open=True)
    weight_decay: float = param(0.0001, "AdamW weight decay (both stages).", low=0)
    margin: float = param(2.0, "Double-hinge margin M.", low=0, low_open=True, paper=2.0)
    sup_epochs: int = param(30, "Stage B epochs of the semi-supervised classifiers.", low=1,
                            report="{} epochs (stage B)")
    semi_score: str = param(
        "combined", "The semi-supervised score. combined: the one-class score plus a weight times the classifiers' "
                    "score, both standardised on the normal training rows, the weight chosen by cross-validation on "
                    "the training rows among 0 (one-class alone) to the classifiers alone, 0 where fewer than 2 "
                    "anomalies are labelled (adaptation: a few labels otherwise make the head worse than ignoring "
                    "them); classifier: the classifiers' score alone (paper, eq. 13).",
        choices=SEMI_SCORE_CHOICES, paper="classifier", report="{} semi-supervised score")
    sup_pool: int = param(1, "Side of the grid a difference map is average-pooled to before its classifier.", low=1)
    sup_hidden: int = param(128, "Hidden width of the stage B classifiers.", low=1)
    seed: int = param(0, "Seed of the initialisation, the batches and the sampled positions (set per run by the "
                         "evaluation).", low=0, config=False)
    warm_start: bool = param(False, "fit with labels on a fitted head trains stage B only, on its stage A (set by "
                                    "the evaluation for --semi-stage-a reuse).", config=False)


@dataclass
class AnoMemRun(SeedsParams):
    """The stage's own: the semi-supervised runs beside the one-class one, and the kNN baseline."""

    seeds: Any = param(1, "Seeds of the one-class run: a number N (seeds 0..N-1) or a comma-separated list; the "
                          "mean and standard deviation over them are reported.", kind="seeds")

    gammas: Any = param((0.01, 0.05, 0.1), "Semi-supervised runs, besides the one-class run: ratios of labelled "
                                           "anomalies to normal training images, each in (0, 1]; none: one-class "
                                           "only.",
                        kind="floats", low=0, low_open=True, high=1, none_word="none", paper=(0.01, 0.05, 0.1))
    draws: int = param(2, "Random draws of the labelled anomalies (and seeds) per class and gamma; mean and std "
                          "are reported.", low=1, paper=10)
    semi_stage_a: str = param(
        "reuse", "retrain: every semi-supervised draw trains stage A again with its labelled anomalies (paper); "
                 "reuse: stage B only, on the one-class run's stage A (draws x cheaper; the anomalies then do not "
                 "shape the memories).", choices=SEMI_STAGE_A_CHOICES, paper="retrain")
    knn_baseline: int = param(2, "Also score kNN with this k on the same training images (those with views) and add "
                                 "it to the metrics as knn_same_rows, for a like-for-like comparison; 0: skip.", low=0)


PARAMS = AnoMemParams
RUN = AnoMemRun
