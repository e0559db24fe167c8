"""`sodef attack`: cascade semantics, resumable results, JSON summary, attack registry, distributed equality."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from sodef_cli.attacks import ATTACKS, SUITES, AttackParams, Target, suite_attacks
from sodef_cli.cli import app
from sodef_cli.errors import UsageError
from sodef_cli.evaluate import AttackConfig, masking_checks, summarize, worst_case_flags

runner = CliRunner()
FAST = ["--steps", "2", "--queries", "10", "--batch-size", "8"]


@pytest.fixture(scope="module")
def adaptive_file(tmp_path_factory, tiny_harden_overrides):
    """A tiny hardened model solved with the adaptive dopri5 solver (batch-dependent, as shipped)."""
    from sodef_cli.config import HardenConfig, resolve
    from sodef_cli.harden import harden

    out = tmp_path_factory.mktemp("adaptive") / "h.safetensors"
    over = {**tiny_harden_overrides, "head.solver": "dopri5", "inference.solver": "declared"}  # ships dopri5
    cfg = resolve(HardenConfig, overrides={"model": "test_resnet", **over})
    harden(cfg, out)
    return out


def _attack(path, *args):
    return runner.invoke(app, ["attack", str(path), "--data", "demo", "--image-size", "16", *FAST, *args])


def test_worst_case_is_per_sample_and_of_flags():
    clean = [True, True, True, False, True]
    attacks = {
        "a": {"robust": [True, False, True, None, True]},
        "b": {"robust": [True, None, False, None, True]},
    }
    assert worst_case_flags(clean, attacks) == [True, False, False, False, True]
    # never above any single attack or clean
    s = sum(worst_case_flags(clean, attacks))
    assert s <= min(sum(1 for f in r["robust"] if f is True) for r in attacks.values())


def test_cascade_results_and_summary_schema(adaptive_file, tmp_path):
    out = tmp_path / "r.json"
    res = _attack(adaptive_file, "--suite", "quick", "--n", "24", "--out", str(out), "--json", "--eps", "4/255,8/255")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["n"] == 24 and summary["norm"] == "Linf"
    assert summary["eps"] == pytest.approx(4 / 255)
    assert [c["eps"] for c in summary["curve"]] == pytest.approx([4 / 255, 8 / 255])
    for m in ("base", "hardened"):
        ms = summary["models"][m]
        assert set(ms) >= {"clean", "worst_case", "attacks"}
        assert 0.0 <= ms["worst_case"] <= min([ms["clean"], *ms["attacks"].values()])
    assert set(summary["models"]["hardened"]["attacks"]) == set(SUITES["quick"]["hardened"])
    assert set(summary["models"]["base"]["attacks"]) == set(SUITES["quick"]["base"])
    # intervals beside their figures, the paired difference, and the evaluation's strength (reduced: --steps 2)
    assert summary["evaluation"] == {
        "adaptive": True,
        "reduced": True,
        "kinds": ["white-box", "fixed-step", "transfer"],
    }
    for m in ("base", "hardened"):
        ms = summary["models"][m]
        for key in ("clean", "worst_case"):
            assert ms[f"{key}_ci95"][0] <= ms[key] <= ms[f"{key}_ci95"][1]
        assert set(ms["attacks_ci95"]) == set(ms["attacks"])
    diff = summary["difference"]
    hard, base = summary["models"]["hardened"], summary["models"]["base"]
    assert diff["worst_case"] == pytest.approx(hard["worst_case"] - base["worst_case"])
    b_only, h_only = diff["worst_case_discordant"]
    assert (h_only - b_only) / 24 == pytest.approx(diff["worst_case"])
    assert (
        diff["worst_case_ci95"][0] <= diff["worst_case"] <= diff["worst_case_ci95"][1] and 0 < diff["worst_case_p"] <= 1
    )
    doc = json.loads(out.read_text())
    assert doc["schema"] == "sodef_cli/attack-results" and doc["schema_version"] == 1 and doc["complete"]
    assert len(doc["indices"]) == 24 and len(set(doc["indices"])) == 24
    for run in doc["runs"]:
        for m, rec in run["models"].items():
            wc = worst_case_flags(rec["clean"], rec["attacks"])
            # cascade: an attack only ran on samples that were still robust
            alive = list(rec["clean"])
            for name in SUITES["quick"][m]:
                flags = rec["attacks"][name]["robust"]
                assert all((f is None) == (not a) for f, a in zip(flags, alive))
                alive = [a and f is True for a, f in zip(alive, flags)]
            assert wc == alive
        names = {c["name"] for c in run["checks"]}
        assert {
            "transfer beats direct",
            "predictions independent of batch composition",
            "accuracy near zero at a very large eps",
        } <= names


def test_all_samples_runs_every_attack_on_every_correct_sample(adaptive_file, tmp_path):
    out = tmp_path / "r.json"
    res = _attack(
        adaptive_file,
        "--attacks",
        "fgsm,pgd,transfer-pgd",
        "--n",
        "16",
        "--all-samples",
        "--no-checks",
        "--out",
        str(out),
    )
    assert res.exit_code == 0, res.output
    rec = json.loads(out.read_text())["runs"][0]["models"]["hardened"]
    for a in rec["attacks"].values():
        assert [f is not None for f in a["robust"]] == rec["clean"]
    base = json.loads(out.read_text())["runs"][0]["models"]["base"]
    assert "transfer-pgd" not in base["attacks"]  # ODE attacks are for hardened models only


def test_results_resume_skips_finished_attacks(adaptive_file, tmp_path, monkeypatch):
    out = tmp_path / "r.json"
    import sodef_cli.attacks as A

    calls = []
    real = A.ATTACKS["fgsm"].fn

    def counting(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    spec = A.ATTACKS["fgsm"]
    monkeypatch.setitem(A.ATTACKS, "fgsm", dataclasses.replace(spec, fn=counting))

    def boom(*args, **kw):
        raise KeyboardInterrupt

    pgd = A.ATTACKS["pgd"]
    monkeypatch.setitem(A.ATTACKS, "pgd", dataclasses.replace(pgd, fn=boom))
    res = _attack(adaptive_file, "--attacks", "fgsm,pgd", "--n", "16", "--no-checks", "--out", str(out))
    assert res.exit_code == 130
    partial = json.loads(out.read_text())
    assert not partial["complete"] and "fgsm" in partial["runs"][0]["models"]["base"]["attacks"]
    n_first = len(calls)
    monkeypatch.setitem(A.ATTACKS, "pgd", pgd)
    res = _attack(adaptive_file, "--attacks", "fgsm,pgd", "--n", "16", "--no-checks", "--out", str(out))
    assert res.exit_code == 0, res.output
    done = json.loads(out.read_text())
    assert done["complete"]
    # fgsm on base was finished before the interruption and is not rerun
    assert len(calls) - n_first <= 1
    assert (
        done["runs"][0]["models"]["base"]["attacks"]["fgsm"] == partial["runs"][0]["models"]["base"]["attacks"]["fgsm"]
    )


def test_resume_with_other_settings_is_refused(adaptive_file, tmp_path):
    out = tmp_path / "r.json"
    assert _attack(adaptive_file, "--attacks", "fgsm", "--n", "8", "--no-checks", "--out", str(out)).exit_code == 0
    res = _attack(adaptive_file, "--attacks", "fgsm", "--n", "12", "--no-checks", "--out", str(out))
    assert res.exit_code == 1 and "different" in res.stderr


def test_same_seed_same_results(adaptive_file, tmp_path):
    docs = []
    for name in ("a.json", "b.json"):
        res = _attack(adaptive_file, "--suite", "quick", "--n", "16", "--no-checks", "--out", str(tmp_path / name))
        assert res.exit_code == 0, res.output
        docs.append(json.loads((tmp_path / name).read_text()))
    strip = lambda d: [
        {m: (r["clean"], {k: v["robust"] for k, v in r["attacks"].items()}) for m, r in run["models"].items()}
        for run in d["runs"]
    ]
    assert strip(docs[0]) == strip(docs[1]) and docs[0]["indices"] == docs[1]["indices"]


def test_suite_validation():
    with pytest.raises(UsageError, match="do not support --norm L2"):
        suite_attacks(None, ["spsa"], "L2")
    with pytest.raises(UsageError, match="unknown attack"):
        suite_attacks(None, ["nope"], "Linf")
    plan = suite_attacks("adaptive", [], "L2")
    assert "spsa" not in plan["hardened"] and "apgd-ce" in plan["hardened"]
    with pytest.raises(UsageError):
        AttackConfig(eps=(2.0,)).validate()


def _recording(monkeypatch, names):
    """Replace torchattacks classes by subclasses that record their attributes when the attack is run."""
    import torchattacks

    seen: dict[str, list[dict]] = {}
    for name in names:
        real = getattr(torchattacks, name)

        def snapshot(self, x, *a, _name=name, **kw):
            seen.setdefault(_name, []).append(
                {k: v for k, v in vars(self).items() if not k.startswith("_") and k != "model"}
            )
            return (x.clone(), x.clone()) if kw.get("best_loss") else x.clone()

        monkeypatch.setattr(torchattacks, name, type(name, (real,), {"forward": snapshot, "perturb": snapshot}))
    return seen


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_autoattack_components_are_built_at_reference_settings(monkeypatch, norm):
    """What torchattacks receives when each attack runs: AutoAttack's settings, 9 target classes of 100."""
    seen = _recording(monkeypatch, ["APGD", "APGDT", "FAB", "Square"])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 100))
    x, y = torch.rand(2, 3, 4, 4), torch.tensor([1, 2])
    eps = 8 / 255 if norm == "Linf" else 0.5
    p = AttackParams(norm=norm, eps=eps, n_classes=100, seed=7)
    t = Target("hardened", model, model, fixed=model, bpda=model)
    for name in (
        "apgd-ce",
        "apgd-dlr",
        "apgd-t",
        "fab-t",
        "square",
        "transfer-apgd-ce",
        "fixed-step-apgd-ce",
        "bpda-apgd-ce",
    ):
        ATTACKS[name].run(t, x, y, p)
    common = {"norm": norm, "eps": eps, "n_restarts": 1, "seed": 7}
    apgd = seen["APGD"]
    assert len(apgd) == 5  # apgd-ce, apgd-dlr and the three surrogate attacks
    for rec, loss in zip(apgd, ["ce", "dlr", "ce", "ce", "ce"]):
        assert {k: rec[k] for k in (*common, "steps", "loss")} == {**common, "steps": 100, "loss": loss}
    (apgdt,) = seen["APGDT"]
    assert {k: apgdt[k] for k in (*common, "steps", "n_target_classes")} == {
        **common,
        "steps": 100,
        "n_target_classes": 9,
    }
    (fab,) = seen["FAB"]
    assert {k: fab[k] for k in (*common, "steps", "n_target_classes", "multi_targeted")} == {
        **common,
        "steps": 100,
        "n_target_classes": 9,
        "multi_targeted": True,
    }
    (square,) = seen["Square"]
    assert {k: square[k] for k in (*common, "n_queries", "loss", "p_init")} == {
        **common,
        "n_queries": 5000,
        "loss": "margin",
        "p_init": 0.8,
    }
    # --steps / --queries reach the objects too
    seen.clear()
    ATTACKS["apgd-t"].run(t, x, y, AttackParams(norm=norm, eps=eps, n_classes=100, steps=3))
    ATTACKS["square"].run(t, x, y, AttackParams(norm=norm, eps=eps, n_classes=100, queries=11))
    assert seen["APGDT"][0]["steps"] == 3 and seen["Square"][0]["n_queries"] == 11
    assert SUITES["standard"]["hardened"] == ["apgd-ce", "apgd-t", "fab-t", "square"]


