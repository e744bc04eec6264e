"""Inline SVG charts drawn on the server: a line chart, a histogram with an interval band, a timeline.

Every function returns SVG markup as a string, with every label passed through :func:`html.escape`; no script,
no external font or stylesheet (the page's own CSS styles the classes). Numbers are laid out on a fixed view box
and the SVG scales to its container.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

__all__ = ["Bar", "Line", "Marker", "histogram", "line_chart", "nice_ticks", "timeline"]

# A colour-blind-safe palette (Okabe-Ito), cycled over lines and versions.
PALETTE = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000")


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e4 or magnitude < 1e-3:
        return f"{value:.2g}"
    return f"{value:.4g}"


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering ``[low, high]``."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high <= low:
        return [low]
    raw = (high - low) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    # Multiples of the step, counted in whole steps (a float sum would drift off the round values).
    first, last = math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


@dataclass(frozen=True)
class _Frame:
    """Maps data to the plot area of a ``width`` × ``height`` view box."""

    width: float
    height: float
    left: float
    right: float
    top: float
    bottom: float
    x0: float
    x1: float
    y0: float
    y1: float

    def x(self, value: float) -> float:
        span = self.x1 - self.x0 or 1.0
        return self.left + (value - self.x0) / span * (self.width - self.left - self.right)

    def y(self, value: float) -> float:
        span = self.y1 - self.y0 or 1.0
        return self.height - self.bottom - (value - self.y0) / span * (self.height - self.top - self.bottom)


def _axes(
    frame: _Frame,
    *,
    x_labels: Sequence[tuple[float, str]],
    y_ticks: Sequence[float],
    x_title: str,
    y_title: str,
) -> list[str]:
    parts = [
        f'<line class="axis" x1="{frame.left}" y1="{frame.height - frame.bottom}" '
        f'x2="{frame.width - frame.right}" y2="{frame.height - frame.bottom}"/>',
        f'<line class="axis" x1="{frame.left}" y1="{frame.top}" x2="{frame.left}" '
        f'y2="{frame.height - frame.bottom}"/>',
    ]
    for tick in y_ticks:
        y = frame.y(tick)
        parts.append(
            f'<line class="grid" x1="{frame.left}" y1="{y:.1f}" x2="{frame.width - frame.right}" '
            f'y2="{y:.1f}"/>'
        )
        parts.append(
            f'<text class="tick" x="{frame.left - 4}" y="{y + 3:.1f}" text-anchor="end">'
            f"{_e(_fmt(tick))}</text>"
        )
    for value, label in x_labels:
        x = frame.x(value)
        parts.append(
            f'<text class="tick" x="{x:.1f}" y="{frame.height - frame.bottom + 13}" '
            f'text-anchor="middle">{_e(label)}</text>'
        )
    if x_title:
        parts.append(
            f'<text class="title" x="{(frame.left + frame.width - frame.right) / 2:.1f}" '
            f'y="{frame.height - 2}" text-anchor="middle">{_e(x_title)}</text>'
        )
    if y_title:
        parts.append(f'<text class="title" x="4" y="{frame.top - 6}">{_e(y_title)}</text>')
    return parts


@dataclass(frozen=True)
class Line:
    """One line of a :func:`line_chart`: ``(x, y)`` points, drawn in order."""

    label: str
    points: Sequence[tuple[float, float]]


def line_chart(
    lines: Sequence[Line],
    *,
    x_title: str = "",
    y_title: str = "",
    x_format: str = "number",
    width: int = 640,
    height: int = 220,
    aria: str = "line chart",
) -> str:
    """Lines on shared axes; ``x_format="time"`` reads x as Unix seconds and labels it as UTC time."""
    finite = [(x, y) for line in lines for x, y in line.points if math.isfinite(x) and math.isfinite(y)]
    if not finite:
        return '<p class="empty">no data</p>'
    xs, ys = [p[0] for p in finite], [p[1] for p in finite]
    y_ticks = nice_ticks(min(ys), max(ys))
    y0, y1 = min([*ys, *y_ticks]), max([*ys, *y_ticks])
    if y0 == y1:
        y0, y1 = y0 - 1, y1 + 1
    x0, x1 = min(xs), max(xs)
    if x0 == x1:
        x0, x1 = x0 - 1, x1 + 1
    pad = (x1 - x0) * 0.03  # points at the ends stay clear of the axes
    x0, x1 = x0 - pad, x1 + pad
    frame = _Frame(width, height, 52, 12 + (110 if len(lines) > 1 else 0), 18, 30, x0, x1, y0, y1)
    x_labels = (
        [(t, _x_label(t, x_format, x0, x1)) for t in nice_ticks(x0, x1, 5)]
        if x_format == "number"
        else [(t, _x_label(t, x_format, x0, x1)) for t in _time_ticks(x0, x1)]
    )
    parts = _axes(frame, x_labels=x_labels, y_ticks=nice_ticks(y0, y1), x_title=x_title, y_title=y_title)
    for index, line in enumerate(lines):
        colour = PALETTE[index % len(PALETTE)]
        pts = [(frame.x(x), frame.y(y)) for x, y in line.points if math.isfinite(x) and math.isfinite(y)]
        if not pts:
            continue
        if len(pts) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            parts.append(f'<polyline class="series" stroke="{colour}" points="{path}"/>')
        if len(pts) <= 60:
            radius = 2.2 if len(pts) > 1 else 4  # a lone sample must still be seen
            parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{radius}" fill="{colour}"/>' for x, y in pts]
        if len(lines) > 1:
            ly = frame.top + 12 * index + 4
            lx = width - frame.right + 8
            parts.append(f'<rect x="{lx}" y="{ly - 7}" width="10" height="3" fill="{colour}"/>')
            parts.append(f'<text class="tick" x="{lx + 14}" y="{ly}">{_e(line.label)}</text>')
    return _svg(width, height, aria, parts)


def _time_ticks(x0: float, x1: float) -> list[float]:
    span = x1 - x0
    steps = (1, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400)
    step = next((s for s in steps if span / s <= 6), 30 * 86400)
    first = math.ceil(x0 / step) * step
    return [first + i * step for i in range(int((x1 - first) // step) + 1)]


def _x_label(value: float, x_format: str, x0: float, x1: float) -> str:
    if x_format != "time":
        return _fmt(value)
    moment = datetime.fromtimestamp(value, tz=UTC)
    span = x1 - x0
    return moment.strftime("%H:%M:%S" if span < 600 else "%H:%M" if span < 2 * 86400 else "%m-%d %H:%M")


def histogram(
    values: Sequence[float],
    *,
    markers: Sequence[tuple[float, str]] = (),
    band: tuple[float, float, str] | None = None,
    bins: int = 20,
    x_title: str = "",
    width: int = 640,
    height: int = 220,
    aria: str = "histogram",
) -> str:
    """A histogram of ``values`` with labelled vertical ``markers`` and an optional shaded ``band`` (low, high,
    label) — e.g. the one-sided bootstrap interval of the mean, ``[lower bound, +∞)`` drawn to the right edge."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return '<p class="empty">no data</p>'
    edges_low = min([*finite, *(m for m, _ in markers), *((band[0],) if band else ())])
    edges_high = max([*finite, *(m for m, _ in markers)])
    if edges_high == edges_low:
        edges_low, edges_high = edges_low - 0.5, edges_high + 0.5
    width_bin = (edges_high - edges_low) / bins
    counts = [0] * bins
    for v in finite:
        counts[min(int((v - edges_low) / width_bin), bins - 1)] += 1
    top = max(counts)
    frame = _Frame(width, height, 40, 14, 30, 30, edges_low, edges_high, 0, top * 1.1 or 1)
    x_labels = [(t, _fmt(t)) for t in nice_ticks(edges_low, edges_high, 6)]
    y_ticks = [t for t in nice_ticks(0, top, 4) if float(t).is_integer()]
    parts = []
    if band is not None:
        low, high, label = band
        bx0, bx1 = frame.x(max(low, edges_low)), frame.x(min(high, edges_high))
        parts.append(
            f'<rect class="band" x="{bx0:.1f}" y="{frame.top}" width="{max(bx1 - bx0, 1):.1f}" '
            f'height="{height - frame.top - frame.bottom}"><title>{_e(label)}</title></rect>'
        )
        # Inside the band, from its left edge, unless that would run off the chart: then right-aligned.
        room = width - frame.right - bx0 > 6.5 * len(label)
        lx, anchor = (bx0 + 3, "start") if room else (width - frame.right - 3, "end")
        parts.append(
            f'<text class="bandlabel" x="{lx:.1f}" y="{frame.top + 16}" text-anchor="{anchor}">{_e(label)}</text>'
        )
    parts += _axes(frame, x_labels=x_labels, y_ticks=y_ticks, x_title=x_title, y_title="examples")
    for index, count in enumerate(counts):
        if count:
            x = frame.x(edges_low + index * width_bin)
            w = frame.x(edges_low + (index + 1) * width_bin) - x
            y = frame.y(count)
            parts.append(
                f'<rect class="bar" x="{x + 0.5:.1f}" y="{y:.1f}" width="{max(w - 1, 1):.1f}" '
                f'height="{frame.y(0) - y:.1f}"><title>{count}</title></rect>'
            )
    for index, (value, label) in enumerate(markers):
        x = frame.x(value)
        parts.append(
            f'<line class="marker m{index}" x1="{x:.1f}" y1="{frame.top - 8}" x2="{x:.1f}" '
            f'y2="{height - frame.bottom}"/>'
        )
        anchor = "start" if x < width * 0.7 else "end"
        dx = 3 if anchor == "start" else -3
        parts.append(
            f'<text class="mlabel m{index}" x="{x + dx:.1f}" y="{frame.top - 14 + 11 * index}" '
            f'text-anchor="{anchor}">{_e(label)}</text>'
        )
    return _svg(width, height, aria, parts)


