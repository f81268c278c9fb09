"""Which estimator a detector name stands for, and its anomaly scores with higher = more anomalous.

    ocsvm       sklearn.svm.OneClassSVM (RBF kernel; nu, gamma)     score = -score_samples
    iforest     sklearn.ensemble.IsolationForest (n_estimators)     score = -score_samples
    lof         sklearn.neighbors.LocalOutlierFactor, novelty=True  score = -score_samples (the LOF)
    pyod:Name   PyOD's detector class Name (optional extra)         score = decision_function

scikit-learn's outlier detectors score normal samples higher, PyOD's anomalies: the sign is
flipped for the first three only. ``random_state`` is set to the head's seed wherever the
estimator takes one (Isolation Forest, PyOD's randomised detectors), so every detector is
deterministic given the seed.

PyOD is an optional extra (``pip install -e '.[pyod]'``): it is imported only when a pyod:
detector is asked for. Its detectors are found by class name in the sources of
``pyod.models`` (importing every module would load torch and more).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.errors import PipelineError
from pipeline.heads.classical import PYOD_EXTRA, PYOD_FILE_PREFIX, PYOD_PREFIX, SKLEARN_DETECTORS
from pipeline.heads.classical.ecdf import KINDS as ECDF_KINDS, EcdfAlone

# Modules of pyod.models whose detectors take no feature vectors: graphs (pyg_), time series
# (ts_), raw text, images or audio (embedding, audio_ae).
NOT_FOR_VECTORS = ("pyg_", "ts_", "embedding", "audio_ae")
_DETECTOR_CLASS = re.compile(r"^class (\w+)\((?:[\w.]+\.)?Base(?:DeepLearning)?Detector\)", re.M)


def canonical(detector: str) -> str:
    """``ocsvm``, ``iforest``, ``lof`` or ``pyod:<Name>`` (``pyod-<Name>`` read as ``pyod:<Name>``)."""
    text = str(detector).strip()
    if text in SKLEARN_DETECTORS:
        return text
    for prefix in (PYOD_PREFIX, PYOD_FILE_PREFIX):
        if text.startswith(prefix) and re.fullmatch(r"\w+", text[len(prefix):]):
            return PYOD_PREFIX + text[len(prefix):]
    raise PipelineError(f"unknown detector {detector!r}: choose {', '.join(SKLEARN_DETECTORS)} or pyod:<Name>, a "
                        f"PyOD detector by its class name (e.g. pyod:ECOD, pyod:COPOD, pyod:HBOS).")


def file_name(detector: str) -> str:
    """The detector as it stands in file and DVC stage names: ``pyod:ECOD`` -> ``pyod-ECOD``."""
    return canonical(detector).replace(PYOD_PREFIX, PYOD_FILE_PREFIX)


def is_pyod(detector: str) -> bool:
    return canonical(detector).startswith(PYOD_PREFIX)


# --- PyOD ---------------------------------------------------------------------------------

def _pyod_models() -> Any:
    try:
        import pyod.models
    except ImportError as error:
        raise PipelineError(f"PyOD detectors need PyOD, an optional extra of this project: {PYOD_EXTRA} (or pip "
                            f"install pyod). ({error})") from None
    return pyod.models


def pyod_version() -> str:
    _pyod_models()
    import pyod

    return str(getattr(pyod, "__version__", "unknown"))


def pyod_detectors() -> dict[str, str]:
    """PyOD's detectors for feature vectors: class name -> module, read from the sources of
    ``pyod.models`` (the first module defining a name wins, in module name order)."""
    models = _pyod_models()
    found: dict[str, str] = {}
    for folder in map(Path, models.__path__):
        for source in sorted(folder.glob("*.py")):
            module = source.stem
            if module.startswith(("_", "base")) or module.startswith(NOT_FOR_VECTORS):
                continue
            for name in _DETECTOR_CLASS.findall(source.read_text(encoding="utf-8", errors="replace")):
                found.setdefault(name, f"{models.__name__}.{module}")
    return found


def pyod_class(name: str) -> type:
    """PyOD's detector class ``name``, or a PipelineError naming the detectors there are."""
    detectors = pyod_detectors()
    if name not in detectors:
        close = difflib.get_close_matches(name, detectors, n=3, cutoff=0.5)
        close += [other for other in detectors if other.lower() == name.lower() and other not in close]
        hint = f" Did you mean {' or '.join(f'pyod:{c}' for c in close)}?" if close else ""
        raise PipelineError(f"PyOD {pyod_version()} has no detector {name!r} for feature vectors.{hint} Its "
                            f"detectors: {', '.join(sorted(detectors, key=str.lower))}.")
    try:
        module = importlib.import_module(detectors[name])
    except ImportError as error:
        raise PipelineError(f"PyOD's {name} cannot be imported: {error}. Install what it needs (PyOD's "
                            f"documentation lists each detector's requirements).") from None
    return getattr(module, name)


# --- building and scoring -------------------------------------------------------------------