@pytest.mark.parametrize("norm,eps", [("Linf", 8 / 255), ("L2", 0.5)])
def test_every_attack_stays_in_the_threat_model(hardened_file, demo_data, norm, eps):
    from sodef_cli.data import load_data
    from sodef_cli.models import load_pair

    base, hardened, _ = load_pair(hardened_file)
    from sodef_cli.data import select_samples

    data = load_data("demo", image_size=16)
    idx = select_samples(data.test.labels, 6, 0)  # six classes: the feature attack needs other-class targets
    x, y = data.test.floats(idx), data.test.labels[idx]
    p = AttackParams(norm=norm, eps=eps, n_classes=10, steps=2, queries=5)
    target = Target(
        "hardened",
        hardened,
        base,
        fixed=hardened.variant("fixed"),
        bpda=hardened.variant("bpda"),
        features=hardened.features,
    )
    for name, spec in ATTACKS.items():
        if norm not in spec.norms:
            continue
        xa = spec.run(target, x, y, p)
        assert xa.shape == x.shape, name
        if name == "cw-l2":  # unbounded by design: the cascade projects it (see the overshoot test below)
            continue
        assert xa.min() >= 0 and xa.max() <= 1, name  # the attack's own output, not a projection of it
        d = (xa - x).flatten(1)
        size = d.abs().amax(1) if norm == "Linf" else d.norm(dim=1)
        assert (size <= eps * (1 + 1e-4) + 1e-6).all(), (name, float(size.max()))


