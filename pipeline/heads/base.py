"""The head contract every head follows, in the manner of scikit-learn and PyOD.

    head = KNNHead(k=2)                          # parameters only: sklearn.base.clone works
    head.fit(Features(train))                    # or head.fit(train_array)
    scores = head.score_samples(test)            # higher = more anomalous (as PyOD's decision_function)
    flags = head.predict(test)                   # 1 = anomalous: score > head.threshold_
    head.save("heads/cat.head"); KNNHead.load("heads/cat.head")

A head is a dataclass whose fields are its parameters (``get_params``/``set_params`` and
``clone`` read them from ``__init__``, as scikit-learn does); what ``fit`` learns is kept in
attributes ending in ``_``. ``fit`` sets ``threshold_`` to the ``threshold_quantile`` quantile
of the head's scores on its own normal training rows (``training_scores``), or leaves it None
when ``threshold_quantile`` is None; ``calibrate`` re-chooses it on held-out normal features.

Heads never see the test set: heads trained by epochs call ``callback(head, record)`` after
each epoch, and the evaluation passes one in to record test curves (``pipeline.evaluate``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

import numpy as np
from sklearn.base import BaseEstimator

from pipeline.declare import check_all
from pipeline.errors import PipelineError
from pipeline.heads.settings import DEFAULT_THRESHOLD_QUANTILE, HeadParams

POOLED = "pooled"
TRUNK = "trunk/"  # prefix of the trunk maps' keys in a mapping of features (and of their cache arrays)


@dataclass(frozen=True)
class Features:
    """What a head reads, for the same N images: pooled vectors (N, D); optional feature maps
    by layer name (N, C, g, g); optional augmented views of those rows by scale (``"pooled"``
    or a layer name) with a views axis, (N, V, D) or (N, V, C, g, g); optional full-resolution
    trunk maps by stage name (N, C, H, W), float16 as the cache stores them (the PANDA head's
    input: ``pipeline.extract --trunk-maps``).

    ``pooled`` may also be a Dask array or a function returning an iterable of row blocks for
    kNN galleries larger than memory (``pipeline.heads.knn``)."""

    pooled: Any
    maps: Mapping[str, np.ndarray] = field(default_factory=dict)
    views: Mapping[str, np.ndarray] | None = None
    trunk: Mapping[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def of(cls, value: "Features | np.ndarray | Mapping[str, np.ndarray] | Any") -> "Features":
        """Features as given, an array of pooled vectors, or ``{"pooled": ..., <layer>: maps,
        "trunk/<stage>": trunk maps}``."""
        if isinstance(value, Features):
            return value
        if isinstance(value, Mapping):
            if POOLED not in value:
                raise PipelineError(f"features given by scale need the pooled vectors under {POOLED!r}; "
                                    f"got {', '.join(map(str, value)) or 'nothing'}.")
            trunk = {k.removeprefix(TRUNK): v for k, v in value.items() if k.startswith(TRUNK)}
            maps = {k: v for k, v in value.items() if k != POOLED and not k.startswith(TRUNK)}
            return cls(value[POOLED], maps, trunk=trunk)
        return cls(value)

    def __len__(self) -> int:
        return len(self.pooled)

    def scales(self) -> dict[str, Any]:
        """The pooled vectors and each map, by scale name."""
        return {POOLED: self.pooled, **self.maps}

    def take(self, index: np.ndarray) -> "Features":
        """The given rows (maps and views too)."""
        views = None if self.views is None else {k: v[index] for k, v in self.views.items()}
        return Features(self.pooled[index], {k: v[index] for k, v in self.maps.items()}, views,
                        {k: v[index] for k, v in self.trunk.items()})


# After each epoch of a head trained by epochs: (the head in its current state, the epoch's
# record: epoch number and loss terms). The evaluation scores the test set here.
EpochCallback = Callable[["Head", dict], None]


@dataclass(eq=False, repr=False, kw_only=True)
class Head(HeadParams, BaseEstimator):
    """Base of every head. A subclass is a ``@dataclass(eq=False, repr=False, kw_only=True)``
    on its declared parameters (``class KNNHead(KNNParams, Head)``, ``settings.py`` of its
    package), sets ``name``, and implements ``_fit``, ``score_samples``, ``_state`` and
    ``_from_state``; it may override ``training_scores`` (kNN: leave-one-out) and
    ``_check_params`` (checks between parameters, after the declared ones). A head that
    localises sets ``localises`` and implements ``anomaly_maps``."""

    name: ClassVar[str] = ""
    needs_maps: ClassVar[bool] = False   # fit and score read Features.maps
    needs_views: ClassVar[bool] = False  # fit reads Features.views
    needs_trunk: ClassVar[bool] = False  # fit and score read Features.trunk
    uses_labels: ClassVar[bool] = False  # fit may take labelled anomalies
    localises: ClassVar[bool] = False    # anomaly_maps gives where the anomaly is (patch heads)
    # What the threshold is a quantile of, in words (saved with the head).
    training_note: ClassVar[str] = "the head's scores on its own training features"

    # --- the contract ---------------------------------------------------------------------

    def fit(self, features: Features | np.ndarray | Any, labels: np.ndarray | None = None,
            callback: EpochCallback | None = None) -> "Head":
        """Train on normal features (and, for heads that use them, labelled anomalies:
        ``labels`` 1 for an anomaly, 0 for a normal row, as in PyOD); set ``threshold_``."""
        features = Features.of(features)
        if labels is not None:
            labels = np.asarray(labels).astype(int).ravel()
            if not self.uses_labels and labels.any():
                raise PipelineError(f"the {self.name} head is one-class: it cannot use labelled anomalies.")
            if len(labels) != len(features):
                raise PipelineError(f"{len(labels)} labels for {len(features)} training rows.")
        self._check_params()
        self._fit(features, labels, callback)
        self.threshold_, self.train_scores_ = None, None
        if self.threshold_quantile is not None:
            scores = self.training_scores(features)
            self.train_scores_ = scores if labels is None else scores[labels == 0]
            self.threshold_ = _quantile(self.train_scores_, self.threshold_quantile, "training")
        return self

    def score_samples(self, features: Features | np.ndarray | Any) -> np.ndarray:
        """Anomaly scores, float64, higher = more anomalous (unlike scikit-learn's outlier
        detectors, whose ``score_samples`` is higher for normal samples)."""
        raise NotImplementedError

    def decision_function(self, features: Features | np.ndarray | Any) -> np.ndarray:
        """The same as ``score_samples`` (PyOD's name)."""
        return self.score_samples(features)

    def predict(self, features: Features | np.ndarray | Any) -> np.ndarray:
        """1 where the score is above ``threshold_`` (anomalous), else 0."""
        if getattr(self, "threshold_", None) is None:
            raise PipelineError(f"the {self.name} head has no threshold: fit it with threshold_quantile set, "
                                f"or call calibrate(normal_features).")
        return (self.score_samples(features) > self.threshold_).astype(int)

    def training_scores(self, features: Features | np.ndarray | Any) -> np.ndarray:
        """The head's scores on the features it was fitted on (the threshold's reference)."""
        return self.score_samples(features)

    def anomaly_maps(self, features: Features | np.ndarray | Any, size: int) -> np.ndarray:
        """Where each image is anomalous: (N, size, size) float32, higher = more anomalous, at
        the input resolution (``size``, the backbone input's side), upsampled and smoothed as
        the head's paper does. Only heads that localise (``localises``) have them."""
        raise PipelineError(f"the {self.name} head scores whole images from their pooled features: it makes no "
                            f"anomaly maps (the patch heads do: patchcore, padim).")

    def control_scores(self, features: Features | np.ndarray | Any) -> dict[str, np.ndarray]:
        """Other scores of the same images, by name, that show what the head's score is made
        of (AnoMem: ||z|| alone, the distance to the nearest slot). The evaluation grades them
        like the head's own score on one-class runs (``pipeline.evaluate``); none by default."""
        return {}

    def diagnostics(self, features: Features | np.ndarray | Any) -> dict[str, float]:
        """Label-free numbers, by name, on how the head treats these images (AnoMem: how
        peaked its retrieval softmax is), recorded by the evaluation on the test set of
        one-class runs; none by default."""
        return {}

    def calibrate(self, features: Features | np.ndarray | Any, quantile: float | None = None) -> "Head":
        """Take ``threshold_`` at the quantile (default ``threshold_quantile``) of the scores of
        held-out normal features, which run higher than the training scores of heads fitted on
        those very features (PLUME, AnoMem)."""
        quantile = self.threshold_quantile if quantile is None else quantile
        self.threshold_ = _quantile(self.score_samples(features),
                                    DEFAULT_THRESHOLD_QUANTILE if quantile is None else quantile, "calibration")
        return self

    # --- to be implemented ----------------------------------------------------------------

    def _check_params(self) -> None:
        """Refuse parameters of the wrong type or out of range, as declared, with a
        PipelineError (called by ``fit``); heads add the checks between parameters."""
        check_all(self, f"the {self.name} head")

    @classmethod
    def preset(cls, name: str, **changes: Any) -> "Head":
        """A head in a named configuration of ``PRESETS`` (the paper's, the authors' code), with
        ``changes`` on top: ``PlumeHead.preset("paper")``. A preset's settings of the stage (such
        as seeds) are ``--preset``'s, not the head's."""
        if name not in cls.PRESETS:
            raise PipelineError(f"the {cls.name} head has no preset {name!r}; it has: "
                                f"{', '.join(cls.PRESETS) or 'none'}.")
        own = {f.name for f in fields(cls)}
        settings = {k: v for k, v in cls.PRESETS[name].items() if k in own}
        return cls(**{**settings, **changes})

    def _fit(self, features: Features, labels: np.ndarray | None, callback: EpochCallback | None) -> None:
        raise NotImplementedError

    def _state(self, **options: Any) -> dict:
        """What scoring needs: tensors, arrays and JSON-able values (read back with
        ``torch.load(weights_only=True)``, so loading a file runs no code)."""
        raise NotImplementedError

    @classmethod
    def _from_state(cls, state: dict, device: str = "cpu") -> "Head":
        raise NotImplementedError

    # --- helpers --------------------------------------------------------------------------

    def params(self) -> dict:
        """The parameters as plain values (for metrics files and saved heads)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def fitted(self) -> bool:
        return hasattr(self, "threshold_")

    def save(self, path: str | Path, about: Mapping | None = None, **state_options: Any) -> Path:
        """Write the fitted head to one file (``pipeline.heads.saving``), with ``about``
        (class name, the cache's metadata) recorded beside it."""
        from pipeline.heads.saving import save_head

        about = about or {}
        return save_head(path, self, class_name=str(about.get("class_name", "")), cache=dict(about.get("cache", {})),
                         cache_path=about.get("cache_path"), **state_options)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "Head":
        """A head of this class saved by ``save`` or ``--save-heads`` (a file of any kind:
        ``pipeline.heads.loading.load_head``)."""
        from pipeline.heads.saving import read_head_file

        def this_class(kind: object) -> type:
            if kind != cls.name:
                raise PipelineError(f"{path} holds a {kind} head, not a {cls.name} head.")
            return cls

        return read_head_file(path, this_class, device).head


def _quantile(scores: np.ndarray, quantile: float, what: str) -> float:
    scores = np.asarray(scores, dtype=np.float64)
    if not len(scores) or not np.isfinite(scores).all():
        raise PipelineError(f"cannot choose a threshold: the {len(scores)} {what} scores are empty or not all finite.")
    return float(np.quantile(scores, quantile))
