"""The hardening guard: does the hardened model beat its base under adaptive attack?

Runs the ``quick`` suite of ``sodef attack`` (APGD-CE on the model as shipped, APGD-CE through the
fixed-step copy, transfer APGD-CE from the base) on validation images carved from train (never the test
split), and turns the worst-case difference into a plain recommendation.
"""
from __future__ import annotations

from typing import Any

import torch

from .data import ImageSet, select_samples
from .evaluate import AttackConfig, _model_summary, cascade, suite_attacks
from .head import has_ode

__all__ = ["run_check", "recommendation"]


def recommendation(gain_points: float, clean_delta_points: float) -> str:
    """The sentence printed after hardening; it follows the sign of the worst-case difference."""
    if gain_points > 0:
        return (f"hardened model is more robust under adaptive attack (+{gain_points:.1f} points, "
                f"clean {clean_delta_points:+.1f})")
    if gain_points < 0:
        return (f"hardened model is LESS robust than its base under adaptive attack ({gain_points:.1f} points): "
                "keep the base, or evaluate with `sodef attack --suite adaptive` before deploying")
    return ("hardened model is NOT more robust than its base under adaptive attack (+0.0 points): "
            "keep the base, or evaluate with `sodef attack --suite adaptive` before deploying")


def run_check(base, hardened, val: ImageSet, cfg, *, device, reporter) -> dict[str, Any]:
    """Quick adaptive suite on up to ``cfg.check.n`` validation images. Returns figures as data.

    ``base`` and ``hardened`` are the models as shipped ([0,1] images -> logits); the fixed-step attack runs
    where ``hardened`` has an ODE.
    """
    c = cfg.check
    base, hardened = base.to(device).eval(), hardened.to(device).eval()
    params = [p for m in (base, hardened) for p in m.parameters()]
    was = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    order = select_samples(val.labels, c.n, cfg.seed)
    x, y = val.floats(order), val.labels[order]
    acfg = AttackConfig(suite="quick", norm=c.norm, eps=(c.eps,), n=len(order), seed=cfg.seed, batch_size=c.batch_size,
                        steps=c.steps, checks=False)
    ode = has_ode(hardened)
    with torch.no_grad():
        n_classes = int(hardened(x[:1].to(device)).shape[1])
    plan = suite_attacks("quick", [], c.norm, has_ode=ode)
    doc: dict = {"runs": []}
    cascade(base, hardened, x, y, acfg, plan=plan, n_classes=n_classes,
            fixed_step=hardened.head.block.step_size if ode else None, doc=doc, save=lambda: None, reporter=reporter, device=device)
    for p, flag in zip(params, was):
        p.requires_grad_(flag)
    run = doc["runs"][0]
    summ = {m: _model_summary(r, len(order)) for m, r in run["models"].items()}
    for m in summ.values():
        m.pop("seconds", None)  # timings stay out of the file (bitwise-reproducible)
    gain = 100 * (summ["hardened"]["worst_case"] - summ["base"]["worst_case"])
    clean_delta = 100 * (summ["hardened"]["clean"] - summ["base"]["clean"])
    return {
        "suite": "quick",
        "split": "validation",
        "n": len(order),
        "norm": c.norm,
        "eps": c.eps,
        "steps": c.steps,
        "val_positions": [int(i) for i in order],  # positions within the validation split
        "base": summ["base"],
        "hardened": summ["hardened"],
        "gain_points": round(gain, 6),
        "clean_delta_points": round(clean_delta, 6),
        "more_robust": gain > 0,
        "recommendation": recommendation(gain, clean_delta),
        "checks": run.get("checks", []),
    }