def test_an_attack_that_overshoots_the_ball_is_projected_and_counted(hardened_file, monkeypatch):
    """The cascade judges only points inside the threat model, and counts the points it had to project."""
    import dataclasses

    import sodef_cli.evaluate as ev
    from sodef_cli.data import load_data, select_samples
    from sodef_cli.models import load_pair
    from sodef_cli.phases import Reporter

    base, hardened, _ = load_pair(hardened_file)
    data = load_data("demo", image_size=16)
    idx = select_samples(data.test.labels, 12, 0)
    x_all, y_all = data.test.floats(idx), data.test.labels[idx]
    eps = 4 / 255
    log: list[tuple[str, torch.Tensor]] = []

    def overshoot(model, x, y, p, t):  # 3 eps away, and outside [0,1] where the image is dark or bright
        log.append(("attack", x.clone()))
        g = torch.Generator().manual_seed(0)
        return x + 3 * p.eps * torch.sign(torch.randn(x.shape, generator=g)) + 0.5 * (x > 0.9) - 0.5 * (x < 0.1)

    real_predict = ev._predict

    def predict(model, x, batch_size, device):
        if model is hardened:
            log.append(("judge", x.clone()))
        return real_predict(model, x, batch_size, device)

    monkeypatch.setitem(
        ATTACKS, "overshoot", dataclasses.replace(ATTACKS["apgd-ce"], name="overshoot", kind="black-box", fn=overshoot)
    )
    monkeypatch.setattr(ev, "_predict", predict)
    cfg = AttackConfig(attacks=("overshoot",), eps=(eps,), n=12, batch_size=5, checks=False, all_samples=True)
    state = ev.EvaluationState.from_dict({"runs": []})
    ev.cascade(
        base,
        hardened,
        x_all,
        y_all,
        cfg,
        plan={"base": [], "hardened": ["overshoot"]},
        n_classes=10,
        fixed_step=0.5,
        state=state,
        reporter=Reporter(),
        device="cpu",
    )
    rec = state.to_dict()["runs"][0]["models"]["hardened"]["attacks"]["overshoot"]
    assert rec["attacked"] > 0 and rec["projected"] == rec["attacked"]  # every attacked point overshot
    judged = 0
    for (kind, x), (kind2, xj) in zip(log, log[1:]):
        if kind == "attack":
            assert kind2 == "judge" and xj.shape == x.shape
            assert xj.min() >= 0 and xj.max() <= 1
            assert (xj - x).abs().amax() <= eps + 1e-6
            judged += len(x)
    assert judged == rec["attacked"]


