"""Uncertainty of the figures: pure functions, standard library only.

- :func:`wilson`: the Wilson score interval of one proportion (k successes of n).
- :func:`paired_difference`: base vs hardened on the *same* samples: the difference of the two accuracies,
  Newcombe's hybrid score interval for paired proportions (Newcombe 1998, Statistics in Medicine 17:2635,
  method 10: Wilson intervals of each proportion combined with the continuity-corrected phi of the 2x2 table,
  :func:`paired_phi`) and the exact McNemar test (two-sided binomial test on the discordant pairs,
  p = min(1, 2 P(X <= min(b, c))) with X ~ Binomial(b + c, 1/2)).
- :func:`decide`: the one decision rule of the tool: a difference is significant when the exact McNemar
  p < 0.05. The guard, the verdict, the model card, ``--require-gain`` and ``--json`` all decide through it;
  the interval is reported beside the decision, never used to make it.
- :func:`n_to_resolve`: how many samples the measured difference needs before McNemar's test resolves it.

Flags are per-sample booleans (``None`` counts as not robust, as in the worst case of ``evaluate.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

__all__ = [
    "Z95",
    "ALPHA",
    "OUTCOMES",
    "wilson",
    "mcnemar_exact",
    "paired_table",
    "paired_phi",
    "newcombe_paired",
    "paired_difference",
    "significant",
    "decide",
    "n_to_resolve",
]

Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal
ALPHA = 0.05


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval (low, high) of k successes in n trials; None when n = 0."""
    if n <= 0:
        return None
    if not 0 <= k <= n:
        raise ValueError(f"wilson: need 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # exact ends at k = 0 and k = n (the formula gives them up to rounding)
    return (0.0 if k == 0 else max(0.0, centre - half), 1.0 if k == n else min(1.0, centre + half))


def _log_binom_pmf(k: int, n: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2)


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts b and c."""
    n = b + c
    if n == 0:
        return 1.0
    m = min(b, c)
    if n <= 1000:  # exact in integers
        tail = sum(math.comb(n, i) for i in range(m + 1)) / 2**n
    elif n <= 100_000:  # log-sum-exp of the pmf terms
        logs = [_log_binom_pmf(i, n) for i in range(m + 1)]
        top = max(logs)
        tail = math.exp(top) * sum(math.exp(v - top) for v in logs)
    else:  # normal approximation with continuity correction (only reached by n_to_resolve's search)
        zval = max(0.0, abs(b - c) - 1) / math.sqrt(n)
        return min(1.0, math.erfc(zval / math.sqrt(2)))
    return min(1.0, 2 * tail)


def paired_table(flags_a: Iterable, flags_b: Iterable) -> tuple[int, int, int, int]:
    """(both, a only, b only, neither): the 2x2 table of two flag sequences over the same samples."""
    a_list, b_list = [x is True for x in flags_a], [x is True for x in flags_b]
    if len(a_list) != len(b_list):
        raise ValueError(f"paired flags need the same samples: {len(a_list)} vs {len(b_list)}")
    both = sum(1 for x, y in zip(a_list, b_list) if x and y)
    a_only = sum(1 for x, y in zip(a_list, b_list) if x and not y)
    b_only = sum(1 for x, y in zip(a_list, b_list) if y and not x)
    return both, a_only, b_only, len(a_list) - both - a_only - b_only


def _combine(p1: float, w1: tuple[float, float], p2: float, w2: tuple[float, float], phi: float) -> tuple[float, float]:
    """Newcombe's method 10: the difference p1 - p2 with limits from the Wilson limits of each and phi."""
    l1, u1 = w1
    l2, u2 = w2
    d = p1 - p2
    delta = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    eps = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return max(-1.0, d - delta), min(1.0, d + eps)


def paired_phi(a: int, b: int, c: int, d: int) -> float:
    """Newcombe's continuity-corrected phi of a paired 2x2 table (method 10): with A = ad - bc and n = a+b+c+d,
    phi = (A - n/2) / sqrt(margins) when A > n/2, 0 when 0 <= A <= n/2, A / sqrt(margins) when A < 0, and 0 when a
    margin is empty. The correction only pulls a positive correlation towards 0 (a wider interval)."""
    n = a + b + c + d
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    if margins == 0:
        return 0.0
    num = a * d - b * c
    if num > n / 2:
        num -= n / 2
    elif num >= 0:
        num = 0
    return num / math.sqrt(margins)


def newcombe_paired(a: int, b: int, c: int, d: int, z: float = Z95) -> tuple[float, float]:
    """95% interval of p1 - p2 for a paired 2x2 table: a = both succeed, b = only the first, c = only the
    second, d = neither; p1 = (a + b) / n, p2 = (a + c) / n (Newcombe 1998, method 10, with :func:`paired_phi`)."""
    n = a + b + c + d
    if n == 0:
        raise ValueError("newcombe_paired: empty table")
    p1, p2 = (a + b) / n, (a + c) / n
    return _combine(p1, wilson(a + b, n, z), p2, wilson(a + c, n, z), paired_phi(a, b, c, d))


def paired_difference(flags_a: Sequence, flags_b: Sequence) -> dict | None:
    """The difference b - a (e.g. hardened - base) of two accuracies on the same samples.

    Returns ``{"diff", "diff_ci95": [low, high], "p_mcnemar", "discordant": [a only, b only], "n"}`` (fractions,
    not points), or None when there are no samples.
    """
    both, a_only, b_only, neither = paired_table(flags_a, flags_b)
    n = both + a_only + b_only + neither
    if n == 0:
        return None
    low, high = newcombe_paired(both, b_only, a_only, neither)  # first proportion = b's accuracy
    return {
        "diff": (b_only - a_only) / n,
        "diff_ci95": [low, high],
        "p_mcnemar": mcnemar_exact(a_only, b_only),
        "discordant": [a_only, b_only],
        "n": n,
    }


OUTCOMES = ("more robust", "LESS robust", "no significant difference")


def significant(p: float | None, alpha: float = ALPHA) -> bool:
    """The decision rule: a paired difference is significant when its exact McNemar p-value is below ``alpha``."""
    return p is not None and p < alpha


def decide(diff: float, p: float | None, alpha: float = ALPHA) -> str:
    """One of :data:`OUTCOMES` for a paired difference (hardened - base) and its McNemar p-value."""
    if significant(p, alpha) and diff != 0:
        return "more robust" if diff > 0 else "LESS robust"
    return "no significant difference"


def n_to_resolve(a_only: int, b_only: int, n: int, alpha: float = ALPHA, limit: int = 10_000_000) -> int | None:
    """The smallest sample count at which the same discordance rates would make McNemar's test significant.

    The discordant counts are scaled with the sample count (rates a_only/n and b_only/n held fixed, rounded to
    whole samples). Returns ``n`` itself when the difference is already resolved, and None when there is no
    difference to resolve (a_only == b_only) or it would take more than ``limit`` samples.
    """
    if n <= 0 or a_only == b_only:
        return None
    if mcnemar_exact(a_only, b_only) < alpha:
        return n

    def significant(m: int) -> bool:
        return mcnemar_exact(round(a_only * m / n), round(b_only * m / n)) < alpha

    lo, hi = n, 2 * n
    while not significant(hi):
        lo, hi = hi, 2 * hi
        if hi > limit:
            return None
    while hi - lo > 1:  # the p-value decreases with m up to rounding: bisection finds the first crossing
        mid = (lo + hi) // 2
        if significant(mid):
            hi = mid
        else:
            lo = mid
    return hi
