"""The terminal renderer: blocks -> one rich renderable (tables, coloured verdicts and notes, text pictures
redrawn for the width they are given)."""

from __future__ import annotations

from collections.abc import Callable
from io import StringIO

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.table import Table as RichTable
from rich.text import Text

from .blocks import KV, Bars, Block, Chart, Heading, Hist, Image, Note, Table, Title, Verdict, drawers
from .pictures import BAR_GLYPHS, bar_lines, chart_lines, hist_lines

__all__ = ["render_blocks", "to_text"]

_LEVEL_STYLE = {"info": "dim", "warn": "yellow", "good": "bold green", "bad": "bold red"}
_SERIES_STYLES = ("cyan", "magenta", "green", "yellow", "blue", "red")


class _Chart:
    """The chart as a rich renderable: redrawn for the width it is given, the markers coloured per series."""

    def __init__(self, block: Chart):
        self.block = block

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        lines = chart_lines(self.block, width=min(options.max_width, 72))
        styles = {s["marker"]: _SERIES_STYLES[i % len(_SERIES_STYLES)] for i, s in enumerate(self.block["series"])}
        for i, line in enumerate(lines):
            t = Text(line)
            if i < len(lines) - 3:  # the plot area: colour the markers
                start = line.find("|") + 1
                for j, ch in enumerate(line[start:], start=start):
                    if ch in styles:
                        t.stylize(styles[ch], j, j + 1)
            yield t


class _Lines:
    """Text lines of a picture as a rich renderable, redrawn for the width it is given, the bars coloured."""

    def __init__(self, block: Bars | Hist, draw: Callable[..., list[str]]):
        self.block, self.draw = block, draw

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for line in self.draw(self.block, width=min(options.max_width, 100)):
            t = Text(line)
            for j, ch in enumerate(line):
                if ch in BAR_GLYPHS:
                    t.stylize("cyan", j, j + 1)
            yield t


def _styled_cell(text: str, role: str) -> Text:
    if role == "delta" and text not in ("-", ""):
        head = text.split()[0]
        return Text(
            text, style="green" if head.startswith("+") and head != "+0.0" else ("red" if head.startswith("-") else "")
        )
    if role == "status":
        return Text(text, style={"FLAG": "bold red", "ok": "green", "not run": "dim"}.get(text, ""))
    return Text(text)


def _title(bl: Title, prev: str) -> list[RenderableType]:
    return [Text(bl["text"], style="bold underline")]


def _heading(bl: Heading, prev: str) -> list[RenderableType]:
    return [Text(""), Text(bl["text"], style="bold")]


def _kv(bl: KV, prev: str) -> list[RenderableType]:
    if bl["header"]:
        tab = RichTable(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for h in bl["header"]:
            tab.add_column(Text(h), overflow="fold")
    else:
        tab = RichTable.grid(padding=(0, 2))
        ncol = max((len(r) for r in bl["rows"]), default=1)
        for i in range(ncol):
            tab.add_column(style="bold" if i == 0 and ncol > 1 else None, overflow="fold", no_wrap=i == 0 and ncol > 1)
    for r in bl["rows"]:
        tab.add_row(*[Text(c) for c in r])
    return [Text(""), Text(bl["title"], style="bold"), tab]


def _table(bl: Table, prev: str) -> list[RenderableType]:
    tab = RichTable(
        title=Text(bl["title"], style="bold"),
        caption=Text(bl["caption"]) if bl["caption"] else None,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        title_justify="left",
        caption_justify="left",
    )
    for c in bl["columns"]:
        tab.add_column(Text(c["name"]), justify=c["align"], overflow="fold", no_wrap=c.get("nowrap", False))
    for r, style in zip(bl["rows"], bl["row_styles"]):
        tab.add_row(*[_styled_cell(v, c["role"]) for v, c in zip(r, bl["columns"])], style=style or None)
    return [Text(""), tab]


def _chart(bl: Chart, prev: str) -> list[RenderableType]:
    return [Text(""), Text(bl["title"], style="bold"), _Chart(bl)]


def _picture(bl: Bars | Hist, prev: str) -> list[RenderableType]:
    out: list[RenderableType] = [
        Text(""),
        Text(bl["title"], style="bold"),
        _Lines(bl, bar_lines if bl["type"] == "bars" else hist_lines),
    ]
    if bl.get("caption"):
        out.append(Text(bl["caption"], style="dim"))
    return out


def _note(bl: Note, prev: str) -> list[RenderableType]:
    style = _LEVEL_STYLE[bl["level"]]
    line = Text.assemble(("note: ", "bold " + style), (bl["text"], style if bl["level"] == "warn" else ""))
    return [line] if prev in ("note", "title") else [Text(""), line]


def _verdict(bl: Verdict, prev: str) -> list[RenderableType]:
    label = f"Verdict ({bl['label']}): " if bl["label"] else "Verdict: "
    return [Text(""), Text.assemble((label, "bold"), (bl["text"], _LEVEL_STYLE[bl["level"]]))]


def _image(bl: Image, prev: str) -> list[RenderableType]:
    out: list[RenderableType] = [Text(""), Text(bl["title"], style="bold"), Text(f"picture: {bl['path']}")]
    if bl.get("caption"):
        out.append(Text(bl["caption"], style="dim"))
    return out


_DRAW: dict[str, Callable[..., list[RenderableType]]] = drawers(
    _title, _heading, _kv, _table, _chart, _picture, _note, _verdict, _image
)


def render_blocks(blocks: list[Block]) -> Group:
    """The blocks as one rich renderable (a note right after a note or the title is not set apart by a blank line)."""
    parts: list[RenderableType] = []
    prev = ""
    for bl in blocks:
        parts += _DRAW[bl["type"]](bl, prev)
        prev = bl["type"]
    return Group(*parts)


def to_text(renderable: RenderableType, width: int = 100) -> str:
    """Plain text of a rich renderable at a fixed width (no colour, no control codes)."""
    buf = StringIO()
    Console(file=buf, width=width, color_system=None, force_terminal=False, legacy_windows=False).print(renderable)
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"
