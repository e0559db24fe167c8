"""Choosing the shipped solver: the cheapest fixed-step solver that predicts like the trained adaptive one."""

from __future__ import annotations

import math

import pytest
import torch

import sodef_cli.inference_solver as inf
from sodef_cli.config import HeadConfig
from sodef_cli.errors import UsageError
from sodef_cli.head import SODEFHead


def _head(seed: int = 0, solver: str = "dopri5") -> SODEFHead:
    torch.manual_seed(seed)
    head = SODEFHead(16, 4, HeadConfig(dim=8, solver=solver, adjoint=False), orthogonal=False)
    with torch.no_grad():  # a contracting flow that moves the features: the solver matters
        head.block.odefunc.lin.weight.copy_(torch.eye(8) * 0.8 + 0.3 * torch.randn(8, 8))
    return head.eval()


def _data(n: int = 400, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 16, generator=g) * 2, torch.randint(0, 4, (n,), generator=g)


def test_candidates_cheapest_first_and_capped():
    c = inf.candidates(5.0, max_nfe=8)
    nfe = [x.nfe for x in c]
    assert nfe == sorted(nfe) and max(nfe) <= 8 and c[0] == inf.Candidate("euler", 1, 5.0)
    assert [x.solver for x in c if x.nfe == 4][0] == "rk4"  # ties: the higher order first
    assert inf.Candidate("rk4", 10, 5.0).step_size == 0.5


def test_selection_keeps_the_first_qualifying_candidate_and_checks_it():
    head = _head()
    h, y = _data()
    rec = inf.select_solver(head, h, y, agreement=0.995, accuracy_tolerance=0.2, batch_size=128)
    assert rec["reference"]["solver"] == "dopri5" and rec["reference"]["nfe"] > 0
    chosen = rec["chosen"]
    assert chosen is not None and chosen is rec["tried"][-1]
    assert not any(t["qualifies"] for t in rec["tried"][:-1])
    assert chosen["nfe"] < rec["reference"]["nfe"]
    # recompute the chosen solver's agreement independently
    with torch.no_grad():
        ref = head(h).argmax(1)
        fixed = head.with_ode(head.block.with_solver(chosen["solver"], step_size=chosen["step_size"])).eval()
        got = fixed(h).argmax(1)
    assert abs((got == ref).float().mean().item() - chosen["agreement"]) < 0.01
    assert chosen["agreement"] >= 0.995
    inf.apply(head, rec)
    assert (
        head.block.solver == chosen["solver"]
        and head.block.step_size == chosen["step_size"]
        and not head.block.adaptive
    )
    assert "agrees with dopri5" in inf.summary_line(rec)


def test_stricter_agreement_never_chooses_a_cheaper_solver():
    head = _head(3)
    h, y = _data(seed=4)
    loose = inf.select_solver(head, h, y, agreement=0.9, accuracy_tolerance=5.0)
    strict = inf.select_solver(head, h, y, agreement=1.0, accuracy_tolerance=0.0)
    assert loose["chosen"] is not None
    assert strict["chosen"] is None or strict["chosen"]["nfe"] >= loose["chosen"]["nfe"]


def test_no_candidate_keeps_the_trained_solver(monkeypatch):
    head = _head()
    h, y = _data()
    monkeypatch.setattr(inf, "candidates", lambda t1, max_nfe=None: [])
    rec = inf.select_solver(head, h, y)
    assert rec["chosen"] is None
    inf.apply(head, rec)
    assert head.block.solver == "dopri5"
    assert "as declared" in inf.summary_line(rec)


@pytest.mark.parametrize("kw", [{"agreement": 0.0}, {"agreement": 1.5}, {"accuracy_tolerance": -1.0}])
def test_bad_settings_raise_usage_error(kw):
    h, y = _data(10)
    with pytest.raises(UsageError):
        inf.select_solver(_head(), h, y, **kw)


def test_mismatched_features_and_labels_raise():
    h, y = _data(10)
    with pytest.raises(UsageError):
        inf.select_solver(_head(), h, y[:5])
    with pytest.raises(UsageError):
        inf.candidates(0.0)


