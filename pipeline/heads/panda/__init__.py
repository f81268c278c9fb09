"""The PANDA head: see settings.py (its parameters), head.py (the head class) and model.py (the
compactness loss, EWC and the tail's forward passes); its stage is pipeline/commands/panda.py.

The choices are re-exported here, torch-free, so that a command's ``--help`` does not load torch."""

from pipeline.heads.panda.settings import FISHER_SOURCES, PRECISIONS  # noqa: F401
