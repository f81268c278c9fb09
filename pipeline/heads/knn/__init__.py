"""The knn head: see settings.py (its parameters), head.py (the head class), engine.py (the
nearest-neighbour search) and reduced.py (its exact bfloat16 path)."""

from pipeline.heads.knn.settings import PRECISIONS  # noqa: F401
