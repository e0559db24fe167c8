"""Dormand-Prince 5(4) without gradients: torchdiffeq's ``dopri5`` algorithm with less per-step overhead.

The model as shipped with an adaptive solver spends most of a forward in torchdiffeq's bookkeeping, not in f: at
batch 256 on the demo model f itself is a small fraction of a step. :func:`dopri5_solve` takes the same steps: the
Dormand-Prince tableau, the initial step of Hairer-Norsett-Wanner as torchdiffeq selects it, the RMS error norm over
the whole batch tensor (so the result depends on the batch, exactly as torchdiffeq's does), the step-size controller
(safety 0.9, growth at most 10, shrink at most 0.2 after a rejection, exponent 1/5) in float64, and z(T) from the
4th-order interpolation through the step that crosses T. Two things differ: each stage's combination of earlier
stages is accumulated stage by stage on ``(batch, n)`` tensors, where torchdiffeq multiplies and reduces a
``(batch, n, 7)`` buffer (half the time of a step, in its reduction over the last dimension), so results agree with
torchdiffeq's to float rounding rather than bitwise (1.7e-6 on the paper recipe's demo model, far below rtol; an
unstable f amplifies it, as it amplifies any rounding); and what inference does not use is left out (autograd
bookkeeping, perturbation flags, callbacks, events, interpolation fits of steps that do not cross T).
``tests/test_dopri5.py`` checks it against ``torchdiffeq.odeint``. Gradients always go through torchdiffeq
(``head.ODEBlock``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["dopri5_solve"]

_ALPHA = (1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_BETA = (
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_C_ERROR = (
    35 / 384 - 1951 / 21600,
    0,
    500 / 1113 - 22642 / 50085,
    125 / 192 - 451 / 720,
    -2187 / 6784 - -12231 / 42400,
    11 / 84 - 649 / 6300,
    -1.0 / 60.0,
)
_C_MID = (
    6025192743 / 30085553152 / 2,
    0,
    51252292925 / 65400821598 / 2,
    -2691868925 / 45128329728 / 2,
    187940372067 / 1594534317056 / 2,
    -1776094331 / 19743644256 / 2,
    11237099 / 235043384 / 2,
)
SAFETY, IFACTOR, DFACTOR, ORDER = 0.9, 10.0, 0.2, 5


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.abs().pow(2).mean().sqrt()


def dopri5_solve(
    func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    z0: torch.Tensor,
    t1: float,
    *,
    rtol: float,
    atol: float,
    max_steps: int = 2**31 - 1,
) -> torch.Tensor:
    """z(t1) of dz/dt = func(t, z) from z(0) = z0 (t1 > 0), as ``torchdiffeq.odeint(func, z0, [0, t1],
    method="dopri5", rtol=rtol, atol=atol)[-1]`` computes it. Call without gradients."""
    dtype, device = z0.dtype, z0.device
    c_mid = torch.tensor(_C_MID, dtype=torch.float64).to(device=device, dtype=dtype)
    f0 = func(torch.zeros((), dtype=dtype, device=device), z0)
    dt = _initial_step(func, z0, f0, rtol, atol)  # float64 Python float, as torchdiffeq's float64 tensor
    t_end = torch.tensor(t1, dtype=dtype).item()  # the time grid torchdiffeq is given (float32), in float64
    t, y, f = 0.0, z0, f0
    last = None  # (y0, y1, stages, dt, t0, t1) of the latest accepted step
    steps = 0
    while t_end > t:
        if steps >= max_steps:
            raise AssertionError(f"max_num_steps exceeded ({steps}>={max_steps})")
        t_next = t + dt
        if not t_next > t:
            raise AssertionError(f"underflow in dt {dt}")
        h = float(torch.tensor(dt, dtype=torch.float64).to(dtype))  # the step in the state's dtype, as torchdiffeq
        t0_, t1_ = torch.tensor((t, t_next), dtype=torch.float64).to(device=device, dtype=dtype).unbind()
        ks = [f]
        yi = y
        for alpha, row in zip(_ALPHA, _BETA):
            yi = y + _combine(ks, row, h)
            ks.append(func(t1_ if alpha == 1.0 else t0_ + alpha * h, yi))
        error = _combine(ks, _C_ERROR, h)
        ratio = float(_rms(error / (atol + rtol * torch.max(y.abs(), yi.abs()))))
        if not math.isfinite(ratio):  # a non-finite state makes its stages, hence the error estimate, non-finite
            raise AssertionError("non-finite values in state `y`")
        if ratio <= 1:
            last = (y, yi, ks, h, t, t_next)
            t, y, f = t_next, yi, ks[-1]
        dt = _next_step(dt, ratio)
        steps += 1
    y0, y1, ks, h, ta, tb = last
    k = torch.stack(ks, dim=-1)
    out = _interpolate(y0, y1, k, torch.tensor(h, dtype=dtype, device=device), c_mid, (t_end - ta) / (tb - ta))
    if not bool(torch.isfinite(out).all()):
        raise AssertionError("non-finite values in state `y`")
    return out


def _combine(ks: list[torch.Tensor], coefficients: tuple[float, ...], h: float) -> torch.Tensor:
    """sum_j c_j h k_j over the stages with a non-zero coefficient, accumulated in stage order."""
    total = None
    for k, c in zip(ks, coefficients):
        if c:
            term = k * (c * h)
            total = term if total is None else total + term
    return total


def _initial_step(func, y0: torch.Tensor, f0: torch.Tensor, rtol: float, atol: float) -> float:
    """torchdiffeq's ``_select_initial_step`` for order 4 (the solver's order minus one), in the state's dtype."""
    scale = atol + torch.abs(y0) * rtol
    d0 = _rms(y0 / scale).abs()
    d1 = _rms(f0 / scale).abs()
    if d0 < 1e-5 or d1 < 1e-5:
        h0 = torch.tensor(1e-6, dtype=y0.dtype, device=y0.device)
    else:
        h0 = 0.01 * d0 / d1
    h0 = h0.abs()
    f1 = func(h0, y0 + h0 * f0)
    d2 = torch.abs(_rms((f1 - f0) / scale) / h0)
    if d1 <= 1e-15 and d2 <= 1e-15:
        h1 = torch.max(torch.tensor(1e-6, dtype=y0.dtype, device=y0.device), h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1.0 / float(ORDER))
    return float(torch.min(100 * h0, h1.abs()).to(torch.float64))


