"""Two small chart types as standalone SVG text: no plotting library, no fonts or scripts to fetch,
so a report opens anywhere (a browser, a Git host) exactly as written.

- `bar_chart`: one bar per arm with its confidence interval as a whisker;
- `forest_plot`: one row per comparison, the estimate as a dot on its interval, a line at 0.

Values may be None (undefined): the bar or row is drawn empty and labelled "n/a".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape

FONT = 'font-family="Helvetica, Arial, sans-serif"'
BAR = "#4C78A8"
HIGHLIGHT = "#E45756"
MUTED = "#9D9D9D"


@dataclass(frozen=True, slots=True)
class Row:
    """One forest-plot row: an estimate with its interval; `strong` draws it highlighted."""

    label: str
    value: float | None
    low: float | None
    high: float | None
    strong: bool = False


def _val(x: float | None) -> float:
    """None (undefined) as NaN, so one finiteness check covers both."""
    return math.nan if x is None else float(x)


def _finite(*xs: float) -> list[float]:
    return [x for x in xs if math.isfinite(x)]


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values from at most lo to at least hi."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step + 1e-9) * step
    steps = math.ceil((hi - first) / step - 1e-9)
    return [round(first + i * step, 12) for i in range(steps + 1)]


def _text(x: float, y: float, s: str, *, size: int = 12, anchor: str = "middle", extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" {FONT}{extra}>{escape(s)}</text>'


def _document(width: int, height: int, title: str, body: list[str]) -> str:
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{escape(title, {chr(34): "&quot;"})}">'
    )
    return "\n".join([head, f"<title>{escape(title)}</title>", f'<rect width="{width}" height="{height}" fill="white"/>',
                      _text(width / 2, 22, title, size=15, extra=' font-weight="bold"'), *body, "</svg>", ""])  # fmt: skip


def bar_chart(title: str, labels: Sequence[str], values: Sequence[float | None], lows: Sequence[float | None],
              highs: Sequence[float | None], fmt: Callable[[float], str] = lambda v: f"{v:.3g}") -> str:  # fmt: skip
    """Bars of `values` per label with [low, high] whiskers; `fmt` writes a value as text."""
    if not len(labels) == len(values) == len(lows) == len(highs):
        raise ValueError("bar_chart: labels, values, lows and highs must have one entry per bar")
    width, left, right, top, bottom = max(360, 120 + 90 * len(labels)), 70, 20, 44, 90
    height = 360
    vals, los, his = [_val(v) for v in values], [_val(v) for v in lows], [_val(v) for v in highs]
    finite = _finite(*vals, *los, *his)
    lo, hi = min([0.0, *finite]), max([0.0, *finite])
    if hi == lo:
        hi = lo + 1.0
    ticks = nice_ticks(lo, hi)
    lo, hi = min(lo, ticks[0]), max(hi, ticks[-1])
    plot_h, plot_w = height - top - bottom, width - left - right

    def y(v: float) -> float:
        return top + plot_h * (hi - v) / (hi - lo)

    body = []
    for t in ticks:
        body.append(f'<line x1="{left}" y1="{y(t):.1f}" x2="{width - right}" y2="{y(t):.1f}" stroke="#E5E5E5"/>')
        body.append(_text(left - 6, y(t) + 4, fmt(t), size=11, anchor="end"))
    body.append(f'<line x1="{left}" y1="{y(0):.1f}" x2="{width - right}" y2="{y(0):.1f}" stroke="#333"/>')
    slot = plot_w / max(len(labels), 1)
    for i, (label, v, l, h) in enumerate(zip(labels, vals, los, his)):
        cx = left + slot * (i + 0.5)
        bw = min(60.0, slot * 0.6)
        if math.isfinite(v):
            y0, y1 = sorted((y(0), y(v)))
            body.append(f'<rect x="{cx - bw / 2:.1f}" y="{y0:.1f}" width="{bw:.1f}" height="{max(y1 - y0, 0.5):.1f}" fill="{BAR}"/>')
        if math.isfinite(l) and math.isfinite(h):
            body.append(f'<line x1="{cx:.1f}" y1="{y(l):.1f}" x2="{cx:.1f}" y2="{y(h):.1f}" stroke="#222" stroke-width="1.5"/>')
            for yy in (y(l), y(h)):
                body.append(f'<line x1="{cx - 8:.1f}" y1="{yy:.1f}" x2="{cx + 8:.1f}" y2="{yy:.1f}" stroke="#222" stroke-width="1.5"/>')
        top_y = min([y(x) for x in _finite(v, h)] or [y(0)])
        body.append(_text(cx, top_y - 6, fmt(v) if math.isfinite(v) else "n/a", size=11))
        body.append(_text(cx, height - bottom + 16, label, size=11, anchor="end",
                          extra=f' transform="rotate(-30 {cx:.1f} {height - bottom + 16:.1f})"'))  # fmt: skip
    return _document(width, height, title, body)


def forest_plot(title: str, rows: Sequence[Row], fmt: Callable[[float], str] = lambda v: f"{v:+.1%}") -> str:
    """One row per comparison: the interval as a line, the estimate as a dot, a dashed line at 0."""
    width, left, right, top, row_h = 760, 300, 110, 48, 26
    height = top + row_h * max(len(rows), 1) + 40
    points = [(_val(r.value), _val(r.low), _val(r.high)) for r in rows]
    finite = _finite(*(x for p in points for x in p))
    lo, hi = min([0.0, *finite]), max([0.0, *finite])
    if hi == lo:
        lo, hi = -0.01, 0.01
    ticks = nice_ticks(lo, hi)
    lo, hi = min(lo, ticks[0]), max(hi, ticks[-1])
    plot_w = width - left - right

    def x(v: float) -> float:
        return left + plot_w * (v - lo) / (hi - lo)

    bottom_y = top + row_h * max(len(rows), 1)
    body = []
    for t in ticks:
        body.append(f'<line x1="{x(t):.1f}" y1="{top - 6}" x2="{x(t):.1f}" y2="{bottom_y}" stroke="#E5E5E5"/>')
        body.append(_text(x(t), bottom_y + 16, fmt(t), size=11))
    body.append(f'<line x1="{x(0):.1f}" y1="{top - 6}" x2="{x(0):.1f}" y2="{bottom_y}" stroke="#333" stroke-dasharray="4 3"/>')
    for i, (r, (v, l, h)) in enumerate(zip(rows, points)):
        cy = top + row_h * (i + 0.5)
        colour = HIGHLIGHT if r.strong else BAR
        body.append(_text(left - 10, cy + 4, r.label, size=12, anchor="end"))
        if math.isfinite(l) and math.isfinite(h):
            body.append(f'<line x1="{x(l):.1f}" y1="{cy:.1f}" x2="{x(h):.1f}" y2="{cy:.1f}" stroke="{colour}" stroke-width="2"/>')
        if math.isfinite(v):
            body.append(f'<circle cx="{x(v):.1f}" cy="{cy:.1f}" r="4.5" fill="{colour}"/>')
        label = fmt(v) if math.isfinite(v) else "n/a"
        body.append(_text(width - right + 8, cy + 4, label, size=11, anchor="start", extra="" if r.strong else f' fill="{MUTED}"'))
    return _document(width, height, title, body)
