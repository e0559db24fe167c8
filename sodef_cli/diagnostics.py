"""Stability diagnostics of a SODEF head on a sample of features (Kang et al., NeurIPS 2021: stability at z(0)).

All figures are data (a dict of floats); rendering lives in the ``report`` package. ``card_diagnostics`` computes
the model card's figures for a hardened file on a sample of test images (``sodef report FILE``).
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["jacobian_stability", "head_diagnostics", "card_diagnostics", "default_card_data"]


@torch.no_grad()
def jacobian_stability(odefunc, z: torch.Tensor, *, batch_size: int = 512) -> dict[str, float]:
    """Eigenvalue and diagonal-dominance statistics of J(z) at the given points.

    - ``frac_eig_negative``: fraction of points whose Jacobian has every eigenvalue with Re < 0
      (Lyapunov-stable if z were an equilibrium);
    - ``frac_diag_dominant_col`` / ``_row``: fraction whose J is strictly column/row diagonally dominant
      with a negative diagonal (the Levy-Desplanques sufficient condition);
    - ``mean_max_real_eig``, ``mean_diag``;
    - ``max_real_eig_hist``: the distribution of the largest real part of J's eigenvalues over the points,
      ``{"lo", "hi", "counts"}`` (16 equal bins between the smallest and largest value), for the model card's picture.
    """
    n_neg = n_col = n_row = 0
    max_re, mean_diag = [], []
    for i in range(0, z.shape[0], batch_size):
        jac = odefunc.jacobian(z[i : i + batch_size]).double()
        eig = torch.linalg.eigvals(jac).real.amax(dim=-1)
        max_re.append(eig)
        n_neg += int((eig < 0).sum())
        d = torch.diagonal(jac, dim1=-2, dim2=-1)
        a = jac.abs()
        off_col = a.sum(dim=-2) - d.abs()
        off_row = a.sum(dim=-1) - d.abs()
        neg = (d < 0).all(dim=-1)
        n_col += int((neg & (d.abs() > off_col).all(dim=-1)).sum())
        n_row += int((neg & (d.abs() > off_row).all(dim=-1)).sum())
        mean_diag.append(d.mean(dim=-1))
    n = max(1, z.shape[0])
    allmax = torch.cat(max_re) if max_re else torch.zeros(0, dtype=torch.float64)
    hist = None
    if allmax.numel():
        lo, hi = float(allmax.min()), float(allmax.max())
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        hist = {
            "lo": lo,
            "hi": hi,
            "counts": [int(c) for c in torch.histc(allmax, bins=16, min=lo, max=hi).round().long().tolist()],
        }
    return {
        "points": int(z.shape[0]),
        "frac_eig_negative": n_neg / n,
        "frac_diag_dominant_col": n_col / n,
        "frac_diag_dominant_row": n_row / n,
        "mean_max_real_eig": float(torch.cat(max_re).mean()) if max_re else float("nan"),
        "mean_diag": float(torch.cat(mean_diag).mean()) if mean_diag else float("nan"),
        "max_real_eig_hist": hist,
    }


@torch.no_grad()
def head_diagnostics(head, z0: torch.Tensor) -> dict[str, float]:
    """Model-card figures on z(0) points: ||f(z0)||, ||f(zT)||, ||zT - z0||, NFE per solve, Jacobian stats."""
    func = head.odefunc
    fz0 = func.f(z0).norm(dim=-1)
    func.nfe = 0
    zt = head.block(z0)
    nfe = func.nfe
    fzt = func.f(zt).norm(dim=-1)
    out = {
        "mean_norm_f_z0": float(fz0.mean()),
        "mean_norm_f_zT": float(fzt.mean()),
        "mean_norm_zT_minus_z0": float((zt - z0).norm(dim=-1).mean()),
        "mean_norm_z0": float(z0.norm(dim=-1).mean()),
        "nfe_per_solve": int(nfe),
        "solver": head.block.solver,
    }
    out.update(jacobian_stability(func, z0))
    return out


def default_card_data(meta: dict) -> str | None:
    """The data a model card can use without ``--data``: the hardening data when it is here (demo or a folder)."""
    spec = str((meta.get("config") or {}).get("data") or "")
    if spec.lower() == "demo" or (spec and Path(spec).exists()):
        return spec
    return None


def card_diagnostics(
    path: str | Path, data_spec: str, *, n: int = 512, data_dir: str = "", device="cpu", seed: int = 0
) -> dict:
    """Stability figures of a hardened file's head on the features of up to ``n`` test images.

    The images are drawn class by class with ``seed`` (as ``sodef attack`` does) and pushed through the
    frozen backbone and the projection to z(0); the ODE is then solved once for the whole batch, so
    ``nfe_per_solve`` counts the function evaluations of one solve of ``batch`` samples.

    Returns:
        ``head_diagnostics`` figures plus ``data``, ``split``, ``samples`` and ``batch``.
    """
    from .data import load_data, select_samples
    from .errors import ModelError
    from .models import load_pair

    _, hardened, meta = load_pair(path, device)
    spec = meta.get("backbone", {})
    data = load_data(
        data_spec, data_dir=data_dir, channels=int(spec["in_chans"]), image_size=int(spec["input_size"][-1])
    )
    classes = meta.get("classes", [])
    if len(classes) != len(data.classes):
        raise ModelError(
            f"class-count mismatch: {path} has {len(classes)} classes, --data {data_spec} has {len(data.classes)}"
        )
    idx = select_samples(data.test.labels, n, seed)
    x = data.test.floats(idx)
    from .inference import logits

    h = logits(hardened.features, x, device=device, batch_size=256).to(device)
    with torch.no_grad():
        z0 = hardened.head.z0(h)
    out = head_diagnostics(hardened.head, z0)
    out.update(data=data_spec, split="test", samples=int(len(idx)), batch=int(len(idx)), seed=seed)
    return out
