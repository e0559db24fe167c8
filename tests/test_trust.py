"""Skipped phases, the stability warning and the precision of the stored accuracies."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from sodef_cli.cli import app
from sodef_cli.config import HardenConfig, Phase2Config, RegularizerConfig, resolve
from sodef_cli.harden import harden
from sodef_cli.io import read_metadata
from sodef_cli.phases import stability_warning
from sodef_cli.report import card_data, render, to_text

runner = CliRunner()


def _card_text(path) -> str:
    return " ".join(to_text(render(card_data(read_metadata(path), path=str(path)), "table"), width=200).split())


@pytest.mark.parametrize("phase", ["phase1", "phase2", "phase3", "probe"])
def test_zero_epochs_skip_a_phase_and_the_file_is_written(phase, tiny_harden_overrides, tmp_path):
    out = tmp_path / "h.safetensors"
    cfg = resolve(HardenConfig, overrides={"model": "test_resnet", **tiny_harden_overrides, f"{phase}.epochs": 0})
    summary = harden(cfg, out)
    meta = read_metadata(out)  # the metadata writer refuses NaN: the file exists only if no NaN was left
    json.dumps(meta, allow_nan=False)
    if phase != "probe":
        m = meta["metrics"]["phases"][phase]
        assert m["skipped"] is True and m["steps"] == 0
        nulls = [k for k, v in m.items() if v is None]
        assert nulls, m  # the losses of a phase that never ran are null, not NaN
        assert summary["phases"][phase] == m
    row = "probe" if phase == "probe" else phase
    assert f"{row} " in _card_text(out) and "skipped (epochs = 0)" in _card_text(out)
    others = [p for p in ("phase1", "phase2", "phase3") if p != phase]
    assert all(meta["metrics"]["phases"][p]["skipped"] is False for p in others)


def test_stability_warning_threshold_and_advice():
    reg, p2 = RegularizerConfig(), Phase2Config(epochs=3)
    assert stability_warning({"frac_eig_negative": 0.9, "mean_max_real_eig": -0.1}, p2, reg) is None
    text = stability_warning({"frac_eig_negative": 0.0, "mean_max_real_eig": 0.0007}, p2, reg)
    assert "only 0.0% of the Jacobians stable" in text and "+0.0007" in text
    assert "phase2.epochs, now 3" in text and "regularizer.weight_diag (now 10)" in text
    paper = stability_warning({"frac_eig_negative": 0.5}, p2, RegularizerConfig(form="paper"))
    assert "regularizer.alpha_diag" in paper


def test_unstable_phase2_is_said_in_the_summary_the_card_and_json(tiny_harden_overrides, tmp_path, monkeypatch):
    import sodef_cli.harden as hmod

    real = hmod.jacobian_stability
    calls = []

    def unstable_after_phase2(func, z):  # before phase 2, after it, final: report phase 2 as failed
        calls.append(1)
        out = real(func, z)
        return {**out, "frac_eig_negative": 0.25} if len(calls) == 2 else out

    monkeypatch.setattr(hmod, "jacobian_stability", unstable_after_phase2)
    args = [
        "harden",
        "test_resnet",
        "--out",
        str(tmp_path / "h.safetensors"),
        "--json",
        "--no-check",
        "--data",
        "demo",
        "--image-size",
        "16",
        "--device",
        tiny_harden_overrides["device"],
    ]
    for k, v in tiny_harden_overrides.items():
        if k not in ("data", "image_size", "device", "check.enabled"):
            args += ["--set", f"{k}={v}"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    warning = json.loads(res.stdout)["stability"]["warning"]
    assert warning.startswith("phase 2 left only 25.0% of the Jacobians stable")
    assert "warning: phase 2 left only 25.0%" in res.stderr  # one plain line while hardening
    assert "STABILITY NOT REACHED: phase 2 left only 25.0%" in _card_text(tmp_path / "h.safetensors")


def test_stored_test_accuracies_use_fp32_features(tiny_harden_overrides, tmp_path, monkeypatch):
    """Features are extracted under bf16 autocast on CUDA; the test features behind the stored accuracies never are."""
    import sodef_cli.harden as hmod

    real, amp = hmod.extract_features, {}

    def spy(fn, images, **kw):
        amp[kw["task"]] = kw.get("amp", True)
        return real(fn, images, **kw)

    monkeypatch.setattr(hmod, "extract_features", spy)
    harden(
        resolve(HardenConfig, overrides={"model": "test_resnet", **tiny_harden_overrides}), tmp_path / "h.safetensors"
    )
    assert amp == {"features (train)": True, "features (test)": False}


@pytest.mark.parametrize("adjoint", [False, True])
def test_phase3_takes_exact_gradients_unless_told_otherwise(adjoint, tiny_harden_overrides, tmp_path, monkeypatch):
    """head.adjoint = true (the model as shipped) and phase3.adjoint = false: phase 3 backpropagates directly."""
    import torchdiffeq

    calls = []
    real = torchdiffeq.odeint_adjoint
    monkeypatch.setattr(torchdiffeq, "odeint_adjoint", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    over = {
        **tiny_harden_overrides,
        "head.adjoint": True,
        "phase3.adjoint": adjoint,
        "phase3.solver": "",  # the head's own solver, as the released code
        "phase2.epochs": 0,
        "phase1.epochs": 0,
    }
    harden(resolve(HardenConfig, overrides={"model": "test_resnet", **over}), tmp_path / "h.safetensors")
    assert bool(calls) is adjoint
    assert HardenConfig().phase3.adjoint is False  # the default trains phase 3 with exact gradients


def test_phase3_trains_through_the_fixed_step_solver_by_default(tiny_harden_overrides, tmp_path, monkeypatch):
    """Default phase 3: f and the classifier see the ODE through fixed midpoint steps, exact backprop, no adjoint."""
    import torchdiffeq

    import sodef_cli.head as head_mod

    calls = []
    real, real_fixed = torchdiffeq.odeint, head_mod.fixed_grid_solve

    def spy_fixed(f, y0, t, solver, step):
        calls.append((solver, torch.is_grad_enabled()))
        return real_fixed(f, y0, t, solver, step)

    monkeypatch.setattr(
        torchdiffeq,
        "odeint",
        lambda f, y0, t, **kw: calls.append((kw.get("method"), torch.is_grad_enabled())) or real(f, y0, t, **kw),
    )
    monkeypatch.setattr(head_mod, "fixed_grid_solve", spy_fixed)
    monkeypatch.setattr(torchdiffeq, "odeint_adjoint", lambda *a, **kw: pytest.fail("phase 3 used the adjoint"))
    over = {
        **tiny_harden_overrides,
        "head.solver": "dopri5",
        "head.adjoint": True,
        "phase1.epochs": 0,
        "phase2.epochs": 0,
    }
    harden(resolve(HardenConfig, overrides={"model": "test_resnet", **over}), tmp_path / "h.safetensors")
    assert {m for m, grad in calls if grad} == {"midpoint"}  # every differentiated solve: the training one
    assert HardenConfig().phase3.solver == "midpoint"
