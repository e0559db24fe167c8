"""The hardening guard: quick adaptive suite on validation images at the end of `sodef harden`."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from sodef_cli.cli import app
from sodef_cli.config import HardenConfig, resolve
from sodef_cli.guard import decide, recommendation
from sodef_cli.harden import harden
from sodef_cli.io import read_metadata
from sodef_cli.report import render_harden_summary, to_text

runner = CliRunner()
CHECK = {"check.enabled": True, "check.n": 24, "check.steps": 2, "check.batch_size": 12}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, tiny_harden_overrides):
    cfg = resolve(HardenConfig, overrides={"model": "test_resnet", **tiny_harden_overrides, **CHECK})
    out = tmp_path_factory.mktemp("guard") / "h.safetensors"
    summary = harden(cfg, out)
    return cfg, out, summary


def test_recommendation_names_the_three_outcomes():
    more = recommendation("more robust", 2.5, -1.0, ci_points=[0.5, 4.5], p=0.01, n=400)
    assert more.startswith(
        "hardened model is more robust under adaptive attack (+2.5 points, 95% CI +0.5 to +4.5, "
        "McNemar p=0.01, n=400; clean -1.0)"
    )
    low = recommendation("LESS robust", -3.25, 0.5, ci_points=[-6.0, -0.5], p=0.02, n=400)
    assert "default path" not in low  # a linear head's loss is not pointed to the path it may come from
    sodef_low = recommendation("LESS robust", -3.25, 0.5, ci_points=[-6.0, -0.5], p=0.02, n=400, sodef_head=True)
    assert sodef_low.startswith(low) and "`sodef harden BASE --data D` (the default path" in sodef_low
    from pathlib import Path

    from sodef_cli.guard import ROBUST_RECIPE

    assert (Path(__file__).resolve().parent.parent / ROBUST_RECIPE).is_file()  # the pointer leads to a real recipe
    assert "LESS robust than its base under adaptive attack (-3.2 points" in low or "(-3.3 points" in low
    assert "sodef attack --suite adaptive" in low
    tie = recommendation("no significant difference", 1.0, 0.0, ci_points=[-2.0, 4.0], p=0.5, n=100, n_needed=2221)
    assert tie.startswith("no significant difference at n=100") and "about n=2221 check images would resolve" in tie
    assert "no sample size would resolve it" in recommendation("no significant difference", 0.0, 0.0, n=100)
    assert recommendation("more robust", 1.0, 0.0, n=10, reduced="50 of 100 APGD-CE steps").endswith(
        "REDUCED: 50 of 100 APGD-CE steps, weaker than the reference evaluation"
    )


@pytest.mark.parametrize(
    "gain,p,outcome",
    [
        (3.0, 0.01, "more robust"),
        (-3.0, 0.049, "LESS robust"),
        (3.0, 0.05, "no significant difference"),
        (-20.0, 0.2, "no significant difference"),
        (0.0, 1.0, "no significant difference"),
    ],
)
def test_outcome_needs_a_significant_mcnemar_test(gain, p, outcome):
    assert decide(gain, p) == outcome


def test_check_runs_on_held_out_images_and_is_stored(tiny_harden_overrides, tmp_path, monkeypatch):
    """The guard's images are in neither the training nor the validation features that phases 1 and 3 see."""
    import sodef_cli.harden as hmod

    seen = {}
    real_extract, real_phase1, real_phase3 = hmod.extract_features, hmod.phase1, hmod.phase3

    def extract(fn, images, **kw):
        out = real_extract(fn, images, **kw)
        seen.setdefault(kw["task"], out)
        return out

    def phase1(head, h_tr, y_tr, h_val, y_val, *a, **kw):
        seen["phase1"] = (h_tr.clone(), h_val.clone())
        return real_phase1(head, h_tr, y_tr, h_val, y_val, *a, **kw)

    def phase3(head, z_tr, y_tr, z_val, y_val, *a, **kw):
        seen["phase3"] = (len(y_tr), len(y_val))
        return real_phase3(head, z_tr, y_tr, z_val, y_val, *a, **kw)

    monkeypatch.setattr(hmod, "extract_features", extract)
    monkeypatch.setattr(hmod, "phase1", phase1)
    monkeypatch.setattr(hmod, "phase3", phase3)
    cfg = resolve(HardenConfig, overrides={"model": "test_resnet", **tiny_harden_overrides, **CHECK})
    out = tmp_path / "h.safetensors"
    summary = harden(cfg, out)
    check = summary["check"]
    assert check["suite"] == "quick" and check["split"] == "check" and check["n"] == 24
    feats = seen["features (train)"]
    h_tr, h_val = seen["phase1"]
    held = feats[check["train_indices"]]
    for rows in (h_tr, h_val):  # no guard image among the rows any selection or training step saw
        match = (held.unsqueeze(1) == rows.unsqueeze(0)).all(-1).any(1)
        assert not match.any(), f"{int(match.sum())} guard images were seen by training/selection"
    assert seen["phase3"] == (len(h_tr), len(h_val)) and len(h_tr) + len(h_val) + 24 == len(feats)
    assert set(check["hardened"]["attacks"]) == {"apgd-ce", "fixed-step-apgd-ce", "transfer-apgd-ce"}
    # the paired figures agree with the accuracies they come from, and the p-value with the exact binomial test
    b_only, h_only = check["discordant"]
    n = check["n"]
    assert check["hardened"]["worst_case"] - check["base"]["worst_case"] == pytest.approx((h_only - b_only) / n)
    tail = sum(math.comb(b_only + h_only, i) for i in range(min(b_only, h_only) + 1)) / 2 ** (b_only + h_only)
    assert check["p_mcnemar"] == pytest.approx(min(1.0, 2 * tail))
    lo, hi = check["gain_points_ci95"]
    assert lo <= check["gain_points"] <= hi
    assert check["outcome"] == decide(check["gain_points"], check["p_mcnemar"])
    assert check["reduced"] == "2 of 100 APGD-CE steps" and "REDUCED: 2 of 100 APGD-CE steps" in check["recommendation"]
    names = [c["name"] for c in check["checks"]]
    assert "fixed-step copy agrees with the real model" in names  # the agreement check runs in the guard
    assert read_metadata(out)["check"] == check
    text = " ".join(to_text(render_harden_summary(summary), width=250).split())
    assert "REDUCED: 2 of 100 APGD-CE steps" in text and "held-out check images" in text


