"""Determinism and `harden --resume`: an interrupted run resumed gives the bitwise-identical file."""

from __future__ import annotations

import hashlib

import pytest

from sodef_cli import harden as H
from sodef_cli import phases
from sodef_cli.config import HardenConfig, resolve

OVERRIDES = {
    "model": "test_resnet",
    "data": "demo",
    "image_size": 16,
    "head.dim": 16,
    "head.t1": 1.0,
    "head.solver": "rk4",
    "phase1.epochs": 1,
    "phase2.epochs": 1,
    "phase3.epochs": 1,
    "check.enabled": False,
    "adversarial.attack": "none",
}


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    cfg = resolve(HardenConfig, overrides=OVERRIDES)
    out = tmp_path_factory.mktemp("ref") / "a.safetensors"
    H.harden(cfg, out)
    return cfg, _sha(out)


def test_same_seed_gives_bitwise_identical_file(reference, tmp_path):
    cfg, digest = reference
    H.harden(cfg, tmp_path / "b.safetensors")
    assert _sha(tmp_path / "b.safetensors") == digest


def test_other_seed_gives_other_file(reference, tmp_path):
    cfg = resolve(HardenConfig, overrides={**OVERRIDES, "seed": 1})
    H.harden(cfg, tmp_path / "c.safetensors")
    assert _sha(tmp_path / "c.safetensors") != reference[1]


@pytest.mark.parametrize("stage", ["phase1", "phase2", "phase3"])
def test_interrupted_then_resumed_is_identical(reference, tmp_path, monkeypatch, stage):
    cfg, digest = reference
    out = tmp_path / "h.safetensors"

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(H, stage, interrupt)
    with pytest.raises(KeyboardInterrupt):
        H.harden(cfg, out)
    assert not out.exists()  # nothing half-written
    assert (tmp_path / "h.safetensors.resume").exists()
    monkeypatch.setattr(H, stage, getattr(phases, stage))
    H.harden(cfg, out, resume=True)
    assert _sha(out) == digest
    assert not (tmp_path / "h.safetensors.resume").exists()


def test_resume_with_other_config_is_refused(reference, tmp_path, monkeypatch):
    from sodef_cli.errors import ModelFileError

    cfg, _ = reference
    out = tmp_path / "h.safetensors"
    monkeypatch.setattr(H, "phase2", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        H.harden(cfg, out)
    other = resolve(HardenConfig, overrides={**OVERRIDES, "phase2.epochs": 2})
    with pytest.raises(ModelFileError, match="different configuration"):
        H.harden(other, out, resume=True)
