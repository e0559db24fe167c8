"""The SODEF head: orthogonal projection -> neural ODE (torchdiffeq) -> linear classifier.

Shapes: backbone features h (B, d) -> z(0) = P h (B, n) with P having orthonormal rows
(torch's own orthogonal parametrization) -> z(T) = ODESolve(f, z(0), [0, T]) -> logits (B, k).

ODE function families, each autonomous and with an exact batched Jacobian, registered by name in
``sodef_cli.registry.ODEFUNCS`` with ``@register_odefunc`` (``head.odefunc`` picks one):
- ``sin``: f(z) = sin(-(W z + b)), the authors' code; J = -diag(cos u) W, u = -(Wz+b).
- ``sin3``: three such layers n -> hidden -> hidden -> n (the authors' TRADES variant).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

from .backbone import BaseClassifier, ImageModel, ModelSpec
from .config import HeadConfig
from .dopri5 import dopri5_solve
from .inputs import check_head_dim
from .registry import ODEFUNCS, SOLVERS, register_odefunc

__all__ = [
    "SinODEFunc",
    "DeepSinODEFunc",
    "ODEFUNCS",
    "ODEBlock",
    "SODEFHead",
    "HardenedClassifier",
    "simplex_classifier",
    "IdentityBackwardODE",
]


class _CountingFunc(nn.Module):
    """Counts function evaluations (NFE) for diagnostics."""

    def __init__(self):
        super().__init__()
        self.nfe = 0

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:  # torchdiffeq signature
        self.nfe += 1
        return self.f(z)

    def f(self, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def from_config(cls, cfg: HeadConfig) -> _CountingFunc:
        """The function of state size ``cfg.dim`` (families with more settings read them from ``cfg`` too)."""
        return cls(cfg.dim)


@register_odefunc("sin")
class SinODEFunc(_CountingFunc):
    """f(z) = sin(-(W z + b))."""

    def __init__(self, dim: int):
        super().__init__()
        self.lin = nn.Linear(dim, dim)

    def f(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sin(-self.lin(z))

    def jacobian(self, z: torch.Tensor) -> torch.Tensor:
        """Exact J(z) = -diag(cos u) W, batched: (B, n, n)."""
        c = torch.cos(-self.lin(z))  # (B, n)
        return -c.unsqueeze(-1) * self.lin.weight.unsqueeze(0)

    def stability_stats(self, z: torch.Tensor, convention: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(f, diag J, dominance) without forming J: one (B,n)x(n,n) matmul.

        dominance_j = sum_{i != j} |J_ij| - |J_jj| (column, the code) or the row analogue (the paper).
        """
        u = -self.lin(z)
        c = torch.cos(u)
        w = self.lin.weight
        wd = torch.diagonal(w)
        diag = -c * wd
        absdiag = (c * wd).abs()
        if convention == "column":
            total = c.abs() @ w.abs()  # sum_i |c_i| |W_ij|
        else:
            total = c.abs() * w.abs().sum(dim=1)  # |c_i| sum_j |W_ij|
        return torch.sin(u), diag, total - 2 * absdiag


