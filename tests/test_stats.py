"""Intervals and tests of sodef_cli.stats against published values and hand computations."""

from __future__ import annotations

import math

import pytest

from sodef_cli.stats import (
    _combine,
    mcnemar_exact,
    n_to_resolve,
    newcombe_paired,
    paired_difference,
    paired_phi,
    paired_table,
    wilson,
)


@pytest.mark.parametrize(
    "k,n,low,high",
    [
        (5, 10, 0.2366, 0.7634),  # textbook values of the Wilson interval
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (81, 263, 0.2553, 0.3662),  # Newcombe 1998 (single proportion, Table I): 81/263
    ],
)
def test_wilson_matches_published_values(k, n, low, high):
    lo, hi = wilson(k, n)
    assert lo == pytest.approx(low, abs=6e-5) and hi == pytest.approx(high, abs=6e-5)


def test_wilson_no_samples_and_bad_counts():
    assert wilson(0, 0) is None
    with pytest.raises(ValueError):
        wilson(3, 2)


@pytest.mark.parametrize(
    "b,c,p",
    [
        (0, 6, 2 / 64),  # 2 * P(X <= 0), X ~ Bin(6, 1/2)
        (1, 9, 2 * (1 + 10) / 1024),
        (9, 1, 2 * (1 + 10) / 1024),
        (3, 3, 1.0),
        (0, 0, 1.0),
        (2, 5, 2 * (1 + 7 + 21) / 128),
    ],
)
def test_mcnemar_exact_by_hand(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p, rel=1e-12)


def test_mcnemar_large_counts_agree_with_the_integer_sum():
    exact = sum(math.comb(1500, i) for i in range(701)) / 2**1500 * 2
    assert mcnemar_exact(700, 800) == pytest.approx(exact, rel=1e-9)


@pytest.mark.parametrize(
    "x1,n1,x2,n2,low,high",
    [
        (56, 70, 48, 80, 0.0524, 0.3339),  # Newcombe 1998 (independent proportions), method 10, example (a)
        (9, 10, 3, 10, 0.1705, 0.8090),  # ... example (b)
    ],
)
def test_hybrid_score_with_zero_correlation_is_newcombes_method_10(x1, n1, x2, n2, low, high):
    lo, hi = _combine(x1 / n1, wilson(x1, n1), x2 / n2, wilson(x2, n2), 0.0)
    assert lo == pytest.approx(low, abs=6e-5) and hi == pytest.approx(high, abs=6e-5)


def test_paired_interval_by_hand():
    # a=3 both, b=2 first only, c=2 second only, d=3 neither: p1 = p2 = 0.5; A = ad - bc = 5 <= n/2 = 5, so
    # Newcombe's corrected phi is 0 (the raw phi would be 5 / 25 = 0.2)
    w = 0.7634069094874361 - 0.5  # Wilson(5, 10) half-width
    half = math.sqrt(2 * w * w)
    lo, hi = newcombe_paired(3, 2, 2, 3)
    assert lo == pytest.approx(-half, abs=1e-12) and hi == pytest.approx(half, abs=1e-12)
    # a=8 both, b=1, c=1, d=10 (n=20): A = 79 > n/2 = 10, phi = (79 - 10) / sqrt(9 * 11 * 9 * 11) = 69 / 99
    assert paired_phi(8, 1, 1, 10) == pytest.approx(69 / 99, abs=1e-15)
    assert paired_phi(1, 3, 4, 0) == pytest.approx(-12 / math.sqrt(4 * 4 * 5 * 3))  # A < 0: uncorrected
    assert paired_phi(5, 0, 0, 0) == 0.0  # an empty margin


