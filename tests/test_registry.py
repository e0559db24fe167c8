"""Registries (``sodef_cli.registry``): each family of names declared once, and read by the CLI, config
validation and the code that dispatches through it."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import sodef_cli.evaluate
import sodef_cli.harden
from sodef_cli import registry
from sodef_cli.attacks import AttackParams, Target, suite_attacks
from sodef_cli.cli import app
from sodef_cli.config import HardenConfig, HeadConfig, resolve
from sodef_cli.errors import UsageError
from sodef_cli.head import ODEBlock, SinODEFunc, make_odefunc
from sodef_cli.registry import (
    ATTACK_KINDS,
    ATTACKS,
    FORMATS,
    NORMS,
    ODEFUNCS,
    SOLVERS,
    SUITES,
    Registry,
    Solver,
    register_attack,
)

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def _flat(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------- attacks and suites


def test_every_attack_is_declared_completely():
    assert len(ATTACKS) >= 17
    for name, spec in ATTACKS.items():
        assert spec.name == name
        assert spec.kind in ATTACK_KINDS, name
        assert spec.norms and set(spec.norms) <= set(NORMS), name
        assert spec.description, name
        assert spec.min_classes >= 2, name
        p = AttackParams(norm=spec.norms[0], eps=0.1, n_classes=10)
        prm = spec.params(p)
        if name != "fgsm":  # the one single-step attack; every other one has a budget, recorded with its default
            assert spec.default_steps or spec.default_queries, name
            assert prm, name
        if spec.default_steps:  # --steps reaches what the results record
            assert spec.params(dataclasses.replace(p, steps=3))[spec.steps_key] == 3, name
            assert spec.resolve(p).steps == spec.default_steps, name
        if spec.default_queries:
            assert spec.params(dataclasses.replace(p, queries=7))["queries"] == 7, name
        units, what = spec.cost(p)
        assert units >= 1 and what in ("grad", "forward"), name


def test_declared_settings_are_the_reference_ones():
    p = AttackParams(norm="Linf", eps=8 / 255, n_classes=100)
    assert ATTACKS["apgd-t"].params(p) == {"steps": 100, "targets": 9}
    assert ATTACKS["fab-t"].params(dataclasses.replace(p, n_classes=5)) == {"steps": 100, "targets": 4}
    assert ATTACKS["square"].params(p) == {"queries": 5000}
    assert ATTACKS["spsa"].params(p) == {"iterations": 20, "samples": 128}
    assert ATTACKS["fgsm"].params(p) == {}
    assert ATTACKS["spsa"].cost(p) == (20 * 2 * 128, "forward")
    assert ATTACKS["fab-t"].cost(p) == (100 * 9 * 2, "grad")
    assert {a for a in ATTACKS if ATTACKS[a].min_classes > 2} == {"apgd-dlr", "apgd-t"}


def test_suites_name_only_registered_attacks():
    assert list(SUITES) == ["quick", "standard", "adaptive"]
    for name, suite in SUITES.items():
        assert suite.name == name and suite.description
        for role in ("base", "hardened"):
            assert suite[role], (name, role)
            unknown = [a for a in suite[role] if a not in ATTACKS]
            assert not unknown, (name, role, unknown)
        # the base classifier has no ODE and no other model to transfer from
        assert not [a for a in suite["base"] if ATTACKS[a].hardened_only], name
        for norm in NORMS:  # every suite still attacks under either threat model
            plan = suite_attacks(name, [], norm)
            assert plan["base"] and plan["hardened"], (name, norm)


@pytest.mark.parametrize("norm", NORMS)
def test_an_attack_is_rejected_under_a_norm_it_does_not_support(norm):
    for name, spec in ATTACKS.items():
        if norm in spec.norms:
            assert name in suite_attacks(None, [name], norm)["hardened"]
        else:
            with pytest.raises(UsageError, match=f"{name} do not support --norm {norm}"):
                suite_attacks(None, [name], norm)
    for name in SUITES:  # suites drop such attacks instead
        plan = suite_attacks(name, [], norm)
        assert all(norm in ATTACKS[a].norms for names in plan.values() for a in names)


def test_minimum_classes_and_ode_needs_come_from_the_declarations():
    with pytest.raises(UsageError, match="need at least 4 classes"):
        suite_attacks(None, ["apgd-t"], "Linf", n_classes=3)
    assert "apgd-t" not in suite_attacks("standard", [], "Linf", n_classes=3)["hardened"]
    ode = [a for a in ATTACKS if ATTACKS[a].needs_ode]
    assert set(ode) == {"fixed-step-apgd-ce", "fixed-step-pgd", "bpda-apgd-ce"}
    for name in ode:
        with pytest.raises(UsageError, match="need an ODE"):
            suite_attacks(None, [name], "Linf", has_ode=False)
    assert not set(ode) & set(suite_attacks("adaptive", [], "Linf", has_ode=False)["hardened"])


def test_declarations_are_checked():
    with pytest.raises(ValueError, match="unknown kind"):
        register_attack("x-magic", kind="magic", description="?")
    with pytest.raises(ValueError, match="norms"):
        register_attack("x-l1", kind="white-box", norms=("L1",), description="?")
    before = dict(ATTACKS)
    with pytest.raises(ValueError, match="declared twice"):
        register_attack("fgsm", kind="white-box", description="again")(lambda *a: None)
    assert dict(ATTACKS) == before
    reg: Registry[int] = Registry("thing")
    reg.add("a", 1)
    with pytest.raises(UsageError, match=r"head\.thing 'b' unknown; choose one of a"):
        reg.require("b", "head.thing")


@pytest.mark.parametrize("kind", list(ATTACK_KINDS))
def test_an_attack_runs_on_the_network_its_kind_names(kind, monkeypatch):
    """The declaration's kind picks the network (model, transfer source, fixed-step or BPDA copy); the
    declaration's default budget fills the parameters."""
    nets = {field: torch.nn.Linear(2, 2) for field in ("model", "base", "fixed", "bpda")}
    target = Target("hardened", nets["model"], nets["base"], fixed=nets["fixed"], bpda=nets["bpda"])
    seen = []

    def record(model, x, y, p, t):
        seen.append((model, p.steps, t))
        return x

    spec = dataclasses.replace(ATTACKS["apgd-ce"], name="probe", kind=kind, fn=record, default_steps=7)
    monkeypatch.setitem(ATTACKS, "probe", spec)
    x = torch.zeros(1, 2)
    ATTACKS["probe"].run(target, x, torch.zeros(1, dtype=torch.long), AttackParams(norm="Linf", eps=0.1, n_classes=2))
    assert seen == [(nets[ATTACK_KINDS[kind].through], 7, target)]
    assert ATTACK_KINDS[kind].through in {f.name for f in dataclasses.fields(Target)}


