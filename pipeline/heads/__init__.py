"""Anomaly-detection heads, one package each (``knn/``, ``plume/``, ``anomem/``).

Each package holds ``head.py`` (its head class, on the contract of ``base.py``), any torch
modules apart from it (``model.py``), ``command.py`` (its stage, ``python -m stages.<name>``)
and ``report.py`` (its rows in the results table). ``registry.py`` lists them, one line each.
Nothing is imported here, so that reading the registry or a report module does not load torch.
"""
