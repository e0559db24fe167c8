"""Reports: results in, text out. Pure functions; no file or network I/O.

Three reports come out of this package:

- the **attack results** of one or several ``sodef attack`` files side by side (verdict, base vs hardened
  table per eps, a robustness-vs-eps chart, the masking checks and the setup);
- the **model card** of a hardened or base file;
- the **summary** printed at the end of ``sodef harden``.

Each report is built in three steps, so that every format shows the same figures: data
(``results_data`` / ``card_data`` / ``base_card_data``: numbers and sentences, what ``--format json`` prints;
input documents are checked once, here) -> blocks (titles, key/value lists, tables, pictures, notes, verdicts)
-> one renderer per format (``RENDERERS``): a rich renderable for the terminal (``table``), Markdown, HTML.

    data = results_data([doc], labels=["r.json"])
    Console().print(render(data, "table"))
    text = render(data, "markdown")

Modules: ``format`` (numbers), ``schema`` (input shapes), ``results`` (the results model and its data),
``verdict``, ``results_blocks``, ``card`` (model cards, the harden summary), ``blocks`` (block types),
``pictures`` (text and SVG drawings), ``render_rich`` / ``render_markdown`` / ``render_html`` / ``render_json``.
"""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Group, RenderableType

from . import render_html, render_json, render_markdown, render_rich
from .blocks import Block
from .card import (
    base_card_blocks,
    base_card_data,
    card_blocks,
    card_data,
    harden_summary_blocks,
)
from .format import acc_ci, fmt_eps, fmt_p, pct, pct_ci, points_ci
from .pictures import bar_lines, chart_lines, hist_lines
from .render_rich import to_text
from .results import check_results, results_data
from .results_blocks import results_blocks
from .schema import REPORT_SCHEMA

__all__ = [
    "FORMATS",
    "RENDERERS",
    "REPORT_SCHEMA",
    "acc_ci",
    "bar_lines",
    "base_card_blocks",
    "base_card_data",
    "card_blocks",
    "card_data",
    "chart_lines",
    "check_results",
    "fmt_eps",
    "fmt_p",
    "hist_lines",
    "pct",
    "pct_ci",
    "points_ci",
    "render",
    "render_harden_summary",
    "render_results",
    "report_blocks",
    "results_blocks",
    "results_data",
    "to_text",
]


def report_blocks(data: dict) -> list[Block]:
    """The blocks of ``results_data``, ``card_data`` or ``base_card_data``."""
    if data.get("kind") == "card":
        return base_card_blocks(data) if data.get("card") == "base" else card_blocks(data)
    return results_blocks(data)


def _drawn(draw: Callable[[list[Block]], RenderableType | str]) -> Callable[[dict], RenderableType | str]:
    return lambda data: draw(report_blocks(data))


# format -> renderer of a report's data; every format but json draws the same blocks
RENDERERS: dict[str, Callable[[dict], RenderableType | str]] = {
    "table": _drawn(render_rich.render_blocks),
    "markdown": _drawn(render_markdown.render_blocks),
    "json": render_json.render_data,
    "html": _drawn(render_html.render_blocks),
}
FORMATS = tuple(RENDERERS)


def render(data: dict, fmt: str = "table") -> RenderableType | str:
    """Render ``results_data`` or a card's data: a rich renderable for ``table``, text for the other formats."""
    if fmt not in RENDERERS:
        raise ValueError(f"unknown format {fmt!r}; must be one of {FORMATS}")
    return RENDERERS[fmt](data)


def render_results(docs: list[dict], labels: list[str] | None = None) -> RenderableType:
    """The full results report of one or more results documents, for the terminal."""
    return render(results_data(docs, labels), "table")


def render_harden_summary(s: dict) -> Group:
    """The summary printed at the end of ``sodef harden`` (``s``: what ``harden.run`` returns)."""
    return render_rich.render_blocks(harden_summary_blocks(s))
