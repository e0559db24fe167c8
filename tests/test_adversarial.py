"""Adversarial training modes of ``sodef harden`` (``adversarial.*``, ``head.kind``).

Every mode runs end to end on a ResNet, a ConvNeXt and a ViT timm test model (random weights saved as a
checkpoint, so the base has its own 10-class head and ``load_base`` can be compared with the original bit for
bit); frozen tensors stay bitwise unchanged; the training attack's input gradient through a SODEF head is the
autograd gradient through a hand-written fixed-step RK4; bad settings exit 2 with one line.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_HARDEN
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from sodef_cli.adversarial import (
    adversarial_train,
    attack_batch,
    catastrophic_overfitting,
    stage_groups,
    stage_parameters,
    trained_state_names,
)
from sodef_cli.cli import app
from sodef_cli.config import HardenConfig, HeadConfig, resolve
from sodef_cli.errors import UsageError
from sodef_cli.harden import harden, training_view
from sodef_cli.head import SODEFHead, has_ode
from sodef_cli.io import read_metadata
from sodef_cli.models import load_base, load_hardened

# small and quick: 400 training images (val_fraction 0.8), 2-step attacks, selection on 32 images
ADV = {
    **{k: v for k, v in TINY_HARDEN.items() if k != "image_size"},
    "val_fraction": 0.8,
    "adversarial.epochs": 1,
    "adversarial.steps": 2,
    "adversarial.batch_size": 100,
    "adversarial.select_n": 32,
    "adversarial.select_steps": 2,
    "adversarial.lr": 0.01,
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """timm test models with random weights and a 10-class head, saved as checkpoints."""
    import timm

    out = {}
    d = tmp_path_factory.mktemp("ckpt")
    for name in ("test_resnet", "test_convnext", "test_vit"):
        torch.manual_seed(0)
        m = timm.create_model(name, num_classes=10)
        p = d / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(p))
        out[name] = p
    return out


def _harden(tmp_path, name, ckpt, **over):
    cfg = resolve(HardenConfig, overrides={"model": name, "checkpoint": str(ckpt), **ADV, **over})
    out = tmp_path / f"{name}.safetensors"
    return out, harden(cfg, out)


MODES = [  # (head, attack, stages)
    ("linear", "pgd", 1),
    ("linear", "trades", 2),
    ("sodef", "fgsm", 1),
]


@pytest.mark.parametrize("name", ["test_resnet", "test_convnext", "test_vit"])
@pytest.mark.parametrize("head,attack,stages", MODES)
def test_mode_end_to_end(tmp_path, checkpoints, name, head, attack, stages):
    out, summary = _harden(
        tmp_path,
        name,
        checkpoints[name],
        **{"head.kind": head, "adversarial.attack": attack, "adversarial.stages": stages},
    )
    adv = summary["adversarial"]
    import timm

    torch.manual_seed(0)
    original = timm.create_model(name, num_classes=10)
    original.load_state_dict(load_file(str(checkpoints[name])))
    original.eval()
    expected_stage_params = set(stage_parameters(original, stages))
    # the file records exactly what was trained: the last `stages` stages (+ the head), nothing else
    backbone_trained = {n[len("backbone.") :] for n in adv["trained_parameters"] if n.startswith("backbone.")}
    clf = {n for n in backbone_trained if n not in expected_stage_params}
    assert expected_stage_params <= backbone_trained
    if head == "linear":
        assert clf and all(n.startswith(("fc.", "head.")) for n in clf)  # the model's own classifier
    else:
        assert not clf and any(n.startswith("head.block.odefunc.") for n in adv["trained_parameters"])
    tensors = load_file(str(out))
    tuned = {k[len("tuned.") :] for k in tensors if k.startswith("tuned.")}
    assert tuned == set(adv["tuned_backbone_state"])
    assert expected_stage_params <= tuned
    # load_base gives the original model bit for bit; the hardened model's frozen tensors are the original's too
    base = load_base(out)
    for k, v in original.state_dict().items():
        assert torch.equal(base.backbone.state_dict()[k], v), k
    hardened = load_hardened(out)
    assert has_ode(hardened) == (head == "sodef")
    for k, v in original.state_dict().items():
        if k not in tuned:
            assert torch.equal(hardened.backbone.state_dict()[k], v), k
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(base(x), original(base.normalize(x)))
    meta = read_metadata(out)
    assert meta["format_version"] == 2
    assert meta["metrics"]["adversarial"]["summary"].startswith(("linear head + last", "SODEF head + last"))
    # model selection ran on validation under PGD, one record per epoch (epoch 0 = the start)
    assert [r["epoch"] for r in adv["history"]] == [0, 1]
    assert adv["best_epoch"] in (0, 1)


def test_guard_runs_after_adversarial_training(tmp_path, checkpoints):
    _, summary = _harden(
        tmp_path,
        "test_resnet",
        checkpoints["test_resnet"],
        **{
            "head.kind": "linear",
            "adversarial.attack": "pgd",
            "adversarial.stages": 1,
            "check.enabled": True,
            "check.n": 16,
            "check.steps": 2,
        },
    )
    check = summary["check"]
    # two plain classifiers are attacked alike: each is the other's transfer source
    assert set(check["base"]["attacks"]) == set(check["hardened"]["attacks"]) == {"apgd-ce", "transfer-apgd-ce"}
    assert check["recommendation"]


def test_file_with_trained_stage_stays_within_twice_the_base(tmp_path, base_run):
    cfg = resolve(
        HardenConfig,
        overrides={
            "model": str(base_run[0]),
            **ADV,
            "head.kind": "linear",
            "adversarial.attack": "fgsm",
            "adversarial.stages": 1,
        },
    )
    out = tmp_path / "h.safetensors"
    harden(cfg, out)
    assert out.stat().st_size <= 2 * base_run[0].stat().st_size
    base = load_base(out)
    original = load_file(str(base_run[0]))
    for k, v in base.backbone.state_dict().items():
        assert torch.equal(v, original[f"backbone.{k}"]), k


def _rk4_by_hand(f, z, t1: float, h: float) -> torch.Tensor:
    """RK4 with Kutta's 3/8 rule (torchdiffeq's ``rk4``) and a fixed step, written out: the exact-gradient reference."""
    n = round(t1 / h)
    for _ in range(n):
        k1 = f(z)
        k2 = f(z + h * k1 / 3)
        k3 = f(z + h * (k2 - k1 / 3))
        k4 = f(z + h * (k1 - k2 + k3))
        z = z + h * (k1 + 3 * (k2 + k3) + k4) / 8
    return z


def test_training_gradient_through_the_ode_is_fixed_step_autograd():
    torch.manual_seed(0)
    # the head as shipped solves with dopri5 and the adjoint; training must not use either
    hcfg = HeadConfig(dim=12, solver="dopri5", adjoint=True, t1=1.0, step_size=0.25)
    cfg = resolve(
        HardenConfig,
        overrides={
            "head.dim": 12,
            "head.solver": "dopri5",
            "head.adjoint": True,
            "head.t1": 1.0,
            "head.step_size": 0.25,
            "adversarial.attack": "pgd",
        },
    )
    head = SODEFHead(20, 5, hcfg)
    head.materialize()
    with torch.no_grad():
        head.odefunc.lin.weight.mul_(3.0)  # a non-trivial flow
    view = training_view(head, cfg)
    h = torch.randn(6, 20, requires_grad=True)
    y = torch.randint(0, 5, (6,))
    (g_train,) = torch.autograd.grad(F.cross_entropy(view(h), y), h)
    h2 = h.detach().clone().requires_grad_(True)
    ref = head.classifier(_rk4_by_hand(head.odefunc.f, head.proj(h2), 1.0, 0.25))
    (g_ref,) = torch.autograd.grad(F.cross_entropy(ref, y), h2)
    torch.testing.assert_close(g_train, g_ref, rtol=1e-5, atol=1e-7)
    # and it differs from what the shipped model's adjoint path gives (else the test would prove nothing)
    h3 = h.detach().clone().requires_grad_(True)
    (g_adj,) = torch.autograd.grad(F.cross_entropy(head(h3), y), h3)
    assert not torch.allclose(g_adj, g_ref, rtol=1e-5, atol=1e-7)


def test_training_attack_uses_the_model_it_is_given_and_stays_in_the_ball():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    x, y = torch.rand(5, 3, 8, 8), torch.randint(0, 4, (5,))
    eps = 8 / 255
    for kind in ("fgsm", "pgd", "trades"):
        xa = attack_batch(
            model, x, y, kind=kind, eps=eps, step=eps / 2, steps=3, generator=torch.Generator().manual_seed(1)
        )
        assert (xa - x).abs().max() <= eps + 1e-6 and xa.min() >= 0 and xa.max() <= 1
        with torch.no_grad():
            assert F.cross_entropy(model(xa), y) > F.cross_entropy(model(x), y)  # the attack raises the loss


@pytest.mark.parametrize("name,expected", [("test_resnet", 5), ("test_convnext", 5), ("test_vit", 7)])
def test_stages_come_from_timm_grouping(name, expected):
    import timm

    m = timm.create_model(name, num_classes=10)
    groups = stage_groups(m)
    assert len(groups) == expected
    every = {n for n, _ in m.named_parameters()}
    clf = {n for n in every if n.startswith(("fc.", "head."))} - {"head.norm.weight", "head.norm.bias"}
    assert {n for g in groups for n in g} == every - clf  # each parameter in exactly one stage, the classifier in none
    assert sum(len(g) for g in groups) == len(every - clf)
    with pytest.raises(UsageError, match=f"has {expected} stages"):
        stage_parameters(m, expected + 1)
    # BatchNorm buffers of a trained stage are trained state too; a frozen stage's are not
    last = set(stage_parameters(m, 1))
    state = trained_state_names(m, last)
    assert last <= set(state)
    if name == "test_resnet":
        assert any(s.endswith("running_mean") for s in state)
        assert not any(s.startswith("layer1.") for s in state)


runner = CliRunner()


def _cli(args):
    r = runner.invoke(app, args)
    return r.exit_code, r.output


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--adv-attack", "pgd", "--adv-stages", "9"], "has 5 stages"),
        (["--set", "adversarial.attack=pgdx"], "adversarial.attack 'pgdx' unknown"),
        (["--head", "sodef", "--adv-attack", "pgd", "--set", "adversarial.ode_solver=dopri5"], "fixed-step solver"),
        (["--head", "linear", "--adv-attack", "none"], "choose a training attack"),
        (["--adv-attack", "none", "--adv-stages", "1"], "needs a training attack"),
        (["--set", "adversarial.eps_ramp=20"], "eps_ramp must be in [0, epochs = 8]"),
        (["--set", "adversarial.stages=-2"], "stages must be >= 0 (or -1"),
    ],
)
def test_bad_adversarial_settings_exit_2_with_one_line(tmp_path, extra, message):
    code, out = _cli(["harden", "test_resnet", "--data", "demo", "--out", str(tmp_path / "x.safetensors"), *extra])
    assert code == 2, out
    assert message in out
    assert len([line for line in out.strip().splitlines() if line.strip()]) == 1, out
    assert not (tmp_path / "x.safetensors").exists()


def test_unknown_training_attack_flag_exits_2():
    code, out = _cli(["harden", "test_resnet", "--data", "demo", "--adv-attack", "cw"])
    assert code == 2
    assert "cw" in out


def test_linear_head_file_attacks_alike_and_reports(tmp_path, checkpoints):
    out, _ = _harden(
        tmp_path,
        "test_resnet",
        checkpoints["test_resnet"],
        **{"head.kind": "linear", "adversarial.attack": "fgsm", "adversarial.stages": 1},
    )
    r = runner.invoke(
        app,
        [
            "attack",
            str(out),
            "--data",
            "demo",
            "--n",
            "8",
            "--attacks",
            "apgd-ce,transfer-pgd,square",
            "--steps",
            "2",
            "--queries",
            "10",
            "--no-checks",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)  # the plan goes to stderr
    assert (
        set(doc["models"]["base"]["attacks"])
        == set(doc["models"]["hardened"]["attacks"])
        == {"apgd-ce", "transfer-pgd", "square"}
    )
    code, text = _cli(["attack", str(out), "--data", "demo", "--n", "8", "--attacks", "fixed-step-pgd"])
    assert code == 2 and "need an ODE" in text
    code, text = _cli(["report", str(out)])
    assert code == 0, text
    assert "Adversarial training" in text and "FGSM (random start)" in text


def test_catastrophic_overfitting_rejects_collapsing_pgd_with_rising_fgsm():
    history = [{"val_pgd_acc": 0.30, "val_fgsm_acc": 0.40}, {"val_pgd_acc": 0.32, "val_fgsm_acc": 0.41}]
    assert catastrophic_overfitting({"val_pgd_acc": 0.05, "val_fgsm_acc": 0.80}, history)
    assert not catastrophic_overfitting({"val_pgd_acc": 0.05, "val_fgsm_acc": 0.20}, history)  # both fell: not CO
    assert not catastrophic_overfitting({"val_pgd_acc": 0.31, "val_fgsm_acc": 0.80}, history)  # PGD held up


class _Images:
    """An ImageSet stand-in: random images whose label is the brightest of 3 colour channels."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, 3, 8, 8, generator=g)
        self.labels = self.x.mean(dim=(2, 3)).argmax(1)

    def floats(self, idx):
        return self.x[idx]


