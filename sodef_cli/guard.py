"""The hardening guard: does the hardened model beat its base under adaptive attack?

Runs the ``quick`` suite of ``sodef attack`` (APGD-CE on the model as shipped, APGD-CE through the
fixed-step copy, transfer APGD-CE from the base) on the guard's own images: a check split carved from train
(``data.check_split``), held out from training and from every model-selection step, never the test split.
The fixed-step copy's agreement with the model is checked too (below 99% its attacks are weak).

The decision is paired (both models on the same images): the worst-case difference with Newcombe's paired
95% interval and the exact McNemar test. Three outcomes: "more robust", "LESS robust" (McNemar p < 0.05), or
"no significant difference at n=..." with the number of images that would resolve a difference of the size
measured (``stats.n_to_resolve``).
"""

from __future__ import annotations

from typing import Any

import torch

from .attacks import ATTACKS, AttackParams
from .data import ImageSet, select_samples
from .evaluate import (
    AttackConfig,
    EvaluationState,
    _model_summary,
    _surrogate_check,
    cascade,
    differences,
    suite_attacks,
    worst_case_flags,
)
from .head import has_ode
from .stats import OUTCOMES, decide, n_to_resolve, paired_difference

__all__ = ["run_check", "recommendation", "OUTCOMES", "decide", "require_gain_failure"]


def require_gain_failure(check: dict[str, Any], *, require_gain: bool, require_significant_gain: bool) -> str | None:
    """The rule a guard outcome fails, or None: ``require_gain`` fails on a significant loss,
    ``require_significant_gain`` on anything but a significant gain (the one decision rule of ``stats.decide``)."""
    outcome = check["outcome"]
    if require_significant_gain and outcome != "more robust":
        return "--require-significant-gain: no significant gain"
    if require_gain and outcome == "LESS robust":
        return "--require-gain: a significant loss"
    return None


def _fig(points: float, ci: list[float] | None, p: float | None, n: int) -> str:
    s = f"{points:+.1f} points"
    if ci is not None:
        s += f", 95% CI {ci[0]:+.1f} to {ci[1]:+.1f}"
    if p is not None:
        s += f", McNemar p={p:.3g}"
    return s + f", n={n}"


ROBUST_RECIPE = "recipes/demo.toml"  # the default path (adversarial fine-tuning), pointed to after a SODEF loss


def recommendation(
    outcome: str,
    gain_points: float,
    clean_delta_points: float,
    *,
    ci_points: list[float] | None = None,
    p: float | None = None,
    n: int = 0,
    n_needed: int | None = None,
    reduced: str = "",
    sodef_head: bool = False,
) -> str:
    """The sentence printed after hardening, one per outcome; ``reduced`` names budgets below the reference.

    A SODEF head found LESS robust is pointed to adversarial fine-tuning, the mode that measurably hardens."""
    fig = _fig(gain_points, ci_points, p, n)
    if outcome == "more robust":
        text = f"hardened model is more robust under adaptive attack ({fig}; clean {clean_delta_points:+.1f})"
    elif outcome == "LESS robust":
        text = (
            f"hardened model is LESS robust than its base under adaptive attack ({fig}): "
            "keep the base, or evaluate with `sodef attack --suite adaptive` before deploying"
        )
        if sodef_head:
            text += (
                "; to harden it instead, fine-tune the base adversarially: `sodef harden BASE --data D` (the default "
                f"path, as `{ROBUST_RECIPE}` runs it on the demo data; see the README's ablation)"
            )
    else:
        text = f"no significant difference at n={n} between the hardened model and its base under adaptive attack ({fig}); "
        if n_needed is None:
            text += "no sample size would resolve it (the models disagree equally often each way)"
        else:
            text += f"about n={n_needed} check images would resolve a difference of this size (raise check.n)"
        text += "; evaluate with `sodef attack --suite adaptive` before deploying"
    if reduced:
        text += f". REDUCED: {reduced}, weaker than the reference evaluation"
    return text


