"""The structure of `harden`: the one resume helper, the file format in one place, inputs checked at the entry."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import sodef_cli.cli
import sodef_cli.harden
import sodef_cli.pretrain
from sodef_cli import io
from sodef_cli.backbone import normalization
from sodef_cli.cli import app
from sodef_cli.config import HardenConfig, PretrainConfig, resolve
from sodef_cli.errors import InputError, ModelError, ModelFileError, UsageError
from sodef_cli.inputs import check_count, check_head_dim
from sodef_cli.models import save_base, save_hardened
from sodef_cli.resume import Checkpoint

runner = CliRunner()
PACKAGE = Path(sodef_cli.cli.__file__).parent


# ---------------------------------------------------------------- the resume helper


def _checkpoint(out, *, resume, config=None, seed=0, log=None) -> Checkpoint:
    return Checkpoint(
        out,
        config=config or {"a": 1},
        inputs="x",
        generator=torch.Generator().manual_seed(seed),
        resume=resume,
        log=(log if log is not None else (lambda _m: None)),
    )


def test_stage_computes_saves_and_returns_once(tmp_path):
    ckpt = _checkpoint(tmp_path / "o.safetensors", resume=False)
    calls = []

    def compute():
        calls.append(1)
        return {"features.train": torch.arange(4.0)}, {"n": 4}

    tensors, records = ckpt.stage("features", compute)
    assert calls == [1]
    assert (
        torch.equal(tensors["features.train"], torch.arange(4.0))
        and records["n"] == 4
        and records["stage"] == "features"
    )
    assert Checkpoint.path_for(tmp_path / "o.safetensors").exists()


def test_resumed_stage_returns_the_saved_result_without_recomputing(tmp_path):
    out = tmp_path / "o.safetensors"
    first = _checkpoint(out, resume=False)
    first.stage("features", lambda: ({"features.train": torch.arange(3.0)}, {}))
    torch.manual_seed(123)
    first.generator.manual_seed(7)
    first.stage("base", lambda: ({"probe.weight": torch.ones(2, 2)}, {"base_note": "fitted"}))
    rng_torch, rng_gen = torch.get_rng_state(), first.generator.get_state()

    torch.manual_seed(999)  # another run, other random states
    again = _checkpoint(out, resume=True, seed=5)

    def never():
        raise AssertionError("a finished stage was computed again")

    tensors, records = again.stage("features", never)
    assert torch.equal(tensors["features.train"], torch.arange(3.0))
    assert not torch.equal(torch.get_rng_state(), rng_torch)  # not the last stage: random streams untouched
    tensors, records = again.stage("base", never)
    assert torch.equal(tensors["probe.weight"], torch.ones(2, 2)) and records["base_note"] == "fitted"
    # the last finished stage continues the random streams where the interrupted run saved them
    assert torch.equal(torch.get_rng_state(), rng_torch) and torch.equal(again.generator.get_state(), rng_gen)
    computed = []
    again.stage("phase1", lambda: computed.append(1) or ({}, {"phase1": {}}))
    assert computed == [1]  # an unfinished stage is computed


def test_resume_refuses_another_config_and_notes_a_leftover(tmp_path):
    out = tmp_path / "o.safetensors"
    _checkpoint(out, resume=False).stage("features", lambda: ({"features.train": torch.zeros(1)}, {}))
    with pytest.raises(ModelFileError, match="different configuration"):
        _checkpoint(out, resume=True, config={"a": 2})
    notes = []
    fresh = _checkpoint(out, resume=False, log=notes.append)
    assert "pass --resume" in notes[0] and not fresh.done("features")


# ---------------------------------------------------------------- the file format in one place


def test_format_names_and_versions_are_spelled_only_in_io():
    """No module but io.py names a format or writes a literal version number (the writers stamp io's constants)."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "io.py":
            continue
        text = path.read_text(encoding="utf-8")
        if re.search(r"[\"']sodef_cli/(base|hardened)[\"']", text) or re.search(
            r"[\"']format_version[\"']\s*:\s*\d", text
        ):
            offenders.append(path.name)
    assert offenders == []


def test_writers_stamp_the_format_the_reader_checks(tmp_path):
    model = torch.nn.Linear(3, 2)
    save_base(tmp_path / "b.safetensors", model, {"note": "base"})
    meta = io.read_metadata(tmp_path / "b.safetensors", expect=io.BASE_FORMAT)
    assert (meta["format"], meta["format_version"], meta["note"]) == (io.BASE_FORMAT, io.FIRST_FORMAT_VERSION, "base")
    with pytest.raises(ModelFileError, match="expected " + io.HARDENED_FORMAT):
        io.read_metadata(tmp_path / "b.safetensors", expect=io.HARDENED_FORMAT)
    # a file with tuned tensors needs the newest version; the reader takes it and refuses anything newer
    save_hardened(
        tmp_path / "h.safetensors",
        backbone=model,
        meta={},
        tuned={"weight": torch.zeros(2, 3)},
        probe=torch.nn.Linear(3, 2),
    )
    meta = io.read_metadata(tmp_path / "h.safetensors", expect=io.HARDENED_FORMAT)
    assert meta["format_version"] == io.FORMAT_VERSION
    keys = io.load_tensors(tmp_path / "h.safetensors").keys()
    assert {"backbone.weight", "tuned.weight", "probe.weight", "probe.bias"} <= set(keys)
    newer = {"format": io.HARDENED_FORMAT, "format_version": io.FORMAT_VERSION + 1}
    io.save_model_file(tmp_path / "n.safetensors", {"w": torch.zeros(1)}, newer)
    with pytest.raises(ModelFileError, match="newer than this sodef_cli understands"):
        io.read_metadata(tmp_path / "n.safetensors")


# ---------------------------------------------------------------- inputs checked once, at the entry


def _no_data(*args, **kwargs):
    raise AssertionError("the data set was decoded before the inputs were checked")


def test_bad_timm_name_fails_before_the_data_is_decoded(tmp_path, monkeypatch, tiny_harden_overrides):
    monkeypatch.setattr(sodef_cli.harden, "load_data", _no_data)
    cfg = resolve(HardenConfig, overrides={**tiny_harden_overrides, "model": "resnet_18x"})
    with pytest.raises(ModelError, match="unknown timm model 'resnet_18x'"):
        sodef_cli.harden.harden(cfg, tmp_path / "h.safetensors")
    monkeypatch.setattr(sodef_cli.pretrain, "load_data", _no_data)
    pcfg = resolve(PretrainConfig, overrides={"model": "resnet_18x", "epochs": 1})
    with pytest.raises(ModelError, match="unknown timm model"):
        sodef_cli.pretrain.pretrain(pcfg, tmp_path / "b.safetensors")


def test_bad_base_file_fails_before_the_data_is_decoded(tmp_path, monkeypatch, tiny_harden_overrides):
    monkeypatch.setattr(sodef_cli.harden, "load_data", _no_data)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model")
    cfg = resolve(HardenConfig, overrides={**tiny_harden_overrides, "model": str(bad)})
    with pytest.raises(ModelFileError):
        sodef_cli.harden.harden(cfg, tmp_path / "h.safetensors")


def test_head_dim_below_classes_fails_before_features_with_one_error_type(tmp_path, monkeypatch, tiny_harden_overrides):
    monkeypatch.setattr(sodef_cli.harden, "extract_features", _no_data)
    cfg = resolve(HardenConfig, overrides={**tiny_harden_overrides, "model": "test_resnet", "head.dim": 4})
    with pytest.raises(InputError, match=r"head.dim \(4\) must be at least the number of classes \(10\)") as err:
        sodef_cli.harden.harden(cfg, tmp_path / "h.safetensors")
    assert isinstance(err.value, UsageError) and isinstance(err.value, ValueError) and err.value.key == "head.dim"
    assert "--dim" not in str(err.value)  # the library names the config key; the CLI adds its flag
    with pytest.raises(InputError, match="head.dim"):
        check_head_dim(4, 10)
    res = runner.invoke(
        app,
        [
            "harden",
            "test_resnet",
            "--data",
            "demo",
            "--image-size",
            "16",
            "--dim",
            "4",
            "--adv-attack",
            "none",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "h.safetensors"),
        ],
    )
    assert res.exit_code == 2, res.output
    assert "head.dim (4) must be at least the number of classes (10) (option --dim)" in " ".join(res.stderr.split())


