"""The robustness protocol in the report: per dataset and backbone, each head's SD (clean test
set) against its SPD (the same fitted head on the corrupted test sets, severity 5, mean over the
corruptions), as a table, a heads x corruptions heat map and the mean AUROC against severity.
Reads the ``shift`` section of the metrics files (``pipeline.shift`` writes it) and nothing else."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

from pipeline.report.rows import MISSING, Run
from pipeline.report.svg_chart import Axis, Series, heat_map, line_chart, padded_range

SPD_SEVERITY = 5


@dataclass
class RobustnessRow:
    """One run's robustness figures (fractions)."""

    head: str                       # the run's title (head and its main setting)
    setting: str                    # what tells it from the group's other runs of its head
    name: str                       # short, for the charts: the head's name and ``setting``
    sd: float                       # clean test set
    spd: float | None               # mean over corruptions at severity 5 (None without severity 5)
    sd_same_rows: float | None      # the clean images of the corrupted splits' rows
    by_severity: dict[int, float]   # mean over corruptions per severity
    strongest: int                  # the severity of ``at_strongest`` (5 where there is one)
    at_strongest: dict[str, float]  # corruption -> AUROC at that severity
    flagged: float | None           # corrupted normal images against clean ones, severity 5
    constants: str
    test_images: str

    @property
    def drop(self) -> float | None:
        return None if self.spd is None else self.sd - self.spd


def robustness_row(run: Run, head: str, setting: str, name: str) -> RobustnessRow | None:
    """The run's figures, or None when its metrics file has no labels-unchanged shift section."""
    shift = run.payload.get("shift")
    if not isinstance(shift, dict) or "corruptions" not in shift or "sd" not in shift:
        return None
    corruptions = {name: {int(s): v["auroc"] for s, v in by.items()} for name, by in shift["corruptions"].items()
                   if name != "identity"}  # the control, left out of the means, is left out here too
    severities = sorted({s for by in corruptions.values() for s in by})
    strongest = SPD_SEVERITY if SPD_SEVERITY in severities else (severities[-1] if severities else SPD_SEVERITY)
    return RobustnessRow(head, setting, name, shift["sd"], shift.get("spd"), shift.get("sd_same_rows"),
                         {int(s): v for s, v in shift.get("by_severity", {}).items()}, strongest,
                         {name: by[strongest] for name, by in corruptions.items() if strongest in by},
                         shift.get("flagged", {}).get("severity_5"), str(shift.get("constants", "")),
                         str(shift.get("test_images", "")))


def _pct(value: float | None, signed: bool = False) -> str:
    if value is None:
        return MISSING
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def corruption_columns(rows: list[RobustnessRow]) -> list[str]:
    """Every corruption of any row, in order of first appearance (the extraction's order)."""
    return list(dict.fromkeys(name for row in rows for name in row.at_strongest))


def hardest(rows: list[RobustnessRow], count: int = 3) -> list[tuple[str, float]]:
    """The corruptions with the lowest AUROC at the strongest severity, averaged over the rows."""
    means = {name: sum(r.at_strongest[name] for r in rows if name in r.at_strongest)
             / sum(name in r.at_strongest for r in rows) for name in corruption_columns(rows)}
    return sorted(means.items(), key=lambda item: item[1])[:count]