def run_check(base, hardened, check: ImageSet, cfg, *, device, reporter) -> dict[str, Any]:
    """Quick adaptive suite on up to ``cfg.check.n`` held-out check images. Returns figures as data.

    ``base`` and ``hardened`` are the models as shipped ([0,1] images -> logits); the fixed-step attack and the
    fixed-step agreement check run where ``hardened`` has an ODE.
    """
    c = cfg.check
    base, hardened = base.to(device).eval(), hardened.to(device).eval()
    params = [p for m in (base, hardened) for p in m.parameters()]
    was = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    order = select_samples(check.labels, c.n, cfg.seed)
    x, y = check.floats(order), check.labels[order]
    acfg = AttackConfig(
        suite="quick",
        norm=c.norm,
        eps=(c.eps,),
        n=len(order),
        seed=cfg.seed,
        batch_size=c.batch_size,
        steps=c.steps,
        checks=False,
    )
    ode = has_ode(hardened)
    with torch.no_grad():
        n_classes = int(hardened(x[:1].to(device)).shape[1])
    plan = suite_attacks("quick", [], c.norm, has_ode=ode)
    state = EvaluationState.from_dict({"runs": []})  # kept in memory: the figures go into the hardened file
    fixed_step = hardened.head.block.step_size if ode else None
    cascade(
        base,
        hardened,
        x,
        y,
        acfg,
        plan=plan,
        n_classes=n_classes,
        fixed_step=fixed_step,
        state=state,
        reporter=reporter,
        device=device,
    )
    agreement = [_surrogate_check(hardened, x, acfg, device, fixed_step)] if ode else []
    for p, flag in zip(params, was):
        p.requires_grad_(flag)
    run = state.to_dict()["runs"][0]
    summ = {m: _model_summary(r, len(order)) for m, r in run["models"].items()}
    for m in summ.values():
        m.pop("seconds", None)  # timings stay out of the file (bitwise-reproducible)
    flags = {m: worst_case_flags(r["clean"], r["attacks"]) for m, r in run["models"].items()}
    pd = paired_difference(flags["base"], flags["hardened"])
    diff = differences(run)
    gain = 100 * pd["diff"]
    ci_points = [100 * v for v in pd["diff_ci95"]]
    clean_delta = 100 * diff["clean"]
    outcome = decide(gain, pd["p_mcnemar"])
    n_needed = None if outcome != "no significant difference" else n_to_resolve(*pd["discordant"], len(order))
    reference = ATTACKS["apgd-ce"].params(AttackParams(norm=c.norm, eps=c.eps, n_classes=2))["steps"]
    reduced_text = f"{c.steps} of {reference} APGD-CE steps" if c.steps is not None and c.steps < reference else ""
    return {
        "suite": "quick",
        "split": "check",  # held out from training and from every selection step
        "n": len(order),
        "norm": c.norm,
        "eps": c.eps,
        "steps": c.steps,
        "reduced": reduced_text or None,
        "positions": [int(i) for i in order],  # positions within the check split
        "base": summ["base"],
        "hardened": summ["hardened"],
        "gain_points": round(gain, 6),
        "gain_points_ci95": [round(v, 6) for v in ci_points],
        "p_mcnemar": pd["p_mcnemar"],
        "discordant": pd["discordant"],  # [base only robust, hardened only robust]
        "clean_delta_points": round(clean_delta, 6),
        "clean_delta_points_ci95": [round(100 * v, 6) for v in diff["clean_ci95"]],
        "outcome": outcome,
        "n_to_resolve": n_needed,
        "more_robust": outcome == "more robust",
        "recommendation": recommendation(
            outcome,
            gain,
            clean_delta,
            ci_points=ci_points,
            p=pd["p_mcnemar"],
            n=len(order),
            n_needed=n_needed,
            reduced=reduced_text,
            sodef_head=ode,
        ),
        "checks": run.get("checks", []) + agreement,
    }
