"""Gaussian head: the squared Mahalanobis distance of a feature vector to the normal class's
mean, under a Ledoit-Wolf shrunk covariance (scikit-learn ``LedoitWolf``), in float64
(shared/METHODS.md, "Gaussian / Mahalanobis baseline"; as in Rippel et al., "Modeling the
distribution of normal data in pre-trained deep features for anomaly detection", 2020).

With ``scales="multi"`` the levels are the pooled features and every intermediate map of the
cache (AnoMem's stride-16 map; ``extract --maps stem,stride8,stride16,stride32`` stores every
stage of an EfficientNet-Lite), each average-pooled over its grid to a (C,) vector. ``combine``
says how the levels make one score:

- ``concatenate``: the levels side by side, one Gaussian over them all.
- ``sum`` (multi-level Gaussian): one Ledoit-Wolf Gaussian per level, each fitted and scaled on
  its own; the score is the sum of the levels' squared Mahalanobis distances, unweighted and
  unstandardised. Rippel et al. fit one Gaussian per level (EfficientNet-B4's blocks, each
  average-pooled) and combine the levels' distances with no standardisation; their code (the
  authors' ``gaussian-ad-mvtec``, ``Mahalanobis.test_step``) averages the distances themselves,
  the square roots, over the levels, which ``sum-distances`` reproduces (a sum ranks as the
  mean does). A squared distance of a normal image runs about the level's dimension (a
  chi-squared variable), so under ``sum`` the wide levels (the 1280-d pooled vector) weigh more
  than the narrow ones (a 40-channel stride-8 map); standardising each level by its training
  scores is what the ensemble head does over caches (``pipeline.heads.ensemble``).

Nothing is random: one fit per class. A saved head holds, per Gaussian, the mean, the lower
Cholesky factor of the shrunk covariance and the scaler: D x D float64 (13 MB at D = 1280),
whatever the number of training images. Files saved before ``combine`` existed hold one
Gaussian and no ``combine``: they load as ``concatenate``.
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


@dataclass(frozen=True)
class Gaussian:
    """One fitted Gaussian: the layers whose vectors it models (side by side), their scaler, the
    mean and the lower Cholesky factor of the shrunk covariance, and the shrinkage."""

    layers: tuple[str, ...]
    scaler: Scaler
    mean: np.ndarray
    cholesky: np.ndarray
    shrinkage: float

    @classmethod
    def fit(cls, layers: tuple[str, ...], rows: np.ndarray, scaling: str) -> "Gaussian":
        from sklearn.covariance import LedoitWolf

        if len(rows) < 2:
            raise PipelineError(f"a covariance needs at least 2 training features, got {len(rows)}.")
        scaler = Scaler.fit(scaling, rows)
        # store_precision=False: scikit-learn's precision_ is an eigendecomposition (pinvh), several
        # times slower than the Cholesky factor that scoring needs.
        estimate = LedoitWolf(store_precision=False).fit(scaler(rows))
        try:
            # The shrunk covariance is positive definite (shrinkage > 0 towards a multiple of I).
            cholesky = np.linalg.cholesky(np.asarray(estimate.covariance_, dtype=np.float64))
        except np.linalg.LinAlgError:
            where = "" if layers == (POOLED,) else f" of {' + '.join(layers)}"
            raise PipelineError(f"the shrunk covariance{where} is not positive definite (the training features are "
                                f"constant or hold NaN); try --scaling standardise.") from None
        return cls(tuple(layers), scaler, np.asarray(estimate.location_, dtype=np.float64), cholesky,
                   float(estimate.shrinkage_))

    def score(self, rows: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distances of the rows (before scaling)."""
        rows = self.scaler(rows)
        if rows.shape[1] != len(self.mean):
            raise PipelineError(f"the Gaussian head was fitted on {len(self.mean)}-d vectors, got {rows.shape[1]}-d.")
        return mahalanobis_squared(rows, self.mean, self.cholesky)

    def state(self) -> dict:
        return {"layers": list(self.layers), "mean": self.mean, "cholesky": self.cholesky,
                "shrinkage": self.shrinkage, "scaler": self.scaler.state()}

    @classmethod
    def from_state(cls, state: dict, layers: list[str] | None = None) -> "Gaussian":
        return cls(tuple(str(layer) for layer in (state["layers"] if layers is None else layers)),
                   Scaler.from_state(state["scaler"]), np.asarray(state["mean"], dtype=np.float64),
                   np.asarray(state["cholesky"], dtype=np.float64), float(state["shrinkage"]))