def _takes_random_state(cls: type) -> bool:
    """Whether the constructor names ``random_state`` (not through ``**kwargs``)."""
    try:
        parameters = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return False
    return "random_state" in parameters and parameters["random_state"].kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def estimator_class(detector: str) -> type:
    detector = canonical(detector)
    if detector == "ocsvm":
        from sklearn.svm import OneClassSVM

        return OneClassSVM
    if detector == "iforest":
        from sklearn.ensemble import IsolationForest

        return IsolationForest
    if detector == "lof":
        from sklearn.neighbors import LocalOutlierFactor

        return LocalOutlierFactor
    return pyod_class(detector[len(PYOD_PREFIX):])


def is_random(detector: str) -> bool:
    """Whether the detector's result depends on a seed (its constructor takes ``random_state``;
    OneClassSVM, LOF, ECOD, COPOD and HBOS do not)."""
    return _takes_random_state(estimator_class(detector))


def build(detector: str, settings: dict[str, Any], options: dict[str, Any], seed: int) -> Any:
    """An unfitted estimator: the head's ``settings`` that apply to this detector, then
    ``options`` (any other constructor argument), and ``random_state=seed`` where it takes one."""
    detector = canonical(detector)
    cls = estimator_class(detector)
    arguments: dict[str, Any] = {}
    if detector == "ocsvm":
        arguments = {"kernel": "rbf", "nu": settings["nu"], "gamma": kernel_gamma(settings["gamma"])}
    elif detector == "iforest":
        arguments = {"n_estimators": settings["n_estimators"]}
    elif detector == "lof":
        arguments = {"n_neighbors": settings["n_neighbors"], "novelty": True}
    arguments.update(options)
    if _takes_random_state(cls) and "random_state" not in options:
        arguments["random_state"] = seed
    try:
        return cls(**arguments)
    except TypeError as error:
        accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "kwargs")]
        raise PipelineError(f"{detector} ({cls.__name__}) does not take these settings ({error}); it takes: "
                            f"{', '.join(accepted)}.") from None


def kernel_gamma(value: str | float) -> str | float:
    """OneClassSVM's gamma: 'scale' (1 / (n_features * X.var()), scikit-learn's default), 'auto'
    (1 / n_features) or a positive number (given as text on the command line)."""
    if value in ("scale", "auto"):
        return value
    try:
        gamma = float(value)
    except (TypeError, ValueError):
        gamma = -1.0
    if not gamma > 0:
        raise PipelineError(f"gamma must be scale, auto or a positive number, got {value!r}.")
    return gamma


def relevant_settings(detector: str) -> tuple[str, ...]:
    """The head's settings this detector reads (the others are not recorded for it)."""
    return {"ocsvm": ("nu", "gamma"), "iforest": ("n_estimators",), "lof": ("n_neighbors",)}.get(
        canonical(detector), ())


def anomaly_scores(detector: str, estimator: Any, rows: np.ndarray) -> np.ndarray:
    """Scores of a fitted estimator, float64, higher = more anomalous."""
    if is_pyod(detector):
        return np.asarray(estimator.decision_function(rows), dtype=np.float64).ravel()
    return -np.asarray(estimator.score_samples(rows), dtype=np.float64).ravel()


def training_scores(detector: str, estimator: Any, rows: np.ndarray) -> np.ndarray:
    """The estimator's scores of the rows it was fitted on. LOF in novelty mode must not score
    its own training rows (each would be its own nearest neighbour): its fitted
    ``negative_outlier_factor_`` is each one's LOF among the others; PyOD keeps the training
    rows' scores as ``decision_scores_``."""
    if canonical(detector) == "lof":
        return -np.asarray(estimator.negative_outlier_factor_, dtype=np.float64)
    if is_pyod(detector) and getattr(estimator, "decision_scores_", None) is not None:
        return np.asarray(estimator.decision_scores_, dtype=np.float64).ravel()
    return anomaly_scores(detector, estimator, rows)


def batch_dependence(detector: str) -> bool | None:
    """Whether a detector's score of a row depends on the rows scored with it: no for
    scikit-learn's, yes for PyOD's ECOD and COPOD (``ecdf.py``), None (to be measured) for
    other PyOD detectors."""
    detector = canonical(detector)
    if not is_pyod(detector):
        return False
    return True if detector[len(PYOD_PREFIX):] in ECDF_KINDS else None


def alone_scorer(detector: str, train: np.ndarray) -> Callable[[np.ndarray], np.ndarray] | None:
    """For ECOD and COPOD, the scores of rows each scored alone, computed at once (``ecdf.py``)."""
    name = canonical(detector)[len(PYOD_PREFIX):] if is_pyod(detector) else None
    return EcdfAlone(name, train) if name in ECDF_KINDS else None


def library_version(detector: str) -> str:
    """``scikit-learn 1.9.1`` or ``PyOD 3.6.7``: what the detector's results depend on."""
    if is_pyod(detector):
        return f"PyOD {pyod_version()}"
    import sklearn

    return f"scikit-learn {sklearn.__version__}"


def plain_params(estimator: Any) -> dict[str, Any]:
    """The estimator's constructor parameters that JSON can hold (for the metrics' description)."""
    return {k: v for k, v in estimator.get_params(deep=False).items()
            if v is None or isinstance(v, (str, int, float, bool))}
