"""Sparklines as server-rendered inline SVG (no chart library, no script): a polyline over the
points with an accessible name, and a text summary beside it for screen readers and for reading
exact figures (the SVG is ``role="img"`` with its summary as ``aria-label`` and ``<title>``)."""
from __future__ import annotations

from markupsafe import Markup, escape

WIDTH, HEIGHT, PAD = 120, 28, 2


def summary(points: list[int], span: str, unit: str = "messages") -> str:
    """``"412 messages in the last hour, peak 31 per minute, now 7"``-style text."""
    step = "minute" if span == "hour" else "hour"
    total, peak = sum(points), max(points, default=0)
    now = points[-1] if points else 0
    return f"{total} {unit} in the last {span}, peak {peak} per {step}, latest {step} {now}"


def svg(points: list[int], label: str) -> Markup:
    """A sparkline of ``points`` (oldest first) named ``label``."""
    n = len(points)
    top = max(points, default=0) or 1
    if n < 2:
        coords = f"{PAD},{HEIGHT - PAD} {WIDTH - PAD},{HEIGHT - PAD}"
    else:
        dx = (WIDTH - 2 * PAD) / (n - 1)
        coords = " ".join(f"{PAD + i * dx:.1f},{HEIGHT - PAD - (v / top) * (HEIGHT - 2 * PAD):.1f}" for i, v in enumerate(points))
    name = escape(label)
    return Markup(
        f'<svg class="spark" role="img" aria-label="{name}" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}">'
        f'<title>{name}</title><polyline points="{coords}" fill="none" stroke="currentColor" stroke-width="1.5"/></svg>')
