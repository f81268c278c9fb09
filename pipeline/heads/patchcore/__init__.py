"""The PatchCore head: see settings.py (its parameters), head.py (the head class) and model.py
(the locally aware patch features, the greedy coreset and the reweighted image score).

The choices are re-exported here, torch-free, so that a command's ``--help`` does not load torch."""

from pipeline.heads.patchcore.settings import BANK_DTYPES, PRECISIONS  # noqa: F401