def _tiny_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 3),
    )


_QUIET = type(
    "R",
    (),
    {"start": lambda *a: None, "advance": lambda *a, **k: None, "end": lambda *a, **k: None, "log": lambda *a: None},
)()


def test_adversarial_train_never_touches_frozen_tensors():
    from sodef_cli.config import AdversarialConfig

    model = _tiny_net()
    frozen_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("0.", "1."))}
    data = _Images(96, 0)
    cfg = AdversarialConfig(attack="trades", steps=2, epochs=2, batch_size=32, lr=0.2, select_n=48, select_steps=2)
    adversarial_train(
        model,
        ["5.weight", "5.bias"],
        data,
        torch.arange(64),
        data,
        torch.arange(64, 96),
        cfg,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        reporter=_QUIET,
    )
    for k, v in frozen_before.items():  # BatchNorm of a frozen layer stays in eval mode: statistics untouched
        assert torch.equal(model.state_dict()[k], v), k
    assert not model.training and not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_adversarial_train_keeps_the_best_pgd_epoch_and_rejects_overfitting(monkeypatch, ema):
    """Selection scores are scripted; the weights seen at each epoch's evaluation are recorded."""
    import sodef_cli.adversarial as adv
    from sodef_cli.config import AdversarialConfig

    model = _tiny_net()
    # epoch:        0     1     2     3 (catastrophic overfitting: PGD collapses, FGSM climbs)  4
    pgd = iter([0.10, 0.50, 0.50, 0.05, 0.40])
    fgsm = iter([0.20, 0.30, 0.40, 0.90, 0.45])
    clean = iter([0.6, 0.5, 0.7, 0.8, 0.8])  # epochs 1 and 2 tie on PGD: the cleaner one (2) is kept
    seen = []

    def scripted(m, images, idx, *, kind, **kw):
        if kind == "none":
            seen.append({k: v.clone() for k, v in model.state_dict().items()})
            return next(clean)
        return next(pgd) if kind == "pgd" else next(fgsm)

    monkeypatch.setattr(adv, "robust_accuracy", scripted)
    data = _Images(64, 0)
    cfg = AdversarialConfig(attack="pgd", steps=1, epochs=4, batch_size=32, lr=0.5, select_n=8, augment=False, ema=ema)
    rec = adv.adversarial_train(
        model,
        ["5.weight", "5.bias"],
        data,
        torch.arange(32),
        data,
        torch.arange(32, 64),
        cfg,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        reporter=_QUIET,
    )
    assert [r["rejected"] for r in rec["history"][1:]] == [False, False, True]  # and training stopped there
    assert rec["stopped_early"] and rec["epochs_run"] == 3
    assert rec["best_epoch"] == 2 and rec["val_pgd_acc"] == 0.50
    final = model.state_dict()
    assert all(torch.equal(final[k], v) for k, v in seen[2].items())  # the weights evaluated at epoch 2
    assert not all(torch.equal(final[k], v) for k, v in seen[3].items())  # not the last epoch's


