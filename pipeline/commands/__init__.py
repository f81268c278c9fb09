"""The command line: one stage runner for every head (``stage.py``), options made from the
declared parameters (``options.py``), and per head only what is its own (``<head>.py``).
``python -m stages.<head>`` and ``ffad <head>`` run ``pipeline.commands.<head>:main``."""
