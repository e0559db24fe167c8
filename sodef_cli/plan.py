"""The plan of a ``sodef attack`` run: the attacks per model, the samples, and an estimated time from timing the
models on the first batch, with the cascade modelled (``estimate_plan``, ``plan_text``); and the "all attacks"
progress counted in estimated seconds of work that follows the real counts as attacks start (``AttackProgress``)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

from .attacks import ATTACKS, AttackParams

if TYPE_CHECKING:
    from .evaluate import AttackConfig

__all__ = ["AttackProgress", "eps_text", "estimate_plan", "estimate_record", "plan_text", "FIRST_SUCCESS_BOUNDS"]


def _units(name: str, p: AttackParams) -> tuple[float, str]:
    """(passes per attacked sample, "grad" or "forward") of one attack at its settings: a rough cost model."""
    return ATTACKS[name].cost(p)


def _time_passes(
    models: list, x: torch.Tensor, y: torch.Tensor, device, *, norm: str, eps: float, rounds: int = 3
) -> dict[int, tuple[float, float, float, float | None]]:
    """{id(model): (seconds per sample of a forward pass, of a forward + backward pass, clean accuracy, the share
    of the clean-correct samples one gradient-sign step of ``eps`` fools, seconds a first pass at a new batch shape
    costs beyond a later one)} on one batch.

    Times are the median of ``rounds`` timed passes, the models taken in turn within each round so that a busy
    spell of the machine does not fall on one model only (on a loaded 2-core machine single passes vary 3x). Each
    model first runs one untimed pass of each kind at the timed shape (a first pass builds the trace for that shape,
    oneDNN's primitives, the allocator, and can cost 100x a later one). The one-step attack reuses the warm-up's
    gradient: it is the plan's prior for how many samples the first attack of a cascade fools."""
    import statistics

    import torch.nn.functional as F

    x, y = x.to(device), y.to(device)

    def forward(model) -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            model(x)
        return time.perf_counter() - t0

    def grad_pass(model) -> tuple[float, torch.Tensor]:
        xg = x.clone().requires_grad_(True)
        t0 = time.perf_counter()
        with torch.enable_grad():
            (g,) = torch.autograd.grad(F.cross_entropy(model(xg), y), xg)
        return time.perf_counter() - t0, g

    acc, fooled, fwd, grad, first = {}, {}, {}, {}, {}
    for m in models:
        t0 = time.perf_counter()
        with torch.no_grad():
            correct = m(x).argmax(1) == y  # also the forward warm-up
        first[id(m)] = time.perf_counter() - t0
        acc[id(m)] = float(correct.float().mean())
        g = grad_pass(m)[1]
        if norm == "Linf":
            step = eps * g.sign()
        else:
            step = eps * g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (g.ndim - 1))
        with torch.no_grad():
            wrong = m((x + step).clamp(0, 1)).argmax(1) != y
        fooled[id(m)] = float((wrong & correct).sum() / correct.sum()) if correct.any() else None
    for _ in range(rounds):
        for m in models:
            fwd.setdefault(id(m), []).append(forward(m))
            grad.setdefault(id(m), []).append(grad_pass(m)[0])
    n = len(x)
    return {
        k: (
            statistics.median(fwd[k]) / n,
            statistics.median(grad[k]) / n,
            acc[k],
            fooled[k],
            max(0.0, first[k] - statistics.median(fwd[k])),
        )
        for k in acc
    }


# the share of a model's clean-correct samples the first attack of a cascade fools, before it has run (every later
# attack runs on the rest): what one gradient-sign step fooled on the timing batch, within these bounds (the first
# attack is usually stronger than one step, and a few samples survive even a model that one step breaks). Replaced
# by the real count once the attack ran.
FIRST_SUCCESS_BOUNDS = (0.0, 0.95)
FIRST_SUCCESS_DEFAULT = 0.5  # a timing batch without a clean-correct sample


