"""Inline SVG charts drawn in Python: the page needs no chart library, no network and no script to show them.

Every text that reaches the SVG (titles, labels, tooltips) passes through markupsafe.escape, so a method name or
parameter string from a result file is shown as text, never parsed as markup.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from markupsafe import Markup, escape

# Tableau 20, the ten strong colours first: neighbours in a sorted list of methods never look alike
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#79706e", "#a0cbe8", "#ffbe7d", "#8cd17d", "#f1ce63", "#86bcb6", "#ff9d9a", "#bab0ac", "#fabfd2",
           "#d4a6c8", "#d7b5a6")
MARKERS = ("circle", "square", "triangle", "diamond")
_PLOT_W, _PLOT_H, _LEFT, _TOP, _BOTTOM, _LEGEND_W = 380, 240, 56, 46, 44, 190


@dataclass(frozen=True)
class Style:
    color: str
    marker: str = "circle"


def style_for(index: int) -> Style:
    """A distinct colour and marker for the index-th name (twenty colours, then the next marker shape)."""
    return Style(PALETTE[index % len(PALETTE)], MARKERS[(index // len(PALETTE)) % len(MARKERS)])


@dataclass
class Series:
    """Points of one legend entry: (x, y, tooltip); `line` joins them in x order."""

    label: str
    style: Style
    points: list[tuple[float, float, str]] = field(default_factory=list)
    line: bool = False


@dataclass
class Bar:
    """One bar: its height, an emphasised part from the axis up (e.g. the wrong hits in a hit rate), a tooltip."""

    value: float
    part: float
    tooltip: str


def nice_ticks(high: float, count: int = 5) -> list[float]:
    """Round tick values from 0 to at least `high`."""
    if not math.isfinite(high) or high <= 0:
        high = 1.0
    raw = high / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return [round(i * step, 10) for i in range(math.ceil(high / step - 1e-9) + 1)]


def _label(value: float, percent: bool) -> str:
    if percent:
        return f"{100 * value:g}%"
    return f"{value:g}"


class _Canvas:
    """Axes from 0 to the ticks' end on both sides, and the SVG parts drawn so far."""

    def __init__(self, title: str, subtitle: str, x_label: str, y_label: str, x_high: float, y_high: float, *,
                 legend_rows: int, percent_x: bool = False, percent_y: bool = False, x_numbers: bool = True) -> None:
        self.x_ticks, self.y_ticks = nice_ticks(x_high), nice_ticks(y_high)
        self.width = _LEFT + _PLOT_W + 20 + _LEGEND_W
        self.height = max(_TOP + _PLOT_H + _BOTTOM, _TOP + 18 * legend_rows + 10)
        self.parts: list[str] = [
            f'<text x="{_LEFT}" y="16" class="plot-title">{escape(title)}</text>',
            f'<text x="{_LEFT}" y="32" class="plot-subtitle">{escape(_shorten(subtitle, 80))}</text>',
            f'<text x="{_LEFT + _PLOT_W / 2}" y="{_TOP + _PLOT_H + 38}" text-anchor="middle" class="axis-label">'
            f"{escape(x_label)}</text>",
            f'<text transform="translate(14 {_TOP + _PLOT_H / 2}) rotate(-90)" text-anchor="middle" '
            f'class="axis-label">{escape(y_label)}</text>',
        ]
        for tick in self.x_ticks if x_numbers else []:
            x = self.x(tick)
            self.parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{_TOP}" y2="{_TOP + _PLOT_H}" class="grid"/>'
                              f'<text x="{x:.1f}" y="{_TOP + _PLOT_H + 16}" text-anchor="middle" class="tick">'
                              f"{_label(tick, percent_x)}</text>")
        for tick in self.y_ticks:
            y = self.y(tick)
            self.parts.append(f'<line x1="{_LEFT}" x2="{_LEFT + _PLOT_W}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                              f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">'
                              f"{_label(tick, percent_y)}</text>")
        self.parts.append(f'<rect x="{_LEFT}" y="{_TOP}" width="{_PLOT_W}" height="{_PLOT_H}" class="frame"/>')
        self.legend_rows = 0

    def x(self, value: float) -> float:
        return _LEFT + _PLOT_W * min(max(value, 0.0), self.x_ticks[-1]) / self.x_ticks[-1]

    def y(self, value: float) -> float:
        return _TOP + _PLOT_H - _PLOT_H * min(max(value, 0.0), self.y_ticks[-1]) / self.y_ticks[-1]

    def legend(self, label: str, swatch: str) -> None:
        y = _TOP + 18 * self.legend_rows + 6
        x = _LEFT + _PLOT_W + 20
        self.parts.append(f'<g transform="translate({x} {y})">{swatch}<text x="16" y="4" class="legend">'
                          f"<title>{escape(label)}</title>{escape(_shorten(label, 26))}</text></g>")
        self.legend_rows += 1

    def svg(self, title: str) -> Markup:
        return Markup(f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" role="img" width="{self.width}" '
                      f'height="{self.height}" viewBox="0 0 {self.width} {self.height}"><title>{escape(title)}'
                      f'</title>{"".join(self.parts)}</svg>')


