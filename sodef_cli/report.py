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


def render_results(docs: list[dict]) -> Group:
    """Minimal side-by-side table of attack results (expanded by the report command)."""
    from .evaluate import summarize

    parts: list[Any] = []
    for doc in docs:
        s = summarize(doc)
        for run in s["curve"]:
            t = Table(title=f"{doc['model']['path']} | {s['norm']} eps={run['eps']:.4g} | n={s['n']}")
            t.add_column("")
            t.add_column("base", justify="right")
            t.add_column("hardened", justify="right")
            t.add_column("delta", justify="right")
            b, h = run["models"].get("base", {}), run["models"].get("hardened", {})
            names = ["clean"] + list(dict.fromkeys(list(b.get("attacks", {})) + list(h.get("attacks", {})))) + ["worst_case"]
            for name in names:
                bv = b.get(name) if name in ("clean", "worst_case") else b.get("attacks", {}).get(name)
                hv = h.get(name) if name in ("clean", "worst_case") else h.get("attacks", {}).get(name)
                d = "-" if bv is None or hv is None else f"{100 * (hv - bv):+.1f}"
                t.add_row(name, pct(bv), pct(hv), d)
            parts.append(t)
            for c in run.get("checks", []):
                mark = "?" if c.get("flagged") is None else ("FLAG" if c["flagged"] else "ok")
                parts.append(Text(f"[{mark}] {c['name']}: {c['evidence']}"))
    return Group(*parts)