def test_lr_scale_and_gradient_clipping_reach_the_optimizer(monkeypatch):
    import sodef_cli.adversarial as adv
    from sodef_cli.config import AdversarialConfig

    scores = iter([0.1, 0.1, 0.1, 0.9, 0.9, 0.9])  # epoch 1 wins selection, so its weights are the ones kept
    monkeypatch.setattr(adv, "robust_accuracy", lambda *a, **k: next(scores))
    model = _tiny_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = _Images(64, 0)
    cfg = AdversarialConfig(
        attack="fgsm", epochs=1, batch_size=32, lr=0.5, select_n=8, augment=False, grad_clip=1e-3, weight_decay=0.0
    )
    adversarial_train(
        model,
        ["5.weight", "5.bias"],
        data,
        torch.arange(32),
        data,
        torch.arange(32, 64),
        cfg,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        reporter=_QUIET,
        lr_scale={"5.weight": 0.0},
    )
    after = model.state_dict()
    assert torch.equal(after["5.weight"], before["5.weight"])  # lr x 0: never moves
    moved = (after["5.bias"] - before["5.bias"]).abs().max().item()
    # two SGD steps whose gradient norm is clipped to 1e-3 (momentum 0.9, peak lr 0.5) move the bias by < 2e-3
    assert 0 < moved < 2e-3


