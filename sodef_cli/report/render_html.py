"""The HTML renderer: blocks -> one self-contained page (inline CSS, pictures as inline SVG, no scripts)."""

from __future__ import annotations

import base64
import html
from collections.abc import Callable
from pathlib import Path

from .blocks import KV, Bars, Block, Chart, Heading, Hist, Image, Note, Table, Title, Verdict, drawers
from .pictures import svg_bars, svg_chart, svg_hist

__all__ = ["render_blocks"]

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;max-width:60em;color:#222;line-height:1.4}
h1{font-size:1.5em;border-bottom:1px solid #ccc;padding-bottom:.2em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;margin:.4em 0}th,td{padding:.2em .7em;border-bottom:1px solid #ddd;vertical-align:top}
th{text-align:left;border-bottom:2px solid #999}td.r,th.r{text-align:right;font-variant-numeric:tabular-nums}
tr.bold td{font-weight:bold}tr.dim td{color:#666}caption{caption-side:bottom;text-align:left;font-size:.85em;color:#555;padding-top:.3em}
.pos{color:#1a7f37}.neg{color:#c62828}.FLAG{color:#c62828;font-weight:bold}.ok{color:#1a7f37}.notrun{color:#777}
.note{border-left:4px solid #999;padding:.3em .8em;background:#f6f6f6;margin:.6em 0}.note.warn{border-color:#d4a017;background:#fff8e1}
.verdict{border:1px solid #999;padding:.5em .8em;margin:1em 0}.verdict.good{border-color:#1a7f37;background:#eef8f0}
.verdict.bad{border-color:#c62828;background:#fdecea}.verdict.warn{border-color:#d4a017;background:#fff8e1}
dl{display:grid;grid-template-columns:max-content auto;gap:.15em 1.2em}dt{font-weight:bold}dd{margin:0}
svg text{font-family:inherit;font-size:11px}.cap{font-size:.85em;color:#555;margin-top:0}
""".strip()

_e = html.escape


def _title(bl: Title) -> list[str]:
    return [f"<h1>{_e(bl['text'])}</h1>"]


def _heading(bl: Heading) -> list[str]:
    return [f"<h2>{_e(bl['text'])}</h2>"]


def _kv(bl: KV) -> list[str]:
    body = [f"<h2>{_e(bl['title'])}</h2>"]
    if bl["header"]:
        body.append("<table><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in bl["header"]) + "</tr></thead><tbody>")
        body += ["<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in bl["rows"]]
        body.append("</tbody></table>")
    elif all(len(r) == 2 for r in bl["rows"]):
        body.append("<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in bl["rows"]) + "</dl>")
    else:
        body += [f"<p>{_e(' '.join(r))}</p>" for r in bl["rows"]]
    return body


def _table(bl: Table) -> list[str]:
    cols = bl["columns"]
    body = [
        f"<h2>{_e(bl['title'])}</h2>",
        "<table>" + (f"<caption>{_e(bl['caption'])}</caption>" if bl["caption"] else ""),
        "<thead><tr>"
        + "".join(
            f'<th class="{"r" if c["align"] == "right" else ""}">{_e(c["name"]).replace(chr(10), "<br>")}</th>'
            for c in cols
        )
        + "</tr></thead><tbody>",
    ]
    for r, style in zip(bl["rows"], bl["row_styles"]):
        cells = []
        for v, c in zip(r, cols):
            cls = ["r"] if c["align"] == "right" else []
            if c["role"] == "delta" and v.split()[0] not in ("-", "", "+0.0"):
                cls.append("pos" if v.startswith("+") else "neg")
            if c["role"] == "status":
                cls.append(v.replace(" ", ""))
            cell = _e(v).replace(chr(10), "<br>")  # a figure and its interval on two lines
            cells.append(f'<td class="{" ".join(cls)}">{cell}</td>' if cls else f"<td>{cell}</td>")
        body.append((f'<tr class="{style}">' if style else "<tr>") + "".join(cells) + "</tr>")
    body.append("</tbody></table>")
    return body


def _chart(bl: Chart) -> list[str]:
    return [f"<h2>{_e(bl['title'])}</h2>", svg_chart(bl)]


def _picture(bl: Bars | Hist) -> list[str]:
    body = [f"<h2>{_e(bl['title'])}</h2>", svg_bars(bl) if bl["type"] == "bars" else svg_hist(bl)]
    if bl.get("caption"):
        body.append(f'<p class="cap">{_e(bl["caption"])}</p>')
    return body


def _note(bl: Note) -> list[str]:
    return [f'<div class="note {bl["level"]}"><b>Note:</b> {_e(bl["text"])}</div>']


def _verdict(bl: Verdict) -> list[str]:
    label = f"Verdict ({bl['label']})" if bl["label"] else "Verdict"
    return [f'<div class="verdict {bl["level"]}"><b>{_e(label)}:</b> {_e(bl["text"])}</div>']


def _image(bl: Image) -> list[str]:
    """The PNG embedded (the page stays one file); a note where the file cannot be read."""
    body = [f"<h2>{_e(bl['title'])}</h2>"]
    try:
        data = base64.b64encode(Path(bl["path"]).read_bytes()).decode("ascii")
        body.append(f'<img alt="{_e(bl["title"])}" src="data:image/png;base64,{data}">')
    except OSError:
        body.append(f'<div class="note warn"><b>Note:</b> picture not found: {_e(bl["path"])}</div>')
    if bl.get("caption"):
        body.append(f'<p class="cap">{_e(bl["caption"])}</p>')
    return body


_DRAW: dict[str, Callable[..., list[str]]] = drawers(
    _title, _heading, _kv, _table, _chart, _picture, _note, _verdict, _image
)


def render_blocks(blocks: list[Block]) -> str:
    """The blocks as one HTML page titled by the first title block."""
    title = next((b["text"] for b in blocks if b["type"] == "title"), "sodef report")
    body: list[str] = []
    for bl in blocks:
        body += _DRAW[bl["type"]](bl)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_e(title)}</title>\n<style>\n{_CSS}\n</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