def test_check_is_deterministic_under_a_seed(guarded, tmp_path):
    cfg, _, summary = guarded
    again = harden(cfg, tmp_path / "again.safetensors")
    assert again["check"] == summary["check"]


def test_no_check_and_require_gain(tmp_path, monkeypatch, tiny_harden_overrides):
    import sodef_cli.guard as guard

    args = ["harden", "test_resnet", "--out", str(tmp_path / "h.safetensors"), "--json"]
    for k, v in {**tiny_harden_overrides, **CHECK}.items():
        if k in ("data", "image_size", "device"):
            args += [f"--{k.replace('_', '-')}", str(v)]
        elif k != "check.enabled":
            args += ["--set", f"{k}={v}"]
    res = runner.invoke(app, args + ["--no-check"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["check"] is None

    real = guard.run_check

    def losing(*a, **kw):
        out = real(*a, **kw)
        out.update(
            gain_points=-5.0,
            more_robust=False,
            outcome="LESS robust",
            recommendation=recommendation("LESS robust", -5.0, 0.0, n=out["n"]),
        )
        return out

    monkeypatch.setattr(guard, "run_check", losing)
    res = runner.invoke(app, args + ["--require-gain"])
    assert res.exit_code == 1, res.output
    assert "LESS robust" in json.loads(res.stdout)["check"]["recommendation"]
    meta = read_metadata(tmp_path / "h.safetensors")  # still written, clearly marked
    assert meta["check"]["require_gain_failed"] is True
    res = runner.invoke(app, args)  # without --require-gain a loss still exits 0
    assert res.exit_code == 0, res.output


# ---------------------------------------------------------------- held-out for real (issue 22)


@pytest.mark.parametrize("val_fraction", [0.1, 0.8])
def test_guard_images_are_outside_the_pretrained_base_training_images(base_run, val_fraction):
    """`sodef pretrain` records which images it trained on; `harden` on the same data draws the guard's check images
    elsewhere (0.8: the base's own split; 0.1: another split, where harden's training images include images the base
    never saw). Break: carve the check split from harden's own training split (`check_split`) -> overlap -> fails."""
    from sodef_cli.data import load_data, stratified_split
    from sodef_cli.harden import _base_trained, _split

    meta = read_metadata(base_run[0])
    rec = meta["training_data"]
    data = load_data("demo")
    trained = stratified_split(data.train.labels, rec["val_fraction"], rec["seed"])[0]
    cfg = resolve(HardenConfig, overrides={"model": str(base_run[0]), "val_fraction": val_fraction, "check.n": 64})
    known = _base_trained(meta, data)
    assert known is not None and torch.equal(known, trained)
    split = _split(cfg, data, known)
    assert split.held_out_from_base and len(split.check) == 64
    check, seen = set(split.check.tolist()), set(trained.tolist())
    assert not check & seen, f"{len(check & seen)} check images were among the base's training images"
    assert not check & set(split.train.tolist()) and not check & set(split.val.tolist())
    # other data (here: the same images at another size) -> unknown, and the card says so
    assert _base_trained(meta, load_data("demo", image_size=16)) is None


def test_card_says_when_check_images_may_overlap():
    from sodef_cli.report.card import _guard_blocks

    check = {"outcome": "no significant difference", "recommendation": "x", "base": {}, "hardened": {}}
    text = lambda c: " ".join(str(b) for b in _guard_blocks(c)[1])
    assert "may overlap the base's training data" in text(check)
    assert "may overlap" not in text({**check, "held_out_from_base": True})