def test_harden_ships_the_chosen_solver_and_keeps_the_declared_one(tiny_harden_overrides, tmp_path, demo_data):
    from sodef_cli.config import HardenConfig, resolve
    from sodef_cli.harden import harden
    from sodef_cli.inference import predict
    from sodef_cli.models import load_hardened, load_pair

    out = tmp_path / "h.safetensors"
    # random weights sit at chance with near-tied logits, so dopri5 and fixed steps disagree on a few percent:
    # the test asks for 90% agreement (the default, 99.5%, is met by trained heads; see the README's figures)
    over = {
        **tiny_harden_overrides,
        "head.solver": "dopri5",
        "phase3.epochs": 2,
        "inference.agreement": 0.9,
        "inference.accuracy_tolerance": 5.0,
    }
    summary = harden(resolve(HardenConfig, overrides={"model": "test_resnet", **over}), out)
    rec = summary["inference"]
    assert rec["reference"]["solver"] == "dopri5" and rec["n"] == summary["split"]["val"]
    chosen = rec["chosen"]
    assert chosen is not None and chosen["agreement"] >= 0.9 and chosen["nfe"] < rec["reference"]["nfe"]
    shipped = load_hardened(out)
    assert shipped.head.block.solver == chosen["solver"] and shipped.head.block.step_size == chosen["step_size"]
    assert load_pair(out, solver="declared")[1].head.block.solver == "dopri5"
    # the accuracy stored in the file is the shipped model's, measured on the images
    x = demo_data.test.floats(torch.arange(len(demo_data.test)))
    x = torch.nn.functional.interpolate(x, size=16, mode="bilinear", antialias=True, align_corners=False)
    acc = (predict(shipped, x, 64, "cpu") == demo_data.test.labels).float().mean().item()
    assert abs(acc - summary["hardened"]["test_clean_acc"]) <= 1 / len(x) + 1e-9
    with pytest.raises(UsageError):
        load_pair(out, solver="fastest")


def test_declared_inference_keeps_the_head_solver(tiny_harden_overrides, tmp_path):
    from sodef_cli.config import HardenConfig, resolve
    from sodef_cli.harden import harden
    from sodef_cli.models import load_hardened

    out = tmp_path / "h.safetensors"
    over = {**tiny_harden_overrides, "head.solver": "dopri5", "inference.solver": "declared"}
    summary = harden(resolve(HardenConfig, overrides={"model": "test_resnet", **over}), out)
    assert summary["inference"] is None and load_hardened(out).head.block.solver == "dopri5"


@pytest.mark.parametrize(
    "key,value", [("inference.solver", "fastest"), ("inference.agreement", "0"), ("phase3.solver", "dopri5")]
)
def test_bad_inference_settings_exit_2(key, value, tmp_path):
    from typer.testing import CliRunner

    from sodef_cli.cli import app

    result = CliRunner().invoke(
        app,
        [
            "harden",
            "test_resnet",
            "--data",
            "demo",
            "--set",
            f"{key}={value}",
            "--out",
            str(tmp_path / "h.safetensors"),
        ],
    )
    assert result.exit_code == 2 and key in result.stderr, result.output


@pytest.mark.parametrize("solver", ["euler", "midpoint", "rk4"])
@pytest.mark.parametrize("t1,step", [(5.0, 0.5), (1.0, 0.3), (5.0, 5 / 3)])
def test_own_fixed_steps_equal_torchdiffeq_bitwise(solver, t1, step):
    """The plain fixed-step loop the head uses gives torchdiffeq's results and gradients exactly."""
    import torchdiffeq

    from sodef_cli.head import ODEBlock, SinODEFunc, fixed_grid_solve

    torch.manual_seed(0)
    f = SinODEFunc(16)
    z = torch.randn(5, 16, requires_grad=True)
    t = torch.tensor([0.0, t1])
    ours = fixed_grid_solve(f, z, t, solver, step)
    ref = torchdiffeq.odeint(f, z, t, method=solver, options={"step_size": step})[-1]
    assert torch.equal(ours, ref)
    (g_ours,) = torch.autograd.grad(ours.sum(), z)
    (g_ref,) = torch.autograd.grad(ref.sum(), z)
    assert torch.equal(g_ours, g_ref)
    block = ODEBlock(f, t1=t1, solver=solver, rtol=1e-3, atol=1e-3, step_size=step, adjoint=False)
    before = f.nfe
    assert torch.equal(block(z), ref)
    assert f.nfe - before == {"euler": 1, "midpoint": 2, "rk4": 4}[solver] * math.ceil(t1 / step - 1e-9)


def test_a_damaged_inference_record_is_named_not_a_crash():
    from sodef_cli.inference_solver import summary_line

    line = summary_line({"reference": {"solver": "dopri5", "nfe": 30}, "chosen": {"solver": "euler"}, "n": 4})
    assert line.startswith("unreadable inference record in the metadata (KeyError")
