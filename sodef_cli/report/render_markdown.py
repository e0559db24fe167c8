"""The Markdown renderer: blocks -> one Markdown document (pipe tables, pictures as fenced text)."""

from __future__ import annotations

from collections.abc import Callable

from .blocks import KV, Bars, Block, Chart, Heading, Hist, Image, Note, Table, Title, Verdict, drawers
from .pictures import bar_lines, chart_lines, hist_lines

__all__ = ["render_blocks"]


def _esc(s: str) -> str:
    return str(s).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("*", "\\*").replace("_", "\\_")


def _pipe_table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> list[str]:
    align = align or ["left"] * len(header)
    out = [
        "| " + " | ".join(_esc(h) for h in header) + " |",
        "|" + "|".join("---:" if a == "right" else ":---" for a in align) + "|",
    ]
    out += ["| " + " | ".join(_esc(c) for c in r) + " |" for r in rows]
    return out


def _title(bl: Title) -> list[str]:
    return [f"# {_esc(bl['text'])}", ""]


def _heading(bl: Heading) -> list[str]:
    return [f"## {_esc(bl['text'])}", ""]


def _kv(bl: KV) -> list[str]:
    lines = [f"## {_esc(bl['title'])}", ""]
    if bl["header"]:
        lines += _pipe_table([h.replace("\n", " ") for h in bl["header"]], bl["rows"])
    elif all(len(r) == 2 for r in bl["rows"]):
        lines += [f"- **{_esc(k)}:** {_esc(v)}" for k, v in bl["rows"]]
    else:
        lines += [_esc(" ".join(r)) for r in bl["rows"]]
    return lines + [""]


def _table(bl: Table) -> list[str]:
    lines = [f"## {_esc(bl['title'])}", ""]
    lines += _pipe_table(
        [c["name"].replace("\n", " ") for c in bl["columns"]], bl["rows"], [c["align"] for c in bl["columns"]]
    )
    if bl["caption"]:
        lines += ["", f"*{_esc(bl['caption'])}*"]
    return lines + [""]


def _chart(bl: Chart) -> list[str]:
    return [f"## {_esc(bl['title'])}", "", "```text", *chart_lines(bl, width=72), "```", ""]


def _picture(bl: Bars | Hist) -> list[str]:
    pic = bar_lines(bl, width=72) if bl["type"] == "bars" else hist_lines(bl, width=72)
    lines = [f"## {_esc(bl['title'])}", "", "```text", *pic, "```", ""]
    if bl.get("caption"):
        lines += [f"*{_esc(bl['caption'])}*", ""]
    return lines


def _note(bl: Note) -> list[str]:
    return [f"> **Note:** {_esc(bl['text'])}", ""]


def _verdict(bl: Verdict) -> list[str]:
    label = f"Verdict ({bl['label']})" if bl["label"] else "Verdict"
    return [f"**{_esc(label)}:** {_esc(bl['text'])}", ""]


def _image(bl: Image) -> list[str]:
    lines = [f"## {_esc(bl['title'])}", "", f"![{_esc(bl['title'])}]({bl['path'].replace(' ', '%20')})", ""]
    if bl.get("caption"):
        lines += [f"*{_esc(bl['caption'])}*", ""]
    return lines


_DRAW: dict[str, Callable[..., list[str]]] = drawers(
    _title, _heading, _kv, _table, _chart, _picture, _note, _verdict, _image
)


def render_blocks(blocks: list[Block]) -> str:
    """The blocks as one Markdown document."""
    lines: list[str] = []
    for bl in blocks:
        lines += _DRAW[bl["type"]](bl)
    return "\n".join(lines).rstrip() + "\n"
