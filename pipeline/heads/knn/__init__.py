"""The knn head: see head.py (the head class), command.py (its stage) and report.py (its table rows)."""