def test_feature_attack_targets_come_from_the_bank(hardened_file):
    """A batch of one class still gets other-class targets from the bank of all evaluated samples."""
    from sodef_cli.attacks import ATTACKS
    from sodef_cli.data import load_data
    from sodef_cli.models import load_pair

    base, hardened, _ = load_pair(hardened_file)
    data = load_data("demo", image_size=16)
    x, y = data.test.floats(slice(0, 3)), data.test.labels[:3]  # all of class 0
    p = AttackParams(norm="Linf", eps=8 / 255, n_classes=10, steps=2)
    lonely = Target("hardened", hardened, base, features=hardened.features)
    with pytest.raises(UsageError, match="two classes"):
        ATTACKS["feature"].run(lonely, x, y, p)
    bank_x, bank_y = data.test.floats(slice(0, 500, 25)), data.test.labels[0:500:25]
    with torch.no_grad():
        lonely.bank = (hardened.features(bank_x), bank_y)
    xa = ATTACKS["feature"].run(lonely, x, y, p)
    assert (xa - x).abs().amax() > 0


def test_transfer_keeps_the_highest_loss_point_where_the_base_is_not_fooled(hardened_file):
    """torchattacks' APGD returns the clean image where its own model is not fooled; transfer must not."""
    from sodef_cli.attacks import ATTACKS
    from sodef_cli.data import load_data, select_samples
    from sodef_cli.models import load_pair

    base, hardened, _ = load_pair(hardened_file)
    data = load_data("demo", image_size=16)
    idx = select_samples(data.test.labels, 8, 0)
    x, y = data.test.floats(idx), data.test.labels[idx]
    p = AttackParams(norm="Linf", eps=8 / 255, n_classes=10, steps=3)
    target = Target("hardened", hardened, base, fixed=hardened.variant("fixed"))
    for name in ("transfer-apgd-ce", "fixed-step-apgd-ce"):
        xa = ATTACKS[name].run(target, x, y, p)
        moved = (xa - x).flatten(1).abs().amax(1) > 0
        assert moved.all(), name  # every point is perturbed, fooled on the surrogate or not