@register_odefunc("sin3")
class DeepSinODEFunc(_CountingFunc):
    """Three layers, each x -> sin(-(W x + b)): n -> hidden -> hidden -> n."""

    def __init__(self, dim: int, hidden: int = 256):
        super().__init__()
        self.l1 = nn.Linear(dim, hidden)
        self.l2 = nn.Linear(hidden, hidden)
        self.l3 = nn.Linear(hidden, dim)

    @classmethod
    def from_config(cls, cfg: HeadConfig) -> DeepSinODEFunc:
        return cls(cfg.dim, cfg.hidden)

    def f(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sin(-self.l3(torch.sin(-self.l2(torch.sin(-self.l1(z))))))

    def jacobian(self, z: torch.Tensor) -> torch.Tensor:
        """J = (-D3 W3)(-D2 W2)(-D1 W1) = -D3 W3 D2 W2 D1 W1, with D_k = diag(cos u_k): (B, n, n).

        Evaluated left to right so that the two big products are single (B*n, h) x (h, h|n) matmuls
        against the shared weights instead of per-sample (h, h) matrices.
        """
        u1 = -self.l1(z)
        u2 = -self.l2(torch.sin(u1))
        u3 = -self.l3(torch.sin(u2))
        b, n, h = z.shape[0], z.shape[1], self.l2.weight.shape[0]
        m = torch.cos(u3).unsqueeze(-1) * self.l3.weight  # (B, n, h): D3 W3
        m = (m * torch.cos(u2).unsqueeze(1)).reshape(b * n, h) @ self.l2.weight  # D3 W3 D2 W2
        m = (m.reshape(b, n, h) * torch.cos(u1).unsqueeze(1)).reshape(b * n, h) @ self.l1.weight  # ... D1 W1
        return -m.reshape(b, n, n)

    def stability_stats(self, z: torch.Tensor, convention: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _stats_from_jacobian(self.f(z), self.jacobian(z), convention)


def _stats_from_jacobian(fz: torch.Tensor, jac: torch.Tensor, convention: str):
    diag = torch.diagonal(jac, dim1=-2, dim2=-1)
    dim = -2 if convention == "column" else -1
    return fz, diag, jac.abs().sum(dim=dim) - 2 * diag.abs()


def generic_stability_stats(func: nn.Module, z: torch.Tensor, convention: str):
    """torch.func path for any per-sample f: vmap(jacrev(f))."""
    from torch.func import jacrev, vmap

    f = lambda v: func.f(v.unsqueeze(0)).squeeze(0)
    jac = vmap(jacrev(f))(z)
    return _stats_from_jacobian(func.f(z), jac, convention)


def make_odefunc(cfg: HeadConfig) -> _CountingFunc:
    """The registered family ``cfg.odefunc``, built from ``cfg``."""
    return ODEFUNCS.require(cfg.odefunc, "head.odefunc").from_config(cfg)


def _euler(f, t0, dt, z):
    return dt * f(t0, z)


def _midpoint(f, t0, dt, z):
    half = 0.5 * dt
    return dt * f(t0 + half, z + f(t0, z) * half)


def _rk4(f, t0, dt, z):  # the 3/8 rule, as torchdiffeq's "rk4"
    k1 = f(t0, z)
    k2 = f(t0 + dt * _THIRD, z + dt * k1 * _THIRD)
    k3 = f(t0 + dt * _TWO_THIRDS, z + dt * (k2 - k1 * _THIRD))
    k4 = f(t0 + dt, z + dt * (k1 - k2 + k3))
    return (k1 + 3 * (k2 + k3) + k4) * dt * 0.125


_THIRD, _TWO_THIRDS = 1 / 3, 2 / 3
_STEPS = {"euler": _euler, "midpoint": _midpoint, "rk4": _rk4}
EVALUATIONS_PER_STEP = {"euler": 1, "midpoint": 2, "rk4": 4}  # f evaluations of one step of each solver above


def fixed_grid_solve(func, z0: torch.Tensor, t: torch.Tensor, solver: str, step_size: float) -> torch.Tensor:
    """z(t[-1]) by fixed steps of ``step_size`` from t[0] (the last one shorter when it does not divide), with the
    grid and step formulas of torchdiffeq's fixed-grid ``euler``, ``midpoint`` and ``rk4`` (results equal to its
    ``odeint``), in a plain loop: at batch 1 torchdiffeq's per-step bookkeeping costs more than f itself."""
    niters = torch.ceil((t[-1] - t[0]) / step_size + 1).item()
    grid = torch.arange(0, niters, dtype=t.dtype, device=t.device) * step_size + t[0]
    grid[-1] = t[-1]
    # the grid's float32 values as Python floats (exact), so no step does 0-dim tensor arithmetic
    starts, steps = grid[:-1].tolist(), (grid[1:] - grid[:-1]).tolist()
    step, z = _STEPS[solver], z0
    for t0, dt in zip(starts, steps):
        z = z + step(func, t0, dt, z)
    return z


class ODEBlock(nn.Module):
    """z(0) -> z(T) with torchdiffeq. Adaptive solvers use rtol/atol; fixed-step ones use step_size."""

    def __init__(
        self,
        odefunc: _CountingFunc,
        *,
        t1: float,
        solver: str,
        rtol: float,
        atol: float,
        step_size: float,
        adjoint: bool,
    ):
        super().__init__()
        self.odefunc = odefunc
        self.t1 = float(t1)
        self.solver = solver
        self.rtol = float(rtol)
        self.atol = float(atol)
        self.step_size = float(step_size)
        self.adjoint = bool(adjoint)

    @property
    def adaptive(self) -> bool:
        """Error control at rtol/atol (else fixed steps of step_size), as the solver registry declares."""
        return SOLVERS.require(self.solver, "head.solver").adaptive

    def forward(self, z0: torch.Tensor) -> torch.Tensor:
        import torchdiffeq

        t = torch.tensor([0.0, self.t1], device=z0.device, dtype=z0.dtype)
        kwargs = dict(method=self.solver, rtol=self.rtol, atol=self.atol)
        if not self.adaptive:
            kwargs["options"] = {"step_size": self.step_size}
        # the model as shipped: with ``adjoint`` its gradients (weights or inputs, e.g. a white-box attack) come
        # from the adjoint solve at rtol/atol, as in the released SODEF code
        use_adjoint = self.adjoint and torch.is_grad_enabled()
        if not use_adjoint and self.solver in _STEPS:  # the same steps as torchdiffeq's, without its per-step overhead
            return fixed_grid_solve(self.odefunc, z0, t, self.solver, self.step_size)
        if self.solver == "dopri5" and not torch.is_grad_enabled():
            # no gradients wanted: torchdiffeq's dopri5 steps without its bookkeeping (sodef_cli/dopri5.py)
            return dopri5_solve(self.odefunc, z0, self.t1, rtol=self.rtol, atol=self.atol)
        solve = torchdiffeq.odeint_adjoint if use_adjoint else torchdiffeq.odeint
        return solve(self.odefunc, z0, t, **kwargs)[-1]

    def with_solver(self, solver: str, *, step_size: float | None = None, adjoint: bool = False) -> ODEBlock:
        """A copy sharing the same f, solved differently (e.g. the fixed-step RK4 attack surrogate)."""
        return ODEBlock(
            self.odefunc,
            t1=self.t1,
            solver=solver,
            rtol=self.rtol,
            atol=self.atol,
            step_size=self.step_size if step_size is None else step_size,
            adjoint=adjoint,
        )


class _IdentityBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z0: torch.Tensor, zt: torch.Tensor) -> torch.Tensor:
        return zt.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class IdentityBackwardODE(nn.Module):
    """BPDA: the true ODE forward, an identity backward."""

    def __init__(self, block: ODEBlock):
        super().__init__()
        self.block = block

    def forward(self, z0: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            zt = self.block(z0.detach())
        return _IdentityBackward.apply(z0, zt)


def simplex_classifier(num_classes: int, dim: int) -> torch.Tensor:
    """V (k, n): unit rows with pairwise cosine -1/(k-1), the regular simplex.

    Closed form V = sqrt(k/(k-1)) (I_k - 11^T/k) Q^T with Q = the first k columns of I_n.
    """
    k = num_classes
    if k < 2:
        raise ValueError("a simplex classifier needs at least 2 classes")
    check_head_dim(dim, k)
    centered = torch.eye(k, dtype=torch.float64) - torch.full((k, k), 1.0 / k, dtype=torch.float64)
    v = math.sqrt(k / (k - 1)) * centered
    out = torch.zeros(k, dim, dtype=torch.float64)
    out[:, :k] = v
    return out.float()


class SODEFHead(nn.Module):
    """features (B, d) -> logits (B, k)."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        cfg: HeadConfig,
        *,
        orthogonal: bool = True,
        orthogonal_map: str = "cayley",
    ):
        super().__init__()
        self.cfg = cfg
        self.proj = nn.Linear(in_features, cfg.dim, bias=False)
        if orthogonal:
            parametrizations.orthogonal(self.proj, orthogonal_map=orthogonal_map)
        self.block = ODEBlock(
            make_odefunc(cfg),
            t1=cfg.t1,
            solver=cfg.solver,
            rtol=cfg.rtol,
            atol=cfg.atol,
            step_size=cfg.step_size,
            adjoint=cfg.adjoint,
        )
        self.classifier = nn.Linear(cfg.dim, num_classes)

    @property
    def odefunc(self) -> _CountingFunc:
        return self.block.odefunc

    def z0(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(h)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.block(self.proj(h)))

    def with_ode(self, ode: nn.Module) -> _HeadView:
        """The same projection and classifier around another ODE module (weights shared)."""
        return _HeadView(self.proj, ode, self.classifier, self.block)

    def materialize(self) -> None:
        """Replace the orthogonal parametrization by its current plain weight (for saving)."""
        if parametrize.is_parametrized(self.proj):
            parametrize.remove_parametrizations(self.proj, "weight", leave_parametrized=True)

    def export_state(self) -> dict[str, torch.Tensor]:
        head = copy.deepcopy(self)
        head.materialize()
        return {k: v for k, v in head.state_dict().items()}


class HardenedClassifier(ImageModel):
    """[0,1] images -> logits through normalize -> frozen backbone -> SODEF head."""

    def __init__(self, backbone: nn.Module, spec: ModelSpec, head: SODEFHead):
        super().__init__(backbone, spec)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def variant(self, kind: str, *, step_size: float | None = None) -> HardenedClassifier:
        """A model sharing all weights whose ODE is solved differently.

        ``fixed``: RK4 with a fixed step, plain backprop (honest gradients); ``bpda``: true forward,
        identity backward through the ODE.
        """
        block = self.head.block  # a head view keeps the ODE block of the head it was made from
        if kind == "fixed":
            ode: nn.Module = block.with_solver("rk4", step_size=step_size or block.step_size, adjoint=False)
        elif kind == "bpda":
            ode = IdentityBackwardODE(block)
        else:
            raise ValueError(f"unknown variant {kind!r}")
        out = HardenedClassifier(self.backbone, self.spec, self.head.with_ode(ode))
        out.normalize = self.normalize
        out._traced = self._traced  # the same backbone: its no-gradient path too
        return out.eval()


def has_ode(model: nn.Module) -> bool:
    """Whether ``model`` classifies through a SODEF head (ODE-aware attacks and checks apply)."""
    return isinstance(model, HardenedClassifier)


class _HeadView(nn.Module):
    """proj -> ode -> classifier with modules borrowed from a SODEFHead."""

    def __init__(self, proj: nn.Module, ode: nn.Module, classifier: nn.Module, block: ODEBlock):
        super().__init__()
        self.proj, self.ode, self.classifier = proj, ode, classifier
        object.__setattr__(self, "_block", block)  # not registered: no duplicate parameters

    @property
    def block(self) -> ODEBlock:
        return self._block

    @property
    def odefunc(self):
        return self._block.odefunc

    def with_ode(self, ode: nn.Module) -> _HeadView:
        return _HeadView(self.proj, ode, self.classifier, self._block)

    def z0(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(h)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.ode(self.proj(h)))


__all__ += ["make_odefunc", "generic_stability_stats", "BaseClassifier", "has_ode"]
