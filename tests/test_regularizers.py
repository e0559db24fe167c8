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
    base = dict(
        form=form,
        convention=convention,
        weight_f=0.1,
        weight_diag=10.0,
        weight_offdiag=0.5,
        exponent=1.0,
        trans=1.0,
        exponent_off=0.1,
        trans_off=1.0,
        exponent_f=5.0,
        alpha_f=1.0,
        alpha_diag=0.05,
        alpha_offdiag=0.05,
    )
    base.update(kw)
    return RegularizerConfig(**base)


CASES = list(itertools.product(["sin", "sin3"], ["code", "paper"], ["column", "row"]))


def _jacobians(func, z: torch.Tensor) -> torch.Tensor:
    """(B, n, n) with J[b, i, j] = d f_i / d z_j, by autograd one point at a time (no closed form of the code)."""
    return torch.stack(
        [
            torch.autograd.functional.jacobian(lambda v: func.f(v.unsqueeze(0)).squeeze(0), z[b], create_graph=True)
            for b in range(z.shape[0])
        ]
    )


def _independent_loss(func, z: torch.Tensor, cfg: RegularizerConfig) -> dict[str, torch.Tensor]:
    """The phase-2 loss written from its formulas, element by element (nothing shared with sodef_cli.regularizers).

    code form (docs/method.md): w_f mean_{b,i} (e_f f_i(z_b))^2 + w_d mean_{b,i} exp(e (J_ii + t))
        + w_o mean_{b,j} exp(e_o (sum_{i != j} |J_ij| - |J_jj| + t_o))      [column; row: sum over j != i of |J_ij|]
    paper form (eq. 7): a_f mean_b ||f(z_b)|| + a_d mean_b exp(sum_i J_ii) + a_o mean_b exp(sum_i (-|J_ii| + sum_{j != i} |J_ij|))
    The f term uses every point; the Jacobian terms the first ``jacobian_samples`` (all when 0).
    """
    B, n = z.shape
    m = cfg.jacobian_samples if 0 < cfg.jacobian_samples < B else B
    fz = func.f(z)
    J = _jacobians(func, z[:m])
    if cfg.form == "code":
        r_f = sum((cfg.exponent_f * fz[b, i]) ** 2 for b in range(B) for i in range(n)) / (B * n)
        r_d = sum(torch.exp(cfg.exponent * (J[b, i, i] + cfg.trans)) for b in range(m) for i in range(n)) / (m * n)
        terms = []
        for b in range(m):
            for k in range(n):
                if cfg.convention == "column":
                    off = sum(J[b, i, k].abs() for i in range(n) if i != k)
                else:
                    off = sum(J[b, k, j].abs() for j in range(n) if j != k)
                terms.append(torch.exp(cfg.exponent_off * (off - J[b, k, k].abs() + cfg.trans_off)))
        r_o = sum(terms) / (m * n)
        weights = (cfg.weight_f, cfg.weight_diag, cfg.weight_offdiag)
    else:
        r_f = sum(torch.sqrt(sum(fz[b, i] ** 2 for i in range(n))) for b in range(B)) / B
        r_d = sum(torch.exp(sum(J[b, i, i] for i in range(n))) for b in range(m)) / m
        r_o = (
            sum(
                torch.exp(sum(-J[b, i, i].abs() + sum(J[b, i, j].abs() for j in range(n) if j != i) for i in range(n)))
                for b in range(m)
            )
            / m
        )
        weights = (cfg.alpha_f, cfg.alpha_diag, cfg.alpha_offdiag)
    return {"loss": weights[0] * r_f + weights[1] * r_d + weights[2] * r_o, "f": r_f, "diag": r_d, "offdiag": r_o}


@pytest.mark.parametrize("family,form,convention", CASES)
@pytest.mark.parametrize("jacobian_samples", [0, 3])
def test_batched_loss_equals_an_independent_float64_reference(family, form, convention, jacobian_samples):
    cfg = _cfg(form, convention, jacobian_samples=jacobian_samples)
    func = _odefunc(family)
    with torch.no_grad():  # a nonzero bias: f(z) is far from 0 and every term matters
        for name, p_ in func.named_parameters():
            if name.endswith("bias"):
                p_.add_(0.3)
    z = _z()
    fast = stability_loss(func, z, cfg)
    ref = _independent_loss(func, z, cfg)
    for k in TERMS:
        torch.testing.assert_close(fast[k], ref[k], rtol=1e-10, atol=1e-12, msg=lambda m: f"term {k}: {m}")
    assert all(float(ref[k].detach()) > 1e-3 for k in ("f", "diag", "offdiag"))  # no term vanishes: each one is tested
    names, params = zip(*func.named_parameters())
    g_fast = torch.autograd.grad(fast["loss"], params)
    g_ref = torch.autograd.grad(ref["loss"], params)
    for p, a, b in zip(names, g_fast, g_ref):
        assert not torch.all(a == 0), f"{p}: zero gradient tests nothing"
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=lambda m: f"grad {p}: {m}")


