"""Rendering: results in, rich renderables / text out. Pure functions, no I/O."""
from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

__all__ = ["render_harden_summary", "pct"]


def pct(v: Any) -> str:
    return "-" if v is None else f"{100 * float(v):.1f}%"


def render_harden_summary(s: dict) -> Group:
    """The table printed at the end of ``sodef harden``."""
    t = Table(title=f"hardened -> {s['out']}", show_lines=False)
    t.add_column("")
    t.add_column("base", justify="right")
    t.add_column("hardened", justify="right")
    t.add_row("clean accuracy (test)", pct(s["base"]["test_clean_acc"]), pct(s["hardened"]["test_clean_acc"]))
    t.add_row("clean accuracy (val)", pct(s["base"]["val_acc"]), pct(s["hardened"]["val_acc"]))
    st = s["stability"]
    t.add_row("Jacobians with all Re(eig) < 0", "", f"{pct(st['before_phase2']['frac_eig_negative'])} -> {pct(st['after_phase2']['frac_eig_negative'])} (phase 2) -> {pct(st['final']['frac_eig_negative'])}")
    parts: list[Any] = [t]
    tim = s.get("timings_s", {})
    if tim:
        parts.append(Text("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in tim.items()), style="dim"))
    check = s.get("check")
    if check:
        parts.append(Text(check["recommendation"], style="bold green" if check["gain_points"] >= 0 else "bold red"))
    else:
        parts.append(Text("hardening guard skipped (--no-check): evaluate with `sodef attack` before deploying", style="yellow"))
    return Group(*parts)
