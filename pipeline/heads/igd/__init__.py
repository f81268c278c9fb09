"""The IGD head: see settings.py (its parameters), head.py (the head class) and model.py (its
torch modules and losses); its stage is pipeline/commands/igd.py.

The choices are re-exported here, torch-free, so that a command's ``--help`` does not load torch."""

from pipeline.heads.igd.settings import RECONSTRUCTIONS, STANDARDISATIONS  # noqa: F401
