"""The IGD head: see head.py (the head class), model.py (its torch modules and losses),
command.py (its stage) and report.py (its table rows).

The choices below are here, torch-free, so that a command's ``--help`` does not load torch."""

RECONSTRUCTIONS = ("mae", "mse")
STANDARDISATIONS = ("dimension", "global", "none")
