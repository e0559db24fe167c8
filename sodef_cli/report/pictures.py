"""Pictures: the robustness-vs-eps chart, the bars of the attack cascade and the eigenvalue histograms, drawn
as plain text lines (terminal and Markdown) and as inline SVG (HTML). Pure functions of a block."""

from __future__ import annotations

import html
import math

from .blocks import Bars, Chart, Hist, HistSeries
from .format import pct, pct_ci

__all__ = [
    "BAR_GLYPHS",
    "adversarial_grid_png",
    "bar_lines",
    "chart_lines",
    "hist_lines",
    "svg_bars",
    "svg_chart",
    "svg_hist",
]

_EIGHTHS = " ▏▎▍▌▋▊▉"
_LEVELS = " ▁▂▃▄▅▆▇█"
BAR_GLYPHS = _EIGHTHS[1:] + "█" + _LEVELS[1:]  # the characters a terminal colours in bars and histograms
_SVG_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")


# ----------------------------------------------------------------------------------------------------
# text


def chart_lines(block: Chart, width: int = 72, height: int = 9) -> list[str]:
    """A plain-text plot of the chart block's series (y: accuracy, x: eps) within ``width`` characters."""
    xs = [float(x) for x in block["xs"]]
    series = block["series"]
    values = [y for s in series for y in s["ys"] if y is not None]
    top = min(1.0, max(0.1, math.ceil(max(values, default=0.0) * 10 - 1e-9) / 10))
    ticks = {r: 100 * top * (height - 1 - r) / (height - 1) for r in range(0, height, 2)}
    decimals = 0 if all(abs(v - round(v)) < 1e-9 for v in ticks.values()) else 1
    labels = {r: f"{v:.{decimals}f}%" for r, v in ticks.items()}
    lab_w = max(len(v) for v in labels.values())
    plot_w = max(16, width - lab_w - 2)
    x0, x1 = min(xs), max(xs)

    def col(x: float) -> int:
        return plot_w // 2 if x1 == x0 else round((x - x0) / (x1 - x0) * (plot_w - 1))

    def row(y: float) -> int:
        return height - 1 - round(max(0.0, min(y, top)) / top * (height - 1))

    grid = [[" "] * plot_w for _ in range(height)]
    for s in series:  # lines first, so that markers win
        for (xa, ya), (xb, yb) in zip(zip(xs, s["ys"]), zip(xs[1:], s["ys"][1:])):
            if ya is None or yb is None:
                continue
            ca, cb = col(xa), col(xb)
            for c in range(ca + 1, cb):
                r = row(ya + (yb - ya) * (c - ca) / (cb - ca))
                if grid[r][c] == " ":
                    grid[r][c] = "."
    overlap = False
    for s in series:
        for x, y in zip(xs, s["ys"]):
            if y is None:
                continue
            r, c = row(y), col(x)
            if grid[r][c] not in (" ", ".", s["marker"]):
                grid[r][c] = "*"
                overlap = True
            elif grid[r][c] != "*":
                grid[r][c] = s["marker"]
    lines = []
    for r in range(height):
        label = labels.get(r, "").rjust(lab_w)
        lines.append(f"{label} |" + "".join(grid[r]).rstrip())
    lines.append(" " * lab_w + " +" + "-" * plot_w)
    xl = [" "] * plot_w
    last_end = -1
    for x, lab in zip(xs, block["xlabels"]):
        start = min(max(0, col(x) - len(lab) // 2), plot_w - len(lab))
        if start <= last_end:
            continue
        xl[start : start + len(lab)] = list(lab)
        last_end = start + len(lab)
    lines.append(" " * (lab_w + 2) + "".join(xl).rstrip())
    items = [f"x: {block.get('xname', 'eps')}, y: {block.get('yname', 'worst-case accuracy')}"] + [
        f"{s['marker']} = {s['name']}" for s in series
    ]
    items += ["* = overlapping points"] if overlap else []
    line = ""
    for item in items:  # the legend, wrapped to the width
        if line and lab_w + 2 + len(line) + 3 + len(item) > width:
            lines.append(" " * (lab_w + 2) + line)
            line = ""
        line = f"{line}   {item}" if line else item
    lines.append(" " * (lab_w + 2) + line)
    return lines


def _ubar(v: float | None, width: int) -> str:
    if v is None:
        return ""
    n = max(0, min(width * 8, round(float(v) * width * 8)))
    return "█" * (n // 8) + (_EIGHTHS[n % 8] if n % 8 else "")


def bar_lines(block: Bars, width: int = 72) -> list[str]:
    """The bars block as text: one group per model, one bar per figure (0 to 100% over the bar width)."""
    lab_w = max((len(b["label"]) for g in block["groups"] for b in g["bars"]), default=5)
    bar_w = max(10, min(40, width - lab_w - 4 - 24))
    lines = []
    for g in block["groups"]:
        lines.append(g["name"])
        for b in g["bars"]:
            lines.append(
                f"  {b['label']:<{lab_w}} {_ubar(b['value'], bar_w):<{bar_w}} {pct_ci(b['value'], b.get('ci'))}".rstrip()
            )
    return lines


def _hist_columns(s: HistSeries, x0: float, x1: float, cols: int) -> list[float]:
    counts = s["counts"]
    nb = len(counts)
    acc = [0.0] * cols
    for i, c in enumerate(counts):
        centre = s["lo"] + (i + 0.5) * (s["hi"] - s["lo"]) / nb
        j = cols // 2 if x1 == x0 else min(cols - 1, max(0, int((centre - x0) / (x1 - x0) * cols)))
        acc[j] += c
    return acc


def hist_lines(block: Hist, width: int = 72) -> list[str]:
    """The histogram block as text: one row of unicode levels per series over a shared x axis."""
    series = [s for s in block["series"] if s.get("counts")]
    if not series:
        return ["(no histogram stored)"]
    name_w = max(len(s["name"]) for s in series)
    cols = max(16, min(60, width - name_w - 2))
    x0, x1 = min(s["lo"] for s in series), max(s["hi"] for s in series)
    lines = []
    for s in series:
        acc = _hist_columns(s, x0, x1, cols)
        top = max(acc) or 1.0
        row = "".join(_LEVELS[0 if v <= 0 else max(1, round(v / top * 8))] for v in acc)
        lines.append(f"{s['name']:<{name_w}}  {row}".rstrip())
    axis = ["─"] * cols
    zero = None
    if x0 < 0 < x1:
        zero = min(cols - 1, int(-x0 / (x1 - x0) * cols))
        axis[zero] = "┼"
    lines.append(" " * (name_w + 2) + "".join(axis))
    left, right = f"{x0:.3g}", f"{x1:.3g}"
    lab = [" "] * cols
    lab[: len(left)] = list(left)
    lab[cols - len(right) :] = list(right)
    if zero is not None and len(left) < zero - 1 and zero + 2 < cols - len(right):
        lab[zero] = "0"
    lines.append(" " * (name_w + 2) + "".join(lab).rstrip())
    lines.append(" " * (name_w + 2) + f"x: {block.get('xname', '')}; height: share of points (per row)")
    return lines


# ----------------------------------------------------------------------------------------------------
# SVG


def svg_chart(bl: Chart) -> str:
    w, h, ml, mr, mt, mb = 560, 260, 48, 16, 12, 56
    xs = [float(x) for x in bl["xs"]]
    values = [y for s in bl["series"] for y in s["ys"] if y is not None]
    top = min(1.0, max(0.1, math.ceil(max(values, default=0.0) * 10 - 1e-9) / 10))
    x0, x1 = min(xs), max(xs)
    pw, ph = w - ml - mr, h - mt - mb
    px = lambda x: ml + (pw / 2 if x1 == x0 else (x - x0) / (x1 - x0) * pw)
    py = lambda y: mt + ph - min(y, top) / top * ph
    e = html.escape
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="{e(bl["title"])}">'
    ]
    for i in range(6):
        v = top * i / 5
        y = py(v)
        out.append(f'<line x1="{ml}" y1="{y:.1f}" x2="{w - mr}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{ml - 6}" y="{y + 4:.1f}" text-anchor="end">{100 * v:.0f}%</text>')
    for x, lab in zip(xs, bl["xlabels"]):
        out.append(f'<text x="{px(x):.1f}" y="{mt + ph + 16}" text-anchor="middle">{e(lab)}</text>')
    out.append(f'<line x1="{ml}" y1="{mt + ph}" x2="{w - mr}" y2="{mt + ph}" stroke="#999"/>')
    out.append(f'<text x="{ml + pw / 2:.1f}" y="{mt + ph + 32}" text-anchor="middle">{e(bl.get("xname", ""))}</text>')
    lx = ml
    for i, s in enumerate(bl["series"]):
        c = _SVG_COLORS[i % len(_SVG_COLORS)]
        seg: list[str] = []
        for x, y in zip(xs, s["ys"]):
            if y is None:
                if len(seg) > 1:
                    out.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="{" ".join(seg)}"/>')
                seg = []
                continue
            seg.append(f"{px(x):.1f},{py(y):.1f}")
            out.append(
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="{c}"><title>{e(s["name"])}: {pct(y)}</title></circle>'
            )
        if len(seg) > 1:
            out.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="{" ".join(seg)}"/>')
        out.append(
            f'<rect x="{lx}" y="{h - 14}" width="10" height="10" fill="{c}"/><text x="{lx + 14}" y="{h - 5}">{e(s["name"])}</text>'
        )
        lx += 24 + 7 * len(s["name"])
    out.append("</svg>")
    return "\n".join(out)


def svg_bars(bl: Bars) -> str:
    """Horizontal bars per model (0-100%), the 95% interval as a whisker."""
    e = html.escape
    lab_w = 8 + 7 * max((len(b["label"]) for g in bl["groups"] for b in g["bars"]), default=6)
    bar_w, row_h = 300, 18
    w = lab_w + bar_w + 150
    rows = sum(len(g["bars"]) + 1 for g in bl["groups"])
    h = rows * row_h + 24
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="{e(bl["title"])}">'
    ]
    y = 4
    for i, g in enumerate(bl["groups"]):
        c = _SVG_COLORS[i % len(_SVG_COLORS)]
        out.append(f'<text x="0" y="{y + 13}" font-weight="bold">{e(g["name"])}</text>')
        y += row_h
        for b in g["bars"]:
            v = b["value"]
            out.append(f'<text x="{lab_w - 6}" y="{y + 12}" text-anchor="end">{e(b["label"])}</text>')
            out.append(f'<rect x="{lab_w}" y="{y + 2}" width="{bar_w}" height="{row_h - 5}" fill="#f0f0f0"/>')
            if v is not None:
                out.append(
                    f'<rect class="bar" x="{lab_w}" y="{y + 2}" width="{bar_w * float(v):.1f}" height="{row_h - 5}" fill="{c}">'
                    f"<title>{e(g['name'])}, {e(b['label'])}: {e(pct_ci(v, b.get('ci')))}</title></rect>"
                )
                if b.get("ci"):
                    lo, hi = (lab_w + bar_w * float(q) for q in b["ci"])
                    ym = y + 2 + (row_h - 5) / 2
                    out.append(
                        f'<line x1="{lo:.1f}" y1="{ym:.1f}" x2="{hi:.1f}" y2="{ym:.1f}" stroke="#222" stroke-width="1.2"/>'
                        f'<line x1="{lo:.1f}" y1="{ym - 4:.1f}" x2="{lo:.1f}" y2="{ym + 4:.1f}" stroke="#222"/>'
                        f'<line x1="{hi:.1f}" y1="{ym - 4:.1f}" x2="{hi:.1f}" y2="{ym + 4:.1f}" stroke="#222"/>'
                    )
            out.append(f'<text x="{lab_w + bar_w + 6}" y="{y + 12}">{e(pct_ci(v, b.get("ci")))}</text>')
            y += row_h
    for q in (0, 0.5, 1.0):
        x = lab_w + bar_w * q
        out.append(f'<text x="{x:.1f}" y="{h - 4}" text-anchor="middle" fill="#777">{100 * q:.0f}%</text>')
    out.append("</svg>")
    return "\n".join(out)


def svg_hist(bl: Hist) -> str:
    """Histograms of several series over a shared x axis (bars at their real bin edges), zero marked."""
    e = html.escape
    series = [s for s in bl["series"] if s.get("counts")]
    w, h, ml, mr, mt, mb = 560, 220, 40, 16, 12, 52
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="{e(bl["title"])}">'
    ]
    if not series:
        out.append(f'<text x="{ml}" y="{h / 2}">no histogram stored</text></svg>')
        return "\n".join(out)
    x0, x1 = min(s["lo"] for s in series), max(s["hi"] for s in series)
    if x1 <= x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    pw, ph = w - ml - mr, h - mt - mb
    px = lambda x: ml + (x - x0) / (x1 - x0) * pw
    top = max(max(c / max(1, sum(s["counts"])) for c in s["counts"]) for s in series) or 1.0
    for i, s in enumerate(series):
        c = _SVG_COLORS[i % len(_SVG_COLORS)]
        total = max(1, sum(s["counts"]))
        nb = len(s["counts"])
        bw = (s["hi"] - s["lo"]) / nb
        for j, k in enumerate(s["counts"]):
            if not k:
                continue
            a, b = px(s["lo"] + j * bw), px(s["lo"] + (j + 1) * bw)
            hh = k / total / top * ph
            out.append(
                f'<rect class="bin" x="{a:.1f}" y="{mt + ph - hh:.1f}" width="{max(1.0, b - a):.1f}" height="{hh:.1f}" '
                f'fill="{c}" fill-opacity="0.55"><title>{e(s["name"])}: {k} of {total}</title></rect>'
            )
        out.append(
            f'<rect x="{ml + 150 * i}" y="{h - 14}" width="10" height="10" fill="{c}" fill-opacity="0.55"/>'
            f'<text x="{ml + 150 * i + 14}" y="{h - 5}">{e(s["name"])}</text>'
        )
    out.append(f'<line x1="{ml}" y1="{mt + ph}" x2="{w - mr}" y2="{mt + ph}" stroke="#999"/>')
    ticks = [x0, x1] + ([0.0] if x0 < 0 < x1 else [])
    for t in ticks:
        out.append(f'<text x="{px(t):.1f}" y="{mt + ph + 14}" text-anchor="middle">{t:.3g}</text>')
    if x0 < 0 < x1:
        out.append(
            f'<line x1="{px(0):.1f}" y1="{mt}" x2="{px(0):.1f}" y2="{mt + ph}" stroke="#444" stroke-dasharray="4 3"/>'
        )
    out.append(f'<text x="{ml + pw / 2:.1f}" y="{mt + ph + 30}" text-anchor="middle">{e(bl.get("xname", ""))}</text>')
    out.append("</svg>")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------------
