"""The AnoMem head: see head.py (the head class), model.py (its torch modules and losses),
command.py (its stage) and report.py (its table rows).

The choices and words below are here, torch-free, so that a command's ``--help`` does not load
torch and the command and its report rows share them."""

SCALE_CHOICES = ("multi", "last")
MEMORY_CHOICES = ("learnt", "kmeans")
PROJECTION_CHOICES = ("mlp", "none")               # mlp: trained in stage A | none: z is the feature
STANDARDISE_CHOICES = ("l2", "global", "dimension")  # how the frozen features are scaled before the projection
RETRIEVAL_CHOICES = ("cosine", "dot")          # cosine: normalised queries and slots (adaptation); dot: the paper's
SLOT_INIT_CHOICES = ("data", "random")         # data: projected normal training vectors (adaptation); random: paper's

# The control scores the evaluation grades on one-class runs (AnoMemHead.control_scores).
CONTROLS = {"norm": "control: ||z|| alone, no memory", "nearest_slot": "control: distance to the nearest slot"}
SCALE_ROLES = ("intermediate", "last")


def retrieval_words(diagnostics: dict) -> str:
    """How peaked the retrieval softmax is on the test images (mean over classes), per scale:
    its largest weight and its entropy over the log of the number of slots (1: flat)."""
    mean = diagnostics.get("mean", {})
    parts = [f"{scale} {mean[f'retrieval_top_weight_{scale}']:.2f} / {mean[f'retrieval_entropy_{scale}']:.2f}"
             for scale in SCALE_ROLES if f"retrieval_top_weight_{scale}" in mean]
    return f" (retrieval on test images, largest weight / entropy: {', '.join(parts)})" if parts else ""
