"""The default path of `sodef harden` (issue 20): adversarial fine-tuning, loud selection, resumable epochs.

Each test names the break it catches.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from typer.testing import CliRunner

import sodef_cli.adversarial as adv
from sodef_cli import harden as H
from sodef_cli.cli import app
from sodef_cli.config import HardenConfig, hardening_path, resolve
from sodef_cli.io import read_metadata
from sodef_cli.resume import Checkpoint

runner = CliRunner()

# tiny: the demo data at 16 px, 2 epochs of the default attack on 1,800 images, selection on 32
TINY = {
    "model": "test_resnet",
    "data": "demo",
    "image_size": 16,
    "check.enabled": False,
    "adversarial.epochs": 2,
    "adversarial.batch_size": 200,
    "adversarial.select_n": 32,
    "adversarial.select_steps": 2,
}


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_default_is_adversarial_fine_tuning_and_recipes_keep_their_meaning():
    """Break: head.kind defaulting to sodef, or attack to none -> fails."""
    cfg = resolve(HardenConfig, overrides={"model": "test_resnet"})
    assert (cfg.head.kind, cfg.adversarial.attack, cfg.adversarial.stages) == ("linear", "nfgsm", -1)
    assert cfg.adversarial.max_clean_drop == 1.0 and cfg.adversarial.ema > 0
    paper = resolve(HardenConfig, overrides={"model": "test_resnet", "adversarial.attack": "none"})
    assert paper.head.kind == "sodef"  # `--adv-attack none`: the paper's method
    for recipe in ("recipes/paper-cifar10.toml", "recipes/demo-paper.toml"):
        cfg = resolve(HardenConfig, recipe=recipe, overrides={"model": "test_resnet"})
        assert (cfg.head.kind, cfg.adversarial.attack) == ("sodef", "none"), recipe
    cfg = resolve(HardenConfig, recipe="recipes/adversarial.toml", overrides={"model": "test_resnet"})
    assert (cfg.head.kind, cfg.adversarial.attack, cfg.adversarial.steps, cfg.adversarial.stages) == (
        "linear",
        "pgd",
        5,
        4,
    )
    sodef = resolve(HardenConfig, overrides={"model": "test_resnet", "head.kind": "sodef"})
    assert sodef.adversarial.attack == "nfgsm"  # `--head sodef`: the SODEF head trained adversarially (arm F')
    # which path ran, in words (summary, guard record, card)
    assert hardening_path(resolve(HardenConfig, overrides={"model": "m"})).startswith("the default path: adversarial")
    assert hardening_path(paper).startswith("the paper's method: a SODEF head")
    assert hardening_path(sodef).endswith("not the default path")


def test_default_harden_end_to_end(tmp_path):
    """`sodef harden MODEL --data D`: the model's own classifier and every stage but the stem, N-FGSM.
    Break: stages=-1 not resolved to all but the stem -> fails."""
    out = tmp_path / "h.safetensors"
    args = ["harden", "test_resnet", "--data", "demo", "--image-size", "16", "--no-check", "--out", str(out), "--json"]
    for k, v in TINY.items():
        if "." in k and k != "check.enabled":
            args += ["--set", f"{k}={v}"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    rec = summary["adversarial"]
    assert summary["hardened"]["head"] == "linear" and rec["attack"] == "nfgsm" and rec["stages"] == 4
    assert rec["summary"].startswith("linear head + last 4 backbone stage(s) trained adversarially with N-FGSM")
    meta = read_metadata(out)
    assert meta["config"]["head"]["kind"] == "linear"  # the resolved kind is stored, never "auto"
    # 2 epochs, selection on 32: the default path's method, not its budget, and the file says so
    assert summary["path"] == (
        "adversarial fine-tuning of the model's own classifier and every backbone stage but the stem (nfgsm, 2 epochs): "
        "not the default path"
    )
    assert meta["metrics"]["path"] == summary["path"]


def test_nfgsm_and_eps_ramp():
    """N-FGSM: noise of 2 eps, a step of eps, no projection onto the eps-ball; the ramp grows eps linearly.
    Break: projecting back onto the eps-ball (FGSM-RS) -> no perturbation beyond eps -> fails."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    x = torch.rand(64, 3, 8, 8) * 0.5 + 0.25  # away from the [0, 1] edges
    y = torch.randint(0, 10, (64,))
    eps = 8 / 255
    xa = adv.attack_batch(
        net, x, y, kind="nfgsm", eps=eps, step=eps, steps=1, generator=torch.Generator().manual_seed(0)
    )
    d = (xa - x).abs()
    assert d.max() <= 3 * eps + 1e-6 and d.max() > 1.5 * eps and (xa >= 0).all() and (xa <= 1).all()
    assert adv.default_step("nfgsm", eps, 1) == eps