def caption(rows: list[RobustnessRow]) -> str:
    constants = ", ".join(sorted({r.constants for r in rows if r.constants})) or "?"
    images = ", ".join(sorted({r.test_images for r in rows if r.test_images})) or "?"
    corruptions = len(corruption_columns(rows))
    return (f"Each head is fitted once per class on the clean training images and scores the clean test set (SD) "
            f"and, with the same fitted state, corrupted copies of the test images ({corruptions} corruptions of "
            f"ImageNet-C / CIFAR-10-C, {constants} constants; test images per corrupted split: {images}; the clean "
            f"test set whole). SPD: the mean over the corruptions of the one-vs-all AUROC at severity "
            f"{SPD_SEVERITY}, labels unchanged (a corrupted normal image is normal), the knowledge-exposure "
            f"paper's protocol (appendix C.4); drop = SD - SPD. \"Clean, same images\": the AUROC of the clean "
            f"images the corrupted splits were made from, the SD to read the drop against when they are a "
            f"subset. \"Flagged\": the AUROC of corrupted normal images against the same images clean, where "
            f"run with --shift-labels anomalous or both (0.5: blind to the corruption). Figures in percent.")


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_section(rows: list[RobustnessRow], heading: str) -> str:
    """The robustness table (SD, SPD, drop) and the heads x corruptions table, in Markdown."""
    lines = [f"### Robustness (SD vs SPD), {_md(heading)}", _md(caption(rows)), "",
             "| Head | Setting | SD | SPD | drop | clean, same images | flagged |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {_md(r.head)} | {_md(r.setting or '-')} | {_pct(r.sd)} | **{_pct(r.spd)}** | {_pct(r.drop)} | "
              f"{_pct(r.sd_same_rows)} | {_pct(r.flagged)} |" for r in rows]
    columns = corruption_columns(rows)
    strongest = sorted({r.strongest for r in rows})
    lines += ["", f"AUROC (%) per corruption at severity {', '.join(map(str, strongest))}, the clean test set first:", "",
              "| Head | clean | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    lines += [f"| {_md(r.head + (f' ({r.setting})' if r.setting else ''))} | {_pct(r.sd)} | "
              + " | ".join(_pct(r.at_strongest.get(c)) for c in columns) + " |" for r in rows]
    worst = hardest(rows)
    if worst:
        lines += ["", "Hardest corruptions (mean AUROC over the heads above): "
                  + ", ".join(f"{name} {_pct(value)}" for name, value in worst) + "."]
    return "\n".join(lines)


def html_section(rows: list[RobustnessRow], heading: str) -> str:
    """The same table, then the heat map and the severity chart, as HTML with inline SVG."""
    header = ["Head", "Setting", "SD", "SPD", "drop", "clean, same images", "flagged"]
    body = [[r.head, r.setting or "-", _pct(r.sd), _pct(r.spd), _pct(r.drop), _pct(r.sd_same_rows), _pct(r.flagged)]
            for r in rows]
    table = ['<div class="table-box">', '<table class="robustness">',
             "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>"]
    table += ["<tr>" + "".join(_td(c) for c in cells) + "</tr>" for cells in body]
    table += ["</table>", "</div>"]
    charts = [robustness_heat_map(rows, heading), severity_chart(rows, heading)]
    return "\n".join([f"<h3>{escape(f'Robustness (SD vs SPD), {heading}')}</h3>",
                      f'<p class="caption">{escape(caption(rows))}</p>', *table,
                      '<div class="charts">', *[c for c in charts if c], "</div>"])


def _td(text: str) -> str:
    marked = ' class="missing"' if text == MISSING else ""
    return f"<td{marked}>{escape(text)}</td>"


def robustness_heat_map(rows: list[RobustnessRow], heading: str) -> str:
    """Heads x (clean, each corruption, their mean): AUROC at the strongest severity, coloured."""
    columns = corruption_columns(rows)
    strongest = sorted({r.strongest for r in rows})
    values = []
    for r in rows:
        at = [r.at_strongest.get(c) for c in columns]
        present = [v for v in at if v is not None]
        values.append([r.sd, *at, sum(present) / len(present) if present else None])
    return heat_map(f"AUROC per corruption, severity {', '.join(map(str, strongest))}",
                    [heading, "clean = SD; mean = SPD at severity 5 (mean over the corruptions)"],
                    [r.name for r in rows], ["clean", *columns, "mean"], values)


def severity_chart(rows: list[RobustnessRow], heading: str) -> str | None:
    """Mean AUROC over the corruptions against severity (0: the clean test set), one line per head."""
    series = [Series(r.name, [(0.0, r.sd), *((float(s), v) for s, v in sorted(r.by_severity.items()))])
              for r in rows if r.by_severity]
    if not series:
        return None
    values = [y for s in series for _, y in s.points]
    return line_chart("Mean AUROC over the corruptions by severity", [heading, "severity 0: the clean test set"],
                      Axis("severity", 0, 5, integer=True), Axis("mean AUROC", *padded_range(values)), series,
                      "severity")
