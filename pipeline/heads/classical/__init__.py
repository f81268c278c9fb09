"""The classical head: scikit-learn's OC-SVM, Isolation Forest and LOF, and any PyOD detector,
behind the one head contract. See detectors.py (which estimator, its scores' sign, PyOD by
class name), head.py (the head class), command.py (its stage) and report.py (its table rows).

The names below are here, free of scikit-learn and PyOD, so that ``--help`` loads neither."""

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
