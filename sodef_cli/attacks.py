"""Evaluation attacks: torchattacks at reference settings, plus attacks built for ODE defenses.

Every attack maps clean images x in [0,1] (and labels y) to adversarial images inside the threat model
(Linf or L2 ball of radius eps, clipped to [0,1]); the cascade in ``evaluate.py`` evaluates them on the
*real* model. Each attack is declared once, on its function, with ``@register_attack`` (its kind, norms,
default budget, minimum number of classes); the declarations fill ``ATTACKS`` in ``sodef_cli.registry``,
next to the suites. Defaults follow the reference implementations (AutoAttack: APGD-CE 100 iterations,
APGD-T 9 targets x 100, FAB-T 9 targets x 100, Square 5,000 queries); ``--steps``/``--queries`` can lower
them, and results then record the reduced settings.

An attack function takes ``(model, x, y, p, t)``: ``model`` is the network its kind attacks (the model
itself, the transfer source, the fixed-step or identity-backward copy), ``p`` its parameters with the
default budget filled in, ``t`` the whole :class:`Target`. Call it through ``ATTACKS[name].run(t, x, y, p)``.

ODE-specific attacks (adaptive attacks on ODE defenses), for hardened models only:
- ``transfer-apgd-ce`` / ``transfer-pgd``: made on the base classifier (same backbone, no ODE);
- ``fixed-step-apgd-ce`` / ``fixed-step-pgd``: gradients through a fixed-step RK4 copy of the ODE;
- ``bpda-apgd-ce``: true ODE forward, identity backward;
- ``feature``: pulls backbone features towards those of another class's sample; never differentiates
  through the ODE.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UsageError
from .registry import ATTACKS, ODE_KINDS, SUITES, AttackSpec, n_targets, register_attack

__all__ = [
    "AttackSpec",
    "Target",
    "AttackParams",
    "ATTACKS",
    "SUITES",
    "ODE_KINDS",
    "suite_attacks",
    "project",
    "max_loss_pgd",
]


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
    bank: tuple[torch.Tensor, torch.Tensor] | None = (
        None  # (features, labels) of every evaluated sample: feature-attack targets
    )


def project(x_adv: torch.Tensor, x: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """Project onto the eps-ball around x and [0,1]."""
    delta = x_adv - x
    if norm == "Linf":
        delta = delta.clamp(-eps, eps)
    else:
        n = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.ndim - 1))
        delta = delta * torch.clamp(eps / n, max=1.0)
    return (x + delta).clamp(0, 1)


def _ta(cls_name: str, model: nn.Module, p: AttackParams, **kw):
    import torchattacks

    atk = getattr(torchattacks, cls_name)(model, **kw)
    atk.set_device(next(model.parameters()).device)
    return atk


@register_attack("fgsm", kind="white-box", norms=("Linf",), description="FGSM, one step")
def _fgsm(model, x, y, p: AttackParams, t: Target) -> torch.Tensor:
    return _ta("FGSM", model, p, eps=p.eps)(x, y)


@register_attack(
    "pgd", kind="white-box", norms=("Linf",), default_steps=20, description="PGD, step eps/4, random start"
)
@register_attack("pgd-l2", kind="white-box", norms=("L2",), default_steps=20, description="PGD-L2, step eps/4")
@register_attack(
    "fixed-step-pgd", kind="fixed-step", default_steps=20, description="PGD through a fixed-step RK4 copy of the ODE"
)
def _pgd(model, x, y, p: AttackParams, t: Target) -> torch.Tensor:
    if p.norm == "Linf":
        return _ta("PGD", model, p, eps=p.eps, alpha=p.eps / 4, steps=p.steps, random_start=True)(x, y)
    return _ta("PGDL2", model, p, eps=p.eps, alpha=p.eps / 4, steps=p.steps, random_start=True)(x, y)


def _apgd(model, x, y, p: AttackParams, loss: str) -> torch.Tensor:
    atk = _ta("APGD", model, p, norm=p.norm, eps=p.eps, steps=p.steps, n_restarts=1, seed=p.seed, loss=loss)
    return atk(x, y)


@register_attack("apgd-ce", kind="white-box", default_steps=100, description="APGD-CE (torchattacks)")
def _apgd_ce(model, x, y, p: AttackParams, t: Target) -> torch.Tensor:
    return _apgd(model, x, y, p, "ce")


# the DLR loss indexes the 3rd largest logit (targeted: the 4th, see apgd-t)
@register_attack("apgd-dlr", kind="white-box", default_steps=100, min_classes=3, description="APGD-DLR")
def _apgd_dlr(model, x, y, p: AttackParams, t: Target) -> torch.Tensor:
    return _apgd(model, x, y, p, "dlr")


@register_attack(
    "apgd-t", kind="white-box", default_steps=100, targeted=True, min_classes=4, description="APGD-T (DLR, targeted)"
)
def _apgdt(model, x, y, p: AttackParams, t: Target) -> torch.Tensor:
    atk = _ta(
        "APGDT", model, p, norm=p.norm, eps=p.eps, steps=p.steps, n_restarts=1, seed=p.seed, n_classes=p.n_classes
    )
    atk.n_target_classes = n_targets(p.n_classes)  # the reference's 9, not n_classes-1
    return atk(x, y)


@register_attack("fab-t", kind="white-box", default_steps=100, targeted=True, passes=2, description="FAB-T")
def _fabt(model, x, y, p: AttackParams, t: Target) -> torch.Tensor:
    atk = _ta(
        "FAB",
        model,
        p,
        norm=p.norm,
        eps=p.eps,
        steps=p.steps,
        n_restarts=1,
        seed=p.seed,
        multi_targeted=True,
        n_classes=p.n_classes,
    )
    atk.n_target_classes = n_targets(p.n_classes)
    return atk(x, y)


@register_attack("square", kind="black-box", default_queries=5000, description="Square (score-based, margin loss)")
def _square(model, x, y, p: AttackParams, t: Target) -> torch.Tensor:
    atk = _ta(
        "Square",
        model,
        p,
        norm=p.norm,
        eps=p.eps,
        n_queries=p.queries,
        n_restarts=1,
        p_init=0.8,
        loss="margin",
        resc_schedule=False,
        seed=p.seed,
    )
    return atk(x, y)


_SPSA_SAMPLES = 128


@register_attack(
    "spsa",
    kind="black-box",
    norms=("Linf",),
    default_steps=20,
    steps_key="iterations",
    settings={"samples": _SPSA_SAMPLES},
    passes=2 * _SPSA_SAMPLES,  # two forward passes per sample
    description="SPSA (gradient-free)",
)
def _spsa(model, x, y, p: AttackParams, t: Target) -> torch.Tensor:
    return _ta(
        "SPSA", model, p, eps=p.eps, delta=0.01, lr=0.01, nb_iter=p.steps, nb_sample=_SPSA_SAMPLES, max_batch_size=64
    )(x, y)


# CW is unbounded: its output is projected onto the eps-ball before judging (so it is an L2 attack of radius eps)
@register_attack(
    "cw-l2", kind="white-box", norms=("L2",), default_steps=100, description="Carlini-Wagner L2, projected to eps"
)
def _cw_l2(model, x, y, p: AttackParams, t: Target) -> torch.Tensor:
    return _ta("CW", model, p, c=1, kappa=0, steps=p.steps, lr=0.01)(x, y)


@register_attack(
    "eot-pgd", kind="white-box", norms=("Linf",), default_steps=20, passes=2, description="EOT-PGD, 2 samples"
)
def _eot_pgd(model, x, y, p: AttackParams, t: Target) -> torch.Tensor:
    return _ta("EOTPGD", model, p, eps=p.eps, alpha=p.eps / 4, steps=p.steps, eot_iter=2, random_start=True)(x, y)


@register_attack(
    "transfer-apgd-ce",
    kind="transfer",
    default_steps=100,
    description="APGD-CE on the base classifier (highest-loss iterate), judged on the hardened model",
)
@register_attack(
    "fixed-step-apgd-ce",
    kind="fixed-step",
    default_steps=100,
    description="APGD-CE through a fixed-step RK4 copy of the ODE (highest-loss iterate)",
)
@register_attack(
    "bpda-apgd-ce", kind="bpda", default_steps=100, description="APGD-CE with the ODE's backward replaced by identity"
)
def _apgd_surrogate(model, x, y, p: AttackParams, t: Target) -> torch.Tensor:
    """APGD-CE on a surrogate (the base, or a differentiable copy), keeping every point's highest-loss iterate.

    torchattacks' default returns the clean image wherever the *surrogate* was not fooled, which would make a
    transfer attack a no-op on exactly the points that matter (keep the best-loss points).
    """
    atk = _ta("APGD", model, p, norm=p.norm, eps=p.eps, steps=p.steps, n_restarts=1, seed=p.seed, loss="ce")
    torch.manual_seed(p.seed)
    with torch.enable_grad():
        _, adv = atk.perturb(x.detach().clone(), y.detach().clone(), best_loss=True)
    return adv.detach()


def max_loss_pgd(
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    norm: str,
    eps: float,
    steps: int,
    generator: torch.Generator | None = None,
    check: Callable[[torch.Tensor], torch.Tensor] | None = None,
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
            upd = (
                momentum.sign()
                if norm == "Linf"
                else momentum / momentum.flatten(1).norm(dim=1).clamp_min(1e-12).view(view)
            )
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


@register_attack(
    "transfer-pgd",
    kind="transfer",
    default_steps=100,
    description="momentum PGD on the base classifier, highest-loss iterate, judged on the hardened model",
)
def _transfer_pgd(model, x, y, p: AttackParams, t: Target) -> torch.Tensor:
    g = torch.Generator().manual_seed(p.seed)
    return max_loss_pgd(_ce_each(model, y), x, norm=p.norm, eps=p.eps, steps=p.steps, generator=g)


@register_attack(
    "feature",
    kind="feature",
    default_steps=100,
    description="feature-space attack on the backbone output (L1 to another class's features)",
)
def _feature(model, x, y, p: AttackParams, t: Target) -> torch.Tensor:
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
        return max_loss_pgd(loss_fn, x, norm=p.norm, eps=p.eps, steps=p.steps, generator=g, check=check)


def suite_attacks(
    suite: str | None, attacks: list[str] | None, norm: str, n_classes: int | None = None, has_ode: bool = True
) -> dict[str, list[str]]:
    """Attacks per model ("base", "hardened") for a suite or an explicit list; validated for the norm and,
    when given, the number of classes (suites drop the DLR attacks that need more classes) and whether the
    hardened model has an ODE (suites drop the fixed-step and BPDA attacks of a linear head)."""
    if attacks and n_classes is not None:
        few = [a for a in attacks if a in ATTACKS and ATTACKS[a].min_classes > n_classes]
        if few:
            raise UsageError(
                f"attack(s) {', '.join(few)} need at least {max(ATTACKS[a].min_classes for a in few)} classes; the model has {n_classes}"
            )
    if attacks:
        unknown = [a for a in attacks if a not in ATTACKS]
        if unknown:
            raise UsageError(f"unknown attack(s) {', '.join(unknown)}; choose from {', '.join(sorted(ATTACKS))}")
        bad = [a for a in attacks if norm not in ATTACKS[a].norms]
        if bad:
            raise UsageError(
                f"attack(s) {', '.join(bad)} do not support --norm {norm} (they support {', '.join(ATTACKS[bad[0]].norms)})"
            )
        no_ode = [a for a in attacks if ATTACKS[a].needs_ode] if not has_ode else []
        if no_ode:
            raise UsageError(f"attack(s) {', '.join(no_ode)} need an ODE; this hardened model has a linear head")
        # without an ODE the two models are attacked alike (transfer attacks then take the other model as source)
        return {"base": [a for a in attacks if not ATTACKS[a].hardened_only or not has_ode], "hardened": list(attacks)}
    if suite not in SUITES:
        raise UsageError(f"unknown suite {suite!r}; choose from {', '.join(SUITES)}")
    out = {}
    for m, names in SUITES[suite].items():
        out[m] = [
            a
            for a in names
            if norm in ATTACKS[a].norms
            and ATTACKS[a].min_classes <= (n_classes or 2**31)
            and (has_ode or not ATTACKS[a].needs_ode)
        ]
    if not has_ode:  # two plain classifiers: the same attacks on both, transfer attacks from the other model
        out["base"] = list(out["hardened"])
    return out
