"""The Gaussian head's parameters, declared once (``pipeline.declare``): the head's fields, the
command's options and params.yaml's ``gaussian`` section come from here. The head is
scikit-learn's on the CPU, so it has no device."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.declare import param
from pipeline.heads.settings import SCALINGS, HeadParams

# last: the pooled vector; multi: the pooled vector and every intermediate map of the cache,
# each average-pooled to a vector, concatenated.
SCALE_CHOICES = ("last", "multi")


@dataclass(eq=False, repr=False, kw_only=True)
class GaussianParams(HeadParams):
    scales: str = param("last", "last: the pooled vector; multi: the pooled vector and each intermediate map of the "
                                "cache (extract --maps intermediate), average-pooled over its grid, concatenated.",
                        choices=SCALE_CHOICES)
    scaling: str = param("none", "Before the Gaussian: none; standardise (each dimension by its training mean and "
                                 "standard deviation); l2 (each vector to unit length).", choices=SCALINGS)


PARAMS = GaussianParams
