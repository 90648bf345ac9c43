"""Inline SVG charts drawn in Python: the page needs no chart library, no network and no script to show them.

Axes are fitted to what they show (points and their 95% intervals, padded, on round ticks), never forced to 0–1:
scores of 0.07 to 0.12 would otherwise sit on one line. Each point carries its interval as an error bar, and each
method's points are joined in x order, so a method's budget sweep reads as one curve.

Every text that reaches the SVG (titles, labels, tooltips) passes through markupsafe.escape, so a method name or
parameter string from a result file is shown as text, never parsed as markup.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from markupsafe import Markup, escape

# Tableau 20, the ten strong colours first: neighbours in a sorted list of methods never look alike
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#79706e", "#a0cbe8", "#ffbe7d", "#8cd17d", "#f1ce63", "#86bcb6", "#ff9d9a", "#bab0ac", "#fabfd2",
           "#d4a6c8", "#d7b5a6")
MARKERS = ("circle", "square", "triangle", "diamond")
_PLOT_W, _PLOT_H, _LEFT, _TOP, _BOTTOM, _LEGEND_W = 380, 240, 56, 46, 44, 190
PAD = 0.08  # share of the data's span left free at each end of a fitted axis
CAP = 3.0  # half-width of an error bar's end caps, in pixels

Interval = tuple[float, float]


@dataclass(frozen=True)
class Style:
    color: str
    marker: str = "circle"


def style_for(index: int) -> Style:
    """A distinct colour and marker for the index-th name (twenty colours, then the next marker shape)."""
    return Style(PALETTE[index % len(PALETTE)], MARKERS[(index // len(PALETTE)) % len(MARKERS)])


@dataclass(frozen=True)
class Point:
    """One point with its tooltip and, where defined, the 95% intervals of its x and y."""

    x: float
    y: float
    tooltip: str = ""
    x_interval: Interval | None = None
    y_interval: Interval | None = None


@dataclass
class Series:
    """The points of one legend entry; with `line`, two or more of them are joined in x order."""

    label: str
    style: Style
    points: list[Point] = field(default_factory=list)
    line: bool = True


@dataclass
class Bar:
    """One bar: its height, an emphasised part from the axis up (e.g. the wrong hits in a hit rate), a tooltip,
    and the height's 95% interval where defined."""

    value: float
    part: float
    tooltip: str
    interval: Interval | None = None


def finite_interval(interval: Interval | None) -> Interval | None:
    """The interval when both ends are finite, else None: a cell of one episode has no interval to draw."""
    if interval is None:
        return None
    low, high = interval
    return (low, high) if math.isfinite(low) and math.isfinite(high) else None


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round, evenly spaced ticks (steps of 1, 2, 2.5 or 5 times a power of ten) covering
    [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)):
        low, high = 0.0, 1.0
    if high < low:
        low, high = high, low
    if high - low < 1e-12:
        spread = abs(high) * 0.1 or 0.1
        low, high = low - spread, high + spread
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [round(i * step, 12) + 0.0 for i in range(first, last + 1)]


