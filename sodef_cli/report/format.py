"""Number formatting shared by every report: accuracies in percent, differences in points, 95% intervals,
p-values and attack budgets (``8/255``). Every function takes ``None`` for a missing figure and returns ``-``."""

from __future__ import annotations

import math
from typing import Any

from ..stats import wilson

__all__ = ["acc_ci", "delta", "eps_key", "fmt_eps", "fmt_p", "num", "p_eq", "pct", "pct_ci", "points", "points_ci"]


def pct(v: Any) -> str:
    """``52.8%``: a fraction in percent with one decimal."""
    return "-" if v is None else f"{100 * float(v):.1f}%"


def points(v: float | None) -> str:
    """``+2.4``: a difference already in points, signed."""
    return "-" if v is None else f"{v:+.1f}"


def delta(b: float | None, h: float | None) -> str:
    """``h - b`` of two fractions, in signed points."""
    return "-" if b is None or h is None else points(100 * (h - b))


def pct_ci(v: Any, ci: Any, sep: str = " ", mark: str = "") -> str:
    """``52.8% [48.4, 57.1]``: an accuracy with its 95% interval in percent (``sep`` before the interval)."""
    if v is None:
        return "-"
    if not ci:
        return pct(v) + mark
    return f"{pct(v)}{mark}{sep}[{100 * float(ci[0]):.1f}, {100 * float(ci[1]):.1f}]"


def points_ci(d: Any, ci: Any, sep: str = " ") -> str:
    """``+2.4 [-1.3, +6.0]``: a difference (a fraction) in points with its paired 95% interval."""
    if d is None:
        return "-"
    if not ci:
        return points(100 * float(d))
    return f"{100 * float(d):+.1f}{sep}[{100 * float(ci[0]):+.1f}, {100 * float(ci[1]):+.1f}]"


def fmt_p(p: Any) -> str:
    """A p-value: ``<0.001``, three decimals below 0.1, else two."""
    if p is None:
        return "-"
    p = float(p)
    return "<0.001" if p < 0.001 else f"{p:.3f}" if p < 0.1 else f"{p:.2f}"


def p_eq(p: Any) -> str:
    """``=0.34`` or ``<0.001``: a p-value after the letter p."""
    text = fmt_p(p)
    return text if text.startswith("<") else f"={text}"


def acc_ci(acc: Any, n: Any) -> str:
    """An accuracy measured on ``n`` samples with its Wilson 95% interval (the count is rounded back from it)."""
    if acc is None or not isinstance(n, int) or n <= 0:
        return pct(acc)
    return pct_ci(acc, wilson(min(n, max(0, round(float(acc) * n))), n))


def fmt_eps(eps: float | None, norm: str | None = "Linf") -> str:
    """8/255 for Linf budgets on the 1/255 grid, else 4 significant digits."""
    if eps is None:
        return "-"
    k = eps * 255
    if norm == "Linf" and eps > 0 and abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return f"{eps:.4g}"


def num(v: Any, digits: int = 3) -> str:
    """A setting or a figure of any type: ``yes``/``no``, integers as they are, floats to ``digits`` digits."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.{digits}g}"
    return str(v)


def eps_key(eps: float) -> float:
    """A budget as a dictionary key: equal budgets from different files compare equal."""
    return round(float(eps), 10)
