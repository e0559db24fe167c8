"""The phases must achieve what they are for, on a tiny head and separable features: phase 1 classifies through
the fixed simplex well above chance, phase 2 makes the Jacobians at z(0) stable."""

from __future__ import annotations

import pytest
import torch

from sodef_cli.config import HeadConfig, Phase1Config, Phase2Config, RegularizerConfig
from sodef_cli.diagnostics import jacobian_stability
from sodef_cli.head import SODEFHead, simplex_classifier
from sodef_cli.phases import Reporter, accuracy_from_logits, phase1, phase2

K, D, N = 4, 32, 400  # classes, feature size, training points


def _clusters(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    means = 3.0 * torch.randn(K, D, generator=torch.Generator().manual_seed(0))
    y = torch.arange(n) % K
    return 0.1 * (means[y] + torch.randn(n, D, generator=g)), y  # |z(0)| about 1, like features after phase 1


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    h_tr, y_tr = _clusters(N, 1)
    h_val, y_val = _clusters(200, 2)
    head = SODEFHead(D, K, HeadConfig(dim=8, solver="rk4", t1=1.0, step_size=0.5))
    V = simplex_classifier(K, 8)
    with torch.no_grad():
        before = accuracy_from_logits(head.z0(h_val) @ V.T, y_val)
    m1 = phase1(
        head,
        h_tr,
        y_tr,
        h_val,
        y_val,
        V,
        Phase1Config(epochs=5, batch_size=32, lr=0.05),
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        reporter=Reporter(),
    )
    head.materialize()
    with torch.no_grad():
        after = accuracy_from_logits(head.z0(h_val) @ V.T, y_val)
        z_tr = head.z0(h_tr)
    return head, z_tr, before, after, m1


def test_phase1_classifies_through_the_simplex_well_above_chance(trained):
    _, _, before, after, m1 = trained
    assert before < 0.6  # a random projection does not do the job by itself
    assert after >= 0.9 and m1["val_acc_V"] == pytest.approx(after)


def test_phase2_makes_the_jacobians_stable(trained):
    head, z_tr, _, _, _ = trained
    sample = z_tr[:128]
    stab_before = jacobian_stability(head.odefunc, sample)
    m2 = phase2(
        head.odefunc,
        z_tr,
        Phase2Config(epochs=6, batch_size=32),
        RegularizerConfig(),
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        reporter=Reporter(),
    )
    stab_after = jacobian_stability(head.odefunc, sample)
    assert stab_before["frac_eig_negative"] < 0.5
    assert stab_after["frac_eig_negative"] >= 0.9
    assert stab_after["mean_max_real_eig"] < 0 < stab_before["mean_max_real_eig"]
    assert m2["steps"] == 6 * (N // 32 + 1) and m2["skipped"] is False


def test_phase2_raises_the_share_of_stable_jacobians_when_hardening(hardened_run):
    """End to end on the demo data: the file's stability figures before and after phase 2."""
    stab = hardened_run[1]["stability"]
    assert stab["after_phase2"]["frac_eig_negative"] >= 0.9 > stab["before_phase2"]["frac_eig_negative"]
    assert stab["warning"] is None


@pytest.mark.parametrize("orthogonal_map", ["cayley", "householder", "matrix_exp"])
def test_every_orthogonal_map_trains_an_orthonormal_projection(orthogonal_map):
    torch.manual_seed(0)
    h_tr, y_tr = _clusters(N, 1)
    head = SODEFHead(D, K, HeadConfig(dim=8, solver="rk4", t1=1.0, step_size=0.5), orthogonal_map=orthogonal_map)
    phase1(
        head,
        h_tr,
        y_tr,
        h_tr[:100],
        y_tr[:100],
        simplex_classifier(K, 8),
        Phase1Config(epochs=2, batch_size=32, lr=0.05, orthogonal_map=orthogonal_map),
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        reporter=Reporter(),
    )
    head.materialize()
    w = head.proj.weight  # (8, D): orthonormal rows
    torch.testing.assert_close(w @ w.T, torch.eye(8), atol=1e-4, rtol=0)


def test_an_unknown_orthogonal_map_is_a_usage_error():
    from sodef_cli.config import HardenConfig, resolve, validate
    from sodef_cli.errors import UsageError

    with pytest.raises(UsageError, match="phase1.orthogonal_map"):
        validate(resolve(HardenConfig, overrides={"model": "test_resnet", "phase1.orthogonal_map": "qr"}))
