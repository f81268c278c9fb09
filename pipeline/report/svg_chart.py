"""Small line charts as inline SVG: no JavaScript and nothing fetched, so a results page
opens the same anywhere, offline, and can be archived as one file."""

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
