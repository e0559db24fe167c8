"""SODEF stability terms as pure functions (the paper's eq. 7 and the released code's form).

Every constant is an argument (a :class:`~sodef_cli.config.RegularizerConfig` field). The Jacobian
statistics are exact and batched: closed form for the built-in ``sin`` family (no n x n matrix per
sample), a batched chain product for ``sin3``, and ``torch.func.vmap(jacrev(f))`` for any other f.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import RegularizerConfig
from .head import generic_stability_stats

__all__ = ["stability_stats", "stability_loss", "reference_stability_loss"]


def stability_stats(odefunc: nn.Module, z: torch.Tensor, convention: str = "column"):
    """(f(z), diag J(z), dominance(z)), each (B, n). dominance_j = sum_{i!=j}|J_ij| - |J_jj| (column)."""
    if hasattr(odefunc, "stability_stats"):
        return odefunc.stability_stats(z, convention)
    return generic_stability_stats(odefunc, z, convention)


def _combine(
    fz: torch.Tensor, fz_all: torch.Tensor, diag: torch.Tensor, dom: torch.Tensor, cfg: RegularizerConfig
) -> dict[str, torch.Tensor]:
    if cfg.form == "code":
        weights = (cfg.weight_f, cfg.weight_diag, cfg.weight_offdiag)
        r_f = (cfg.exponent_f * fz_all).pow(2).mean()
        r_d = _exp(cfg.exponent * (diag + cfg.trans)).mean()
        r_o = _exp(cfg.exponent_off * (dom + cfg.trans_off)).mean()
    else:  # the paper's eq. 7 (without the cross-entropy term, which phase 3 supplies)
        weights = (cfg.alpha_f, cfg.alpha_diag, cfg.alpha_offdiag)
        r_f = fz_all.norm(dim=-1).mean()
        r_d = _exp(diag.sum(dim=-1)).mean()
        r_o = _exp(dom.sum(dim=-1)).mean()
    # a term with weight 0 is left out (0 * inf would be NaN); the others are summed
    total = sum(w * r for w, r in zip(weights, (r_f, r_d, r_o)) if w != 0)
    if not isinstance(total, torch.Tensor):
        total = torch.zeros((), device=fz_all.device, dtype=fz_all.dtype, requires_grad=fz_all.requires_grad)
    return {"loss": total, "f": r_f, "diag": r_d, "offdiag": r_o}


EXP_CAP = 80.0  # exp(80) ~ 5.5e34: finite in float32 (the paper form sums n terms inside exp and overflows at n=64)


def _exp(x: torch.Tensor) -> torch.Tensor:
    """exp(x) up to EXP_CAP, continued linearly beyond it (value and slope match at the cap), so that the
    loss stays finite and still decreases with x where a plain exp would overflow to inf."""
    capped = x.clamp(max=EXP_CAP)
    return torch.exp(capped) * (1.0 + (x - capped))


def stability_loss(odefunc: nn.Module, z: torch.Tensor, cfg: RegularizerConfig) -> dict[str, torch.Tensor]:
    """The phase-2 loss on a batch of features z (B, n): {"loss", "f", "diag", "offdiag"}.

    The f term uses every point; the Jacobian terms use the first ``cfg.jacobian_samples`` points of the
    (shuffled) batch, or all of them when it is 0.
    """
    m = cfg.jacobian_samples
    if m and m < z.shape[0]:
        fz_all = odefunc.f(z)
        _, diag, dom = stability_stats(odefunc, z[:m], cfg.convention)
        return _combine(fz_all[:m], fz_all, diag, dom, cfg)
    fz, diag, dom = stability_stats(odefunc, z, cfg.convention)
    return _combine(fz, fz, diag, dom, cfg)


def reference_stability_loss(odefunc: nn.Module, z: torch.Tensor, cfg: RegularizerConfig) -> dict[str, torch.Tensor]:
    """The same loss through a per-sample ``torch.autograd.functional.jacobian`` loop, as the original code.

    Slow on purpose: tests and ``benchmarks/regularizer.py`` compare :func:`stability_loss` against it.
    """
    f = lambda v: odefunc.f(v)
    diags, doms = [], []
    m = cfg.jacobian_samples if cfg.jacobian_samples and cfg.jacobian_samples < z.shape[0] else z.shape[0]
    eye = None
    for i in range(m):
        jac = torch.autograd.functional.jacobian(f, z[i : i + 1], create_graph=True)  # (1, n, 1, n)
        jac = jac.reshape(z.shape[1], z.shape[1])
        if eye is None:
            eye = torch.eye(jac.shape[0], dtype=jac.dtype, device=jac.device)
        d = torch.diagonal(jac)
        axis = 0 if cfg.convention == "column" else 1
        doms.append((jac.abs() * (1 - 2 * eye)).sum(dim=axis))
        diags.append(d)
    diag = torch.stack(diags)
    dom = torch.stack(doms)
    fz_all = odefunc.f(z)
    return _combine(fz_all[:m], fz_all, diag, dom, cfg)
