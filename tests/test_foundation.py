"""Foundations: typed configs and recipes, model files (save/load round trips, the public loaders),
and the frozen-backbone guarantee."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from conftest import TORCH_DEVICE
from safetensors.torch import load_file

import sodef_cli
from sodef_cli.config import (
    HardenConfig,
    HeadConfig,
    PretrainConfig,
    from_dict,
    load_recipe,
    parse_fraction,
    parse_set_options,
    resolve,
    to_dict,
)
from sodef_cli.errors import ModelFileError, UsageError
from sodef_cli.io import read_metadata
from sodef_cli.models import load_base_file
from sodef_cli.phases import accuracy_from_logits

# ---------------------------------------------------------------- config and recipes

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def _recipe(tmp_path, text: str) -> Path:
    p = tmp_path / "r.toml"
    p.write_text(text)
    return p


def test_defaults_without_recipe_or_overrides():
    cfg = resolve(HardenConfig)
    # head.kind "auto" resolves: linear with the default training attack (the default path)
    assert cfg == dataclasses.replace(HardenConfig(), head=dataclasses.replace(HeadConfig(), kind="linear"))
    assert HardenConfig().head.kind == "auto"


def test_precedence_defaults_recipe_overrides(tmp_path):
    recipe = _recipe(tmp_path, 'seed = 3\nmodel = "resnet18"\n[head]\nsolver = "rk4"\nt1 = 2.0\n[phase2]\nepochs = 7\n')
    cfg = resolve(HardenConfig, recipe=recipe, overrides={"seed": 5, "head.t1": "4", "phase1.epochs": None})
    assert cfg.seed == 5  # override beats recipe
    assert cfg.head.t1 == 4.0  # strings from --set are coerced
    assert cfg.head.solver == "rk4"  # recipe beats default
    assert cfg.phase2.epochs == 7
    assert cfg.model == "resnet18"
    assert cfg.phase1.epochs == HardenConfig().phase1.epochs  # None means "not given"
    assert cfg.head.dim == HeadConfig().dim  # untouched keys of a recipe table keep their default


def test_load_recipe_returns_plain_data(tmp_path):
    assert load_recipe(_recipe(tmp_path, "[head]\ndim = 32\n")) == {"head": {"dim": 32}}


def test_missing_and_invalid_recipes(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_recipe(tmp_path / "none.toml")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_recipe(_recipe(tmp_path, "[head\n"))


def test_unknown_recipe_key_names_the_valid_keys(tmp_path):
    with pytest.raises(UsageError) as exc:
        resolve(HardenConfig, recipe=_recipe(tmp_path, "[head]\nsolvr = 'rk4'\n"))
    msg = str(exc.value)
    assert "head.solvr" in msg and "solver" in msg and "rtol" in msg


def test_unknown_top_level_and_override_keys(tmp_path):
    with pytest.raises(UsageError, match="epocs") as exc:
        resolve(HardenConfig, recipe=_recipe(tmp_path, "epocs = 3\n"))
    assert "phase1" in str(exc.value)
    with pytest.raises(UsageError, match="phase9"):
        resolve(HardenConfig, overrides={"phase9.epochs": 1})
    with pytest.raises(UsageError, match="valid keys"):
        resolve(PretrainConfig, overrides={"head.dim": 3})  # pretrain has no head


@pytest.mark.parametrize(
    "overrides",
    [
        {"phase1.epochs": "many"},
        {"check.enabled": "perhaps"},
        {"head": 3},
        {"seed": 1.5},
        {"head.solver": "rk5"},
        {"head.odefunc": "tanh"},
        {"head.dim": 1},
        {"regularizer.form": "other"},
        {"regularizer.convention": "diagonal"},
        {"val_fraction": 0.95},
        {"phase2.batch_size": 0},
        {"check.norm": "L1"},
    ],
)
def test_bad_values_are_usage_errors(overrides):
    with pytest.raises(UsageError):
        resolve(HardenConfig, overrides=overrides)


@pytest.mark.parametrize("overrides", [{"adversarial": "pgd"}, {"epochs": 0}, {"adv_eps": 2.0}, {"val_fraction": 0.0}])
def test_bad_pretrain_values_are_usage_errors(overrides):
    with pytest.raises(UsageError):
        resolve(PretrainConfig, overrides=overrides)


@pytest.mark.parametrize(
    "text,value", [("8/255", 8 / 255), (" 0.5 ", 0.5), ("1", 1.0), (0.25, 0.25), (2, 2.0), ("1e-3", 1e-3)]
)
def test_parse_fraction(text, value):
    assert parse_fraction(text) == pytest.approx(value, rel=0, abs=1e-15)


@pytest.mark.parametrize("text", ["8/0", "eight", "1/2/3", ""])
def test_parse_fraction_rejects_garbage(text):
    with pytest.raises(UsageError):
        parse_fraction(text)


def test_fractions_in_recipes_and_overrides(tmp_path):
    cfg = resolve(HardenConfig, recipe=_recipe(tmp_path, '[check]\neps = "8/255"\n'), overrides={"check.n": "12"})
    assert cfg.check.eps == pytest.approx(8 / 255)
    assert cfg.check.n == 12


def test_bool_coercion():
    assert resolve(HardenConfig, overrides={"check.enabled": "false"}).check.enabled is False
    assert resolve(HardenConfig, overrides={"head.adjoint": "yes"}).head.adjoint is True


def test_parse_set_options():
    assert parse_set_options(["phase2.epochs=3", " head.solver = rk4", "data=a=b"]) == {
        "phase2.epochs": "3",
        "head.solver": "rk4",
        "data": "a=b",
    }
    assert parse_set_options(None) == {}
    with pytest.raises(UsageError, match="section.key=value"):
        parse_set_options(["nonsense"])


def test_to_dict_from_dict_round_trip():
    cfg = resolve(HardenConfig, overrides={"head.dim": 16, "model": "x", "check.eps": "4/255"})
    assert from_dict(HardenConfig, to_dict(cfg)) == cfg


@pytest.mark.parametrize("name", sorted(p.name for p in RECIPES.glob("*.toml")))
def test_shipped_recipes_resolve(name):
    data = load_recipe(RECIPES / name)
    cls = PretrainConfig if "epochs" in data and "phase1" not in data else HardenConfig
    resolve(cls, recipe=RECIPES / name)


# ---------------------------------------------------------------- model files


def _logits(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x.to(TORCH_DEVICE)).cpu()


def _test_accuracy(model, data) -> float:
    return accuracy_from_logits(torch.cat([_logits(model, x) for x, _ in data.test.batches(250)]), data.test.labels)


@pytest.fixture(scope="module")
def demo16():
    from sodef_cli.data import load_data

    return load_data("demo", image_size=16)


@pytest.mark.parametrize("loader", ["load_hardened", "load_base"])
def test_loaders_map_unit_images_to_logits(hardened_file, loader):
    model = getattr(sodef_cli, loader)(hardened_file, device=TORCH_DEVICE)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    x = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))  # the 16-px model of the fixture
    out = _logits(model, x)
    assert out.shape == (5, 10)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    edge = torch.cat([torch.zeros(1, 3, 16, 16), torch.ones(1, 3, 16, 16)])  # the closed interval is accepted
    assert _logits(model, edge).shape == (2, 10)


@pytest.mark.parametrize("loader", ["load_hardened", "load_base"])
@pytest.mark.parametrize(
    "bad,got",
    [
        (lambda x: torch.nn.functional.interpolate(x, size=32), "got 32x32 images"),  # the size the data came in
        (lambda x: x[:, :1], "got 1 channel(s)"),
        (lambda x: (x * 255).to(torch.uint8), "got dtype torch.uint8"),
        (lambda x: x * 255, "got values in [0"),  # 0-255 floats
        (lambda x: (x - 0.5) / 0.25, "got values in [-2"),  # normalized outside the model
        (lambda x: x[0], "got a tensor of shape (3, 16, 16)"),
    ],
)
def test_loaders_refuse_inputs_outside_their_contract(hardened_file, loader, bad, got):
    model = getattr(sodef_cli, loader)(hardened_file, device=TORCH_DEVICE)
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    x[0, 0, 0, 0], x[0, 0, 0, 1] = 0.0, 1.0
    with pytest.raises(ValueError, match=r"expected float images \(N, 3, 16, 16\) with values in \[0, 1\]") as err:
        model(bad(x).to(TORCH_DEVICE))
    assert got in str(err.value)


def test_load_hardened_twice_gives_identical_logits(hardened_file, images):
    images = images[:, :, ::2, ::2]  # the fixture's model takes 16 px
    a = _logits(sodef_cli.load_hardened(hardened_file, device=TORCH_DEVICE), images)
    b = _logits(sodef_cli.load_hardened(hardened_file, device=TORCH_DEVICE), images)
    assert torch.equal(a, b)
    c = _logits(sodef_cli.load_base(hardened_file, device=TORCH_DEVICE), images)
    d = _logits(sodef_cli.load_base(hardened_file, device=TORCH_DEVICE), images)
    assert torch.equal(c, d)
    assert not torch.equal(a, c)  # the SODEF head is not the base classifier


def test_loaded_models_reproduce_the_accuracies_measured_in_memory(hardened_run, demo16):
    """harden() measured test accuracy on its in-memory models; the reloaded ones must agree."""
    path, summary = hardened_run
    n = len(demo16.test)
    hard = _test_accuracy(sodef_cli.load_hardened(path, device=TORCH_DEVICE), demo16)
    base = _test_accuracy(sodef_cli.load_base(path, device=TORCH_DEVICE), demo16)
    # features are computed in batches of a different size here: allow one flipped argmax
    assert abs(hard - summary["hardened"]["test_clean_acc"]) <= 1 / n + 1e-9
    assert abs(base - summary["base"]["test_clean_acc"]) <= 1 / n + 1e-9


def test_hardened_head_runs_on_the_base_features(hardened_file, images):
    """Both models of one file share the backbone and its normalization."""
    hard = sodef_cli.load_hardened(hardened_file, device=TORCH_DEVICE)
    base = sodef_cli.load_base(hardened_file, device=TORCH_DEVICE)
    x = images[:, :, ::2, ::2].to(TORCH_DEVICE)  # the fixture's model takes 16 px
    with torch.no_grad():
        h = base.features(x)
        assert torch.equal(h, hard.features(x))
        assert torch.allclose(hard.head(h), hard(x))
        assert torch.allclose(base.classify_features(h), base(x), atol=1e-5)


def test_hardened_file_describes_itself(hardened_file):
    meta = read_metadata(hardened_file, expect="sodef_cli/hardened")
    assert meta["format_version"] == 1
    assert meta["num_classes"] == 10 and len(meta["classes"]) == 10
    assert meta["backbone"]["timm_name"] == "test_resnet"
    assert meta["config"]["head"]["solver"] == "rk4"
    assert meta["config"]["check"]["enabled"] is False
    json.dumps(meta)  # plain data


def test_base_file_round_trip(base_run, demo_data, images):
    path, summary = base_run
    model, spec, meta = load_base_file(path)
    assert meta["format"] == "sodef_cli/base"
    assert spec.timm_name == "test_resnet" and spec.num_classes == 10 and spec.input_size == [3, 32, 32]
    base = sodef_cli.load_base(path, device=TORCH_DEVICE)
    assert _logits(base, images).shape == (images.shape[0], 10)
    assert _logits(base, images).equal(_logits(sodef_cli.load_base(path, device=TORCH_DEVICE), images))
    assert _test_accuracy(base, demo_data) == pytest.approx(
        summary["test_clean_acc"], abs=1 / len(demo_data.test) + 1e-9
    )


def test_frozen_backbone_is_stored_bitwise_unchanged(base_run, hardened_from_base):
    """Every backbone tensor, BatchNorm running stats and counters included, survives hardening exactly."""
    before = load_file(str(base_run[0]))
    after = load_file(str(hardened_from_base[0]))
    bb_before = {k: v for k, v in before.items() if k.startswith("backbone.")}
    bb_after = {k: v for k, v in after.items() if k.startswith("backbone.")}
    assert bb_before and sorted(bb_before) == sorted(bb_after)
    changed = [k for k in bb_before if not torch.equal(bb_before[k], bb_after[k])]
    assert not changed, f"backbone tensors changed by hardening: {changed[:5]}"
    running = [k for k in bb_before if k.endswith(("running_mean", "running_var"))]
    assert running, "test_resnet should have BatchNorm layers"
    # pretraining moved the statistics, so the comparison above is not trivially 0 == 0, 1 == 1
    assert any(
        not torch.equal(bb_before[k], torch.zeros_like(bb_before[k])) for k in running if k.endswith("running_mean")
    )
    # and the hardened file loads back to the same backbone as the base file
    model, _, _ = load_base_file(base_run[0])
    hard = sodef_cli.load_hardened(hardened_from_base[0])
    sd_base, sd_hard = model.state_dict(), hard.backbone.state_dict()
    assert all(torch.equal(sd_base[k], sd_hard[k]) for k in sd_base)


def test_hardening_a_base_file_keeps_its_own_head(hardened_from_base):
    meta = read_metadata(hardened_from_base[0])
    assert meta["base_classifier"] == "own"
    assert meta["source"]["kind"] == "sodef_base_file"
    assert not any(k.startswith("probe.") for k in load_file(str(hardened_from_base[0])))


def test_load_hardened_rejects_a_base_file(base_run):
    with pytest.raises(ModelFileError, match="base model file"):
        sodef_cli.load_hardened(base_run[0])


@pytest.mark.parametrize("content", [b"", b"not a model", b"\x10\x00\x00\x00\x00\x00\x00\x00{}"])
def test_loaders_reject_files_that_are_not_model_files(tmp_path, content):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(content)
    with pytest.raises(ModelFileError):
        sodef_cli.load_hardened(bad)
    with pytest.raises(ModelFileError):
        sodef_cli.load_base(bad)


def test_loaders_reject_a_truncated_file(hardened_file, tmp_path):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(hardened_file.read_bytes()[:-100])
    with pytest.raises(ModelFileError):
        sodef_cli.load_hardened(cut)


def test_loaders_reject_a_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        sodef_cli.load_hardened(tmp_path / "nope.safetensors")
