"""The AnoMem head: see settings.py (its parameters), head.py (the head class), model.py (its
torch modules and losses); its stage is pipeline/commands/anomem.py.

The choices are here, torch-free, so that a command's ``--help`` does not load torch."""

from pipeline.heads.anomem.settings import (MEMORY_CHOICES, PROJECTION_CHOICES, RETRIEVAL_CHOICES,  # noqa: F401
                                            SCALE_CHOICES, SLOT_INIT_CHOICES, STANDARDISE_CHOICES)
