"""The ``sodef`` command line through Typer's CliRunner: exit codes, messages, and the configs it builds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_HARDEN, TORCH_DEVICE
from typer.testing import CliRunner

import sodef_cli.harden
import sodef_cli.pretrain
from sodef_cli.cli import app
from sodef_cli.config import HardenConfig

runner = CliRunner()

# the CLI spelling of conftest.TINY_HARDEN (minus data/device/image size/check, given as options)
TINY_SET = [
    item
    for key, value in TINY_HARDEN.items()
    if key not in ("data", "device", "image_size", "check.enabled")
    for item in ("--set", f"{key}={value}")
]


def _flat(text: str) -> str:
    """Rich wraps long lines at the console width; compare messages with whitespace collapsed."""
    return " ".join(text.split())


def _fake_summary(out) -> dict:
    return {"out": str(out), "check": None, "base": {}, "hardened": {}}


@pytest.fixture
def captured_harden(monkeypatch):
    """Replace the expensive domain call; record the config the CLI built."""
    seen: dict = {}

    def fake(cfg, out, *, reporter=None, **options):
        seen["cfg"], seen["out"], seen["options"] = cfg, out, options
        return _fake_summary(out)

    monkeypatch.setattr(sodef_cli.harden, "harden", fake)
    return seen


# ---------------------------------------------------------------- end to end


def test_harden_end_to_end_writes_the_file_and_json(tmp_path, hardened_file):
    out = tmp_path / "h.safetensors"
    args = [
        "harden",
        "test_resnet",
        "--data",
        "demo",
        "--out",
        str(out),
        "--no-check",
        "--image-size",
        "16",
        "--device",
        TORCH_DEVICE,
        "--json",
        *TINY_SET,
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert out.is_file()
    summary = json.loads(result.stdout)
    assert summary["out"] == str(out)
    assert summary["check"] is None
    assert summary["data"]["train"] == 2000 and summary["data"]["test"] == 500
    assert 0.0 <= summary["hardened"]["test_clean_acc"] <= 1.0
    # --no-check: nothing held out
    assert summary["split"] == {"train": 1800, "val": 200, "check": 0, "seed": 0, "check_held_out_from_base": False}
    # same settings and seed as the session fixture: the file is bitwise the same
    assert out.read_bytes() == hardened_file.read_bytes()


# ---------------------------------------------------------------- configs the commands build


def test_harden_flags_beat_recipe_beats_defaults(tmp_path, captured_harden):
    recipe = tmp_path / "r.toml"
    recipe.write_text('model = "resnet18"\nseed = 3\n[head]\nsolver = "euler"\nt1 = 2.0\n[phase2]\nepochs = 7\n')
    result = runner.invoke(
        app,
        [
            "harden",
            "test_resnet",
            "--recipe",
            str(recipe),
            "--out",
            str(tmp_path / "o.safetensors"),
            "--seed",
            "5",
            "--solver",
            "rk4",
            "--dim",
            "32",
            "--no-check",
            "--set",
            "phase3.epochs=2",
            "--set",
            "check.eps=4/255",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    cfg: HardenConfig = captured_harden["cfg"]
    assert cfg.model == "test_resnet"  # argument beats recipe
    assert cfg.seed == 5 and cfg.head.solver == "rk4" and cfg.head.dim == 32
    assert cfg.head.t1 == 2.0 and cfg.phase2.epochs == 7  # from the recipe
    assert cfg.phase3.epochs == 2 and cfg.check.eps == pytest.approx(4 / 255)  # from --set
    assert cfg.check.enabled is False
    assert cfg.phase1 == HardenConfig().phase1  # defaults
    assert str(captured_harden["out"]) == str(tmp_path / "o.safetensors")


def test_harden_model_from_recipe(tmp_path, captured_harden):
    recipe = tmp_path / "r.toml"
    recipe.write_text('model = "test_resnet"\n')
    result = runner.invoke(app, ["harden", "--recipe", str(recipe), "--out", str(tmp_path / "o.safetensors"), "--json"])
    assert result.exit_code == 0, result.output
    assert captured_harden["cfg"].model == "test_resnet"
    assert captured_harden["cfg"].check.enabled is True  # the guard is on unless --no-check
    assert json.loads(result.stdout)["out"] == str(tmp_path / "o.safetensors")


def test_pretrain_builds_its_config(tmp_path, monkeypatch):
    seen = {}

    def fake(cfg, out, *, reporter=None, **options):
        seen["cfg"] = cfg
        return {"out": str(out), "data": {"name": "demo"}, "test_clean_acc": 0.5, "best_epoch": 1, "seconds": 0.0}

    monkeypatch.setattr(sodef_cli.pretrain, "pretrain", fake)
    result = runner.invoke(
        app,
        [
            "pretrain",
            "test_resnet",
            "--data",
            "demo",
            "--epochs",
            "2",
            "--adversarial",
            "fgsm",
            "--set",
            "adv_eps=4/255",
            "--out",
            str(tmp_path / "b.safetensors"),
        ],
    )
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert (cfg.model, cfg.epochs, cfg.adversarial) == ("test_resnet", 2, "fgsm")
    assert cfg.adv_eps == pytest.approx(4 / 255)
    assert "wrote" in result.stdout


def test_pretrain_takes_the_model_from_its_recipe(tmp_path, monkeypatch):
    """`sodef pretrain --recipe recipes/demo-base.toml ...` (the README's line) needs no MODEL argument."""
    seen = {}

    def fake(cfg, out, *, reporter=None, **options):
        seen["cfg"] = cfg
        return {"out": str(out), "data": {"name": "demo"}, "test_clean_acc": 0.5, "best_epoch": 1, "seconds": 0.0}

    monkeypatch.setattr(sodef_cli.pretrain, "pretrain", fake)
    recipe = Path(__file__).parent.parent / "recipes" / "demo-base.toml"
    out = str(tmp_path / "b.safetensors")
    result = runner.invoke(app, ["pretrain", "--recipe", str(recipe), "--data", "demo", "--out", out])
    assert result.exit_code == 0, result.output
    assert (seen["cfg"].model, seen["cfg"].epochs) == ("test_resnet", 15)
    result = runner.invoke(app, ["pretrain", "test_convnext", "--recipe", str(recipe), "--data", "demo", "--out", out])
    assert seen["cfg"].model == "test_convnext"  # the argument wins over the recipe


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == sodef_cli.__version__


# ---------------------------------------------------------------- wrong arguments


def _no_traceback(result) -> None:
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--bogus"], "No such option"),
        (["--set", "nonsense"], "section.key=value"),
        (["--set", "phase9.epochs=1"], "phase9"),
        (["--set", "head.solver=rk5"], "rk4"),
        (["--dim", "1"], "--dim"),
        (["--device", "tpu"], "--device"),
        (["--recipe", "no/such/recipe.toml"], "recipe"),
    ],
)
def test_usage_errors_exit_2(tmp_path, args, needle, captured_harden):
    out = tmp_path / "o.safetensors"
    result = runner.invoke(app, ["harden", "test_resnet", "--data", "demo", "--out", str(out), *args])
    assert result.exit_code == 2, result.output
    assert needle in _flat(result.output)
    assert "cfg" not in captured_harden  # rejected before any work
    assert not out.exists()
    _no_traceback(result)


