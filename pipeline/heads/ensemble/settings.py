"""The ensemble head's parameters, declared once (``pipeline.declare``): the head's fields, the
command's options and params.yaml's ``ensemble`` section come from here. The member head's own
parameters are its declarations (``pipeline/heads/<member>/settings.py``), given as KEY=VALUE."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.declare import param
from pipeline.heads.registry import HEADS
from pipeline.heads.settings import HeadParams

# Any registered head but the ensemble itself.
MEMBER_CHOICES = tuple(name for name in HEADS if name != "ensemble")
# cross-fit: each member's training images scored by the member fitted without their fold;
# training: the member's own training scores (in-sample, kNN leave-one-out); none: raw sum.
STANDARDISE_CHOICES = ("cross-fit", "training", "none")


@dataclass(eq=False, repr=False, kw_only=True)
class EnsembleParams(HeadParams):
    member: str = param("gaussian", "The head trained on each cache (the same head, one per cache); its scores are "
                                    "standardised and summed.", choices=MEMBER_CHOICES, report="member {}")
    member_settings: tuple = param(
        (), "The member head's parameters as KEY=VALUE, comma-separated (scales=multi,combine=sum; a list value "
            "separates its items with ';'), checked against its declarations; the others are that head's class "
            "defaults (not params.yaml's section of that head).", kind="names", report="member settings {}", report_skip=())
    standardise: str = param(
        "cross-fit", "How each member's score is put on a common scale before the sum: minus the mean, over the "
                     "standard deviation, of its scores of the normal training images. cross-fit: each training "
                     "image scored by the member fitted without it (--folds folds), as a new normal image is "
                     "scored; training: the member's own training scores (in-sample for the Gaussian, which run "
                     "low and narrow as the dimension nears the number of images; leave-one-out for kNN); none: "
                     "the raw scores summed.",
        choices=STANDARDISE_CHOICES,
        report={"cross-fit": "each standardised on cross-fitted training scores",
                "training": "each standardised on its own training scores",
                "none": "raw scores summed"})
    folds: int = param(5, "With --standardise cross-fit: folds of the training images (image i in fold i mod "
                          "folds, no randomness); the member is fitted once more per fold.", low=2, high=100)


PARAMS = EnsembleParams