def estimate_plan(
    entries: list[dict], x: torch.Tensor, y: torch.Tensor, cfg: AttackConfig, *, n_classes: int, device
) -> dict:
    """The plan of a run with its estimated time, from timing one forward and one backward pass per model on the
    first batch of the evaluated samples (at most 32 images).

    ``entries``: ``{"label", "model", "attacks", "fixed" (fixed-step copy or None), "source" (transfer source or
    None), "judge_alone"}`` per model. The cascade is modelled: the first attack runs on the clean-correct samples
    (the clean accuracy of the timing batch), every later one on those it is expected not to fool (the prior: what
    one gradient-sign step fooled on the timing batch, ``FIRST_SUCCESS_BOUNDS``); with ``all_samples`` every attack
    runs on every clean-correct sample.
    Per model: ``cost_per_sample`` (seconds per attacked sample of each attack), ``expected_samples`` (per attack),
    ``checks_seconds`` (per eps) and ``estimated_seconds``.
    """
    m = min(len(y), cfg.batch_size, 32)
    xb, yb = x[:m], y[:m]
    t_start = time.perf_counter()
    surrogates = [e.get(k) for e in entries for k in ("model", "source", "fixed")]
    timed = _time_passes(
        list({id(m): m for m in surrogates if m is not None}.values()), xb, yb, device, norm=cfg.norm, eps=cfg.eps[0]
    )

    def cost(model) -> tuple[float, float, float]:
        return timed[id(model)][:3]

    models, total = [], 0.0
    p = AttackParams(norm=cfg.norm, eps=cfg.eps[0], n_classes=n_classes, steps=cfg.steps, queries=cfg.queries)
    for e in entries:
        fwd, grad, acc = cost(e["model"])
        per_sample: dict[str, float] = {}
        fixed: dict[str, float] = {}
        for name in e["attacks"]:
            kind = ATTACKS[name].kind
            via = e["model"]
            if kind == "transfer" and e.get("source") is not None:
                via = e["source"]
            elif kind == "fixed-step" and e.get("fixed") is not None:
                via = e["fixed"]
            f_via, g_via, _ = cost(via)
            units, what = _units(name, p)
            per_sample[name] = units * (g_via if what == "grad" else f_via) + fwd * (2 if e.get("judge_alone") else 1)
            # every attack meets new batch shapes (its pool, the last batch): traces and kernels built again
            fixed[name] = timed[id(e["model"])][4] + (timed[id(via)][4] if via is not e["model"] else 0.0)
        one_step = timed[id(e["model"])][3]
        lo, hi = FIRST_SUCCESS_BOUNDS
        prior = min(hi, max(lo, FIRST_SUCCESS_DEFAULT if one_step is None else one_step))
        expected = _expected_samples(list(e["attacks"]), acc * len(y), prior, cfg.all_samples)
        checks = 0.0
        if cfg.checks:  # masking checks: PGD-20 at a very large eps, and forward passes in other batch compositions
            m_chk = min(cfg.check_samples, len(y))
            checks = m_chk * (20 * grad + 3 * fwd + (cost(e["fixed"])[0] if e.get("fixed") is not None else 0.0))
        seconds = (sum(per_sample[a] * expected[a] + fixed[a] for a in per_sample) + checks) * len(cfg.eps)
        total += seconds
        models.append(
            {
                "label": e["label"],
                "attacks": list(e["attacks"]),
                "clean_first_batch": acc,
                "prior_first_success": prior,
                "seconds_per_sample_forward": fwd,
                "seconds_per_sample_grad": grad,
                "cost_per_sample": per_sample,
                "cost_fixed": fixed,
                "expected_samples": expected,
                "checks_seconds": checks,
                "estimated_seconds": seconds,
            }
        )
    return {
        "n": int(len(y)),
        "eps": list(cfg.eps),
        "norm": cfg.norm,
        "batch_size": cfg.batch_size,
        "timing_batch": m,
        "timing_seconds": time.perf_counter() - t_start,
        "models": models,
        "estimated_seconds": total,
        "mode": "all samples" if cfg.all_samples else "cascade",
        "checks": cfg.checks,
    }


def estimate_record(plan: dict) -> dict:
    """The plan's estimate as the results file keeps it: the total and, per model, what it was made of."""
    keep = ("label", "clean_first_batch", "prior_first_success", "cost_per_sample", "cost_fixed", "expected_samples")
    return {
        "seconds": plan.get("estimated_seconds"),
        "timing_batch": plan.get("timing_batch"),
        "models": [{k: m.get(k) for k in keep} for m in plan.get("models", [])],
    }


def _expected_samples(names: list[str], pool: float, first_success: float, all_samples: bool) -> dict[str, float]:
    """Samples each attack of ``names`` is expected to run on, from the ``pool`` the first one gets: in a cascade
    the later ones get what the first did not fool (later attacks fool few more: ignored)."""
    return {a: pool if i == 0 or all_samples else pool * (1 - first_success) for i, a in enumerate(names)}