def test_no_model_is_a_usage_error(tmp_path):
    result = runner.invoke(app, ["harden", "--data", "demo", "--out", str(tmp_path / "o.safetensors")])
    assert result.exit_code == 2, result.output
    assert "no MODEL" in _flat(result.stderr)


def test_unknown_timm_model_suggests_names(tmp_path):
    out = tmp_path / "o.safetensors"
    result = runner.invoke(
        app, ["harden", "test_resnett", "--data", "demo", "--out", str(out), "--device", "cpu", "--no-check"]
    )
    assert result.exit_code == 1, result.output
    err = _flat(result.stderr)
    assert "did you mean" in err and "test_resnet" in err
    assert not out.exists()
    _no_traceback(result)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu_is_a_clear_error(tmp_path):
    out = tmp_path / "o.safetensors"
    result = runner.invoke(
        app, ["harden", "test_resnet", "--data", "demo", "--out", str(out), "--device", "cuda", "--no-check"]
    )
    assert result.exit_code == 1, result.output
    err = _flat(result.stderr)
    assert "CUDA is not available" in err and "--device cpu" in err
    assert not out.exists()
    _no_traceback(result)


def test_missing_data_folder(tmp_path):
    out = tmp_path / "o.safetensors"
    missing = tmp_path / "no_such_data"
    result = runner.invoke(
        app, ["harden", "test_resnet", "--data", str(missing), "--out", str(out), "--device", "cpu", "--no-check"]
    )
    assert result.exit_code == 1, result.output
    assert "no_such_data" in _flat(result.stderr) and "neither a folder" in _flat(result.stderr)
    assert not out.exists()
    _no_traceback(result)


def test_missing_model_file(tmp_path):
    result = runner.invoke(
        app,
        [
            "harden",
            str(tmp_path / "base.safetensors"),
            "--data",
            "demo",
            "--out",
            str(tmp_path / "o.safetensors"),
            "--device",
            "cpu",
            "--no-check",
        ],
    )
    assert result.exit_code == 1, result.output
    assert "does not exist" in _flat(result.stderr)
    _no_traceback(result)


def test_pth_model_file_points_to_checkpoint_option(tmp_path):
    pth = tmp_path / "weights.pth"
    torch.save({"w": torch.zeros(1)}, pth)
    result = runner.invoke(
        app,
        [
            "harden",
            str(pth),
            "--data",
            "demo",
            "--out",
            str(tmp_path / "o.safetensors"),
            "--device",
            "cpu",
            "--no-check",
        ],
    )
    assert result.exit_code == 1, result.output
    assert "--checkpoint" in _flat(result.stderr)
    _no_traceback(result)
