"""The shipped demo base and data: loadable offline, and the base really is trained."""

from __future__ import annotations

from pathlib import Path

import torch

import sodef_cli
from sodef_cli.data import DEMO_ZIP, load_data
from sodef_cli.io import read_metadata

DEMO_BASE = Path(sodef_cli.__file__).parent / "assets" / "demo_base.safetensors"


def test_demo_assets_are_small():
    assert DEMO_ZIP.stat().st_size < 3 * 1024 * 1024
    assert DEMO_BASE.stat().st_size < 5 * 1024 * 1024


def test_demo_base_is_a_trained_fgsm_cifar10_model():
    meta = read_metadata(DEMO_BASE, expect="sodef_cli/base")
    assert meta["backbone"]["timm_name"] == "test_resnet"
    assert meta["config"]["adversarial"] == "fgsm"
    data = load_data("demo")
    assert meta["backbone"]["classes"] == data.classes
    model = sodef_cli.load_base(DEMO_BASE)
    with torch.no_grad():
        acc = (model(data.test.floats()).argmax(1) == data.test.labels).float().mean().item()
    assert acc > 0.45  # 55% on these 500 images, 57% on the full CIFAR-10 test split; chance is 10%