class AttackProgress:
    """The "all attacks" progress task, counted in estimated seconds of work: each attack's cost per sample (from
    the plan) times the samples it attacks, plus its fixed cost (new batch shapes) when it ends. When an attack starts, its real pool replaces the plan's expectation
    for it and (in a cascade) for the attacks after it, and the task's total is restarted with the new sum: the
    bar's remaining time follows the real count."""

    def __init__(self, plan: dict, cfg: AttackConfig, reporter):
        self.reporter, self.all_samples = reporter, cfg.all_samples
        self.models = {m["label"]: m for m in plan.get("models", [])}
        self.expected = {  # (eps index, label) -> {attack: samples}
            (i, lab): dict(m["expected_samples"]) for i in range(len(cfg.eps)) for lab, m in self.models.items()
        }
        self.fixed = {  # (eps index, label) -> {attack: seconds}
            (i, lab): dict(m.get("cost_fixed") or {}) for i in range(len(cfg.eps)) for lab, m in self.models.items()
        }
        self.checks = {(i, lab): m["checks_seconds"] for i in range(len(cfg.eps)) for lab, m in self.models.items()}
        self.eps = list(cfg.eps)

    def total(self) -> float:
        return sum(
            sum(self.models[key[1]]["cost_per_sample"].get(a, 0.0) * n for a, n in counts.items())
            + sum(self.fixed[key].values())
            + self.checks[key]
            for key, counts in self.expected.items()
        )

    def start(self) -> None:
        self.reporter.start("all attacks", max(1, round(self.total())))

    def skip(self, eps: float, label: str, names: list[str]) -> None:
        """Attacks finished in an earlier session: no work left."""
        counts = self.expected.get((self.eps.index(eps), label), {})
        fixed = self.fixed.get((self.eps.index(eps), label), {})
        for a in names:
            counts[a] = fixed[a] = 0.0

    def begin(self, eps: float, label: str, name: str, pool: int, names: list[str], first: bool) -> None:
        """Attack ``name`` starts on ``pool`` samples; ``names`` the model's attacks still to run after it."""
        key = (self.eps.index(eps), label)
        if key not in self.expected:
            return
        counts = self.expected[key]
        counts[name] = float(pool)
        if not self.all_samples:
            prior = self.models[label]["prior_first_success"] if first else 0.0
            for a in names:
                counts[a] = pool * (1 - prior)
        self.start()

    def advance(self, label: str, name: str, n: int) -> None:
        cost = self.models.get(label, {}).get("cost_per_sample", {}).get(name, 0.0)
        self.reporter.advance("all attacks", round(cost * n, 3))

    def finished(self, eps: float, label: str, name: str) -> None:
        self.reporter.advance("all attacks", round(self.fixed.get((self.eps.index(eps), label), {}).get(name, 0.0), 3))

    def checked(self, eps: float, label: str) -> None:
        self.reporter.advance("all attacks", round(self.checks.get((self.eps.index(eps), label), 0.0), 3))


def plan_text(plan: dict) -> str:
    """The plan as the lines printed before a run (stderr)."""
    if not plan:
        return ""
    lines = [
        f"plan: {len(plan['models'])} model(s), {plan['n']} samples, {plan['norm']} eps "
        + ", ".join(eps_text(e, plan["norm"]) for e in plan["eps"])
        + f", {plan['mode']}"
    ]
    for m in plan["models"]:
        src = f"; transfer from {m['transfer_source']}" if m.get("transfer_source") else ""
        lines.append(
            f"  {m['label']}: {', '.join(m['attacks']) or 'no attacks'}{src} "
            f"(clean {100 * m['clean_first_batch']:.0f}% on the timing batch; about {_duration(m['estimated_seconds'])})"
        )
    mode = (
        "every attack runs on every clean-correct sample"
        if plan["mode"] == "all samples"
        else "cascade: the first attack on the clean-correct samples, the later ones on the "
        + "share of them it is expected not to fool (what one gradient-sign step did not fool: "
        + ", ".join(f"{m['label']} {100 * (1 - m['prior_first_success']):.0f}%" for m in plan["models"])
        + "; the progress bar follows the real counts)"
    )
    lines.append(
        f"estimated time: about {_duration(plan['estimated_seconds'])} (timed on the first batch of "
        f"{plan['timing_batch']} images; {mode}" + ("; masking checks included" if plan.get("checks") else "") + ")"
    )
    return "\n".join(lines)


def eps_text(eps: float, norm: str) -> str:
    k = eps * 255
    return f"{round(k)}/255" if norm == "Linf" and eps > 0 and abs(k - round(k)) < 1e-6 else f"{eps:.4g}"


def _duration(s: float) -> str:
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"
