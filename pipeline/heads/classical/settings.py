"""The classical head's parameters, declared once (``pipeline.declare``): the head's fields, the
command's options, params.yaml's ``classical`` section and the report's words all come from
here. scikit-learn's and PyOD's detectors run on the CPU, so the head has no device. The
detector itself is the command's --detector (one per run), not a params.yaml key:
params.yaml lists the ``detectors`` dvc.yaml runs, one stage each."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.declare import param
from pipeline.heads.settings import SCALINGS, HeadParams, SeedsParams

# Detectors of scikit-learn, by the name the head's ``detector`` parameter takes.
SKLEARN_DETECTORS = ("ocsvm", "iforest", "lof")
# pyod:<ClassName> names any PyOD detector; pyod-<ClassName> is the same detector spelt for
# file and DVC stage names, where ':' cannot stand.
PYOD_PREFIX = "pyod:"
PYOD_FILE_PREFIX = "pyod-"
PYOD_EXTRA = "pip install -e '.[pyod]'"
# alone: each row scored as if it came on its own (the deployed case); joint: the rows of one
# call together, as PyOD's decision_function does (ECOD, COPOD: then a row's score depends on
# the others). Only detectors whose scores depend on the batch differ.
SCORINGS = ("alone", "joint")
# The settings only some detectors read (``detectors.relevant_settings`` says which).
DETECTOR_SETTINGS = ("nu", "gamma", "n_estimators", "n_neighbors")


@dataclass(eq=False, repr=False, kw_only=True)
class ClassicalParams(HeadParams):
    detector: str = param(
        "ocsvm", f"{', '.join(SKLEARN_DETECTORS)} (scikit-learn's OneClassSVM with an RBF kernel, IsolationForest, "
                 f"LocalOutlierFactor in novelty mode), or pyod:<Name>, any PyOD detector by its class name "
                 f"(pyod:ECOD, pyod:COPOD, pyod:HBOS, ...; needs {PYOD_EXTRA}); pyod-<Name> is the same.",
        config=False)
    scaling: str = param("none", "Before the detector, fitted on the training rows: none; standardise (each dimension "
                                 "by its training mean and standard deviation); l2 (each vector to unit length); sqrt "
                                 "(each value's signed square root, power normalisation).",
                         choices=SCALINGS, report={"none": "no scaling", "standardise": "standardised features",
                                                   "l2": "L2-normalised features",
                                                   "sqrt": "signed square root of the features"})
    nu: float = param(0.5, "ocsvm: upper bound on the share of training rows outside the boundary (scikit-learn's "
                           "default).", low=0, low_open=True, high=1, report="nu = {}")
    gamma: float | str = param("scale", "ocsvm: RBF kernel width: scale (1 / (n_features * X.var()), scikit-learn's "
                                        "default), auto (1 / n_features) or a number.",
                               kind="float", low=0, low_open=True, words=("scale", "auto"), report="gamma = {}")
    n_estimators: int = param(100, "iforest: number of trees.", low=1, report="{} trees")
    n_neighbors: int = param(20, "lof: neighbours (scikit-learn's default; n - 1 for a class with fewer training "
                                 "images).", low=1, report="{} neighbours")
    scoring: str = param(
        "alone", "For detectors whose score of a row depends on the rows scored with it (PyOD's ECOD and COPOD put "
                 "them into their empirical distributions): alone scores each test image as if it came on its own "
                 "(with the training rows only), as a deployed detector would; joint scores the whole test set in "
                 "one call, as PyOD's decision_function does (one-vs-all, 90% of the test set are anomalies, which "
                 "then shape the distribution they are measured against).", choices=SCORINGS,
        report={"alone": "each test image scored alone",
                "joint": "the test set scored in one call (each score depends on the others)"})
    seed: int = param(0, "random_state of the detectors that take one (set by the evaluation, one per run).", low=0,
                      config=False)
    # Further constructor arguments of the detector's estimator (--option KEY=VALUE; for PyOD's,
    # e.g. {"n_bins": 20} for HBOS): a mapping, so a plain field rather than a declared parameter.
    options: dict = field(default_factory=dict)


@dataclass
class ClassicalRun(SeedsParams):
    """The stage's own settings: seeds (a deterministic detector runs once) and the detectors
    dvc.yaml runs."""

    detectors: tuple = param(("ocsvm", "iforest", "lof"),
                             f"The detectors dvc.yaml runs, one stage per backbone and detector: "
                             f"{', '.join(SKLEARN_DETECTORS)} or {PYOD_FILE_PREFIX}<Name> (a PyOD detector, needs "
                             f"{PYOD_EXTRA}). The command runs one, --detector, by default the first.", kind="names")


PARAMS = ClassicalParams
RUN = ClassicalRun