# raster: adversarial examples beside their clean images (PNG)


def adversarial_grid_png(clean, adv, captions: list[str], columns: int = 4) -> bytes:
    """A PNG of up to 16 samples, each a tile of three images (clean, adversarial, perturbation amplified around
    mid-gray) above its caption. ``clean``/``adv``: (N, C, H, W) in [0, 1] (torch tensors); one amplification for
    the whole grid (the largest |perturbation| to full contrast), named in the header."""
    import io

    import numpy as np
    from PIL import Image, ImageDraw

    n = len(captions)
    c, h, w = clean.shape[1:]
    scale = max(1, 96 // max(h, w))
    delta = (adv - clean).float()
    amp = 0.5 / max(float(delta.abs().max()), 1e-12)
    pad, text_h, header_h = 4, 14, 18
    tile_w, tile_h = 3 * w * scale + 2 * pad, h * scale + text_h
    cols = min(columns, n) or 1
    rows = (n + cols - 1) // cols
    width, height = cols * (tile_w + 2 * pad), header_h + rows * (tile_h + 2 * pad)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 3), f"each tile: clean | adversarial | perturbation x{amp:.0f} (gray = 0)", fill="black")

    def picture(t) -> Image.Image:
        a = (t.clamp(0, 1) * 255).round().cpu().numpy()
        a = np.clip(a, 0, 255).astype(np.uint8).transpose(1, 2, 0)
        img = Image.fromarray(a[:, :, 0] if c == 1 else a[:, :, :3], "L" if c == 1 else "RGB")
        return img.resize((w * scale, h * scale), Image.NEAREST)

    for i in range(n):
        x0 = (i % cols) * (tile_w + 2 * pad) + pad
        y0 = header_h + (i // cols) * (tile_h + 2 * pad) + pad
        for j, t in enumerate((clean[i], adv[i], 0.5 + amp * delta[i])):
            canvas.paste(picture(t), (x0 + j * (w * scale + pad), y0))
        draw.text((x0, y0 + h * scale + 1), captions[i], fill="black")
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()
