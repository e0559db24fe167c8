"""Attack registry: torchattacks at reference settings, plus attacks built for ODE defenses.

Every attack maps clean images x in [0,1] (and labels y) to adversarial images inside the threat model
(Linf or L2 ball of radius eps, clipped to [0,1]); the cascade in ``evaluate.py`` evaluates them on the
*real* model. Defaults follow the reference implementations (AutoAttack: APGD-CE 100 iterations, APGD-T
9 targets x 100, FAB-T 9 targets x 100, Square 5,000 queries); ``--steps``/``--queries`` can lower
them, and results then record the reduced settings.

ODE-specific attacks (adaptive attacks on ODE defenses), for hardened models only:
- ``transfer-apgd-ce`` / ``transfer-pgd``: made on the base classifier (same backbone, no ODE);
- ``fixed-step-apgd-ce`` / ``fixed-step-pgd``: gradients through a fixed-step RK4 copy of the ODE;
- ``bpda-apgd-ce``: true ODE forward, identity backward;
- ``feature``: pulls backbone features towards those of another class's sample; never differentiates
  through the ODE.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UsageError

__all__ = ["AttackSpec", "Target", "AttackParams", "ATTACKS", "SUITES", "suite_attacks", "project", "max_loss_pgd"]


@dataclass(frozen=True)
class AttackParams:
    norm: str
    eps: float
    n_classes: int
    seed: int = 0
    steps: int | None = None  # override of iterative attacks' iterations
    queries: int | None = None  # override of Square's queries


@dataclass
class Target:
    """The model under attack and the surrogates the adaptive attacks use."""

    name: str  # "base" | "hardened"
    model: nn.Module  # the real model: adversarial examples are judged on it
    base: nn.Module  # transfer source: the base classifier (for two plain classifiers, the other model)
    fixed: nn.Module | None = None  # fixed-step RK4 copy (hardened only)
    bpda: nn.Module | None = None  # identity-backward copy (hardened only)
    features: Callable[[torch.Tensor], torch.Tensor] | None = None  # backbone pre-logits features
    bank: tuple[torch.Tensor, torch.Tensor] | None = None  # (features, labels) of every evaluated sample: feature-attack targets


@dataclass(frozen=True)
class AttackSpec:
    name: str
    kind: str  # white-box | black-box | transfer | fixed-step | bpda | feature
    norms: tuple[str, ...]
    hardened_only: bool
    run: Callable[[Target, torch.Tensor, torch.Tensor, AttackParams], torch.Tensor]
    params: Callable[[AttackParams], dict] = field(default=lambda p: {})
    description: str = ""


def project(x_adv: torch.Tensor, x: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """Project onto the eps-ball around x and [0,1]."""
    delta = x_adv - x
    if norm == "Linf":
        delta = delta.clamp(-eps, eps)
    else:
        n = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.ndim - 1))
        delta = delta * torch.clamp(eps / n, max=1.0)
    return (x + delta).clamp(0, 1)


def _steps(p: AttackParams, default: int) -> int:
    return p.steps if p.steps is not None else default


def _ta(cls_name: str, model: nn.Module, p: AttackParams, **kw):
    import torchattacks

    atk = getattr(torchattacks, cls_name)(model, **kw)
    atk.set_device(next(model.parameters()).device)
    return atk


def _n_targets(p: AttackParams) -> int:
    return min(9, p.n_classes - 1)


def _apgd(model, x, y, p: AttackParams, loss: str = "ce") -> torch.Tensor:
    atk = _ta("APGD", model, p, norm=p.norm, eps=p.eps, steps=_steps(p, 100), n_restarts=1, seed=p.seed, loss=loss)
    return atk(x, y)


def _apgd_surrogate(model, x, y, p: AttackParams) -> torch.Tensor:
    """APGD-CE on a surrogate (the base, or a differentiable copy), keeping every point's highest-loss iterate.

    torchattacks' default returns the clean image wherever the *surrogate* was not fooled, which would make a
    transfer attack a no-op on exactly the points that matter (keep the best-loss points).
    """
    atk = _ta("APGD", model, p, norm=p.norm, eps=p.eps, steps=_steps(p, 100), n_restarts=1, seed=p.seed, loss="ce")
    torch.manual_seed(p.seed)
    with torch.enable_grad():
        _, adv = atk.perturb(x.detach().clone(), y.detach().clone(), best_loss=True)
    return adv.detach()


def _apgdt(model, x, y, p: AttackParams) -> torch.Tensor:
    atk = _ta("APGDT", model, p, norm=p.norm, eps=p.eps, steps=_steps(p, 100), n_restarts=1, seed=p.seed, n_classes=p.n_classes)
    atk.n_target_classes = _n_targets(p)  # the reference's 9, not n_classes-1
    return atk(x, y)


def _fabt(model, x, y, p: AttackParams) -> torch.Tensor:
    atk = _ta("FAB", model, p, norm=p.norm, eps=p.eps, steps=_steps(p, 100), n_restarts=1, seed=p.seed,
              multi_targeted=True, n_classes=p.n_classes)
    atk.n_target_classes = _n_targets(p)
    return atk(x, y)


def _square(model, x, y, p: AttackParams) -> torch.Tensor:
    q = p.queries if p.queries is not None else 5000
    atk = _ta("Square", model, p, norm=p.norm, eps=p.eps, n_queries=q, n_restarts=1, p_init=0.8, loss="margin",
              resc_schedule=False, seed=p.seed)
    return atk(x, y)


def _pgd(model, x, y, p: AttackParams, steps: int = 20) -> torch.Tensor:
    n = _steps(p, steps)
    if p.norm == "Linf":
        return _ta("PGD", model, p, eps=p.eps, alpha=p.eps / 4, steps=n, random_start=True)(x, y)
    return _ta("PGDL2", model, p, eps=p.eps, alpha=p.eps / 4, steps=n, random_start=True)(x, y)


def max_loss_pgd(
    loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, norm: str, eps: float, steps: int,
    generator: torch.Generator | None = None, check: Callable[[torch.Tensor], torch.Tensor] | None = None,
    check_every: int = 10,
) -> torch.Tensor:
    """Momentum PGD with a halving step size that keeps, per sample, the highest-loss iterate.

    ``loss_fn`` maps images to a per-sample loss to maximize. If ``check`` is given (images -> bool
    "fooled" per sample), every ``check_every`` steps the first fooling iterate is kept instead.
    """
    b = x.shape[0]
    view = (-1,) + (1,) * (x.ndim - 1)
    noise = torch.rand(x.shape, generator=generator).to(x.device) * 2 - 1
    if norm == "L2":
        noise = noise / noise.flatten(1).norm(dim=1).clamp_min(1e-12).view(view) * eps * 0.5
    else:
        noise = noise * eps * 0.5
    x_adv = project(x + noise, x, norm, eps)
    best = x_adv.clone()
    best_loss = torch.full((b,), -math.inf, device=x.device)
    fooled = torch.zeros(b, dtype=torch.bool, device=x.device)
    step = 2 * eps
    momentum = torch.zeros_like(x)
    for i in range(steps):
        x_adv.requires_grad_(True)
        loss = loss_fn(x_adv)
        (grad,) = torch.autograd.grad(loss.sum(), x_adv)
        with torch.no_grad():
            better = (loss > best_loss) & ~fooled
            best[better] = x_adv[better].detach()
            best_loss = torch.where(better, loss.detach(), best_loss)
            if norm == "Linf":
                direction = grad.sign()
            else:
                direction = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(view)
            momentum = 0.75 * momentum + direction
            if i in (int(0.22 * steps), int(0.41 * steps), int(0.57 * steps), int(0.7 * steps), int(0.8 * steps)):
                step /= 2
            upd = momentum.sign() if norm == "Linf" else momentum / momentum.flatten(1).norm(dim=1).clamp_min(1e-12).view(view)
            x_adv = project(x_adv.detach() + step * upd, x, norm, eps)
            if check is not None and ((i + 1) % check_every == 0 or i == steps - 1):
                hit = check(x_adv) & ~fooled
                best[hit] = x_adv[hit]
                fooled |= hit
    with torch.no_grad():
        loss = loss_fn(x_adv)
        better = (loss > best_loss) & ~fooled
        best[better] = x_adv[better]
    return best.detach()


def _ce_each(model: nn.Module, y: torch.Tensor):
    return lambda xa: F.cross_entropy(model(xa), y, reduction="none")


def _transfer_pgd(t: Target, x, y, p: AttackParams) -> torch.Tensor:
    g = torch.Generator().manual_seed(p.seed)
    return max_loss_pgd(_ce_each(t.base, y), x, norm=p.norm, eps=p.eps, steps=_steps(p, 100), generator=g)


def _feature(t: Target, x, y, p: AttackParams) -> torch.Tensor:
    """Feature-space attack (Croce et al. 2022): minimize ||h(x+d) - h_target||_1 where h_target is the
    nearest feature (L1) among the evaluated samples labelled with this sample's second most likely class
    (else of any other class). The ODE is never differentiated; success is checked on the real model."""
    with torch.no_grad():
        h = t.features(x).float()
        logits = t.model(x)
        second = logits.topk(2, dim=1).indices[:, 1]
        if t.bank is not None:  # targets from every evaluated sample, not only this batch
            bank_h, bank_y = t.bank[0].to(h.device).float(), t.bank[1].to(y.device)
        else:
            bank_h, bank_y = h, y
        dist = torch.cdist(h, bank_h, p=1)
        other = bank_y.unsqueeze(0) != y.unsqueeze(1)  # (B, M): samples of another class
        preferred = other & (bank_y.unsqueeze(0) == second.unsqueeze(1))  # ... of this sample's runner-up class
        use = torch.where(preferred.any(dim=1, keepdim=True), preferred, other)
        if not use.any(dim=1).all():
            raise UsageError("the feature attack needs samples of at least two classes among the evaluated ones")
        h_target = bank_h[dist.masked_fill(~use, math.inf).argmin(dim=1)]
    loss_fn = lambda xa: -(t.features(xa).float() - h_target).abs().sum(dim=1)
    check = lambda xa: t.model(xa).argmax(1) != y
    g = torch.Generator().manual_seed(p.seed)
    with torch.enable_grad():
        return max_loss_pgd(loss_fn, x, norm=p.norm, eps=p.eps, steps=_steps(p, 100), generator=g, check=check)


def _cw_l2(t: Target, x, y, p: AttackParams) -> torch.Tensor:
    # CW is unbounded: its output is projected onto the eps-ball before judging (so it is an L2 attack of radius eps)
    return _ta("CW", t.model, p, c=1, kappa=0, steps=_steps(p, 100), lr=0.01)(x, y)


def _spsa(t: Target, x, y, p: AttackParams) -> torch.Tensor:
    return _ta("SPSA", t.model, p, eps=p.eps, delta=0.01, lr=0.01, nb_iter=_steps(p, 20), nb_sample=128, max_batch_size=64)(x, y)


def _eot_pgd(t: Target, x, y, p: AttackParams) -> torch.Tensor:
    return _ta("EOTPGD", t.model, p, eps=p.eps, alpha=p.eps / 4, steps=_steps(p, 20), eot_iter=2, random_start=True)(x, y)


def _fgsm(t: Target, x, y, p: AttackParams) -> torch.Tensor:
    return _ta("FGSM", t.model, p, eps=p.eps)(x, y)


BOTH = ("Linf", "L2")
_it = lambda d: (lambda p: {"steps": _steps(p, d)})
ATTACKS: dict[str, AttackSpec] = {
    s.name: s
    for s in [
        AttackSpec("fgsm", "white-box", ("Linf",), False, _fgsm, description="FGSM, one step"),
        AttackSpec("pgd", "white-box", ("Linf",), False, lambda t, x, y, p: _pgd(t.model, x, y, p), _it(20), "PGD, step eps/4, random start"),
        AttackSpec("pgd-l2", "white-box", ("L2",), False, lambda t, x, y, p: _pgd(t.model, x, y, p), _it(20), "PGD-L2, step eps/4"),
        AttackSpec("apgd-ce", "white-box", BOTH, False, lambda t, x, y, p: _apgd(t.model, x, y, p), _it(100), "APGD-CE (torchattacks)"),
        AttackSpec("apgd-dlr", "white-box", BOTH, False, lambda t, x, y, p: _apgd(t.model, x, y, p, "dlr"), _it(100), "APGD-DLR"),
        AttackSpec("apgd-t", "white-box", BOTH, False, lambda t, x, y, p: _apgdt(t.model, x, y, p),
                   lambda p: {"steps": _steps(p, 100), "targets": _n_targets(p)}, "APGD-T (DLR, targeted)"),
        AttackSpec("fab-t", "white-box", BOTH, False, lambda t, x, y, p: _fabt(t.model, x, y, p),
                   lambda p: {"steps": _steps(p, 100), "targets": _n_targets(p)}, "FAB-T"),
        AttackSpec("square", "black-box", BOTH, False, lambda t, x, y, p: _square(t.model, x, y, p),
                   lambda p: {"queries": p.queries if p.queries is not None else 5000}, "Square (score-based, margin loss)"),
        AttackSpec("spsa", "black-box", ("Linf",), False, _spsa, lambda p: {"iterations": _steps(p, 20), "samples": 128}, "SPSA (gradient-free)"),
        AttackSpec("cw-l2", "white-box", ("L2",), False, _cw_l2, _it(100), "Carlini-Wagner L2, projected to eps"),
        AttackSpec("eot-pgd", "white-box", ("Linf",), False, _eot_pgd, _it(20), "EOT-PGD, 2 samples"),
        AttackSpec("transfer-apgd-ce", "transfer", BOTH, True, lambda t, x, y, p: _apgd_surrogate(t.base, x, y, p), _it(100),
                   "APGD-CE on the base classifier (highest-loss iterate), judged on the hardened model"),
        AttackSpec("transfer-pgd", "transfer", BOTH, True, _transfer_pgd, _it(100),
                   "momentum PGD on the base classifier, highest-loss iterate, judged on the hardened model"),
        AttackSpec("fixed-step-apgd-ce", "fixed-step", BOTH, True, lambda t, x, y, p: _apgd_surrogate(t.fixed, x, y, p), _it(100),
                   "APGD-CE through a fixed-step RK4 copy of the ODE (highest-loss iterate)"),
        AttackSpec("fixed-step-pgd", "fixed-step", BOTH, True, lambda t, x, y, p: _pgd(t.fixed, x, y, p), _it(20),
                   "PGD through a fixed-step RK4 copy of the ODE"),
        AttackSpec("bpda-apgd-ce", "bpda", BOTH, True, lambda t, x, y, p: _apgd_surrogate(t.bpda, x, y, p), _it(100),
                   "APGD-CE with the ODE's backward replaced by identity"),
        AttackSpec("feature", "feature", BOTH, True, _feature, _it(100),
                   "feature-space attack on the backbone output (L1 to another class's features)"),
    ]
}

_AA = ["apgd-ce", "apgd-t", "fab-t", "square"]
SUITES: dict[str, dict[str, list[str]]] = {
    "quick": {"base": ["apgd-ce"], "hardened": ["apgd-ce", "fixed-step-apgd-ce", "transfer-apgd-ce"]},
    "standard": {"base": list(_AA), "hardened": list(_AA)},
    "adaptive": {
        "base": _AA + ["spsa"],
        "hardened": ["apgd-ce", "apgd-t", "fab-t", "fixed-step-apgd-ce", "fixed-step-pgd", "bpda-apgd-ce",
                     "transfer-apgd-ce", "transfer-pgd", "feature", "square", "spsa"],
    },
}


MIN_CLASSES = {"apgd-dlr": 3, "apgd-t": 4}  # the DLR losses index the 3rd (targeted: 4th) largest logit


ODE_KINDS = ("fixed-step", "bpda")  # attacks that need the hardened model to have an ODE


def suite_attacks(suite: str | None, attacks: list[str] | None, norm: str, n_classes: int | None = None,
                  has_ode: bool = True) -> dict[str, list[str]]:
    """Attacks per model ("base", "hardened") for a suite or an explicit list; validated for the norm and,
    when given, the number of classes (suites drop the DLR attacks that need more classes) and whether the
    hardened model has an ODE (suites drop the fixed-step and BPDA attacks of a linear head)."""
    if attacks and n_classes is not None:
        few = [a for a in attacks if MIN_CLASSES.get(a, 2) > n_classes]
        if few:
            raise UsageError(f"attack(s) {', '.join(few)} need at least {max(MIN_CLASSES[a] for a in few)} classes; the model has {n_classes}")
    if attacks:
        unknown = [a for a in attacks if a not in ATTACKS]
        if unknown:
            raise UsageError(f"unknown attack(s) {', '.join(unknown)}; choose from {', '.join(sorted(ATTACKS))}")
        bad = [a for a in attacks if norm not in ATTACKS[a].norms]
        if bad:
            raise UsageError(f"attack(s) {', '.join(bad)} do not support --norm {norm} (they support {', '.join(ATTACKS[bad[0]].norms)})")
        no_ode = [a for a in attacks if ATTACKS[a].kind in ODE_KINDS] if not has_ode else []
        if no_ode:
            raise UsageError(f"attack(s) {', '.join(no_ode)} need an ODE; this hardened model has a linear head")
        # without an ODE the two models are attacked alike (transfer attacks then take the other model as source)
        return {"base": [a for a in attacks if not ATTACKS[a].hardened_only or not has_ode], "hardened": list(attacks)}
    if suite not in SUITES:
        raise UsageError(f"unknown suite {suite!r}; choose from {', '.join(SUITES)}")
    out = {}
    for m, names in SUITES[suite].items():
        out[m] = [a for a in names if norm in ATTACKS[a].norms and MIN_CLASSES.get(a, 2) <= (n_classes or 2**31)
                  and (has_ode or ATTACKS[a].kind not in ODE_KINDS)]
    if not has_ode:  # two plain classifiers: the same attacks on both, transfer attacks from the other model
        out["base"] = list(out["hardened"])
    return out
