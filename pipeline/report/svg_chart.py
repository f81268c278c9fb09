"""Small line charts and heat maps as inline SVG: no JavaScript and nothing fetched, so a
results page opens the same anywhere, offline, and can be archived as one file."""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

# Tableau 10: distinguishable, and still readable printed in greyscale thanks to the dashes
# that take over past ten series.
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
           "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")
DASHES = ("", "6 3", "2 2", "8 3 2 3")

PLOT_W, PLOT_H = 300, 220
LEFT, BOTTOM = 52, 44
TITLE_LINE = 16
LEGEND_W, LEGEND_ROW = 190, 15


@dataclass(frozen=True)
class Series:
    label: str
    points: list[tuple[float, float]]


@dataclass(frozen=True)
class Axis:
    label: str
    low: float
    high: float
    integer: bool = False  # ticks on whole numbers only (epochs)

    def ticks(self, count: int = 5) -> list[float]:
        step = _nice_step((self.high - self.low) / count)
        if self.integer:
            step = max(1.0, round(step))
        first = math.ceil(self.low / step - 1e-9) * step
        return [first + i * step for i in range(int((self.high - first) / step + 1e-9) + 1)]


def _nice_step(raw: float) -> float:
    """1, 2 or 5 times a power of ten: tick labels a reader can add up."""
    if raw <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def padded_range(values: list[float], grid: float = 0.1) -> tuple[float, float]:
    """The data's range widened to the enclosing multiples of ``grid`` (never empty)."""
    if not values:
        return 0.0, 1.0
    # The epsilon keeps 0.9 / 0.1 = 9.000000000000002 from rounding up to a whole empty step.
    low = math.floor(min(values) / grid + 1e-9) * grid
    high = math.ceil(max(values) / grid - 1e-9) * grid
    return (low, high) if high > low else (low - grid, high + grid)


def _fmt(value: float) -> str:
    return f"{value:.10g}" if abs(value) >= 1e-9 else "0"


class _Frame:
    """Maps data to pixel coordinates inside the plot area."""

    def __init__(self, x: Axis, y: Axis, top: int) -> None:
        self.x, self.y, self.top = x, y, top

    def px(self, value: float) -> float:
        return LEFT + (value - self.x.low) / ((self.x.high - self.x.low) or 1) * PLOT_W

    def py(self, value: float) -> float:
        return self.top + PLOT_H - (value - self.y.low) / ((self.y.high - self.y.low) or 1) * PLOT_H

    def path(self, points: list[tuple[float, float]]) -> str:
        return " ".join(f"{'M' if i == 0 else 'L'}{self.px(x):.1f},{self.py(y):.1f}" for i, (x, y) in enumerate(points))


def _axes(frame: _Frame) -> list[str]:
    top = frame.top
    parts = [f'<rect x="{LEFT}" y="{top}" width="{PLOT_W}" height="{PLOT_H}" fill="none" stroke="#999"/>']
    for t in frame.x.ticks():
        x = frame.px(t)
        parts.append(f'<line x1="{x:.1f}" y1="{top + PLOT_H}" x2="{x:.1f}" y2="{top + PLOT_H + 4}" stroke="#555"/>'
                     f'<text x="{x:.1f}" y="{top + PLOT_H + 16}" text-anchor="middle">{escape(_fmt(t))}</text>')
    for t in frame.y.ticks():
        y = frame.py(t)
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + PLOT_W}" y2="{y:.1f}" stroke="#eee"/>'
                     f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(_fmt(t))}</text>')
    parts.append(f'<text x="{LEFT + PLOT_W / 2}" y="{top + PLOT_H + 34}" text-anchor="middle" class="axis">'
                 f'{escape(frame.x.label)}</text>')
    parts.append(f'<text transform="translate(14 {top + PLOT_H / 2}) rotate(-90)" text-anchor="middle" '
                 f'class="axis">{escape(frame.y.label)}</text>')
    return parts


