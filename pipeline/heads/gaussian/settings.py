"""The Gaussian head's parameters, declared once (``pipeline.declare``): the head's fields, the
command's options and params.yaml's ``gaussian`` section come from here. The head is
scikit-learn's on the CPU, so it has no device."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.declare import param
from pipeline.heads.settings import SCALINGS, HeadParams

# last: the pooled vector; multi: the pooled vector and every intermediate map of the cache,
# each average-pooled to a vector (the levels).
SCALE_CHOICES = ("last", "multi")
# How the levels of --scales multi make one score: one Gaussian over the levels side by side, or
# one Gaussian per level with the squared distances (sum) or the distances (sum-distances) summed.
COMBINE_CHOICES = ("concatenate", "sum", "sum-distances")


@dataclass(eq=False, repr=False, kw_only=True)
class GaussianParams(HeadParams):
    scales: str = param("last", "last: the pooled vector; multi: the pooled vector and each intermediate map of the "
                                "cache (extract --maps intermediate), average-pooled over its grid (the levels).",
                        choices=SCALE_CHOICES)
    combine: str = param(
        "concatenate", "With --scales multi, how the levels make one score. concatenate: one Gaussian over the levels "
                       "side by side; sum: one Ledoit-Wolf Gaussian per level, their squared Mahalanobis distances "
                       "summed, unweighted (Rippel et al. 2020 fit one Gaussian per level); sum-distances: the same "
                       "Gaussians, the distances themselves (square roots) summed, as Rippel et al.'s code does (it "
                       "averages them). --scaling applies to each level alone. --scales last has one level: "
                       "concatenate only.",
        choices=COMBINE_CHOICES,
        report={"sum": "one Gaussian per level, squared distances summed",
                "sum-distances": "one Gaussian per level, distances summed"})
    scaling: str = param("none", "Before the Gaussian: none; standardise (each dimension by its training mean and "
                                 "standard deviation); l2 (each vector to unit length); sqrt (each value's signed "
                                 "square root, power normalisation).", choices=SCALINGS)


PARAMS = GaussianParams
