"""The gaussian head: see head.py (the head class), command.py (its stage) and report.py (its table rows).

The choices below are here, torch-free, so that a command's ``--help`` loads nothing heavy."""

# last: the pooled vector; multi: the pooled vector and every intermediate map of the cache,
# each average-pooled to a vector, concatenated.
SCALE_CHOICES = ("last", "multi")
