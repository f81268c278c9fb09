"""The knn head: see head.py (the head class), engine.py (the nearest-neighbour search),
reduced.py (its exact bfloat16 path), command.py (its stage) and report.py (its table rows).

The choices below are here, torch-free, so that the command's ``--help`` does not load torch."""

# float32: blocked float32 products; bfloat16: a bfloat16 screen with a certificate, the same
# neighbours (pipeline/heads/knn/reduced.py).
PRECISIONS = ("float32", "bfloat16")
