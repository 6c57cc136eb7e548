"""Report plots as standalone SVG (no plotting library, no external assets): pure functions over numbers.

Every text that comes from users (condition names, unit ids, wells) is XML-escaped, so a plot can be
inlined into the HTML report or opened on its own.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Iterable, Sequence

PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#ff9da7", "#9c755f", "#bab0ac", "#e15759"]
FLAGGED = "#d62728"
WARNED = "#e08a00"
FONT = "font-family='system-ui,sans-serif' font-size='11'"


@dataclass(frozen=True)
class Point:
    """One unit in a plot: its value, its id (shown on hover) and whether a review flagged it."""

    value: float
    unit_id: str
    flagged: bool = False


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000 or abs(value) < 0.01:
        return f"{value:.2g}"
    return f"{value:.3g}"


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0]
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, count)
    step = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= step * factor:
            step *= factor
            break
    start = math.floor(lo / step) * step
    ticks, value = [], start
    while True:
        ticks.append(round(value, 12))
        if value >= hi - step * 1e-9:
            return ticks
        value += step


def _svg(width: int, height: int, body: list[str], title: str) -> str:
    return (f"<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 {width} {height}' width='{width}' height='{height}' "
            f"role='img' aria-label='{escape(title)}' {FONT}><title>{escape(title)}</title>"
            f"<rect width='{width}' height='{height}' fill='white'/>{''.join(body)}</svg>")


BOLD_CHAR_PX, CHAR_PX, LINE_PX = 7.8, 7.0, 16  # generous widths of DejaVu Sans at 12 px: text is wrapped, never cut


def _wrap(text: str, width_px: float, char_px: float = BOLD_CHAR_PX) -> list[str]:
    """``text`` in lines that fit ``width_px``, broken at spaces (a word longer than a line stays whole)."""
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width_px / char_px:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines or [""]


def _title(title: str, x: float, width_px: float, first_baseline: float = 16) -> tuple[str, float]:
    """The plot's title wrapped to ``width_px``: (svg text, the baseline of its last line)."""
    lines = _wrap(title, width_px)
    spans = "".join(f"<tspan x='{x}' dy='{0 if i == 0 else LINE_PX}'>{escape(line)}</tspan>" for i, line in enumerate(lines))
    return f"<text x='{x}' y='{first_baseline}' font-weight='bold'>{spans}</text>", first_baseline + LINE_PX * (len(lines) - 1)


def _message(title: str, text: str, width: int = 520, height: int = 80) -> str:
    return _svg(width, height, [f"<text x='10' y='20' font-weight='bold'>{escape(title)}</text>",
                                f"<text x='10' y='48' fill='#666'>{escape(text)}</text>"], title)


def _jitter(index: int) -> float:
    """Deterministic spread in [-0.5, 0.5) (golden-ratio sequence): the same data gives the same plot."""
    return ((index * 0.6180339887) % 1.0) - 0.5


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


LOG_SPAN = 30.0  # a metric whose positive values span this factor (1.5 decades) or more gets a log axis