def test_fixed_step_copy_matches_a_dopri5_model(adaptive_file):
    """The attack surrogate of a dopri5 file (RK4, fixed steps, no adjoint) predicts like the ODE solved exactly and
    has its input gradients; the BPDA copy has the true forward and finite gradients; all share the weights."""
    import torch.nn.functional as F

    from sodef_cli.data import load_data, select_samples
    from sodef_cli.head import HardenedClassifier, ODEBlock
    from sodef_cli.models import load_pair

    _, hardened, meta = load_pair(adaptive_file)
    blk = hardened.head.block
    assert meta["config"]["head"]["solver"] == "dopri5" and blk.adaptive
    # the reference: the same ODE through dopri5 at tight tolerances, plain backprop (the model's true gradients)
    exact = ODEBlock(
        blk.odefunc, t1=blk.t1, solver="dopri5", rtol=1e-7, atol=1e-7, step_size=blk.step_size, adjoint=False
    )
    ref = HardenedClassifier(hardened.backbone, hardened.spec, hardened.head.with_ode(exact)).eval()
    fixed = hardened.variant("fixed", step_size=meta["config"]["head"]["step_size"])
    assert fixed.head.ode.solver == "rk4" and not fixed.head.ode.adjoint
    assert fixed.head.proj is hardened.head.proj and fixed.head.odefunc is blk.odefunc  # shared, not copied

    data = load_data("demo", image_size=16)
    idx = select_samples(data.test.labels, 64, 0)
    x, y = data.test.floats(idx), data.test.labels[idx]
    with torch.no_grad():
        l_ref, l_fixed = ref(x), fixed(x)
    assert (l_ref.argmax(1) == l_fixed.argmax(1)).all()
    assert (l_ref - l_fixed).abs().max() < 1e-3 * max(1.0, float(l_ref.abs().max()))
    grads = []
    for m in (ref, fixed):
        xg = x.clone().requires_grad_(True)
        grads.append(torch.autograd.grad(F.cross_entropy(m(xg), y), xg)[0].flatten(1))
    cos = F.cosine_similarity(grads[0], grads[1], dim=1)
    assert cos.min() > 0.99, float(cos.min())
    ratio = grads[1].norm(dim=1) / grads[0].norm(dim=1)
    assert ((ratio - 1).abs() < 0.05).all(), ratio

    bpda = hardened.variant("bpda")
    xg = x[:4].clone().requires_grad_(True)
    # true forward (its forward runs without gradients: sodef_cli/dopri5.py, equal to torchdiffeq to float rounding)
    torch.testing.assert_close(bpda(xg), hardened(xg), rtol=1e-4, atol=1e-5)
    g = torch.autograd.grad(bpda(xg).sum(), xg)[0]
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_masking_checks_name_their_evidence():
    run = {
        "models": {
            "hardened": {
                "clean": [True, True, True, True],
                "attacks": {
                    "apgd-ce": {"kind": "white-box", "robust": [True, True, True, False]},
                    "transfer-apgd-ce": {"kind": "transfer", "robust": [False, True, True, None]},
                    "square": {"kind": "black-box", "robust": [None, True, True, None]},
                },
            }
        }
    }
    checks = {c["name"]: c for c in masking_checks(run)}
    assert checks["transfer beats direct"]["flagged"] is True
    assert "fooled 1 of the 3" in checks["transfer beats direct"]["evidence"]
    assert checks["black-box beats white-box"]["flagged"] is False
    assert checks["fixed-step gradients beat adaptive-solver gradients"]["flagged"] is None