# Published values of Newcombe's method 10 for paired data (the break each one catches: the raw phi
# (ad - bc) / sqrt(margins) in place of the continuity-corrected one gives the values in the comments).
@pytest.mark.parametrize(
    "a,b,c,d,low,high",
    [
        # Cavo et al. 2012 (complete response before/after consolidation) in Fagerland, Lydersen & Laake,
        # Statistical Analysis of Contingency Tables (2017) ch. 8, and the tests of their R package contingencytables:
        # "estimate = -0.0621 (95% CI -0.1186 to -0.0046)" (raw phi: -0.1174, -0.0059)
        (59, 6, 16, 80, -0.1186, -0.0046),
        # Newcombe 1998 (Stat Med 17:2635), Table II example (a): 36, 12, 2, 0 -> 0.0569 to 0.3404
        (36, 12, 2, 0, 0.0569, 0.3404),
        # all 100 pairs concordant, 50 both right and 50 both wrong: +-0.0192 (raw phi = 1: [0, 0])
        (50, 0, 0, 50, -0.0192, 0.0192),
    ],
)
def test_paired_interval_matches_published_values(a, b, c, d, low, high):
    lo, hi = newcombe_paired(a, b, c, d)
    assert lo == pytest.approx(low, abs=6e-5) and hi == pytest.approx(high, abs=6e-5)


def test_paired_interval_extreme_tables():
    # all pairs discordant, 25 each way: phi = -1, each limit the sum of the two Wilson half-widths
    w = 0.5 - wilson(25, 50)[0]
    lo, hi = newcombe_paired(0, 25, 25, 0)
    assert lo == pytest.approx(-2 * w, abs=1e-12) and hi == pytest.approx(2 * w, abs=1e-12)
    # all discordant one way: p1 = 1, p2 = 0, the interval stays within [-1, 1] and excludes 0
    lo, hi = newcombe_paired(0, 30, 0, 0)
    assert 0 < lo < 1 and hi == 1.0
    # n = 1: a single concordant pair says little; a single discordant pair says less than nothing about the sign
    w1 = 1 - wilson(1, 1)[0]
    assert newcombe_paired(1, 0, 0, 0) == pytest.approx((-w1, w1), abs=1e-12)
    assert newcombe_paired(0, 0, 0, 1) == pytest.approx((-w1, w1), abs=1e-12)
    lo, hi = newcombe_paired(0, 1, 0, 0)
    assert lo < 0 < hi == 1.0
    # a concordant table is never a zero-width interval (the raw phi gave [0, 0] at 50/50)
    lo, hi = newcombe_paired(50, 0, 0, 0)
    assert lo < 0 < hi


def test_positive_correlation_narrows_the_paired_interval():
    # same margins (p1 = 0.6, p2 = 0.4 of 50), more concordance -> narrower
    loose = newcombe_paired(10, 20, 10, 10)
    tight = newcombe_paired(20, 10, 0, 20)
    assert tight[1] - tight[0] < loose[1] - loose[0]
    for lo, hi in (loose, tight):
        assert lo < 0.2 < hi


def test_paired_difference_orientation_and_counts():
    base = [True, True, False, False, True, None, False, True]
    hard = [True, False, True, True, True, False, True, True]
    assert paired_table(base, hard) == (3, 1, 3, 1)
    out = paired_difference(base, hard)
    assert out["diff"] == pytest.approx((3 - 1) / 8)
    assert out["discordant"] == [1, 3]
    assert out["p_mcnemar"] == pytest.approx(mcnemar_exact(1, 3))
    lo, hi = out["diff_ci95"]
    assert lo < out["diff"] < hi
    rev = paired_difference(hard, base)  # swapping the models mirrors the interval
    assert rev["diff_ci95"] == pytest.approx([-hi, -lo])
    assert paired_difference([], []) is None
    with pytest.raises(ValueError):
        paired_table([True], [True, False])


def test_n_to_resolve_is_the_first_significant_scaled_table():
    n = n_to_resolve(10, 20, 100)
    scaled = lambda m: mcnemar_exact(round(10 * m / 100), round(20 * m / 100))
    assert scaled(n) < 0.05 <= scaled(n - 1)
    assert n_to_resolve(0, 6, 50) == 50  # already resolved
    assert n_to_resolve(7, 7, 100) is None  # no difference to resolve
    assert n_to_resolve(100, 101, 1000, limit=10_000) is None
