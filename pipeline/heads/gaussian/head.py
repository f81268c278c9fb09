"""Gaussian head: the squared Mahalanobis distance of a feature vector to the normal class's
mean, under a Ledoit-Wolf shrunk covariance (scikit-learn ``LedoitWolf``), in float64
(shared/METHODS.md, "Gaussian / Mahalanobis baseline"; as in Rippel et al., "Modeling the
distribution of normal data in pre-trained deep features for anomaly detection", 2020).

With ``scales="multi"`` the vector is the pooled features and every intermediate map of the
cache (AnoMem's stride-16 map), each average-pooled over its grid to a (C,) vector,
concatenated: one Gaussian over several layers. Nothing is random: one fit per class.

A saved head holds the mean, the lower Cholesky factor of the shrunk covariance and the
scaler: D x D float64 (13 MB at D = 1280), whatever the number of training images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import PipelineError
from pipeline.heads.base import POOLED, EpochCallback, Features, Head
from pipeline.heads.gaussian.settings import GaussianParams
from pipeline.heads.scaling import Scaler


def mahalanobis_squared(rows: np.ndarray, mean: np.ndarray, cholesky: np.ndarray) -> np.ndarray:
    """``(x - mean)^T covariance^-1 (x - mean)`` for every row, float64, given the lower
    Cholesky factor L of the covariance (covariance = L L^T): the squared norm of
    L^-1 (x - mean), one triangular solve, never an explicit inverse."""
    from scipy.linalg import solve_triangular

    centred = np.asarray(rows, dtype=np.float64) - mean
    whitened = solve_triangular(cholesky, centred.T, lower=True, check_finite=False)
    return np.einsum("ij,ij->j", whitened, whitened)


@dataclass(eq=False, repr=False, kw_only=True)
class GaussianHead(GaussianParams, Head):
    """Fits a mean and a Ledoit-Wolf covariance to the normal training vectors; scores by the
    squared Mahalanobis distance to them. Its parameters are declared in ``settings.py``."""

    name = "gaussian"
    training_note = "in-sample squared Mahalanobis distances of the training features (they run lower than new images')"

    @property
    def needs_maps(self) -> bool:  # the base class's flag, per instance: only the multi-layer head reads maps
        return self.scales == "multi"

    # --- the vectors -------------------------------------------------------------------

    def _layers(self, features: Features) -> list[str]:
        """Which scales make the vector: the pooled vector, then the maps by name."""
        if self.scales == "last":
            return [POOLED]
        if not features.maps:
            raise PipelineError("the multi-layer Gaussian head needs the cache's intermediate maps: extract with "
                                "--maps intermediate, or use --scales last.")
        return [POOLED, *sorted(features.maps)]

    def vectors(self, features: Features | np.ndarray | Any) -> np.ndarray:
        """The rows the Gaussian models, float64, before scaling: the pooled vectors and (multi)
        each map of ``layers_`` averaged over its grid, side by side."""
        features = Features.of(features)
        parts = []
        for layer in self.layers_:
            if layer == POOLED:
                parts.append(np.asarray(features.pooled, dtype=np.float64))
                continue
            if layer not in features.maps:
                raise PipelineError(f"the Gaussian head was fitted with the map {layer!r}, which these features "
                                    f"lack (they have {', '.join(features.maps) or 'no maps'}).")
            maps = np.asarray(features.maps[layer], dtype=np.float64)
            if maps.ndim != 4:
                raise PipelineError(f"the map {layer!r} must be (N, C, g, g), got shape {maps.shape}.")
            parts.append(maps.mean(axis=(2, 3)))
        for layer, part in zip(self.layers_, parts):
            if part.ndim != 2:
                raise PipelineError(f"the {layer} features must be a 2-D array (samples, dimensions), got shape "
                                    f"{part.shape}.")
        return np.concatenate(parts, axis=1)

    # --- fit and score --------------------------------------------------------------------

    def _fit(self, features: Features, labels: np.ndarray | None, callback: EpochCallback | None) -> None:
        from sklearn.covariance import LedoitWolf

        self.layers_ = self._layers(features)
        rows = self.vectors(features)
        if len(rows) < 2:
            raise PipelineError(f"a covariance needs at least 2 training features, got {len(rows)}.")
        self.scaler_ = Scaler.fit(self.scaling, rows)
        # store_precision=False: scikit-learn's precision_ is an eigendecomposition (pinvh), several
        # times slower than the Cholesky factor that scoring needs.
        estimate = LedoitWolf(store_precision=False).fit(self.scaler_(rows))
        self.mean_ = np.asarray(estimate.location_, dtype=np.float64)
        try:
            # The shrunk covariance is positive definite (shrinkage > 0 towards a multiple of I).
            self.cholesky_ = np.linalg.cholesky(np.asarray(estimate.covariance_, dtype=np.float64))
        except np.linalg.LinAlgError:
            raise PipelineError("the shrunk covariance is not positive definite (the training features are constant "
                                "or hold NaN); try --scaling standardise.") from None
        self.shrinkage_ = float(estimate.shrinkage_)

    def score_samples(self, features: Features | np.ndarray | Any) -> np.ndarray:
        if not hasattr(self, "cholesky_"):
            raise PipelineError("fit the Gaussian head before scoring")
        rows = self.scaler_(self.vectors(features))
        if rows.shape[1] != len(self.mean_):
            raise PipelineError(f"the Gaussian head was fitted on {len(self.mean_)}-d vectors, got {rows.shape[1]}-d.")
        return mahalanobis_squared(rows, self.mean_, self.cholesky_)

    # --- saving (pipeline.heads.saving) ----------------------------------------------------

    def _state(self) -> dict:
        """The mean and the covariance's Cholesky factor (float64), the layers and the scaler: no
        training rows."""
        if not hasattr(self, "cholesky_"):
            raise PipelineError("fit the Gaussian head before saving it")
        return {"scales": self.scales, "scaling": self.scaling, "layers": list(self.layers_),
                "feature_dim": int(len(self.mean_)), "shrinkage": self.shrinkage_, "mean": self.mean_,
                "cholesky": self.cholesky_, "scaler": self.scaler_.state()}

    @classmethod
    def _from_state(cls, state: dict, device: str = "cpu") -> "GaussianHead":
        head = cls(scales=str(state["scales"]), scaling=str(state["scaling"]))
        head.layers_ = [str(layer) for layer in state["layers"]]
        head.mean_ = np.asarray(state["mean"], dtype=np.float64)
        head.cholesky_ = np.asarray(state["cholesky"], dtype=np.float64)
        head.shrinkage_ = float(state["shrinkage"])
        head.scaler_ = Scaler.from_state(state["scaler"])
        return head


HEAD = GaussianHead
