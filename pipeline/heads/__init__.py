"""Anomaly-detection heads, one package each (``knn/``, ``plume/``, ``anomem/``, ...).

Each package holds ``settings.py`` (its parameters, declared once: ``pipeline.declare``;
torch-free), ``head.py`` (its head class, on the contract of ``base.py``, whose fields are
those parameters) and any torch modules apart from it (``model.py``, engines). A head package
imports nothing from the commands, the evaluation or the report. ``registry.py`` lists them,
one line each. Nothing is imported here, so that reading a head's settings does not load torch.
"""
