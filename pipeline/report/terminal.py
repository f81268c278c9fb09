"""The results as plain text for a terminal: heads x classes (or defect types) AUROC, at most
``width`` columns."""

from __future__ import annotations

import textwrap

from pipeline.report.rows import Figure
from pipeline.report.table import ONE_VS_ALL, Group, group_classes, group_rows

CELL = 6  # characters per class column, the space included


def terminal_table(group: Group, width: int = 100) -> str:
    """The group's AUROC table in fixed-width text: one numbered line per row (its full setting
    in the legend below), classes beyond ``width`` in further blocks; normal-vs-anomalies adds
    the Overall AUROC (every anomaly against the normal test images) after the mean."""
    rows = group_rows(group)
    classes = group_classes(rows)
    labels = [f"[{i}] {row.head}" for i, row in enumerate(rows, 1)]
    label_width = max(len(label) for label in labels) + 1
    overall = any(row.overall is not None for row in rows)
    totals = CELL + 1 + (CELL + 3 if overall else 0)
    per_block = max(1, (width - label_width - totals) // CELL)
    lines = [f"{group.heading()}: AUROC (%){', one-vs-all' if group.protocol == ONE_VS_ALL else ''}"]
    for start in range(0, len(classes), per_block):
        block = classes[start:start + per_block]
        lines.append(f"{'':<{label_width}}" + "".join(f"{c[:CELL - 1]:>{CELL}}" for c in block)
                     + f"{'Mean':>{CELL + 1}}" + (f"{'Overall':>{CELL + 3}}" if overall else ""))
        for label, row in zip(labels, rows):
            cells = "".join(f"{_percent(row.per_class.get(c)):>{CELL}}" for c in block)
            whole = f"{_percent(row.overall):>{CELL + 3}}" if overall else ""
            lines.append(f"{label:<{label_width}}{cells}{_percent(row.mean):>{CELL + 1}}{whole}")
    lines.append("")
    for i, row in enumerate(rows, 1):
        lines.extend(textwrap.wrap(f"[{i}] {row.head}: {row.setting}", width, subsequent_indent="    "))
    return "\n".join(lines)


def _percent(figure: Figure | None) -> str:
    return "–" if figure is None else f"{100 * figure.value:.1f}"
