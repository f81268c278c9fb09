"""Results tables beside the published figures, as Markdown and a self-contained HTML page.

Reads metrics files only, never heads (and never torch). From the bottom up:
``published.py`` (the papers' figures, ``paper_results.json``), ``table.py`` (runs, rows,
Markdown), ``svg_chart.py`` and ``page.py`` (HTML), ``command.py`` (``python -m pipeline.report``).
Nothing is imported here, so that importing one module does not load the command.
"""
