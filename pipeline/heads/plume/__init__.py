"""The PLUME head: see head.py (the head class), model.py (its torch modules and losses),
command.py (its stage), ablation.py (table 1c in one command) and report.py (its table rows).

The choices below are here, torch-free, so that a command's ``--help`` does not load torch."""

PERTURBATIONS = ("linear", "addmult", "add", "mult", "gaussian")
GUIDANCES = ("contrastive", "mean", "none")
BATCH_MODES = ("separate", "joint")
