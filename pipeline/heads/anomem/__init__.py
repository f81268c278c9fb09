"""The AnoMem head: see head.py (the head class), model.py (its torch modules and losses),
command.py (its stage) and report.py (its table rows).

The choices below are here, torch-free, so that a command's ``--help`` does not load torch."""

SCALE_CHOICES = ("multi", "last")
MEMORY_CHOICES = ("learnt", "kmeans")
PROJECTION_CHOICES = ("mlp", "none")               # mlp: trained in stage A | none: z is the feature
STANDARDISE_CHOICES = ("l2", "global", "dimension")  # how the frozen features are scaled before the projection
RETRIEVAL_CHOICES = ("cosine", "dot")          # cosine: normalised queries and slots (adaptation); dot: the paper's
SLOT_INIT_CHOICES = ("data", "random")         # data: projected normal training vectors (adaptation); random: paper's
