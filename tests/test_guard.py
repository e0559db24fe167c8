"""The hardening guard: quick adaptive suite on validation images at the end of `sodef harden`."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from sodef_cli.cli import app
from sodef_cli.config import HardenConfig, resolve
from sodef_cli.data import load_data, stratified_split
from sodef_cli.guard import recommendation
from sodef_cli.harden import harden
from sodef_cli.io import read_metadata

runner = CliRunner()
CHECK = {"check.enabled": True, "check.n": 24, "check.steps": 2, "check.batch_size": 12}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, tiny_harden_overrides):
    cfg = resolve(HardenConfig, overrides={"model": "test_resnet", **tiny_harden_overrides, **CHECK})
    out = tmp_path_factory.mktemp("guard") / "h.safetensors"
    summary = harden(cfg, out)
    return cfg, out, summary


def test_recommendation_follows_the_sign():
    assert recommendation(2.5, -1.0).startswith("hardened model is more robust under adaptive attack (+2.5 points, clean -1.0)")
    low = recommendation(-3.25, 0.5)
    assert "LESS robust than its base under adaptive attack (-3.2 points)" in low or "(-3.3 points)" in low
    assert "sodef attack --suite adaptive" in low
    assert "NOT more robust" in recommendation(0.0, 0.0)


def test_check_runs_on_validation_images_and_is_stored(guarded):
    cfg, out, summary = guarded
    check = summary["check"]
    assert check["suite"] == "quick" and check["split"] == "validation" and check["n"] == 24
    data = load_data("demo", image_size=16)
    _, val_idx = stratified_split(data.train.labels, cfg.val_fraction, cfg.seed)
    assert set(check["train_indices"]) <= set(val_idx.tolist())  # validation, never the test split
    assert set(check["hardened"]["attacks"]) == {"apgd-ce", "fixed-step-apgd-ce", "transfer-apgd-ce"}
    gain = 100 * (check["hardened"]["worst_case"] - check["base"]["worst_case"])
    assert check["gain_points"] == pytest.approx(gain)
    assert check["recommendation"] == recommendation(check["gain_points"], check["clean_delta_points"])
    assert read_metadata(out)["check"] == check
    assert "check" in summary["timings_s"]


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
        out.update(gain_points=-5.0, more_robust=False, recommendation=recommendation(-5.0, 0.0))
        return out

    monkeypatch.setattr(guard, "run_check", losing)
    res = runner.invoke(app, args + ["--require-gain"])
    assert res.exit_code == 1, res.output
    assert "LESS robust" in json.loads(res.stdout)["check"]["recommendation"]
    meta = read_metadata(tmp_path / "h.safetensors")  # still written, clearly marked
    assert meta["check"]["require_gain_failed"] is True
    res = runner.invoke(app, args)  # without --require-gain a loss still exits 0
    assert res.exit_code == 0, res.output
