"""Small server-side charts as inline SVG: bars and lines, with tooltips, and no JavaScript."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 560, 230
_LEFT, _RIGHT, _TOP, _BOTTOM = 48, 12, 30, 46
PALETTE = ("#2f6db5", "#e08a1e", "#c23b3b", "#3a9a5b")


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float | None]
    color: str = PALETTE[0]


def bar_chart(title: str, labels: Sequence[str], series: Sequence[Series],
              fmt: Callable[[float], str] = lambda v: f"{v:g}") -> str:
    """Grouped bars, one group per label."""
    top = nice_ceiling(max((v for s in series for v in s.values if v is not None), default=0.0))
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
    group = plot_w / max(len(labels), 1)
    bar = max(group * 0.8 / max(len(series), 1), 1.0)
    parts = _frame(title, top, fmt)
    for i, label in enumerate(labels):
        for j, s in enumerate(series):
            value = s.values[i] or 0.0
            h = plot_h * value / top
            x = _LEFT + i * group + group * 0.1 + j * bar
            parts.append(
                f'<rect class="bar" x="{x:.1f}" y="{_TOP + plot_h - h:.1f}" width="{bar:.1f}" '
                f'height="{h:.1f}" fill="{s.color}"><title>{escape(label)}: {escape(s.name)} '
                f'{escape(fmt(value))}</title></rect>')
    parts += _x_labels(labels, lambda i: _LEFT + (i + 0.5) * group)
    parts += _legend(series)
    return _svg(title, parts)


def line_chart(title: str, labels: Sequence[str], series: Sequence[Series], top: float,
               fmt: Callable[[float], str] = lambda v: f"{v:g}") -> str:
    """Lines over the labels; a missing value breaks the line."""
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
    step = plot_w / max(len(labels), 1)
    parts = _frame(title, top, fmt)
    for s in series:
        runs: list[list[str]] = [[]]
        for i, value in enumerate(s.values):
            if value is None:
                runs.append([])
                continue
            x, y = _LEFT + (i + 0.5) * step, _TOP + plot_h * (1 - value / top)
            runs[-1].append(f"{x:.1f},{y:.1f}")
            parts.append(f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="2.5" '
                         f'fill="{s.color}"><title>{escape(labels[i])}: {escape(fmt(value))}'
                         f'</title></circle>')
        parts += [f'<polyline fill="none" stroke="{s.color}" stroke-width="2" '
                  f'points="{" ".join(run)}"/>' for run in runs if len(run) > 1]
    parts += _x_labels(labels, lambda i: _LEFT + (i + 0.5) * step)
    parts += _legend(series)
    return _svg(title, parts)


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 4, 6, 8 times a power of ten at or above `value`: round ticks."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return next(m * power for m in (1, 2, 4, 6, 8, 10) if m * power >= value)


def _frame(title: str, top: float, fmt: Callable[[float], str]) -> list[str]:
    plot_h = HEIGHT - _TOP - _BOTTOM
    parts = [f'<text x="{_LEFT}" y="18" class="chart-title">{escape(title)}</text>']
    for k in range(3):
        y = _TOP + plot_h * (1 - k / 2)
        parts.append(f'<line x1="{_LEFT}" x2="{WIDTH - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'class="grid"/>')
        parts.append(f'<text x="{_LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" class="tick">'
                     f'{escape(fmt(top * k / 2))}</text>')
    return parts


def _x_labels(labels: Sequence[str], x_of: Callable[[int], float]) -> list[str]:
    every = max(1, -(-len(labels) // 8))  # at most 8 labels, so that they never overlap
    y = HEIGHT - _BOTTOM + 14
    return [f'<text x="{x_of(i):.1f}" y="{y}" text-anchor="middle" class="tick">{escape(label)}</text>'
            for i, label in enumerate(labels) if i % every == 0]


def _legend(series: Sequence[Series]) -> list[str]:
    if len(series) < 2:
        return []
    parts, x = [], _LEFT
    for s in series:
        parts.append(f'<rect x="{x}" y="{HEIGHT - 16}" width="10" height="10" fill="{s.color}"/>')
        parts.append(f'<text x="{x + 14}" y="{HEIGHT - 7}" class="tick">{escape(s.name)}</text>')
        x += 24 + 7 * len(s.name)
    return parts


def _svg(title: str, parts: list[str]) -> str:
    body = "\n  ".join(parts)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}">\n'
            f'  <title>{escape(title)}</title>\n  {body}\n</svg>')