def test_torchrun_two_processes_equal_single_process(adaptive_file, tmp_path):
    """gloo, 2 CPU processes: merged results identical to one process with the same seed."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    common = [
        "attack",
        str(adaptive_file),
        "--data",
        "demo",
        "--image-size",
        "16",
        "--suite",
        "quick",
        "--samples",
        "24",
        "--steps",
        "2",
        "--batch-size",
        "8",
    ]
    single = subprocess.run(
        [sys.executable, "-m", "sodef_cli", *common, "--out", str(tmp_path / "one.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr
    dist = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "-m",
            "sodef_cli",
            *common,
            "--out",
            str(tmp_path / "two.json"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert dist.returncode == 0, dist.stderr
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    flags = lambda d: [
        (r["eps"], {m: (v["clean"], {k: x["robust"] for k, x in v["attacks"].items()}) for m, v in r["models"].items()})
        for r in d["runs"]
    ]
    assert a["indices"] == b["indices"]
    assert flags(a) == flags(b)
    no_time = lambda d: {m: {k: v for k, v in s.items() if k != "seconds"} for m, s in summarize(d)["models"].items()}
    assert no_time(a) == no_time(b)
    print("single:", json.dumps(no_time(a)), "distributed:", json.dumps(no_time(b)))


@pytest.mark.parametrize("fixture,alone", [("adaptive_file", True), ("hardened_file", False)])
def test_adaptive_solver_examples_are_also_judged_alone(request, monkeypatch, tmp_path, fixture, alone):
    """With dopri5 an example counts as robust only if it is also classified correctly on its own."""
    import sodef_cli.evaluate as E

    sizes = []
    real = E._predict

    def spy(model, x, batch_size, device):
        sizes.append(batch_size)
        return real(model, x, batch_size, device)

    monkeypatch.setattr(E, "_predict", spy)
    res = _attack(
        request.getfixturevalue(fixture),
        "--attacks",
        "fgsm",
        "--n",
        "32",
        "--no-checks",
        "--out",
        str(tmp_path / "r.json"),
    )
    assert res.exit_code == 0, res.output
    assert any(json.loads((tmp_path / "r.json").read_text())["runs"][0]["models"]["hardened"]["clean"])  # attacked
    assert (1 in sizes) is alone


def test_plain_cpu_is_an_execution_setting_a_resume_may_change(hardened_file, tmp_path):
    """--plain-cpu turns the CPU fast paths off; the results file accepts either on resume, and Square's
    score-based queries (forwards without gradients) reach the same verdicts either way on these samples."""
    out = tmp_path / "r.json"
    args = ["--attacks", "square", "--queries", "50", "--n", "16", "--no-checks"]
    first = _attack(hardened_file, *args, "--out", str(out), "--plain-cpu")
    assert first.exit_code == 0, first.output
    assert "no-gradient forwards: base off; hardened off" in first.stderr
    doc = json.loads(out.read_text())
    assert doc["config"]["fast_cpu"] is False
    again = _attack(hardened_file, *args, "--out", str(out))  # finished: resumed with the fast paths on
    assert again.exit_code == 0, again.output
    fast = _attack(hardened_file, *args, "--out", str(tmp_path / "fast.json"))
    assert fast.exit_code == 0, fast.output
    assert "no-gradient forwards: base on (TorchScript" in fast.stderr
    flags = lambda d: {m: r["attacks"]["square"]["robust"] for m, r in d["runs"][0]["models"].items()}
    assert flags(json.loads((tmp_path / "fast.json").read_text())) == flags(doc)
