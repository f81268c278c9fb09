"""Results tables beside the published figures, as Markdown and a self-contained HTML page.

Reads metrics files only, never heads; below ``command.py`` (which writes files with
``pipeline.cli``, and so loads torch) nothing loads torch. From the bottom up:
``published.py`` (the papers' figures, ``paper_results.json``), ``rows.py`` (runs and rows),
``table.py`` (grouping, settings, Markdown), ``svg_chart.py`` and ``page.py`` (HTML),
``command.py`` (``python -m pipeline.report``). What is particular to a head (its name, rows,
settings, published figures) lives in ``pipeline/report/heads/<name>.py``, which imports from
here and which ``table.py`` finds through ``pipeline.report.heads``; a head without one
still gets a generic row. Nothing is imported here, so that a head's report module does not
load the command.
"""