@dataclass(frozen=True)
class Bar:
    """A span on a :func:`timeline` lane (``end`` None: still open, drawn to the right edge)."""

    lane: str
    start: datetime
    end: datetime | None
    label: str
    css: str
    href: str | None = None
    tip: str = ""


@dataclass(frozen=True)
class Marker:
    """A point event on a :func:`timeline` lane (promotion, rollback, canary decision)."""

    lane: str
    at: datetime
    label: str
    css: str


def timeline(
    bars: Sequence[Bar],
    markers: Sequence[Marker],
    *,
    now: datetime,
    lanes: Sequence[str],
    width: int = 960,
    aria: str = "timeline",
) -> str:
    """Lanes of spans over time (who served when, cycles) with point events on them."""
    moments = [b.start for b in bars] + [m.at for m in markers]
    if not moments:
        return '<p class="empty">nothing has happened yet</p>'
    t0 = min(moments).timestamp()
    t1 = max([now.timestamp(), *(b.end.timestamp() for b in bars if b.end)])
    if t1 <= t0:
        t1 = t0 + 60
    lane_h, left, top = 30, 90, 8
    height = top + lane_h * len(lanes) + 26
    frame = _Frame(width, height, left, 10, top, 26, t0, t1, 0, 1)
    index = {lane: i for i, lane in enumerate(lanes)}
    parts = []
    for lane, i in index.items():
        y = top + i * lane_h
        parts.append(f'<text class="lane" x="{left - 6}" y="{y + 19}" text-anchor="end">{_e(lane)}</text>')
        parts.append(
            f'<line class="grid" x1="{left}" y1="{y + lane_h}" x2="{width - 10}" y2="{y + lane_h}"/>'
        )
    for bar in bars:
        if bar.lane not in index:
            continue
        y = top + index[bar.lane] * lane_h + 5
        x0 = frame.x(bar.start.timestamp())
        x1 = frame.x((bar.end or now).timestamp())
        w = max(x1 - x0, 3)
        rect = (
            f'<rect class="span {_e(bar.css)}" x="{x0:.1f}" y="{y}" width="{w:.1f}" height="{lane_h - 10}" '
            f'rx="3"><title>{_e(bar.tip or bar.label)}</title></rect>'
        )
        text = ""
        if w > 7 * len(bar.label) * 0.8:
            text = f'<text class="spanlabel" x="{x0 + 4:.1f}" y="{y + 14}">{_e(bar.label)}</text>'
        item = rect + text
        if bar.href:
            item = f'<a href="{_e(bar.href)}">{item}</a>'
        parts.append(item)
    for marker in markers:
        if marker.lane not in index:
            continue
        x = frame.x(marker.at.timestamp())
        y = top + index[marker.lane] * lane_h + 15
        parts.append(
            f'<path class="event {_e(marker.css)}" d="M{x:.1f},{y - 9} l6,9 l-6,9 l-6,-9 z">'
            f"<title>{_e(marker.label)}</title></path>"
        )
    for tick in _time_ticks(t0, t1):
        x = frame.x(tick)
        parts.append(
            f'<text class="tick" x="{x:.1f}" y="{height - 8}" text-anchor="middle">'
            f"{_e(_x_label(tick, 'time', t0, t1))}</text>"
        )
    return _svg(width, height, aria, parts)


def _svg(width: int, height: int, aria: str, parts: Sequence[str]) -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{_e(aria)}" '
        f'xmlns="http://www.w3.org/2000/svg">' + "".join(parts) + "</svg>"
    )