def test_max_clean_drop_keeps_only_epochs_within_the_clean_budget(monkeypatch):
    """The best PGD epoch costs too much clean accuracy: with max_clean_drop it is passed over; without, kept."""
    import sodef_cli.adversarial as adv
    from sodef_cli.config import AdversarialConfig

    def run(max_clean_drop: float) -> dict:
        # epoch:           0     1      2      3
        clean = iter([0.600, 0.580, 0.592, 0.610])  # epoch 1 is 2.0 points below the start, epoch 2 only 0.8
        pgd = iter([0.30, 0.40, 0.35, 0.20])
        fgsm = iter([0.40, 0.45, 0.42, 0.30])
        monkeypatch.setattr(
            adv,
            "robust_accuracy",
            lambda m, i, idx, *, kind, **kw: next(clean) if kind == "none" else next(pgd if kind == "pgd" else fgsm),
        )
        data = _Images(64, 0)
        cfg = AdversarialConfig(
            attack="fgsm", epochs=3, batch_size=32, lr=0.1, select_n=8, augment=False, max_clean_drop=max_clean_drop
        )
        return adv.adversarial_train(
            _tiny_net(),
            ["5.weight", "5.bias"],
            data,
            torch.arange(32),
            data,
            torch.arange(32, 64),
            cfg,
            device=torch.device("cpu"),
            generator=torch.Generator().manual_seed(0),
            reporter=_QUIET,
        )

    assert run(-1.0)["best_epoch"] == 1  # off: the most robust epoch
    rec = run(1.0)
    assert rec["best_epoch"] == 2 and rec["val_pgd_acc"] == 0.35
    assert [r["eligible"] for r in rec["history"][1:]] == [False, True, True]
    assert rec["select"]["max_clean_drop_points"] == 1.0
    assert (
        run(0.0)["best_epoch"] == 0
    )  # nothing may cost clean accuracy: epoch 3 (cleaner, less robust) loses to the start
