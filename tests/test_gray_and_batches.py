"""Grayscale data end to end (in_chans=1 models), and batch independence of fixed-step heads."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from sodef_cli.config import HardenConfig, PretrainConfig, resolve
from sodef_cli.evaluate import batch_dependence
from sodef_cli.harden import harden
from sodef_cli.models import load_pair
from sodef_cli.pretrain import pretrain


def _gray_folder(root, per_class=12):
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", 4)):
        for c in range(3):
            d = root / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(n):
                # class c is brighter in band c, so the data is learnable
                img = rng.integers(0, 60, (16, 16), dtype=np.uint8)
                img[c * 5 : c * 5 + 5] += 150
                Image.fromarray(img, mode="L").save(d / f"{i}.png")
    return root


def test_grayscale_data_gives_one_channel_models(tmp_path):
    data = _gray_folder(tmp_path / "gray")
    base = tmp_path / "base.safetensors"
    cfg = resolve(
        PretrainConfig,
        overrides={
            "model": "test_resnet",
            "data": str(data),
            "epochs": 1,
            "batch_size": 8,
            "val_fraction": 0.25,
            "adversarial": "fgsm",
        },
    )
    pretrain(cfg, base)
    hcfg = resolve(
        HardenConfig,
        overrides={
            "model": str(base),
            "data": str(data),
            "val_fraction": 0.25,
            "head.dim": 8,
            "head.solver": "rk4",
            "phase1.epochs": 1,
            "phase2.epochs": 1,
            "phase3.epochs": 1,
            "check.n": 6,
            "check.steps": 1,
            "check.batch_size": 6,
        },
    )
    out = tmp_path / "h.safetensors"
    summary = harden(hcfg, out)
    assert summary["data"]["input_size"] == [1, 16, 16]
    b, h, meta = load_pair(out)
    assert meta["backbone"]["in_chans"] == 1
    x = torch.rand(2, 1, 16, 16)
    assert b(x).shape == (2, 3) and h(x).shape == (2, 3)


def test_fixed_step_head_is_batch_independent(hardened_file, demo_data):
    _, hardened, meta = load_pair(hardened_file)
    assert meta["config"]["head"]["solver"] == "rk4"
    x = torch.nn.functional.interpolate(demo_data.test.floats(slice(0, 40)), size=16, mode="bilinear", antialias=True)
    stats = batch_dependence(hardened, x, batch_size=16, device="cpu", seed=0)
    assert stats["frac_predictions_changed"] == 0.0
    assert stats["max_abs_logit_change"] < 1e-4