@pytest.mark.parametrize("family,form,convention", CASES)
def test_the_per_sample_loop_of_the_benchmark_agrees(family, form, convention):
    """``reference_stability_loss`` (the benchmark's baseline, the original per-sample loop) gives the same loss."""
    cfg = _cfg(form, convention, jacobian_samples=3)
    func, z = _odefunc(family), _z()
    torch.testing.assert_close(
        reference_stability_loss(func, z, cfg)["loss"], _independent_loss(func, z, cfg)["loss"], rtol=1e-10, atol=1e-12
    )


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


def _sin_at_zero():
    """sin family, one point z = 0 with a nonzero bias: f(0) = sin(-b), J_ij = -cos(b_i) W_ij."""
    func = make_odefunc(HeadConfig(dim=2, odefunc="sin")).double()
    with torch.no_grad():
        func.lin.weight.copy_(torch.tensor([[2.0, -1.0], [0.5, 3.0]], dtype=torch.float64))
        func.lin.bias.copy_(torch.tensor([0.3, -0.2], dtype=torch.float64))
    return func, torch.zeros(1, 2, dtype=torch.float64)


def test_code_form_value_by_hand():
    """Every term by hand, the f term included (f(0) = sin(-b) != 0)."""
    func, z = _sin_at_zero()
    cfg = _cfg("code", "column", weight_offdiag=0.5, exponent_f=5.0)
    out = {k: v.detach() for k, v in stability_loss(func, z, cfg).items()}
    c0, c1 = math.cos(0.3), math.cos(-0.2)
    f0, f1 = math.sin(-0.3), math.sin(0.2)
    j = [[-c0 * 2.0, c0 * 1.0], [-c1 * 0.5, -c1 * 3.0]]  # J = -diag(cos(b)) W
    r_f = ((5 * f0) ** 2 + (5 * f1) ** 2) / 2
    r_d = (math.exp(1.0 * (j[0][0] + 1.0)) + math.exp(1.0 * (j[1][1] + 1.0))) / 2
    col = [abs(j[1][0]) - abs(j[0][0]), abs(j[0][1]) - abs(j[1][1])]
    r_o = (math.exp(0.1 * (col[0] + 1.0)) + math.exp(0.1 * (col[1] + 1.0))) / 2
    assert float(out["f"]) == pytest.approx(r_f, rel=1e-12) and r_f > 1.0
    assert float(out["diag"]) == pytest.approx(r_d, rel=1e-12)
    assert float(out["offdiag"]) == pytest.approx(r_o, rel=1e-12)
    assert float(out["loss"]) == pytest.approx(0.1 * r_f + 10.0 * r_d + 0.5 * r_o, rel=1e-12)


def test_paper_form_value_by_hand():
    """Eq. 7 by hand: ||f(0)||, exp(trace J) and exp(sum_i (-|J_ii| + sum_{j != i} |J_ij|))."""
    func, z = _sin_at_zero()
    cfg = _cfg("paper", "row", alpha_f=1.0, alpha_diag=0.05, alpha_offdiag=0.05)
    out = {k: v.detach() for k, v in stability_loss(func, z, cfg).items()}
    c0, c1 = math.cos(0.3), math.cos(-0.2)
    j = [[-c0 * 2.0, c0 * 1.0], [-c1 * 0.5, -c1 * 3.0]]
    r_f = math.hypot(math.sin(-0.3), math.sin(0.2))
    r_d = math.exp(j[0][0] + j[1][1])
    r_o = math.exp((-abs(j[0][0]) + abs(j[0][1])) + (-abs(j[1][1]) + abs(j[1][0])))
    assert float(out["f"]) == pytest.approx(r_f, rel=1e-12)
    assert float(out["diag"]) == pytest.approx(r_d, rel=1e-12)
    assert float(out["offdiag"]) == pytest.approx(r_o, rel=1e-12)
    assert float(out["loss"]) == pytest.approx(r_f + 0.05 * r_d + 0.05 * r_o, rel=1e-12)
