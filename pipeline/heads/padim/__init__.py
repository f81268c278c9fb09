"""The PaDiM head: see settings.py (its parameters), head.py (the head class) and model.py (the
per-position Gaussians, batched over grid positions in float64).

The choices are re-exported here, torch-free, so that a command's ``--help`` does not load torch."""

from pipeline.heads.padim.settings import ALL_CHANNELS, COVARIANCES  # noqa: F401