def fit_ticks(values: Iterable[float], floor: float | None = None, ceiling: float | None = None,
              count: int = 5) -> list[float]:
    """Ticks for an axis fitted to `values` (padded by PAD of their span), kept within [floor, ceiling] where the
    values are: a rate's axis never reaches below 0% only because of the padding."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return nice_ticks(floor if floor is not None else 0.0, ceiling if ceiling is not None else 1.0, count)
    low, high = min(finite), max(finite)
    pad = PAD * (high - low) if high > low else max(abs(high) * 0.1, 0.02)
    low, high = low - pad, high + pad
    if floor is not None:
        low = max(low, min(floor, min(finite)))
    if ceiling is not None:
        high = min(high, max(ceiling, max(finite)))
    return nice_ticks(low, high, count)


def _label(value: float, percent: bool) -> str:
    if percent:
        return f"{round(100 * value, 9):g}%"
    return f"{round(value, 12):g}"


class _Canvas:
    """Axes spanning their ticks, and the SVG parts drawn so far."""

    def __init__(self, title: str, subtitle: str, x_label: str, y_label: str, x_ticks: list[float],
                 y_ticks: list[float], *, legend_rows: int, percent_x: bool = False, percent_y: bool = False,
                 x_numbers: bool = True, css: str = "") -> None:
        self.x_ticks, self.y_ticks, self.css = x_ticks, y_ticks, css
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
                              f'<text x="{x:.1f}" y="{_TOP + _PLOT_H + 16}" text-anchor="middle" '
                              f'class="tick x-tick">{_label(tick, percent_x)}</text>')
        for tick in self.y_ticks:
            y = self.y(tick)
            self.parts.append(f'<line x1="{_LEFT}" x2="{_LEFT + _PLOT_W}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                              f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick y-tick">'
                              f"{_label(tick, percent_y)}</text>")
        self.parts.append(f'<rect x="{_LEFT}" y="{_TOP}" width="{_PLOT_W}" height="{_PLOT_H}" class="frame"/>')
        self.legend_rows = 0

    @staticmethod
    def _place(value: float, ticks: list[float]) -> float:
        """Where `value` falls between the first and last tick, 0 to 1 (clamped: nothing is drawn off the frame)."""
        low, high = ticks[0], ticks[-1]
        return min(max((value - low) / (high - low), 0.0), 1.0)

    def x(self, value: float) -> float:
        return _LEFT + _PLOT_W * self._place(value, self.x_ticks)

    def y(self, value: float) -> float:
        return _TOP + _PLOT_H - _PLOT_H * self._place(value, self.y_ticks)

    def legend(self, label: str, swatch: str) -> None:
        y = _TOP + 18 * self.legend_rows + 6
        x = _LEFT + _PLOT_W + 20
        self.parts.append(f'<g transform="translate({x} {y})">{swatch}<text x="22" y="4" class="legend">'
                          f"<title>{escape(label)}</title>{escape(_shorten(label, 25))}</text></g>")
        self.legend_rows += 1

    def svg(self, title: str) -> Markup:
        css = f"plot {self.css}".strip()
        return Markup(f'<svg xmlns="http://www.w3.org/2000/svg" class="{css}" role="img" width="{self.width}" '
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


def _vertical_bar(x: float, low: float, high: float, color: str) -> str:
    """An error bar from pixel row `low` to `high` at column `x`, with caps: one path, class "errorbar"."""
    return (f'<path class="errorbar" stroke="{color}" d="M{x - CAP:.1f},{low:.1f}H{x + CAP:.1f}'
            f'M{x:.1f},{low:.1f}V{high:.1f}M{x - CAP:.1f},{high:.1f}H{x + CAP:.1f}"/>')


def _horizontal_bar(y: float, low: float, high: float, color: str) -> str:
    return (f'<path class="errorbar" stroke="{color}" d="M{low:.1f},{y - CAP:.1f}V{y + CAP:.1f}'
            f'M{low:.1f},{y:.1f}H{high:.1f}M{high:.1f},{y - CAP:.1f}V{y + CAP:.1f}"/>')


def _drawable(point: Point) -> bool:
    return math.isfinite(point.x) and math.isfinite(point.y)


def scatter(title: str, subtitle: str, x_label: str, y_label: str, series: Sequence[Series],
            front: Sequence[tuple[float, float]] = (), percent_x: bool = False, percent_y: bool = False,
            x_range: tuple[float | None, float | None] = (0.0, None),
            y_range: tuple[float | None, float | None] = (0.0, None)) -> Markup:
    """Points with their error bars, one line per series joining its points in x order, and an optional Pareto
    front: a dashed staircase through `front` (sorted by x) and a ring around each of its points. `x_range` and
    `y_range` bound the fitted axes where the data allow (a rate's (0, 1))."""
    points = [p for s in series for p in s.points if _drawable(p)]
    xs = [v for p in points for v in (p.x, *(finite_interval(p.x_interval) or ()))]
    ys = [v for p in points for v in (p.y, *(finite_interval(p.y_interval) or ()))]
    intervals = any(finite_interval(p.x_interval) or finite_interval(p.y_interval) for p in points)
    canvas = _Canvas(title, subtitle, x_label, y_label, fit_ticks(xs, *x_range), fit_ticks(ys, *y_range),
                     legend_rows=len(series) + bool(front) + intervals, percent_x=percent_x, percent_y=percent_y,
                     css="scatter")
    steps = sorted(front)
    if steps:
        path = [f"{canvas.x(steps[0][0]):.1f},{canvas.y(steps[0][1]):.1f}"]
        for (_, y0), (x1, y1) in itertools.pairwise(steps):
            path += [f"{canvas.x(x1):.1f},{canvas.y(y0):.1f}", f"{canvas.x(x1):.1f},{canvas.y(y1):.1f}"]
        canvas.parts.append(f'<polyline points="{" ".join(path)}" class="front"/>')
        canvas.parts += [f'<circle cx="{canvas.x(x):.1f}" cy="{canvas.y(y):.1f}" r="8" class="front-ring"/>'
                         for x, y in steps]
    for entry in series:
        color = entry.style.color
        drawn = sorted((p for p in entry.points if _drawable(p)), key=lambda p: (p.x, p.y))
        parts = [f'<g class="series" data-series="{escape(entry.label)}">']
        if entry.line and len(drawn) > 1:
            line = " ".join(f"{canvas.x(p.x):.1f},{canvas.y(p.y):.1f}" for p in drawn)
            parts.append(f'<polyline class="method-line" points="{line}" stroke="{color}"/>')
        for p in drawn:
            if (bounds := finite_interval(p.y_interval)) is not None:
                parts.append(_vertical_bar(canvas.x(p.x), canvas.y(bounds[0]), canvas.y(bounds[1]), color))
            if (bounds := finite_interval(p.x_interval)) is not None:
                parts.append(_horizontal_bar(canvas.y(p.y), canvas.x(bounds[0]), canvas.x(bounds[1]), color))
        parts += [marker(entry.style, canvas.x(p.x), canvas.y(p.y), p.tooltip, 'class="point"') for p in drawn]
        canvas.parts.append("".join(parts) + "</g>")
        swatch = (f'<line x1="-2" x2="14" y1="0" y2="0" class="method-line" stroke="{color}"/>'
                  if entry.line and len(drawn) > 1 else "")
        canvas.legend(entry.label, swatch + marker(entry.style, 6, 0))
    if steps:
        canvas.legend("Pareto front", '<line x1="-2" x2="14" y1="0" y2="0" class="front"/>')
    if intervals:
        canvas.legend("95% interval", '<path class="interval-key" d="M3,-6H9M6,-6V6M3,6H9"/>')
    return canvas.svg(f"{title}: {subtitle}")


def bars(title: str, subtitle: str, x_label: str, y_label: str, groups: Sequence[str],
         series: Sequence[tuple[Series, Sequence[Bar | None]]], part_label: str) -> Markup:
    """Grouped bars from 0: for each group (x), one bar per series, its `part` drawn darker and its interval as
    an error bar."""
    tops = [v for _, row in series for bar in row if bar is not None and math.isfinite(bar.value)
            for v in (bar.value, *(finite_interval(bar.interval) or ()))]
    highest = max(tops, default=1.0)
    ticks = nice_ticks(0.0, (min(highest * 1.05, 1.0) if highest <= 1.0 else highest * 1.05) or 1.0)  # rates
    canvas = _Canvas(title, subtitle, x_label, y_label, [0.0, 1.0], ticks, legend_rows=len(series) + 1,
                     percent_y=True, x_numbers=False, css="bars")
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
            error = ""
            if (bounds := finite_interval(bar.interval)) is not None:
                error = _vertical_bar(x + (width - 1) / 2, canvas.y(bounds[0]), canvas.y(bounds[1]), "#1f2328")
            canvas.parts.append(f'<g><title>{escape(bar.tooltip)}</title>'
                                f'<rect x="{x:.1f}" y="{top:.1f}" width="{width - 1:.1f}" height="{base - top:.1f}" '
                                f'fill="{entry.style.color}"/><rect x="{x:.1f}" y="{part:.1f}" '
                                f'width="{width - 1:.1f}" height="{base - part:.1f}" class="bar-part"/>{error}</g>')
    for entry, _ in series:
        canvas.legend(entry.label, f'<rect x="2" y="-5" width="10" height="10" fill="{entry.style.color}"/>')
    canvas.legend(part_label, '<rect x="2" y="-5" width="10" height="10" class="bar-part"/>')
    return canvas.svg(f"{title}: {subtitle}")
