"""A flamegraph SVG drawn from collapsed stacks, with no tool beyond this module."""

from __future__ import annotations

from html import escape
from typing import Any

from benchmarks.diagnose.stacks import Row

WIDTH = 1800.0
ROW_HEIGHT = 16
#: Frames narrower than this many pixels are left out (and so are their callees).
MIN_WIDTH = 0.3


def flamegraph_svg(rows: list[Row], title: str, roles: dict[int, str]) -> str:
    """A plain flamegraph (root at the bottom, hover for names and sample counts), one root per thread."""
    tree: dict[str, Any] = {"n": 0, "c": {}}
    for tid, frames, count in rows:
        node = tree
        node["n"] += count
        for frame in [f"{roles.get(tid, 'other')} (thread {tid})", *frames]:
            node = node["c"].setdefault(frame, {"n": 0, "c": {}})
            node["n"] += count
    total = max(tree["n"], 1)
    height = (_depth(tree) + 2) * ROW_HEIGHT
    rects: list[str] = []

    def place(node: dict[str, Any], x: float, level: int) -> None:
        for name, child in sorted(node["c"].items()):
            w = WIDTH * child["n"] / total
            if w >= MIN_WIDTH:
                y = height - (level + 2) * ROW_HEIGHT
                rects.append(_rect(name, child["n"], total, x, y, w))
                place(child, x, level + 1)
            x += w

    place(tree, 0.0, 0)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH:.0f}" height="{height}" font-family="monospace">'
        f'<text x="4" y="14" font-size="13">{escape(title)} ({total} samples)</text>{"".join(rects)}</svg>\n'
    )


def _depth(node: dict[str, Any]) -> int:
    return 1 + max((_depth(child) for child in node["c"].values()), default=0)


def _rect(name: str, samples: int, total: int, x: float, y: int, w: float) -> str:
    """One frame: a box coloured by function, its name cut to fit, the sample count on hover."""
    hue = 30 + (hash(name.split(" (")[0]) % 30)
    label = escape(name if len(name) * 6.5 < w else name[: max(0, int(w / 6.5) - 2)] + ".." if w > 20 else "")
    return (
        f'<g><title>{escape(name)}: {samples} samples ({100 * samples / total:.1f}%)</title>'
        f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{ROW_HEIGHT - 1}" fill="hsl({hue},85%,60%)"/>'
        f'<text x="{x + 2:.1f}" y="{y + 12}" font-size="11">{label}</text></g>'
    )
