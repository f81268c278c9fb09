"""The PLUME head: see head.py (the head class), model.py (its torch modules and losses),
command.py (its stage), ablation.py (table 1c in one command) and report.py (its table rows).

The choices below are here, torch-free, so that a command's ``--help`` does not load torch."""

PERTURBATIONS = ("linear", "addmult", "add", "mult", "gaussian")
GUIDANCES = ("contrastive", "mean", "none")
BATCH_MODES = ("separate", "joint")
IDENTITY_LOSSES = ("sum", "mean")
# Where the near-identity loss pulls the linear map's (alpha, beta): paper eq. 1 (1, 0) or the
# authors' code (0, 1). Both make (I + alpha beta^T) the identity; they differ in the
# perturbation x~ - x = alpha (beta . x) they allow near it.
IDENTITY_TARGETS = ("paper", "authors")
# The guidance losses as the paper writes them (eq. 7, appendix eq. 9) or as the authors' code computes them.
GUIDANCE_FORMS = ("paper", "authors")
# How a range test picks the one-cycle peak learning rate (besides a number).
LR_RULES = ("lowest-loss", "steepest")
# Which epoch's weights the head keeps: the last one's, or those of the epoch that scored best on
# normal training images held out of training, against their own pseudo-anomalies.
SELECTIONS = ("final", "held-out")