def test_kind_tables_are_derived_from_the_kinds():
    assert set(registry.ADAPTIVE_KINDS) == set(ATTACK_KINDS) - {"white-box"}
    assert set(registry.ODE_KINDS) == {"fixed-step", "bpda"}
    assert sodef_cli.evaluate.ADAPTIVE_KINDS == registry.ADAPTIVE_KINDS


# ---------------------------------------------------------------- solvers and ODE functions


def test_solvers_are_torchdiffeq_methods_with_the_declared_properties():
    from torchdiffeq._impl.odeint import SOLVERS as TORCHDIFFEQ
    from torchdiffeq._impl.solvers import AdaptiveStepsizeODESolver, FixedGridODESolver

    for name, solver in SOLVERS.items():
        impl = TORCHDIFFEQ[name]
        assert issubclass(impl, AdaptiveStepsizeODESolver if solver.adaptive else FixedGridODESolver), name
        assert impl.order == solver.order, name
    assert set(registry.ADAPTIVE_SOLVERS) | set(registry.FIXED_SOLVERS) == set(SOLVERS)
    assert HeadConfig.solver in registry.ADAPTIVE_SOLVERS and "rk4" in registry.FIXED_SOLVERS


@pytest.mark.parametrize("name", list(SOLVERS))
def test_every_solver_integrates_the_head(name):
    torch.manual_seed(0)
    block = ODEBlock(SinODEFunc(3), t1=0.5, solver=name, rtol=1e-6, atol=1e-6, step_size=0.01, adjoint=False)
    assert block.adaptive == SOLVERS[name].adaptive
    z0 = torch.randn(2, 3)
    ref = ODEBlock(block.odefunc, t1=0.5, solver="dopri5", rtol=1e-7, atol=1e-7, step_size=0.05, adjoint=False)
    with torch.no_grad():
        assert torch.allclose(block(z0), ref(z0), atol=1e-2), name


def test_config_and_dispatch_read_the_registries(monkeypatch):
    """A family or solver added to a registry is accepted by config validation and built by dispatch alone."""

    class Scaled(SinODEFunc):
        @classmethod
        def from_config(cls, cfg):
            out = cls(cfg.dim)
            out.scaled = True
            return out

    monkeypatch.setitem(ODEFUNCS, "scaled-sin", Scaled)
    monkeypatch.setitem(SOLVERS, "heun3", Solver("heun3", False, 3, "Heun's third-order method"))
    cfg = resolve(HardenConfig, overrides={"head.odefunc": "scaled-sin", "head.solver": "heun3", "head.dim": 4})
    func = make_odefunc(cfg.head)
    assert isinstance(func, Scaled) and func.scaled
    block = ODEBlock(func, t1=1.0, solver="heun3", rtol=1e-3, atol=1e-3, step_size=0.5, adjoint=False)
    assert not block.adaptive and block(torch.zeros(1, 4)).shape == (1, 4)
    monkeypatch.delitem(ODEFUNCS, "scaled-sin")
    with pytest.raises(UsageError, match="head.odefunc 'scaled-sin' unknown; choose one of sin, sin3"):
        resolve(HardenConfig, overrides={"head.odefunc": "scaled-sin"})
    with pytest.raises(UsageError, match="head.odefunc 'tanh' unknown"):
        make_odefunc(HeadConfig(odefunc="tanh"))
    assert set(ODEFUNCS) == {"sin", "sin3"} and all(
        isinstance(make_odefunc(HeadConfig(dim=4, hidden=8, odefunc=n)), ODEFUNCS[n]) for n in ODEFUNCS
    )


