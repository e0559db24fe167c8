"""Blocks: a format-neutral description of what a report shows. Every report (attack results, model cards,
the ``sodef harden`` summary) is a list of blocks, and every renderer (rich, Markdown, HTML) draws the same
list, so that each format shows the same figures.

A block is a typed dictionary whose ``type`` names its kind; build them with the constructors below.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NotRequired, TypedDict

__all__ = [
    "BLOCK_TYPES",
    "drawers",
    "KV",
    "Bar",
    "BarGroup",
    "Bars",
    "Block",
    "Chart",
    "Column",
    "Heading",
    "Hist",
    "HistSeries",
    "Image",
    "Level",
    "Note",
    "Series",
    "Table",
    "Title",
    "Verdict",
    "bars",
    "chart",
    "col",
    "heading",
    "hist",
    "image",
    "kv",
    "note",
    "table",
    "title",
    "verdict",
]

Level = Literal["info", "warn", "good", "bad"]
Align = Literal["left", "right"]
Role = Literal["text", "value", "delta", "status"]  # how a renderer colours a column's cells


class Title(TypedDict):
    type: Literal["title"]
    text: str


class Heading(TypedDict):
    type: Literal["heading"]
    text: str


class KV(TypedDict):
    """Key/value rows under a title; with ``header``, a plain table of several value columns."""

    type: Literal["kv"]
    title: str
    rows: list[list[str]]
    header: list[str] | None


class Column(TypedDict):
    name: str
    align: Align
    role: Role
    nowrap: bool


class Table(TypedDict):
    """A titled table; a cell may hold a figure and its interval on two lines (``\\n``)."""

    type: Literal["table"]
    title: str
    columns: list[Column]
    rows: list[list[str]]
    caption: str
    row_styles: list[str]  # "", "bold" or "dim" per row


class Note(TypedDict):
    type: Literal["note"]
    level: Level
    text: str


class Verdict(TypedDict):
    type: Literal["verdict"]
    label: str
    level: Level
    text: str


class Series(TypedDict):
    name: str
    marker: str  # one character: the series' points in the text chart
    ys: list[float | None]


class Chart(TypedDict):
    """Lines over a shared x axis; y is an accuracy (0 to 1)."""

    type: Literal["chart"]
    title: str
    xs: list[float]
    xlabels: list[str]
    xname: str
    series: list[Series]
    yname: NotRequired[str]


class Bar(TypedDict):
    label: str
    value: float | None
    ci: list[float] | None


class BarGroup(TypedDict):
    name: str
    bars: list[Bar]
    eps: float


class Bars(TypedDict):
    """Horizontal bars from 0 to 100%, in groups (one per model), each with its 95% interval."""

    type: Literal["bars"]
    title: str
    groups: list[BarGroup]
    caption: str


class HistSeries(TypedDict):
    name: str
    counts: list[int]
    lo: float
    hi: float


class Hist(TypedDict):
    """Histograms over a shared x axis: ``counts`` in equal bins from ``lo`` to ``hi``."""

    type: Literal["hist"]
    title: str
    series: list[HistSeries]
    xname: str
    caption: str


class Image(TypedDict):
    """A picture file (PNG) the report points to: embedded in HTML, linked in Markdown, named in the terminal."""

    type: Literal["image"]
    title: str
    path: str
    caption: str


Block = Title | Heading | KV | Table | Note | Verdict | Chart | Bars | Hist | Image
BLOCK_TYPES = ("title", "heading", "kv", "table", "note", "verdict", "chart", "bars", "hist", "image")


def drawers(title, heading, kv, table, chart, picture, note, verdict, image) -> dict[str, Callable]:
    """A renderer's ``{block type: drawing function}`` (bars and histograms share the picture function)."""
    return dict(
        zip(BLOCK_TYPES, (title, heading, kv, table, note, verdict, chart, picture, picture, image), strict=True)
    )


def title(text: str) -> Title:
    return {"type": "title", "text": text}


def heading(text: str) -> Heading:
    return {"type": "heading", "text": text}


def kv(title: str, rows: list[list[str]], header: list[str] | None = None) -> KV:
    return {"type": "kv", "title": title, "rows": rows, "header": header}


def col(name: str, align: Align = "left", role: Role = "text", *, nowrap: bool = False) -> Column:
    return {"name": name, "align": align, "role": role, "nowrap": nowrap}


def table(
    title: str, columns: list[Column], rows: list[list[str]], caption: str = "", row_styles: list[str] | None = None
) -> Table:
    return {
        "type": "table",
        "title": title,
        "columns": columns,
        "rows": rows,
        "caption": caption,
        "row_styles": row_styles or [""] * len(rows),
    }


def note(text: str, level: Level = "info") -> Note:
    return {"type": "note", "level": level, "text": text}


def verdict(text: str, level: Level, label: str = "") -> Verdict:
    return {"type": "verdict", "label": label, "level": level, "text": text}


def chart(
    title: str, xs: list[float], xlabels: list[str], xname: str, series: list[Series], yname: str | None = None
) -> Chart:
    out: Chart = {"type": "chart", "title": title, "xs": xs, "xlabels": xlabels, "xname": xname, "series": series}
    if yname is not None:
        out["yname"] = yname
    return out


def bars(title: str, groups: list[BarGroup], caption: str = "") -> Bars:
    return {"type": "bars", "title": title, "groups": groups, "caption": caption}


def hist(title: str, series: list[HistSeries], xname: str, caption: str = "") -> Hist:
    return {"type": "hist", "title": title, "series": series, "xname": xname, "caption": caption}


def image(title: str, path: str, caption: str = "") -> Image:
    return {"type": "image", "title": title, "path": path, "caption": caption}