def _shorten(label: str, limit: int) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def marker(style: Style, x: float, y: float, tooltip: str = "", extra: str = "") -> str:
    """One point's shape; its tooltip is the SVG <title> browsers show on hover."""
    tip = f"<title>{escape(tooltip)}</title>" if tooltip else ""
    fill = f'fill="{style.color}"'
    if style.marker == "square":
        shape = f'<rect x="{x - 4:.1f}" y="{y - 4:.1f}" width="8" height="8" {fill} {extra}>'
        return f"{shape}{tip}</rect>"
    if style.marker == "triangle":
        return (f'<polygon points="{x:.1f},{y - 5:.1f} {x - 5:.1f},{y + 4:.1f} {x + 5:.1f},{y + 4:.1f}" {fill} '
                f"{extra}>{tip}</polygon>")
    if style.marker == "diamond":
        return (f'<polygon points="{x:.1f},{y - 5:.1f} {x + 5:.1f},{y:.1f} {x:.1f},{y + 5:.1f} {x - 5:.1f},{y:.1f}" '
                f"{fill} {extra}>{tip}</polygon>")
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4.5" {fill} {extra}>{tip}</circle>'


def scatter(title: str, subtitle: str, x_label: str, y_label: str, series: Sequence[Series],
            front: Sequence[tuple[float, float]] = (), percent_x: bool = False, percent_y: bool = False,
            y_high: float | None = None) -> Markup:
    """A scatter (lines where a series asks) with an optional Pareto front: a dashed staircase through `front`
    (sorted by x) and a ring around each of its points."""
    finite = [(x, y) for s in series for x, y, _ in s.points if math.isfinite(x) and math.isfinite(y)]
    x_high = max((x for x, _ in finite), default=1.0) * 1.05
    y_top = y_high if y_high is not None else max((y for _, y in finite), default=1.0) * 1.05
    canvas = _Canvas(title, subtitle, x_label, y_label, x_high, y_top, legend_rows=len(series) + bool(front),
                     percent_x=percent_x, percent_y=percent_y)
    steps = sorted(front)
    if steps:
        path = [f"{canvas.x(steps[0][0]):.1f},{canvas.y(steps[0][1]):.1f}"]
        for (_, y0), (x1, y1) in itertools.pairwise(steps):
            path += [f"{canvas.x(x1):.1f},{canvas.y(y0):.1f}", f"{canvas.x(x1):.1f},{canvas.y(y1):.1f}"]
        canvas.parts.append(f'<polyline points="{" ".join(path)}" class="front"/>')
        canvas.parts += [f'<circle cx="{canvas.x(x):.1f}" cy="{canvas.y(y):.1f}" r="8" class="front-ring"/>'
                         for x, y in steps]
    for entry in series:
        points = sorted(p for p in entry.points if math.isfinite(p[0]) and math.isfinite(p[1]))
        if entry.line and len(points) > 1:
            line = " ".join(f"{canvas.x(x):.1f},{canvas.y(y):.1f}" for x, y, _ in points)
            canvas.parts.append(f'<polyline points="{line}" fill="none" stroke="{entry.style.color}" '
                                f'stroke-width="1.5"/>')
        canvas.parts += [marker(entry.style, canvas.x(x), canvas.y(y), tip) for x, y, tip in points]
        canvas.legend(entry.label, marker(entry.style, 4, 0))
    if steps:
        canvas.legend("Pareto front", '<line x1="-4" x2="12" y1="0" y2="0" class="front"/>')
    return canvas.svg(f"{title}: {subtitle}")


def bars(title: str, subtitle: str, x_label: str, y_label: str, groups: Sequence[str],
         series: Sequence[tuple[Series, Sequence[Bar | None]]], part_label: str) -> Markup:
    """Grouped bars: for each group (x), one bar per series; the `part` of each bar is drawn darker."""
    values = [bar.value for _, row in series for bar in row if bar and math.isfinite(bar.value)]
    canvas = _Canvas(title, subtitle, x_label, y_label, 1.0, max(values, default=1.0) * 1.05,
                     legend_rows=len(series) + 1, percent_y=True, x_numbers=False)
    slot = _PLOT_W / max(len(groups), 1)
    width = min(28.0, (slot - 10) / max(len(series), 1))
    for g, group in enumerate(groups):
        left = _LEFT + g * slot + (slot - width * len(series)) / 2
        canvas.parts.append(f'<text x="{_LEFT + (g + 0.5) * slot:.1f}" y="{_TOP + _PLOT_H + 16}" '
                            f'text-anchor="middle" class="tick">{escape(group)}</text>')
        for s, (entry, row) in enumerate(series):
            bar = row[g]
            if bar is None or not math.isfinite(bar.value):
                continue
            x, top, base = left + s * width, canvas.y(bar.value), canvas.y(0.0)
            part = canvas.y(bar.part if math.isfinite(bar.part) else 0.0)
            canvas.parts.append(f'<g><title>{escape(bar.tooltip)}</title>'
                                f'<rect x="{x:.1f}" y="{top:.1f}" width="{width - 1:.1f}" height="{base - top:.1f}" '
                                f'fill="{entry.style.color}"/><rect x="{x:.1f}" y="{part:.1f}" '
                                f'width="{width - 1:.1f}" height="{base - part:.1f}" class="bar-part"/></g>')
    for entry, _ in series:
        canvas.legend(entry.label, f'<rect x="0" y="-5" width="10" height="10" fill="{entry.style.color}"/>')
    canvas.legend(part_label, '<rect x="0" y="-5" width="10" height="10" class="bar-part"/>')
    return canvas.svg(f"{title}: {subtitle}")