def test_registries_load_their_implementations_on_first_read():
    """The CLI starts without torch; an implementation registry imports its module the first time it is read."""
    code = (
        "import sys\n"
        "import sodef_cli.cli, sodef_cli.config\n"
        "assert 'torch' not in sys.modules, 'the CLI imports torch at start-up'\n"
        "from sodef_cli.config import HardenConfig, resolve\n"
        "cfg = resolve(HardenConfig, overrides={'head.odefunc': 'sin3'})\n"
        "assert 'sodef_cli.head' in sys.modules\n"
        "from sodef_cli.registry import ATTACKS\n"
        "assert 'sodef_cli.attacks' not in sys.modules\n"
        "assert 'apgd-ce' in ATTACKS and 'sodef_cli.attacks' in sys.modules\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


# ---------------------------------------------------------------- the command line


def test_cli_choices_are_the_registry_names():
    wide = {"env": {"COLUMNS": "200"}, "terminal_width": 200}
    attack = _flat(runner.invoke(app, ["attack", "--help"], **wide).output)
    assert f"<{'|'.join(SUITES)}>" in attack and f"<{'|'.join(NORMS)}>" in attack
    assert f"<{'|'.join(registry.DEVICES)}>" in attack
    report = _flat(runner.invoke(app, ["report", "--help"], **wide).output)
    assert f"<{'|'.join(FORMATS)}>" in report
    harden = _flat(runner.invoke(app, ["harden", "--help"], **wide).output)
    assert f"<{'|'.join(registry.HEAD_KINDS)}>" in harden and f"<{'|'.join(registry.TRAINING_ATTACKS)}>" in harden
    assert all(name in harden for name in SOLVERS)
    pretrain = _flat(runner.invoke(app, ["pretrain", "--help"], **wide).output)
    assert f"<{'|'.join(registry.PRETRAIN_ATTACKS)}>" in pretrain


def test_report_formats_are_the_registry_formats():
    from sodef_cli.report import FORMATS as RENDERED

    assert tuple(RENDERED) == FORMATS
    assert set(registry.FORMAT_SUFFIXES.values()) <= set(FORMATS)


@pytest.mark.parametrize("suite", list(SUITES))
@pytest.mark.parametrize("norm", NORMS)
def test_attack_accepts_every_suite_and_norm(suite, norm, monkeypatch):
    seen = []

    made = sodef_cli.evaluate.AttackConfig.__init__

    def stop(cfg, *args, **kwargs):  # the options as the CLI passes them on, before any model is read
        made(cfg, *args, **kwargs)
        seen.append((cfg.suite, cfg.norm))
        raise UsageError("stopped after parsing")

    monkeypatch.setattr(sodef_cli.evaluate.AttackConfig, "__init__", stop)
    result = runner.invoke(app, ["attack", "no-such.safetensors", "--data", "demo", "--suite", suite, "--norm", norm])
    assert result.exit_code == 2 and "stopped after parsing" in result.stderr, result.output
    assert seen == [(suite, norm)]


@pytest.fixture
def no_harden(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("harden ran although its options were invalid")

    monkeypatch.setattr(sodef_cli.harden, "harden", fail)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["attack", "m.safetensors", "--data", "demo", "--attacks", "pgd,nosuch"], "unknown attack(s) nosuch"),
        (["attack", "m.safetensors", "--data", "demo", "--attacks", "cw-l2"], "cw-l2 do not support --norm Linf"),
        (
            ["harden", "test_resnet", "--data", "demo", "--solver", "rk5"],
            "head.solver 'rk5' unknown; choose one of dopri5",
        ),
        (
            ["harden", "test_resnet", "--data", "demo", "--set", "head.odefunc=tanh"],
            "head.odefunc 'tanh' unknown; choose one of sin, sin3",
        ),
        (
            [
                "harden",
                "test_resnet",
                "--data",
                "demo",
                "--head",
                "sodef",
                "--adv-attack",
                "pgd",
                "--set",
                "adversarial.ode_solver=dopri5",
            ],
            "choose one of rk4, euler, midpoint, explicit_adams",
        ),
    ],
)
def test_cli_rejects_unknown_names_with_one_line_and_exit_2(args, needle, no_harden, tmp_path):
    result = runner.invoke(app, [*args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args,option",
    [
        (["attack", "m.safetensors", "--suite", "strongest"], "--suite"),
        (["attack", "m.safetensors", "--norm", "L1"], "--norm"),
        (["report", "r.json", "--format", "pdf"], "--format"),
        (["harden", "test_resnet", "--head", "mlp"], "--head"),
        (["harden", "test_resnet", "--adv-attack", "mim"], "--adv-attack"),
    ],
)
def test_cli_choice_options_reject_other_values_with_exit_2(args, option, no_harden):
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and f"Invalid value for '{option}'" in _flat(result.output), result.output