def test_counts_are_checked_once_with_the_config_key():
    with pytest.raises(InputError, match="check.n must be at least 1"):
        resolve(HardenConfig, overrides={"check.n": 0})
    with pytest.raises(ValueError, match="^n must be at least 1"):
        check_count(0, "n")
    from sodef_cli.data import select_samples

    with pytest.raises(InputError, match="^n must be at least 1"):  # no command-line flag in a library error
        select_samples(torch.arange(4), 0, 0)


# ---------------------------------------------------------------- --require-gain decided once


def test_cli_maps_the_require_gain_verdict_to_the_exit_code(tmp_path, monkeypatch):
    def fake(check):
        def run(cfg, out, *, reporter=None, **options):
            return {"out": str(out), "check": check, "base": {}, "hardened": {}}

        return run

    args = [
        "harden",
        "test_resnet",
        "--data",
        "demo",
        "--out",
        str(tmp_path / "h.safetensors"),
        "--json",
        "--require-gain",
    ]
    monkeypatch.setattr(sodef_cli.harden, "harden", fake({"gain_points": -5.0, "require_gain_failed": True}))
    assert runner.invoke(app, args).exit_code == 1
    # a loss the library did not mark (require_gain off in its config) is not re-decided by the CLI
    monkeypatch.setattr(sodef_cli.harden, "harden", fake({"gain_points": -5.0}))
    assert runner.invoke(app, args).exit_code == 0


