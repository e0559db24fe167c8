"""The batched stability terms against the per-sample autograd reference, and the simplex classifier."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from sodef_cli.config import HeadConfig, RegularizerConfig
from sodef_cli.head import generic_stability_stats, make_odefunc, simplex_classifier
from sodef_cli.regularizers import reference_stability_loss, stability_loss, stability_stats

DIM = 6
TERMS = ("loss", "f", "diag", "offdiag")


def _odefunc(family: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return make_odefunc(HeadConfig(dim=DIM, odefunc=family, hidden=8)).double()


def _z(batch: int = 5, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, DIM, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _cfg(form: str, convention: str, **kw) -> RegularizerConfig:
    # nonzero weights on every term; exponents small enough that exp() stays well scaled
    base = dict(form=form, convention=convention, weight_f=0.1, weight_diag=10.0, weight_offdiag=0.5,
                exponent=1.0, trans=1.0, exponent_off=0.1, trans_off=1.0, exponent_f=5.0,
                alpha_f=1.0, alpha_diag=0.05, alpha_offdiag=0.05)
    base.update(kw)
    return RegularizerConfig(**base)


CASES = list(itertools.product(["sin", "sin3"], ["code", "paper"], ["column", "row"]))


@pytest.mark.parametrize("family,form,convention", CASES)
@pytest.mark.parametrize("jacobian_samples", [0, 3])
def test_batched_loss_equals_per_sample_reference(family, form, convention, jacobian_samples):
    cfg = _cfg(form, convention, jacobian_samples=jacobian_samples)
    func = _odefunc(family)
    z = _z()
    fast = stability_loss(func, z, cfg)
    ref = reference_stability_loss(func, z, cfg)
    for k in TERMS:
        torch.testing.assert_close(fast[k], ref[k], rtol=1e-5, atol=1e-5, msg=lambda m: f"term {k}: {m}")
    names, params = zip(*func.named_parameters())
    g_fast = torch.autograd.grad(fast["loss"], params)
    g_ref = torch.autograd.grad(ref["loss"], params)
    for p, a, b in zip(names, g_fast, g_ref):
        assert not torch.all(a == 0), f"{p}: zero gradient tests nothing"
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m: f"grad {p}: {m}")


@pytest.mark.parametrize("family,form,convention", CASES)
def test_batched_loss_float32_close_to_reference(family, form, convention):
    """The default dtype agrees as well, to float32 precision."""
    cfg = _cfg(form, convention)
    func = _odefunc(family).float()
    z = _z().float()
    fast, ref = stability_loss(func, z, cfg), reference_stability_loss(func, z, cfg)
    for k in TERMS:
        torch.testing.assert_close(fast[k], ref[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["sin", "sin3"])
@pytest.mark.parametrize("convention", ["column", "row"])
def test_generic_torch_func_path_equals_closed_form(family, convention):
    func = _odefunc(family)
    z = _z(batch=4).requires_grad_(False)
    closed = func.stability_stats(z, convention)
    generic = generic_stability_stats(func, z, convention)
    for a, b in zip(closed, generic):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("family", ["sin", "sin3"])
def test_exact_jacobian_equals_autograd(family):
    func = _odefunc(family)
    z = _z(batch=3)
    jac = func.jacobian(z)
    for i in range(z.shape[0]):
        ref = torch.autograd.functional.jacobian(lambda v: func.f(v.unsqueeze(0)).squeeze(0), z[i])
        torch.testing.assert_close(jac[i], ref, rtol=1e-10, atol=1e-10)


def test_stats_fall_back_to_torch_func_for_other_odefuncs():
    class Tanh(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(DIM, DIM).double()

        def f(self, z):
            return torch.tanh(self.lin(z))

    func = Tanh()
    z = _z(batch=3)
    fz, diag, dom = stability_stats(func, z, "column")
    jac = torch.stack([torch.autograd.functional.jacobian(lambda v: func.f(v), z[i]) for i in range(3)])
    torch.testing.assert_close(fz, func.f(z))
    torch.testing.assert_close(diag, torch.diagonal(jac, dim1=-2, dim2=-1))
    torch.testing.assert_close(dom, jac.abs().sum(-2) - 2 * torch.diagonal(jac, dim1=-2, dim2=-1).abs())


def test_dominance_conventions_on_a_known_matrix():
    """sin with z = 0, b = 0: J = -W exactly (cos 0 = 1)."""
    func = make_odefunc(HeadConfig(dim=3, odefunc="sin")).double()
    w = torch.tensor([[-4.0, 1.0, 2.0], [0.5, -3.0, 0.0], [1.0, -1.0, 2.0]], dtype=torch.float64)
    with torch.no_grad():
        func.lin.weight.copy_(w)
        func.lin.bias.zero_()
    z = torch.zeros(1, 3, dtype=torch.float64)
    _, diag, col = stability_stats(func, z, "column")
    _, _, row = stability_stats(func, z, "row")
    j = -w
    torch.testing.assert_close(diag[0], torch.diagonal(j))
    # column j: sum_{i != j} |J_ij| - |J_jj|;  row i: sum_{j != i} |J_ij| - |J_ii|
    torch.testing.assert_close(col[0], torch.tensor([1.5 - 4, 2.0 - 3, 2.0 - 2], dtype=torch.float64))
    torch.testing.assert_close(row[0], torch.tensor([3.0 - 4, 0.5 - 3, 2.0 - 2], dtype=torch.float64))


@pytest.mark.parametrize("k,n", [(10, 64), (3, 5), (2, 2), (10, 10)])
def test_simplex_classifier_is_a_regular_simplex(k, n):
    v = simplex_classifier(k, n).double()
    assert v.shape == (k, n)
    torch.testing.assert_close(v.norm(dim=1), torch.ones(k, dtype=torch.float64), atol=1e-6, rtol=0)
    cos = v @ v.T
    off = cos[~torch.eye(k, dtype=torch.bool)]
    torch.testing.assert_close(off, torch.full_like(off, -1.0 / (k - 1)), atol=1e-6, rtol=0)
    torch.testing.assert_close(v.sum(0), torch.zeros(n, dtype=torch.float64), atol=1e-6, rtol=0)  # centred


@pytest.mark.parametrize("k,n", [(10, 9), (3, 2)])
def test_simplex_classifier_needs_dim_at_least_classes(k, n):
    with pytest.raises(ValueError, match="at least the number of classes"):
        simplex_classifier(k, n)


def test_simplex_classifier_needs_two_classes():
    with pytest.raises(ValueError):
        simplex_classifier(1, 4)


def test_code_form_value_by_hand():
    """One point, sin family, z = 0, b = 0: every term has a closed form."""
    func = make_odefunc(HeadConfig(dim=2, odefunc="sin")).double()
    w = torch.tensor([[2.0, -1.0], [0.5, 3.0]], dtype=torch.float64)
    with torch.no_grad():
        func.lin.weight.copy_(w)
        func.lin.bias.zero_()
    z = torch.zeros(1, 2, dtype=torch.float64)
    cfg = _cfg("code", "column")
    out = stability_loss(func, z, cfg)
    diag = torch.tensor([-2.0, -3.0], dtype=torch.float64)
    dom = torch.tensor([0.5 - 2.0, 1.0 - 3.0], dtype=torch.float64)
    r_d = torch.exp(cfg.exponent * (diag + cfg.trans)).mean()
    r_o = torch.exp(cfg.exponent_off * (dom + cfg.trans_off)).mean()
    torch.testing.assert_close(out["f"], torch.tensor(0.0, dtype=torch.float64))  # f(0) = sin(0) = 0
    torch.testing.assert_close(out["diag"], r_d)
    torch.testing.assert_close(out["offdiag"], r_o)
    torch.testing.assert_close(out["loss"], cfg.weight_diag * r_d + cfg.weight_offdiag * r_o)
    assert math.isfinite(float(out["loss"].detach()))
