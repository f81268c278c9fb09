"""The classical head: scikit-learn's OC-SVM, Isolation Forest and LOF, and any PyOD detector,
behind the one head contract. See settings.py (its parameters), detectors.py (which estimator,
its scores' sign, PyOD by class name) and head.py (the head class); its stage is
pipeline/commands/classical.py.

The names are re-exported here, free of scikit-learn and PyOD, so that ``--help`` loads neither."""

from pipeline.heads.classical.settings import (PYOD_EXTRA, PYOD_FILE_PREFIX, PYOD_PREFIX,  # noqa: F401
                                               SCORINGS, SKLEARN_DETECTORS)
