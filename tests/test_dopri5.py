"""sodef_cli/dopri5.py against torchdiffeq's dopri5: the same steps (evaluation counts) and outputs equal to float
rounding (its stage sums are accumulated in another order)."""

from __future__ import annotations

import pytest
import torch
import torchdiffeq

from sodef_cli.config import HeadConfig
from sodef_cli.dopri5 import dopri5_solve
from sodef_cli.head import ODEBlock, make_odefunc


def _func(odefunc: str, dim: int, seed: int, scale: float):
    torch.manual_seed(seed)
    f = make_odefunc(HeadConfig(dim=dim, odefunc=odefunc, hidden=32))
    with torch.no_grad():
        for p in f.parameters():
            p.mul_(scale)
    return f


@pytest.mark.parametrize(
    "odefunc,dim,batch,scale,rtol,t1,tol",
    [
        ("sin", 16, 64, 1.0, 1e-3, 5.0, 1e-5),
        # larger weights: rejected steps, and an unstable flow that amplifies float rounding over [0, 5] (a SODEF
        # head is trained to contract, where the two agree to 1e-6): within ten times rtol
        ("sin", 16, 1, 3.0, 1e-3, 5.0, 1e-2),
        ("sin", 8, 7, 1.0, 1e-6, 2.5, 1e-5),
        ("sin3", 8, 33, 2.0, 1e-4, 5.0, 1e-5),
    ],
)
def test_same_steps_and_outputs_as_torchdiffeq(odefunc, dim, batch, scale, rtol, t1, tol):
    f = _func(odefunc, dim, seed=batch, scale=scale)
    z0 = torch.randn(batch, dim, generator=torch.Generator().manual_seed(dim)) * 2
    t = torch.tensor([0.0, t1])
    with torch.no_grad():
        f.nfe = 0
        want = torchdiffeq.odeint(f, z0, t, method="dopri5", rtol=rtol, atol=rtol)[-1]
        nfe_want, f.nfe = f.nfe, 0
        got = dopri5_solve(f, z0, t1, rtol=rtol, atol=rtol)
    assert f.nfe == nfe_want  # the same accepted and rejected steps
    scale = float(want.abs().max())
    assert float((got - want).abs().max()) <= tol * max(1.0, scale)


def test_the_block_uses_it_without_gradients_only(monkeypatch):
    import sodef_cli.head as head_mod

    f = _func("sin", 8, 0, 1.0)
    block = ODEBlock(f, t1=5.0, solver="dopri5", rtol=1e-3, atol=1e-3, step_size=0.5, adjoint=False)
    calls = []
    real = head_mod.dopri5_solve
    monkeypatch.setattr(head_mod, "dopri5_solve", lambda *a, **k: calls.append(1) or real(*a, **k))
    z0 = torch.randn(4, 8)
    with torch.no_grad():
        out = block(z0)
    assert calls == [1]
    z = z0.clone().requires_grad_(True)
    out_grad = block(z)  # gradients: torchdiffeq, as the model as shipped
    assert calls == [1] and out_grad.requires_grad
    torch.testing.assert_close(out, out_grad.detach(), rtol=1e-5, atol=1e-6)


def test_non_finite_states_and_step_limits_raise():
    f = _func("sin", 4, 0, 1.0)
    nan_late = lambda t, z: -z if float(t) < 0.5 else z * float("nan")  # fine at first, then not finite
    with torch.no_grad():
        with pytest.raises(AssertionError, match="max_num_steps"):
            dopri5_solve(f, torch.randn(2, 4), 5.0, rtol=1e-9, atol=1e-9, max_steps=3)
        with pytest.raises(AssertionError, match="non-finite"):
            dopri5_solve(nan_late, torch.ones(2, 4), 1.0, rtol=1e-3, atol=1e-3)
