"""The ensemble head: see settings.py (its parameters) and head.py (the head class); its stage
is pipeline/commands/ensemble.py (several caches of the same images, one member head each).

The choices are re-exported here, torch-free, so that a command's ``--help`` loads nothing heavy."""

from pipeline.heads.ensemble.settings import MEMBER_CHOICES, STANDARDISE_CHOICES  # noqa: F401