def _stroke(index: int) -> str:
    """Colour (and, past ten series, dashes) of the index-th series, as SVG attributes."""
    dash = DASHES[(index // len(PALETTE)) % len(DASHES)]
    return f'stroke="{PALETTE[index % len(PALETTE)]}"' + (f' stroke-dasharray="{dash}"' if dash else "")


def _legend(series: list[Series], top: int) -> list[str]:
    parts = []
    x0 = LEFT + PLOT_W + 16
    for i, s in enumerate(series):
        y = top + 6 + i * LEGEND_ROW
        parts.append(f'<line x1="{x0}" y1="{y}" x2="{x0 + 22}" y2="{y}" {_stroke(i)} stroke-width="2"/>'
                     f'<text x="{x0 + 28}" y="{y + 4}">{escape(s.label)}</text>')
    return parts


def line_chart(title: str, subtitles: list[str], x: Axis, y: Axis, series: list[Series], kind: str,
               chance_diagonal: bool = False) -> str:
    """An SVG element: one ``<path class="KIND">`` per series, a legend naming each, axis labels,
    a title and a line per subtitle. All text is escaped."""
    top = TITLE_LINE * (len(subtitles) + 1) + 14
    frame = _Frame(x, y, top)
    height = max(top + PLOT_H + BOTTOM, top + 10 + LEGEND_ROW * len(series))
    width = LEFT + PLOT_W + 16 + LEGEND_W
    parts = [f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{escape(title)}">', f"<title>{escape('. '.join([title, *subtitles]))}</title>",
             f'<text x="{LEFT}" y="{TITLE_LINE}" class="title">{escape(title)}</text>']
    parts += [f'<text x="{LEFT}" y="{TITLE_LINE * (i + 2)}" class="subtitle">{escape(line)}</text>'
              for i, line in enumerate(subtitles)]
    parts += _axes(frame)
    if chance_diagonal:
        parts.append(f'<line x1="{frame.px(0):.1f}" y1="{frame.py(0):.1f}" '
                     f'x2="{frame.px(1):.1f}" y2="{frame.py(1):.1f}" '
                     f'stroke="#bbb" stroke-dasharray="4 4"/>')
    for i, s in enumerate(series):
        parts.append(f'<path class="{escape(kind)}" d="{frame.path(s.points)}" fill="none" {_stroke(i)} '
                     f'stroke-width="1.5"><title>{escape(s.label)}</title></path>')
    parts.extend(_legend(series, top))
    parts.append("</svg>")
    return "\n".join(parts)


# Heat maps: ColorBrewer's RdYlBu (red = low, blue = high), readable by the colour-blind; each
# cell also prints its value.
HEAT_STOPS = ((0.0, (215, 48, 39)), (0.25, (252, 141, 89)), (0.5, (255, 255, 191)), (0.75, (145, 191, 219)),
              (1.0, (69, 117, 180)))
CELL_W, CELL_H, COLUMN_LABEL_H, SCALE_W = 46, 20, 92, 60
# Row labels: about 6 px a character at the map's 10 px font, cut (with the whole label in the
# cell's tooltip) past LABEL_CHARACTERS.
LABEL_CHARACTER_W, LABEL_CHARACTERS = 6.2, 48
MISSING_CELL = "–"


def heat_colour(fraction: float) -> str:
    """The colour at ``fraction`` (0..1, clipped) of the scale, as #rrggbb."""
    fraction = min(1.0, max(0.0, fraction))
    for (f0, c0), (f1, c1) in zip(HEAT_STOPS, HEAT_STOPS[1:]):
        if fraction <= f1:
            t = (fraction - f0) / (f1 - f0)
            return "#" + "".join(f"{round(a + t * (b - a)):02x}" for a, b in zip(c0, c1))
    return "#%02x%02x%02x" % HEAT_STOPS[-1][1]


def heat_map(title: str, subtitles: list[str], rows: list[str], columns: list[str],
             values: list[list[float | None]], percent: bool = True) -> str:
    """An SVG element: a grid of ``<rect class="cell">``, one per (row, column), coloured on a
    scale from the lowest to the highest value (a legend bar beside it) and labelled with its
    value (in percent with ``percent``); None is a grey cell marked "–". All text is escaped."""
    present = [v for line in values for v in line if v is not None]
    low, high = (min(present), max(present)) if present else (0.0, 1.0)
    high = high if high > low else low + 1e-9
    top = TITLE_LINE * (len(subtitles) + 1) + 10 + COLUMN_LABEL_H
    cut = [name if len(name) <= LABEL_CHARACTERS else name[:LABEL_CHARACTERS - 1] + "…" for name in rows]
    label_w = round(LABEL_CHARACTER_W * max([len(name) for name in cut] or [1])) + 12
    width = label_w + CELL_W * len(columns) + 20 + SCALE_W
    bar_h = max(CELL_H * len(rows), 60)
    height = top + bar_h + 20
    shown = (lambda v: f"{100 * v:.1f}") if percent else (lambda v: f"{v:.3g}")
    parts = [f'<svg class="chart heat" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{escape(title)}">', f"<title>{escape('. '.join([title, *subtitles]))}</title>",
             f'<text x="4" y="{TITLE_LINE}" class="title">{escape(title)}</text>']
    parts += [f'<text x="4" y="{TITLE_LINE * (i + 2)}" class="subtitle">{escape(line)}</text>'
              for i, line in enumerate(subtitles)]
    for j, name in enumerate(columns):
        x = label_w + CELL_W * j + CELL_W / 2
        parts.append(f'<text transform="translate({x:.1f} {top - 6}) rotate(-55)" class="column">{escape(name)}</text>')
    for i, (name, short, line) in enumerate(zip(rows, cut, values)):
        y = top + CELL_H * i
        parts.append(f'<text x="{label_w - 6}" y="{y + CELL_H / 2 + 4:.1f}" text-anchor="end">{escape(short)}'
                     f"<title>{escape(name)}</title></text>")
        for j, value in enumerate(line):
            x = label_w + CELL_W * j
            fill = "#dddddd" if value is None else heat_colour((value - low) / (high - low))
            label = MISSING_CELL if value is None else shown(value)
            tip = f"{name}, {columns[j]}: {label}"
            parts.append(f'<rect class="cell" x="{x}" y="{y}" width="{CELL_W}" height="{CELL_H}" fill="{fill}" '
                         f'stroke="#fff"><title>{escape(tip)}</title></rect>'
                         f'<text x="{x + CELL_W / 2}" y="{y + CELL_H / 2 + 4:.1f}" text-anchor="middle">'
                         f"{escape(label)}</text>")
    # The scale: a bar from the lowest (bottom) to the highest value (top).
    x0 = label_w + CELL_W * len(columns) + 20
    steps = 20
    for k in range(steps):
        y = top + bar_h * (steps - 1 - k) / steps
        parts.append(f'<rect x="{x0}" y="{y:.1f}" width="12" height="{bar_h / steps + 0.5:.1f}" '
                     f'fill="{heat_colour((k + 0.5) / steps)}"/>')
    parts.append(f'<text x="{x0 + 16}" y="{top + 8}">{escape(shown(high))}</text>'
                 f'<text x="{x0 + 16}" y="{top + bar_h}">{escape(shown(low))}</text>')
    parts.append("</svg>")
    return "\n".join(parts)

