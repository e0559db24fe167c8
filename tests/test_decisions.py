"""One decision rule (issue 22): a paired difference is significant when the exact McNemar p < 0.05.

The guard, the report's verdict, the model card, ``--require-gain`` and ``--json`` decide through
``stats.decide``; the interval is printed beside the decision and never makes it. Each test names the break it
catches.
"""

from __future__ import annotations

import pytest
from test_report import _attack, make_doc
from typer.testing import CliRunner

import sodef_cli.harden
from sodef_cli.cli import app
from sodef_cli.evaluate import masking_checks
from sodef_cli.guard import recommendation, require_gain_failure
from sodef_cli.report import results_data
from sodef_cli.stats import decide, mcnemar_exact, newcombe_paired

runner = CliRunner()


def _doc(n: int, both: int, base_only: int, hard_only: int) -> dict:
    """A complete adaptive results document at one eps: ``both`` samples robust for both models, ``base_only`` for the
    base alone, ``hard_only`` for the hardened model alone, the rest fooled; every sample clean-correct."""
    doc = make_doc(eps=(8 / 255,))
    base = [i < both + base_only for i in range(n)]
    hard = [i < both or both + base_only <= i < both + base_only + hard_only for i in range(n)]
    run = doc["runs"][0]
    run["models"] = {
        "base": {"clean": [True] * n, "attacks": {"apgd-ce": _attack("white-box", base, run["eps"], 1.0, steps=100)}},
        "hardened": {
            "clean": [True] * n,
            "attacks": {
                "apgd-ce": _attack("white-box", hard, run["eps"], 1.0, steps=100),
                "transfer-apgd-ce": _attack("transfer", hard, run["eps"], 1.0, steps=100),
            },
        },
    }
    run.pop("extra_checks")
    run["checks"] = masking_checks(run)
    doc["plan"] = {"base": ["apgd-ce"], "hardened": ["apgd-ce", "transfer-apgd-ce"]}
    doc["config"]["attacks"] = ["apgd-ce", "transfer-apgd-ce"]
    doc["n"], doc["indices"], doc["labels"] = n, list(range(n)), [i % 10 for i in range(n)]
    return doc


def _verdict(doc: dict) -> dict:
    return results_data([doc])["files"][0]["verdict"]


def test_the_issue_example_is_no_significant_difference_everywhere():
    """n=256, both robust 100, base only 0, hardened only 4: p = 0.125. Before: the verdict rated it good
    ("+1.6 points (95% CI +0.0 to +3.1 ...)") while the guard said no significant difference.
    Break: decide by the interval excluding 0 -> the verdict is "good"/significant -> fails."""
    v = _verdict(_doc(256, 100, 0, 4))
    assert v["p_mcnemar"] == pytest.approx(0.125)
    assert v["outcome"] == "no significant difference" and not v["significant"]
    assert v["level"] == "warn"
    assert "no significant difference at n=256" in v["text"]
    assert v["n_to_resolve"] is not None and v["n_to_resolve"] > 256
    assert decide(v["gain_points"], v["p_mcnemar"]) == v["outcome"]  # what the guard says of the same figures
    text = recommendation(v["outcome"], v["gain_points"], 0.0, p=v["p_mcnemar"], n=256, n_needed=v["n_to_resolve"])
    assert text.startswith("no significant difference at n=256")


def test_an_interval_excluding_zero_never_decides():
    """Tables whose paired interval excludes 0 while McNemar's p >= 0.05 exist at n=256 (the corrected interval
    makes them rarer, not impossible): for each one found, the verdict is not significant and not good.
    Break: significance from the interval -> fails on the first such table."""
    found = []
    for both in (0, 60, 128, 200):
        for b in range(0, 12):
            for c in range(b + 1, 20):
                if both + b + c > 256:
                    continue
                lo, hi = newcombe_paired(both, c, b, 256 - both - b - c)
                if (lo > 0 or hi < 0) and mcnemar_exact(b, c) >= 0.05:
                    found.append((both, b, c))
    assert found, "no such table: the test would check nothing"
    for both, b, c in found[:3]:
        v = _verdict(_doc(256, both, b, c))
        assert not v["significant"] and v["level"] == "warn", (both, b, c)
    # the rule still rates a significant gain good and a significant loss bad, and a gain of exactly 0 is no loss
    assert _verdict(_doc(256, 100, 0, 12))["level"] == "good"  # p = 0.00049
    assert _verdict(_doc(256, 100, 12, 0))["level"] == "bad"
    zero = _verdict(_doc(256, 100, 3, 3))
    assert zero["gain_points"] == 0 and zero["level"] == "warn"  # before: a gain of exactly 0 was rated bad
    assert "no sample size would resolve it" in zero["text"]


@pytest.mark.parametrize(
    "outcome,plain,strict",
    [("more robust", None, None), ("no significant difference", None, "strict"), ("LESS robust", "plain", "strict")],
)
def test_require_gain_decision_table(outcome, plain, strict):
    """--require-gain fails on a significant loss only; --require-significant-gain on anything but a significant gain.
    Break: --require-gain on any negative point estimate -> the 'no significant difference' row fails."""
    check = {"outcome": outcome, "gain_points": -1.0 if outcome != "more robust" else 3.0}
    got_plain = require_gain_failure(check, require_gain=True, require_significant_gain=False)
    got_strict = require_gain_failure(check, require_gain=True, require_significant_gain=True)
    assert (got_plain is not None) == (plain is not None)
    assert (got_strict is not None) == (strict is not None)


def test_cli_require_gain_repeats_the_guard_word_for_word(tmp_path, monkeypatch):
    rec = recommendation("no significant difference", -1.2, 0.0, ci_points=[-4.0, 1.6], p=0.4, n=256, n_needed=3000)

    def fake(rule):
        def run(cfg, out, *, reporter=None, **options):
            failed = require_gain_failure(
                check,
                require_gain=cfg.check.require_gain,
                require_significant_gain=cfg.check.require_significant_gain,
            )
            c = dict(check, require_gain_failed=bool(failed), require_gain_rule=failed)
            return {"out": str(out), "check": c, "base": {}, "hardened": {}}

        return run

    check = {"outcome": "no significant difference", "gain_points": -1.2, "recommendation": rec}
    args = ["harden", "test_resnet", "--data", "demo", "--out", str(tmp_path / "h.safetensors"), "--json"]
    monkeypatch.setattr(sodef_cli.harden, "harden", fake(None))
    res = runner.invoke(app, args + ["--require-gain"])
    assert res.exit_code == 0, res.output  # a non-significant loss is not a loss
    res = runner.invoke(app, args + ["--require-significant-gain"])
    assert res.exit_code == 1
    assert rec in " ".join(res.stderr.split())  # the guard's outcome, word for word
    assert "--require-significant-gain: no significant gain" in res.stderr
