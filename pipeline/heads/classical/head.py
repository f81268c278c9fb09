"""Classical detectors as a head: scikit-learn's OneClassSVM (RBF), IsolationForest and
LocalOutlierFactor (novelty mode), or any PyOD detector by class name (``pyod:ECOD``), fitted
on the normal class's pooled features after an optional scaling (``pipeline.heads.scaling``).

Which estimator, and the sign that makes its scores higher for anomalies, is
``detectors.py``'s business; this module is the head contract around it.

Saved heads hold no pickled estimator: a head file is read with ``torch.load(weights_only=True)``,
which loads no classes (``pipeline.heads.saving``). They hold the detector's name and settings
and the training features instead, and loading fits the estimator again on them: every
detector here is deterministic given its settings and seed, so the loaded head scores as the
saved one did. The file also keeps the scores of a few training rows, which loading checks
(another scikit-learn or PyOD version could fit differently: that is refused, not ignored).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import PipelineError
from pipeline.heads.base import EpochCallback, Features, Head
from pipeline.heads.classical import detectors
from pipeline.heads.classical.settings import ClassicalParams
from pipeline.heads.scaling import Scaler

# Training rows whose scores a saved head keeps, to check the estimator fitted again on load.
CHECK_ROWS = 16


def _rows(features: Features | np.ndarray | Any) -> np.ndarray:
    rows = np.asarray(Features.of(features).pooled)
    if rows.ndim != 2:
        raise PipelineError(f"features must be a 2-D array (samples, dimensions), got shape {rows.shape}.")
    # float32 (as cached) or float64 kept as given, so that a saved head refits on the very same values.
    return rows if rows.dtype in (np.float32, np.float64) else rows.astype(np.float64)


@dataclass(eq=False, repr=False, kw_only=True)
class ClassicalHead(ClassicalParams, Head):
    """Its parameters are declared in ``settings.py``. ``detector``: ocsvm | iforest | lof |
    pyod:<Name>. The settings a detector does not read (``nu`` for Isolation Forest, ...) are
    ignored; ``options`` are further constructor arguments of its estimator (for PyOD's, e.g.
    ``{"n_bins": 20}`` for HBOS).

    ``scoring="alone"`` (default) scores every row as if it came on its own, ``"joint"`` all the
    rows of a call together, as PyOD's ``decision_function`` does; they differ only for detectors
    whose score of a row depends on the others scored with it (``batch_dependent_``: PyOD's
    ECOD and COPOD, whose empirical distributions take in the scored rows; ``ecdf.py``)."""

    name = "classical"
    training_note = ("detector's scores of its training features (LOF and PyOD: their own training-set scores, "
                     "each row not its own neighbour)")

    def _check_params(self) -> None:
        super()._check_params()
        detectors.canonical(self.detector)  # a detector is named by a pattern (pyod:<Name>), not a choice
        if not isinstance(self.options, dict):
            raise PipelineError(f"options must be a mapping of constructor arguments, got {self.options!r}.")

    def estimator(self) -> Any:
        """A new, unfitted estimator with this head's settings and seed."""
        settings = {"nu": self.nu, "gamma": self.gamma, "n_estimators": self.n_estimators,
                    "n_neighbors": self.n_neighbors}
        return detectors.build(self.detector, settings, dict(self.options), self.seed)

    # --- fit and score ----------------------------------------------------------------------

    def _fit(self, features: Features, labels: np.ndarray | None, callback: EpochCallback | None) -> None:
        rows = _rows(features)
        if len(rows) < 2:
            raise PipelineError(f"the {self.detector} detector needs at least 2 training features, got {len(rows)}.")
        self.train_ = rows
        self.scaler_ = Scaler.fit(self.scaling, rows)
        self.estimator_ = self.estimator()
        scaled = self.scaler_(rows)
        try:
            self.estimator_.fit(scaled)
        except PipelineError:
            raise
        except Exception as error:  # a PyOD detector that cannot take these rows, say: name it
            raise PipelineError(f"{self.detector} could not be fitted on {rows.shape[0]} x {rows.shape[1]} "
                                f"features: {type(error).__name__}: {error}") from error
        self.alone_ = detectors.alone_scorer(self.detector, scaled)
        known = detectors.batch_dependence(self.detector)
        self.batch_dependent_ = self._measure_batch_dependence(scaled) if known is None else known

    def score_samples(self, features: Features | np.ndarray | Any) -> np.ndarray:
        if not hasattr(self, "estimator_"):
            raise PipelineError(f"fit the {self.detector} head before scoring")
        rows = _rows(features)
        if rows.shape[1] != self.train_.shape[1]:
            raise PipelineError(f"the {self.detector} head was fitted on {self.train_.shape[1]}-d features, got "
                                f"{rows.shape[1]}-d.")
        scaled = self.scaler_(rows)
        if self.scoring == "joint" or not self.batch_dependent_:
            return detectors.anomaly_scores(self.detector, self.estimator_, scaled)
        if self.alone_ is not None:
            return self.alone_(scaled)
        # Another PyOD detector whose scores depend on the batch: one call per row (slow, exact).
        return np.concatenate([detectors.anomaly_scores(self.detector, self.estimator_, scaled[i:i + 1])
                               for i in range(len(scaled))]) if len(scaled) else np.zeros(0)

    def training_scores(self, features: Features | np.ndarray | Any) -> np.ndarray:
        """The scores of the rows it was fitted on (LOF, PyOD: as the estimator computed them in fit)."""
        return detectors.training_scores(self.detector, self.estimator_, self.scaler_(_rows(features)))

    def _measure_batch_dependence(self, scaled: np.ndarray, few: int = 8, among: int = 200) -> bool:
        """Whether the estimator's score of a row changes with the rows scored beside it: the
        first ``few`` training rows scored on their own and among ``among`` of them."""
        rows = scaled[:among]
        alone = detectors.anomaly_scores(self.detector, self.estimator_, rows[:few])
        with_others = detectors.anomaly_scores(self.detector, self.estimator_, rows)[:few]
        return not np.allclose(alone, with_others, rtol=1e-9, atol=0.0)

    # --- saving (pipeline.heads.saving) ---------------------------------------------------

    def settings(self) -> dict:
        return {"detector": self.detector, "scaling": self.scaling, "nu": self.nu, "gamma": self.gamma,
                "n_estimators": self.n_estimators, "n_neighbors": self.n_neighbors, "options": dict(self.options),
                "scoring": self.scoring, "seed": self.seed}

    def _state(self) -> dict:
        """The settings, the training rows (float32 as cached) and the scores of the first
        CHECK_ROWS of them, to check the estimator fitted again on load."""
        if not hasattr(self, "estimator_"):
            raise PipelineError(f"fit the {self.detector} head before saving it")
        return {**self.settings(), "feature_dim": int(self.train_.shape[1]), "train": self.train_,
                "check_scores": self.score_samples(self.train_[:CHECK_ROWS]),
                "library": detectors.library_version(self.detector)}

    @classmethod
    def _from_state(cls, state: dict, device: str = "cpu") -> "ClassicalHead":
        options = {str(k): v for k, v in dict(state["options"]).items()}
        head = cls(detector=str(state["detector"]), scaling=str(state["scaling"]), nu=float(state["nu"]),
                   gamma=state["gamma"], n_estimators=int(state["n_estimators"]),
                   n_neighbors=int(state["n_neighbors"]), options=options, scoring=str(state["scoring"]),
                   seed=int(state["seed"]))
        head._check_params()
        train = np.asarray(state["train"])
        head._fit(Features(train), None, None)
        expected = np.asarray(state["check_scores"], dtype=np.float64)
        found = head.score_samples(train[:len(expected)])
        if not np.allclose(found, expected, rtol=1e-7, atol=1e-12):
            worst = float(np.max(np.abs(found - expected) / np.maximum(np.abs(expected), 1e-12)))
            raise PipelineError(f"the {head.detector} head, fitted again on its saved training features, does not "
                                f"score them as it did when saved (relative difference up to {worst:.2g}): it was "
                                f"saved with {state.get('library')}, this is "
                                f"{detectors.library_version(head.detector)}. Save it again with this version.")
        return head


HEAD = ClassicalHead