# ---------------------------------------------------------------- one mean/std fallback


def test_normalization_averages_to_grey_when_the_channel_count_differs():
    hub = {"mean": (0.2, 0.4, 0.6), "std": (0.1, 0.2, 0.3)}
    mean, std = normalization(hub, 1)
    assert mean == pytest.approx([0.4]) and std == pytest.approx([0.2])
    assert normalization(hub, 3) == ([0.2, 0.4, 0.6], [0.1, 0.2, 0.3])
    assert normalization({}, 2) == ([0.5, 0.5], [0.5, 0.5])


def test_pretrain_on_grey_data_averages_hub_normalization(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 2)):
        for c in range(2):
            d = tmp_path / "gray" / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8), mode="L").save(d / f"{i}.png")
    real = sodef_cli.pretrain.create_timm
    monkeypatch.setattr(sodef_cli.pretrain, "create_timm", lambda name, **kw: real(name, **{**kw, "pretrained": False}))
    monkeypatch.setattr(
        sodef_cli.pretrain, "hub_config", lambda name: {"mean": (0.2, 0.4, 0.6), "std": (0.1, 0.2, 0.3)}
    )
    cfg = resolve(
        PretrainConfig,
        overrides={
            "model": "test_resnet",
            "data": str(tmp_path / "gray"),
            "epochs": 1,
            "batch_size": 8,
            "val_fraction": 0.25,
            "pretrained": True,
            "device": "cpu",
        },
    )
    sodef_cli.pretrain.pretrain(cfg, tmp_path / "b.safetensors")
    spec = io.read_metadata(tmp_path / "b.safetensors")["backbone"]
    assert spec["mean"] == pytest.approx([0.4]) and spec["std"] == pytest.approx([0.2])