def _next_step(dt: float, ratio: float) -> float:
    """torchdiffeq's ``_optimal_step_size`` (its float64 tensor arithmetic, here in Python floats: the same IEEE
    double operations)."""
    if ratio == 0:
        return dt * IFACTOR
    shrink = 1.0 if ratio < 1 else DFACTOR
    return dt * min(IFACTOR, max(SAFETY / ratio ** (1.0 / ORDER), shrink))


def _interpolate(y0, y1, k, dt, c_mid, x: float) -> torch.Tensor:
    """torchdiffeq's 4th-order interpolation through a Dormand-Prince step, at ``x`` in [0, 1] of the step."""
    y_mid = y0 + torch.sum(k * (dt * c_mid), dim=-1).view_as(y0)
    f0, f1 = k[..., 0], k[..., -1]
    a = 2 * dt * (f1 - f0) - 8 * (y1 + y0) + 16 * y_mid
    b = dt * (5 * f0 - 3 * f1) + 18 * y0 + 14 * y1 - 32 * y_mid
    c = dt * (f1 - 4 * f0) - 11 * y0 - 5 * y1 + 16 * y_mid
    d = dt * f0
    xt = torch.tensor(x, dtype=torch.float64).to(y0.dtype)
    total = y0 + xt * d
    power = xt
    for coef in (c, b, a):
        power = power * xt
        total = total + power * coef
    return total
