"""Shared fixtures: a tiny pretrained base and hardened models on the embedded demo data.

Everything runs offline on CPU (or on ``SODEF_TEST_DEVICE``) with timm's ``test_resnet`` and tiny
epoch counts. The model hardened by name sees the demo images shrunk to 16 px (``--image-size``); the
pretrained base keeps their own 32 px, so both size paths are exercised. Each expensive artifact is
built once per session.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before timm / huggingface_hub are imported anywhere

import pytest
import torch

TORCH_DEVICE = os.environ.get("SODEF_TEST_DEVICE", "cpu")
# tiny models gain nothing from intra-op threads, and on a busy machine spinning threads cost a lot
torch.set_num_threads(int(os.environ.get("SODEF_TEST_THREADS", "1")))

# small but complete hardening: every phase runs once, the fixed-step solver keeps it fast
TINY_HARDEN = {
    "data": "demo",
    # the paper's path (SODEF head, frozen extractor): most fixtures test the head; the default path (adversarial
    # fine-tuning, linear head) has tests of its own
    "adversarial.attack": "none",
    "device": TORCH_DEVICE,
    "image_size": 16,
    "phase1.epochs": 1,
    "phase2.epochs": 2,
    "phase2.batch_size": 32,  # 114 steps on the demo's 1,800 training images: every Jacobian stable after phase 2
    "phase3.epochs": 1,
    "probe.epochs": 1,
    "check.enabled": False,
    "head.solver": "rk4",
    "head.t1": 1.0,
    "head.step_size": 0.5,
    "head.dim": 16,
}


@pytest.fixture(scope="session")
def tiny_harden_overrides() -> dict:
    return dict(TINY_HARDEN)


@pytest.fixture(scope="session")
def demo_data():
    from sodef_cli.data import load_data

    return load_data("demo")


@pytest.fixture(scope="session")
def hardened_run(tmp_path_factory):
    """(path, summary) of ``test_resnet`` (random weights) hardened on the demo data."""
    from sodef_cli.config import HardenConfig, resolve
    from sodef_cli.harden import harden

    out = tmp_path_factory.mktemp("hardened") / "hardened.safetensors"
    cfg = resolve(HardenConfig, overrides={"model": "test_resnet", **TINY_HARDEN})
    summary = harden(cfg, out)
    return out, summary


@pytest.fixture(scope="session")
def hardened_file(hardened_run):
    return hardened_run[0]


@pytest.fixture(scope="session")
def base_run(tmp_path_factory):
    """(path, summary) of a ``sodef pretrain`` base: one epoch of test_resnet on a slice of the demo data.

    Training moves the BatchNorm running statistics away from their 0/1 initial values, so the
    frozen-backbone test below compares something non-trivial.
    """
    from sodef_cli.config import PretrainConfig, resolve
    from sodef_cli.pretrain import pretrain

    out = tmp_path_factory.mktemp("base") / "base.safetensors"
    cfg = resolve(
        PretrainConfig,
        overrides={
            "model": "test_resnet",
            "data": "demo",
            "epochs": 1,
            "val_fraction": 0.8,
            "augment": False,
            "batch_size": 64,
            "device": TORCH_DEVICE,
        },
    )
    summary = pretrain(cfg, out)
    return out, summary


@pytest.fixture(scope="session")
def hardened_from_base(base_run, tmp_path_factory):
    """(path, summary) of the pretrain base hardened with the tiny settings."""
    from sodef_cli.config import HardenConfig, resolve
    from sodef_cli.harden import harden

    out = tmp_path_factory.mktemp("hardened_base") / "hardened.safetensors"
    overrides = {k: v for k, v in TINY_HARDEN.items() if k != "image_size"}  # the base file fixes the size
    cfg = resolve(HardenConfig, overrides={"model": str(base_run[0]), **overrides})
    summary = harden(cfg, out)
    return out, summary


@pytest.fixture
def images():
    """Deterministic [0,1] images (N, 3, 32, 32)."""
    g = torch.Generator().manual_seed(1234)
    return torch.rand(6, 3, 32, 32, generator=g)