def log_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 ticks per decade (powers of ten only beyond four decades) covering [lo, hi], lo > 0."""
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    steps = (1,) if last - first > 4 else (1, 2, 5)
    ticks = [m * 10.0 ** d for d in range(first, last + 1) for m in steps]
    inside = [t for t in ticks if lo <= t <= hi]
    below, above = [t for t in ticks if t < lo], [t for t in ticks if t > hi]
    return ([below[-1]] if below else []) + inside + ([above[0]] if above else [])


def strip_plot(groups: dict[str, list[Point]], title: str, y_label: str, threshold: float | None = None,
               threshold_label: str = "", width: int = 520, height: int = 300, x_label: str = "") -> str:
    """One column per group: every unit as a dot (flagged ones red), box of the quartiles, median line.

    A metric spanning decades (positive values over a factor of 30) is drawn on a log axis, said in the
    axis title; values <= 0 then sit on the bottom edge as open triangles, counted in a note."""
    values = [p.value for points in groups.values() for p in points if math.isfinite(p.value)]
    if not values:
        return _message(title, "no values to plot")
    extent = values + ([threshold] if threshold is not None else [])
    positive = [v for v in extent if v > 0]
    log = len(positive) >= 2 and max(positive) / min(positive) >= LOG_SPAN
    off_axis = sum(1 for v in values if log and v <= 0)
    left, right, bottom = 56, 10, 60 if x_label else 46
    heading, title_end = _title(title, left, width - left - right)
    top = title_end + (24 if off_axis else 12)
    plot_h = height - 28 - bottom  # the plot keeps its size; a longer title makes the figure taller
    height = top + plot_h + bottom
    plot_w = width - left - right
    if log:
        ticks = log_ticks(min(positive), max(positive))
        y0, y1 = math.log10(ticks[0]), math.log10(ticks[-1])

        def y(v: float) -> float:
            return top + plot_h * (1 - (math.log10(v) - y0) / (y1 - y0)) if v > 0 else top + plot_h
    else:
        lo, hi = min(extent), max(extent)
        ticks = nice_ticks(min(lo, 0.0) if lo >= 0 else lo, hi)
        y0, y1 = ticks[0], ticks[-1] if ticks[-1] > ticks[0] else ticks[0] + 1

        def y(v: float) -> float:
            return top + plot_h * (1 - (v - y0) / (y1 - y0))

    axis = f"{y_label} (log scale)" if log else y_label
    body = [heading,
            f"<text transform='translate(12,{top + plot_h / 2}) rotate(-90)' text-anchor='middle'>{escape(axis)}</text>"]
    if x_label:
        body.append(f"<text x='{left + plot_w / 2}' y='{height - 6}' text-anchor='middle'>{escape(x_label)}</text>")
    if off_axis:
        body.append(f"<text x='{width - right}' y='{top - 6}' text-anchor='end' fill='#555' class='off-axis'>"
                    f"▽ {off_axis} value(s) ≤ 0, on the bottom edge</text>")
    for tick in ticks:
        body.append(f"<line x1='{left}' x2='{width - right}' y1='{y(tick):.1f}' y2='{y(tick):.1f}' stroke='#eee'/>"
                    f"<text x='{left - 4}' y='{y(tick) + 4:.1f}' text-anchor='end' fill='#555'>{_fmt(tick)}</text>")
    column = plot_w / max(1, len(groups))
    for index, (name, points) in enumerate(groups.items()):
        cx = left + column * (index + 0.5)
        colour = PALETTE[index % len(PALETTE)]
        finite = [p for p in points if math.isfinite(p.value)]
        if finite:
            q1, med, q3 = (_quantile([p.value for p in finite], q) for q in (0.25, 0.5, 0.75))
            half = min(40.0, column * 0.35)
            body.append(f"<rect x='{cx - half:.1f}' y='{y(q3):.1f}' width='{2 * half:.1f}' height='{max(1.0, y(q1) - y(q3)):.1f}' "
                        f"fill='{colour}' fill-opacity='0.15' stroke='{colour}'/>"
                        f"<line x1='{cx - half:.1f}' x2='{cx + half:.1f}' y1='{y(med):.1f}' y2='{y(med):.1f}' stroke='{colour}' stroke-width='2'>"
                        f"<title>{escape(name)}: median {_fmt(med)}</title></line>")
        spread = min(60.0, column * 0.6)
        for i, p in enumerate(finite):
            fill = FLAGGED if p.flagged else colour
            tip = f"<title>{escape(p.unit_id)}: {_fmt(p.value)}{' (flagged)' if p.flagged else ''}</title>"
            px, py = cx + _jitter(i) * spread, y(p.value)
            if log and p.value <= 0:
                body.append(f"<path d='M{px - 4:.1f},{py - 6:.1f}L{px + 4:.1f},{py - 6:.1f}L{px:.1f},{py:.1f}Z' fill='none' "
                            f"stroke='{fill}'>{tip}</path>")
            else:
                body.append(f"<circle cx='{px:.1f}' cy='{py:.1f}' r='{3 if p.flagged else 2.2}' fill='{fill}' fill-opacity='0.8'>{tip}</circle>")
        label = name if len(name) <= 18 else name[:17] + "…"
        body.append(f"<text x='{cx:.1f}' y='{height - bottom + 16}' text-anchor='middle'>{escape(label)}<title>{escape(name)}</title></text>"
                    f"<text x='{cx:.1f}' y='{height - bottom + 30}' text-anchor='middle' fill='#777'>n={len(finite)}</text>")
    if threshold is not None:
        body.append(f"<line x1='{left}' x2='{width - right}' y1='{y(threshold):.1f}' y2='{y(threshold):.1f}' stroke='{FLAGGED}' "
                    f"stroke-width='1.5' stroke-dasharray='4 3'/><text x='{width - right}' y='{y(threshold) - 3:.1f}' text-anchor='end' fill='{FLAGGED}'>"
                    f"{escape(threshold_label)}</text>")
    return _svg(width, height, body, title)


def histogram_plot(groups: dict[str, list[float]], title: str, x_label: str, bins: int = 30,
                   width: int = 520, height: int = 300) -> str:
    """Overlaid step histograms, one per group, each normalised to its own total (fraction of objects)."""
    import numpy as np

    values = [v for vs in groups.values() for v in vs if math.isfinite(v)]
    if not values:
        return _message(title, "no objects to plot")
    lo, hi = float(np.percentile(values, 0.5)), float(np.percentile(values, 99.5))
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    # outliers beyond the 0.5-99.5 % range are left out of the bins and counted on the plot, never piled into the edges
    below, above = sum(v < lo for v in values), sum(v > hi for v in values)
    fractions = {name: np.histogram([v for v in vs if lo <= v <= hi], edges)[0] / max(1, len(vs)) for name, vs in groups.items() if vs}
    top_value = max(float(f.max()) for f in fractions.values()) or 1.0
    left, right, bottom = 56, 10, 40
    heading, title_end = _title(title, left, width - left - right)
    top = title_end + (28 if below or above else 12)  # the outlier note has a line of its own under the title
    plot_h = height - 28 - bottom
    height = top + plot_h + bottom
    plot_w = width - left - right

    def x(v: float) -> float:
        return left + plot_w * (v - lo) / (hi - lo)

    def y(v: float) -> float:
        return top + plot_h * (1 - v / top_value)

    body = [heading,
            f"<text x='{left + plot_w / 2}' y='{height - 6}' text-anchor='middle'>{escape(x_label)}</text>",
            f"<text transform='translate(12,{top + plot_h / 2}) rotate(-90)' text-anchor='middle'>fraction of objects</text>"]
    for tick in nice_ticks(lo, hi):
        if lo <= tick <= hi:
            body.append(f"<line x1='{x(tick):.1f}' x2='{x(tick):.1f}' y1='{top}' y2='{top + plot_h}' stroke='#eee'/>"
                        f"<text x='{x(tick):.1f}' y='{top + plot_h + 14}' text-anchor='middle' fill='#555'>{_fmt(tick)}</text>")
    if below or above:
        body.append(f"<text x='{left + plot_w / 2}' y='{top - 6}' text-anchor='middle' fill='#555' class='outliers'>"
                    f"beyond the axis: {below} below {_fmt(lo)}, {above} above {_fmt(hi)}</text>")
    for tick in nice_ticks(0, top_value, 4):
        if tick <= top_value:
            body.append(f"<text x='{left - 4}' y='{y(tick) + 4:.1f}' text-anchor='end' fill='#555'>{_fmt(tick)}</text>")
    for index, (name, fraction) in enumerate(fractions.items()):
        colour = PALETTE[index % len(PALETTE)]
        path = [f"M{x(edges[0]):.1f},{y(0):.1f}"]
        for i, f in enumerate(fraction):
            path.append(f"L{x(edges[i]):.1f},{y(f):.1f}L{x(edges[i + 1]):.1f},{y(f):.1f}")
        path.append(f"L{x(edges[-1]):.1f},{y(0):.1f}")
        body.append(f"<path d='{''.join(path)}' fill='none' stroke='{colour}' stroke-width='1.6'><title>{escape(name)}</title></path>"
                    f"<rect x='{width - right - 150}' y='{top + 14 * index}' width='10' height='10' fill='{colour}'/>"
                    f"<text x='{width - right - 136}' y='{top + 9 + 14 * index}'>{escape(name[:20])} (n={len(groups[name])})</text>")
    return _svg(width, height, body, title)


WELL = re.compile(r"^\s*([A-Za-z]{1,2})\s*[-_]?\s*0*(\d{1,3})\s*$")


def parse_well(text: str) -> tuple[int, int] | None:
    """'A01', 'a1', 'AF48', 'B-03' -> (row index from 0, column from 1); None if it is not a well name."""
    match = WELL.match(text or "")
    if not match:
        return None
    letters, column = match.group(1).upper(), int(match.group(2))
    row = 0
    for letter in letters:
        row = row * 26 + (ord(letter) - 64)
    return row - 1, column


def row_name(row: int) -> str:
    return chr(65 + row) if row < 26 else chr(64 + row // 26) + chr(65 + row % 26)


PLATE_FORMATS = [(8, 12), (16, 24), (32, 48)]  # 96, 384 and 1536 wells


def plate_format(positions: Iterable[tuple[int, int]]) -> tuple[int, int]:
    """The smallest standard plate (rows, columns) that holds every (row, column) position."""
    positions = list(positions)
    for rows, cols in PLATE_FORMATS:
        if all(r < rows and c <= cols for r, c in positions):
            return rows, cols
    return max(r for r, _ in positions) + 1, max(c for _, c in positions)


def plate_map(wells: dict[tuple[str, str], list[tuple[float | None, str]]], title: str, value_label: str,
              max_width: int = 1400) -> str:
    """Heat map per plate, plates side by side: colour = mean value of the well's units; red outline = a unit of
    the well failed review, red cross = a file of the well could not be read or processed (verdict
    ``failed_input``), dashed orange outline = a unit to revisit with a warning; light grey = no image.
    ``wells`` maps (plate, well name) to [(value, verdict), ...]."""
    parsed: dict[str, dict[tuple[int, int], tuple[str, list[tuple[float | None, str]]]]] = {}
    for (plate, well), members in wells.items():
        position = parse_well(well)
        if position is not None:
            parsed.setdefault(plate, {})[position] = (well, members)
    if not parsed:
        return _message(title, "no well names like A01 in the sample sheet")
    means = [sum(v for v, _ in m if v is not None) / n for wl in parsed.values() for _, m in wl.values()
             if (n := sum(v is not None for v, _ in m))]
    vmin, vmax = (min(means), max(means)) if means else (0.0, 1.0)
    n_rows, n_cols = plate_format(pos for wl in parsed.values() for pos in wl)
    cell = 18 if n_cols <= 12 else 14 if n_cols <= 24 else 8
    left, head, gap = 24, 34, 24
    block_w, block_h = left + n_cols * cell + gap, head + n_rows * cell + gap
    per_row = max(1, min(len(parsed), max_width // block_w))
    blocks = []
    for index, (plate, plate_wells) in enumerate(sorted(parsed.items())):
        ox, oy = (index % per_row) * block_w, 22 + (index // per_row) * block_h
        top = oy + head
        blocks.append(f"<text x='{ox + left}' y='{oy + 14}' font-weight='bold'>plate {escape(plate)}</text>")
        for c in range(1, n_cols + 1, 1 if n_cols <= 24 else 4):
            blocks.append(f"<text x='{ox + left + (c - 0.5) * cell:.1f}' y='{top - 4}' text-anchor='middle' fill='#555' "
                          f"font-size='8'>{c}</text>")
        for r in range(n_rows):
            if n_rows <= 16 or r % 4 == 0:
                blocks.append(f"<text x='{ox + left - 4}' y='{top + (r + 0.75) * cell:.1f}' text-anchor='end' fill='#555' "
                              f"font-size='8'>{row_name(r)}</text>")
            for c in range(1, n_cols + 1):
                x0, y0 = ox + left + (c - 1) * cell, top + r * cell
                if (r, c) not in plate_wells:
                    blocks.append(f"<rect x='{x0 + 1}' y='{y0 + 1}' width='{cell - 2}' height='{cell - 2}' fill='#f4f4f4' stroke='#ddd'/>")
                    continue
                name, members = plate_wells[(r, c)]
                values = [v for v, _ in members if v is not None]
                mean = sum(values) / len(values) if values else None
                verdicts = Counter(verdict for _, verdict in members)
                failed, unreadable, warned = verdicts["fail"], verdicts["failed_input"], verdicts["warn"]
                fill = _sequential((mean - vmin) / (vmax - vmin) if vmax > vmin else 0.5) if mean is not None else "#ccc"
                stroke = (f"stroke='{FLAGGED}' stroke-width='2.5'" if failed or unreadable else
                          f"stroke='{WARNED}' stroke-width='2.5' stroke-dasharray='3,2'" if warned else "stroke='#888'")
                tip = (f"{plate} {name}: {value_label} {_fmt(mean) if mean is not None else 'n/a'} ({len(members)} unit(s), "
                       f"{failed} failed review, {warned} warned" + (f", {unreadable} file(s) not read or processed" if unreadable else "") + ")")
                blocks.append(f"<rect x='{x0 + 1}' y='{y0 + 1}' width='{cell - 2}' height='{cell - 2}' fill='{fill}' {stroke}>"
                              f"<title>{escape(tip)}</title></rect>")
                if unreadable:
                    blocks.append(f"<path d='M{x0 + 3} {y0 + 3}L{x0 + cell - 3} {y0 + cell - 3}M{x0 + cell - 3} {y0 + 3}L{x0 + 3} {y0 + cell - 3}' "
                                  f"stroke='{FLAGGED}' stroke-width='2' class='failed-input'><title>{escape(tip)}</title></path>")
    legend_y = 22 + -(-len(parsed) // per_row) * block_h - gap + 8
    notes = [(FLAGGED, "red outline: a unit failed review"), (FLAGGED, "red cross: a file not read or processed"),
             (WARNED, "dashed orange outline: a unit warned (see acquisition actions)")]
    scale = f"{value_label} {_fmt(vmin)}"
    width = int(max(per_row * block_w, 320, BOLD_CHAR_PX * len(title) + left + 10,
                    CHAR_PX * max(len(text) for _, text in notes) + left + 10, left + 290 + CHAR_PX * len(_fmt(vmax))))
    legend = [f"<text x='{left}' y='{legend_y + 12}'>{escape(scale)}</text>"]
    start = left + max(150, CHAR_PX * len(scale) + 8)
    for i in range(10):
        legend.append(f"<rect x='{start + i * 12}' y='{legend_y + 2}' width='12' height='12' fill='{_sequential(i / 9)}'/>")
    legend.append(f"<text x='{start + 126}' y='{legend_y + 12}'>{_fmt(vmax)}</text>")
    for index, (colour, text) in enumerate(notes):
        legend.append(f"<text x='{left}' y='{legend_y + 30 + LINE_PX * index}' fill='{colour}'>{escape(text)}</text>")
    width = int(max(width, start + 130 + CHAR_PX * len(_fmt(vmax))))
    body = [f"<text x='{left}' y='14' font-weight='bold'>{escape(title)}</text>", *blocks, *legend]
    return _svg(width, legend_y + 30 + LINE_PX * len(notes), body, title)


def _sequential(t: float) -> str:
    """Light yellow to dark blue (viridis-like), t in [0, 1]."""
    stops = [(253, 231, 37), (94, 201, 98), (33, 145, 140), (59, 82, 139), (68, 1, 84)]
    t = min(1.0, max(0.0, t)) * (len(stops) - 1)
    i = min(int(t), len(stops) - 2)
    a, b, f = stops[i], stops[i + 1], t - i
    return "#" + "".join(f"{round(a[k] + (b[k] - a[k]) * f):02x}" for k in range(3))


def finite_floats(values: Iterable[str | float | None]) -> list[float]:
    out = []
    for value in values:
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out.append(number)
    return out


# --- the dataset's plots ------------------------------------------------------------------------

# (file stem, units.csv column, axis label, issue type that flags a unit, threshold key in review.thresholds)
QUALITY_PANELS = [
    ("quality_snr", "snr", "signal-to-noise ratio", "low_signal", "snr_warn"),
    ("quality_focus", "blur", "blur (0 sharp, 1 blurred)", "out_of_focus", "blur_warn"),
    ("quality_saturation", "percent_saturated", "% pixels saturated", "saturated", "saturated_percent_warn"),
    ("quality_foreground", "foreground_fraction", "foreground fraction", "empty_field", "empty_foreground_fraction"),
]
PLOT_NAMES = ["counts_by_condition", "diameters_by_condition", *(p[0] for p in QUALITY_PANELS), "plate_map"]
PLOT_SUBCATEGORIES = {"counts_by_condition": "Counts and sizes", "diameters_by_condition": "Counts and sizes",
                      **{p[0]: "Quality metrics" for p in QUALITY_PANELS}, "plate_map": "Plate map"}


def _points(members: list[dict[str, str]], column: str, flagged) -> list[Point]:
    out = []
    for unit in members:
        values = finite_floats([unit.get(column)])
        if values:
            out.append(Point(values[0], unit["unit_id"], flagged(unit)))
    return out


def dataset_plots(units: list[dict[str, str]], diameters: dict[str, list[float]], condition_column: str,
                  thresholds: dict[str, float], plate_column: str = "plate", well_column: str = "well",
                  length_unit: str = "µm", failures: list[dict[str, str]] | None = None,
                  usable_verdicts: Sequence[str] | None = None) -> dict[str, str]:
    """All report plots as {name: svg}: counts and nucleus diameters per condition over the usable fields
    (verdict in ``usable_verdicts``), quality metrics of every field with the flagged units in red and the warn
    threshold dashed, and a plate map when the sample sheet names wells."""
    from .tables import USABLE_VERDICTS, group_by_condition, usable

    usable_verdicts = usable_verdicts or USABLE_VERDICTS
    groups = group_by_condition(units, condition_column)
    kept = group_by_condition([u for u in units if usable(u, usable_verdicts)], condition_column)
    rule = f"usable fields only: verdict {', '.join(usable_verdicts)}; {len(units) - sum(map(len, kept.values()))} excluded"
    plots = {
        "counts_by_condition": strip_plot(
            {c: _points(m, "object_count", lambda u: u.get("verdict") in ("warn", "fail")) for c, m in kept.items()},
            f"Objects per image by {condition_column} ({rule}; red: warn)", "objects per image", x_label=condition_column),
        "diameters_by_condition": histogram_plot(
            {c: [d for u in m for d in diameters.get(u["unit_id"], [])] for c, m in kept.items()},
            f"Object diameters by {condition_column} ({rule})", f"equivalent diameter ({length_unit})"),
    }
    for name, column, label, issue, key in QUALITY_PANELS:
        threshold = thresholds.get(key)
        plots[name] = strip_plot(
            {c: _points(m, column, lambda u, issue=issue: issue in (u.get("issues") or "").split(";")) for c, m in groups.items()},
            f"{label} (red: reviewed as {issue})", label, threshold, f"warn threshold {_fmt(threshold)}" if threshold is not None else "",
            x_label=condition_column)
    wells: dict[tuple[str, str], list[tuple[float | None, str]]] = {}
    for unit in units:
        well = unit.get(f"meta_{well_column}") or ""
        if well:
            count = finite_floats([unit.get("object_count")])
            wells.setdefault((unit.get(f"meta_{plate_column}") or "1", well), []).append(
                (count[0] if count else None, "failed_input" if unit.get("status") == "failed" else unit.get("verdict") or ""))
    for failure in failures or []:  # files that never became units: their well is marked, never "no image"
        well = failure.get(f"meta_{well_column}") or ""
        if well and failure.get("stage") == "import":
            wells.setdefault((failure.get(f"meta_{plate_column}") or "1", well), []).append((None, "failed_input"))
    plots["plate_map"] = plate_map(wells, f"Plate map: mean objects per image (column '{well_column}')", "objects")
    return plots


def write_plots(tables_dir: str | Path, out_dir: str | Path, condition_column: str, thresholds: dict[str, float],
                plate_column: str = "plate", well_column: str = "well",
                usable_verdicts: Sequence[str] | None = None) -> list[Path]:
    """Read units.csv and objects.csv, write ``<name>.svg`` for every plot in :data:`PLOT_NAMES`."""
    import csv
    from dataclasses import asdict

    from ...core.settings import ReviewThresholds
    from ...core.records import read_csv

    tables = Path(tables_dir)
    units = read_csv(tables / "units.csv")
    failures = read_csv(tables / "failures.csv") if (tables / "failures.csv").is_file() else []
    diameters: dict[str, list[float]] = {}
    pixels: dict[str, list[float]] = {}
    with open(tables / "objects.csv", newline="", encoding="utf-8") as handle:  # streamed: one row per object
        for row in csv.DictReader(handle):
            if row["equivalent_diameter_um"] not in ("", None):  # uncalibrated units have sizes in pixels only
                diameters.setdefault(row["unit_id"], []).append(float(row["equivalent_diameter_um"]))
            elif row.get("equivalent_diameter_px") not in ("", None):
                pixels.setdefault(row["unit_id"], []).append(float(row["equivalent_diameter_px"]))
    unit = "µm"
    if not diameters and pixels:  # nothing calibrated: show pixels, and say so (never mix the two)
        diameters, unit = pixels, "px, no pixel size"
    limits = asdict(ReviewThresholds.from_config(thresholds))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, svg in dataset_plots(units, diameters, condition_column, limits, plate_column, well_column, unit, failures,
                                   usable_verdicts).items():
        (out / f"{name}.svg").write_text(svg, encoding="utf-8")
        written.append(out / f"{name}.svg")
    return written


def run_plots(*, units: str, objects: str, condition_column: str, thresholds: dict[str, float], plate_column: str,
              well_column: str, usable_verdicts: list[str], **plots: str) -> None:
    """Rule ``plots``: the report's SVG plots from the tables (``plots``: the output file of each name in PLOT_NAMES)."""
    import sys

    out = Path(next(iter(plots.values()))).parent
    written = write_plots(Path(units).parent, out, condition_column, thresholds, plate_column, well_column, usable_verdicts)
    print(f"plots: {len(written)} SVG file(s) in {out}", file=sys.stderr)
