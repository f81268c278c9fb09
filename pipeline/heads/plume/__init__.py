"""The PLUME head: see settings.py (its parameters), head.py (the head class) and model.py (its
torch modules and losses); its stage is pipeline/commands/plume.py, table 1c in one command
pipeline/commands/plume_ablation.py.

The choices are re-exported here from settings.py, torch-free, so that a command's ``--help``
does not load torch."""

from pipeline.heads.plume.settings import (BATCH_MODES, GUIDANCE_FORMS, GUIDANCES,  # noqa: F401
                                           IDENTITY_LOSSES, IDENTITY_TARGETS, LR_RULES, PERTURBATIONS, SELECTIONS)
