"""Gaussian (Mahalanobis, Ledoit-Wolf) head over a feature cache, one-vs-all for each class (or
the cache's protocol).

    python -m stages.gaussian --cache cache/digits_efficientnet_lite0_224.zarr
    python -m stages.gaussian --cache cache/digits_efficientnet_lite0_224.zarr --scales multi
    python -m stages.gaussian --cache cache/digits_efficientnet_lite0_224.zarr --scales multi --combine sum

Its parameters are the head's (``pipeline/heads/gaussian/settings.py``); what is its own here:
refusing --scales multi on a cache without intermediate maps before any fit, and the metrics'
description of the covariance, the score and the layers.
"""

from __future__ import annotations

from pipeline.commands.stage import Stage, StageRun, head_command
from pipeline.errors import PipelineError


def head_class() -> type:
    from pipeline.heads.gaussian.head import GaussianHead

    return GaussianHead


def check(run: StageRun) -> None:
    if run.head.scales == "multi" and not run.cache.map_names("train"):
        raise PipelineError(f"{run.cache.path} has no intermediate maps for --scales multi: extract it with --maps "
                            f"intermediate, or use --scales last.")


def describe(run: StageRun) -> dict:
    about = {"covariance": "Ledoit-Wolf (scikit-learn)", "score": "squared Mahalanobis distance, float64"}
    if run.head.scales == "multi":
        about["layers"] = ["pooled", *sorted(run.cache.map_names("train"))]
    return about


STAGE = Stage(
    "gaussian", head_class=head_class, what_saved="the mean, the Cholesky factor of the shrunk covariance (float64) and the scaler",
    doc="""Score every test image by its squared Mahalanobis distance to the normal class's mean,
    under the class's Ledoit-Wolf shrunk covariance (scikit-learn), in float64, for each
    normal class in turn. CPU only.""",
    desc=lambda run: " ".join(["Gaussian", run.head.scales,
                               *([run.head.combine] if run.head.combine != "concatenate" else [])]),
    check=check, describe=describe)
main = head_command(STAGE)

if __name__ == "__main__":
    main()