@dataclass(eq=False, repr=False, kw_only=True)
class GaussianHead(GaussianParams, Head):
    """Fits a mean and a Ledoit-Wolf covariance to the normal training vectors (one Gaussian, or
    one per level with ``combine`` sum); scores by the squared Mahalanobis distance to them.
    Its parameters are declared in ``settings.py``."""

    name = "gaussian"
    training_note = "in-sample squared Mahalanobis distances of the training features (they run lower than new images')"

    @property
    def needs_maps(self) -> bool:  # the base class's flag, per instance: only the multi-layer head reads maps
        return self.scales == "multi"

    def _check_params(self) -> None:
        super()._check_params()
        if self.scales == "last" and self.combine != "concatenate":
            raise PipelineError(f"--combine {self.combine} sums one Gaussian per level: it needs --scales multi (with "
                                f"--scales last the pooled vector is the one level).")

    # --- what a single Gaussian head was (``mean_``, ``cholesky_``, ...) --------------------

    def _single(self) -> Gaussian:
        # AttributeError, so that hasattr(head, "mean_") says False on an unfitted head.
        if "gaussians_" not in vars(self):
            raise AttributeError("the Gaussian head is not fitted")
        if len(self.gaussians_) != 1:
            raise AttributeError(f"this Gaussian head holds one Gaussian per level ({len(self.gaussians_)}): read "
                                 f"gaussians_.")
        return self.gaussians_[0]

    @property
    def mean_(self) -> np.ndarray:
        return self._single().mean

    @property
    def cholesky_(self) -> np.ndarray:
        return self._single().cholesky

    @property
    def shrinkage_(self) -> float:
        return self._single().shrinkage

    @property
    def scaler_(self) -> Scaler:
        return self._single().scaler

    # --- the vectors -------------------------------------------------------------------

    def _layers(self, features: Features) -> list[str]:
        """Which scales make the vector: the pooled vector, then the maps by name."""
        if self.scales == "last":
            return [POOLED]
        if not features.maps:
            raise PipelineError("the multi-layer Gaussian head needs the cache's intermediate maps: extract with "
                                "--maps intermediate, or use --scales last.")
        return [POOLED, *sorted(features.maps)]

    def level_vectors(self, features: Features | np.ndarray | Any) -> dict[str, np.ndarray]:
        """Each level of ``layers_`` as float64 rows, before scaling: the pooled vectors and (multi)
        each map averaged over its grid."""
        features = Features.of(features)
        parts = {}
        for layer in self.layers_:
            if layer == POOLED:
                part = np.asarray(features.pooled, dtype=np.float64)
            else:
                if layer not in features.maps:
                    raise PipelineError(f"the Gaussian head was fitted with the map {layer!r}, which these features "
                                        f"lack (they have {', '.join(features.maps) or 'no maps'}).")
                maps = np.asarray(features.maps[layer], dtype=np.float64)
                if maps.ndim != 4:
                    raise PipelineError(f"the map {layer!r} must be (N, C, g, g), got shape {maps.shape}.")
                part = maps.mean(axis=(2, 3))
            if part.ndim != 2:
                raise PipelineError(f"the {layer} features must be a 2-D array (samples, dimensions), got shape "
                                    f"{part.shape}.")
            parts[layer] = part
        return parts

    def vectors(self, features: Features | np.ndarray | Any) -> np.ndarray:
        """The levels side by side (what ``concatenate`` models), float64, before scaling."""
        return np.concatenate(list(self.level_vectors(features).values()), axis=1)

    # --- fit and score --------------------------------------------------------------------

    def _fit(self, features: Features, labels: np.ndarray | None, callback: EpochCallback | None) -> None:
        self.layers_ = self._layers(features)
        levels = self.level_vectors(features)
        if self.combine == "concatenate":
            self.gaussians_ = [Gaussian.fit(tuple(self.layers_), np.concatenate(list(levels.values()), axis=1),
                                            self.scaling)]
        else:
            self.gaussians_ = [Gaussian.fit((layer,), rows, self.scaling) for layer, rows in levels.items()]

    def level_scores(self, features: Features | np.ndarray | Any) -> dict[str, np.ndarray]:
        """Each Gaussian's squared Mahalanobis distances, by its layers joined with '+'."""
        if not hasattr(self, "gaussians_"):
            raise PipelineError("fit the Gaussian head before scoring")
        levels = self.level_vectors(features)
        return {"+".join(g.layers): g.score(np.concatenate([levels[layer] for layer in g.layers], axis=1))
                for g in self.gaussians_}

    def score_samples(self, features: Features | np.ndarray | Any) -> np.ndarray:
        scores = list(self.level_scores(features).values())
        if self.combine == "sum-distances":
            scores = [np.sqrt(np.maximum(s, 0.0)) for s in scores]
        return np.sum(scores, axis=0) if len(scores) > 1 else scores[0]

    # --- saving (pipeline.heads.saving) ----------------------------------------------------

    def _state(self) -> dict:
        """The layers and, per Gaussian, its mean and covariance's Cholesky factor (float64) and
        scaler: no training rows. One Gaussian (concatenate) keeps the layout files had before
        ``combine``."""
        if not hasattr(self, "gaussians_"):
            raise PipelineError("fit the Gaussian head before saving it")
        state = {"scales": self.scales, "combine": self.combine, "scaling": self.scaling, "layers": list(self.layers_),
                 "feature_dim": int(sum(len(g.mean) for g in self.gaussians_))}
        if self.combine == "concatenate":
            (single,) = self.gaussians_
            return {**state, "shrinkage": single.shrinkage, "mean": single.mean, "cholesky": single.cholesky,
                    "scaler": single.scaler.state()}
        return {**state, "levels": [g.state() for g in self.gaussians_]}

    @classmethod
    def _from_state(cls, state: dict, device: str = "cpu") -> "GaussianHead":
        combine = str(state.get("combine", "concatenate"))  # files saved before combine: one Gaussian
        head = cls(scales=str(state["scales"]), combine=combine, scaling=str(state["scaling"]))
        head.layers_ = [str(layer) for layer in state["layers"]]
        if combine == "concatenate":
            head.gaussians_ = [Gaussian.from_state(state, head.layers_)]
        else:
            head.gaussians_ = [Gaussian.from_state(level) for level in state["levels"]]
            if [layer for g in head.gaussians_ for layer in g.layers] != head.layers_:
                raise PipelineError(f"the Gaussian head's saved state is inconsistent: levels "
                                    f"{[list(g.layers) for g in head.gaussians_]} for the layers {head.layers_}.")
        return head


HEAD = GaussianHead