def test_no_eligible_epoch_fails_loudly(tmp_path, monkeypatch):
    """Scripted scores: every trained epoch is 10 points below the start's clean accuracy. The file holds the starting
    weights; one warning line, --json and the card say so, and --require-gain exits 1.
    Break: drop the check (no selection_warning) -> exit 0 and no warning -> fails."""
    calls = {"clean": 0}

    def scripted(model, images, idx, *, kind, **kw):
        if kind == "none":
            calls["clean"] += 1
            return 0.6 if calls["clean"] == 1 else 0.5
        return 0.3 if calls["clean"] == 1 else 0.4  # more robust, but too costly on clean images

    monkeypatch.setattr(adv, "robust_accuracy", scripted)
    out = tmp_path / "h.safetensors"
    args = ["harden", "test_resnet", "--data", "demo", "--image-size", "16", "--no-check", "--out", str(out)]
    for k, v in TINY.items():
        if "." in k and k != "check.enabled":
            args += ["--set", f"{k}={v}"]
    res = runner.invoke(app, [*args, "--json", "--require-gain"])
    assert res.exit_code == 1, res.output
    summary = json.loads(res.stdout)
    assert summary["adversarial"]["best_epoch"] == 0
    assert summary["adversarial"]["selection_warning"] == adv.NO_ELIGIBLE_EPOCH
    assert "--require-gain: no epoch met the clean constraint: the file holds the starting weights" in " ".join(
        res.stderr.split()
    )
    meta = read_metadata(out)  # written, and the card says it
    assert meta["metrics"]["adversarial"]["selection_warning"] == adv.NO_ELIGIBLE_EPOCH
    card = runner.invoke(app, ["report", str(out)])
    assert "WARNING: no epoch met the clean constraint" in " ".join(card.stdout.split())
    calls["clean"] = 0
    res = runner.invoke(app, [*args, "--json"])  # without --require-gain: written, exit 0, still said
    assert res.exit_code == 0 and "no epoch met the clean constraint" in " ".join(res.stderr.split())
    calls["clean"] = 0
    res = runner.invoke(app, [*args, "--json", "--require-significant-gain"])  # the message names the flag given
    assert res.exit_code == 1 and "--require-significant-gain: no epoch met" in " ".join(res.stderr.split())
    assert adv.selection_warning(0, [{"epoch": 0}, {"epoch": 1, "eligible": True, "rejected": False}]) == (
        adv.NO_BETTER_EPOCH
    )
    assert adv.selection_warning(1, [{"epoch": 0}, {"epoch": 1, "eligible": True}]) is None


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    cfg = resolve(HardenConfig, overrides={**TINY, "adversarial.epochs": 3})
    out = tmp_path_factory.mktemp("adv_ref") / "a.safetensors"
    H.harden(cfg, out)
    return cfg, _sha(out)


def test_resume_mid_epoch_gives_the_uninterrupted_file(uninterrupted, tmp_path, monkeypatch):
    """Ctrl-C in the middle of epoch 2 of 3: the resume file holds epoch 1 (weights, averages, optimizer, schedule,
    selection history, random states); `--resume` gives the uninterrupted run's file bit for bit.
    Break: not restoring the random states (or the optimizer) on resume -> another file -> fails."""
    cfg, digest = uninterrupted
    out = tmp_path / "h.safetensors"
    saved = []
    real_progress, real_attack = Checkpoint.progress, adv.attack_batch

    def progress(self, name, tensors, records):
        saved.append(records["epochs_run"])
        return real_progress(self, name, tensors, records)

    def attack(*a, **k):
        if saved and torch.is_grad_enabled():  # a training batch of epoch 2 (selection runs without grad)
            raise KeyboardInterrupt
        return real_attack(*a, **k)

    monkeypatch.setattr(Checkpoint, "progress", progress)
    monkeypatch.setattr(adv, "attack_batch", attack)
    with pytest.raises(KeyboardInterrupt):
        H.harden(cfg, out)
    assert saved == [1] and not out.exists() and Checkpoint.path_for(out).exists()
    monkeypatch.setattr(adv, "attack_batch", real_attack)
    H.harden(cfg, out, resume=True)
    assert _sha(out) == digest
    assert saved == [1, 2, 3]  # epochs 2 and 3 ran again from the checkpoint, epoch 1 did not
    assert not Checkpoint.path_for(out).exists()


def test_ctrl_c_says_how_to_resume(tmp_path, monkeypatch):
    """Ctrl-C after a checkpoint: exit 130 with one line naming the resume file and --resume.
    Break: the generic 'no partial output was left behind' (false: the resume file is there) -> fails."""
    from sodef_cli.errors import EXIT_INTERRUPTED

    out = tmp_path / "h.safetensors"

    def interrupted(cfg, out_, *, reporter=None, **options):
        Checkpoint.path_for(out_).write_bytes(b"x")
        raise KeyboardInterrupt

    monkeypatch.setattr(H, "harden", interrupted)
    res = runner.invoke(app, ["harden", "test_resnet", "--data", "demo", "--out", str(out)])
    assert res.exit_code == EXIT_INTERRUPTED
    text = " ".join(res.stderr.split())
    assert "rerun the same command with --resume to continue" in text and "no partial output" not in text


def test_results_verdict_leads_with_a_file_that_kept_the_starting_weights():
    """A results file of a model whose adversarial training kept no epoch: the verdict says so first.
    Break: drop the kept_start flag from the verdict -> the verdict reads like any +0.0 result -> fails."""
    from test_report import make_doc

    from sodef_cli.report import results_data

    doc = make_doc()
    doc["model"]["description"] = {
        "head": "linear",
        "linear": "own",
        "ode": None,
        "adversarial": {"stages": 4, "attack": "nfgsm", "eps": 8 / 255, "tensors": 38, "kept_start": True},
        "text": "linear head (the base's own classifier) + last 4 stages trained adversarially (no epoch kept: ...)",
    }
    text = results_data([doc])["files"][0]["verdict"]["text"]
    assert text.startswith("Not hardened: adversarial training kept no epoch, so the file holds the starting weights")
    del doc["model"]["description"]["adversarial"]["kept_start"]
    assert not results_data([doc])["files"][0]["verdict"]["text"].startswith("Not hardened")
