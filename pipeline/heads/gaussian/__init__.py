"""The gaussian head: see settings.py (its parameters) and head.py (the head class); its stage
is pipeline/commands/gaussian.py.

The choices are re-exported here, torch-free, so that a command's ``--help`` loads nothing heavy."""

from pipeline.heads.gaussian.settings import SCALE_CHOICES  # noqa: F401
