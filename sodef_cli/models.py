"""Rebuild models from this tool's files: ``load_hardened`` and ``load_base`` (the public API).

Both return an ``nn.Module`` in eval mode, every parameter frozen, mapping [0,1] images (N,C,H,W) to
logits (N, classes); normalization is inside the model.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .backbone import BaseClassifier, ModelSpec, freeze, rebuild, split_state
from .config import HeadConfig, from_dict
from .errors import ModelFileError
from .head import HardenedClassifier, SODEFHead
from .io import load_tensors, read_metadata

__all__ = ["load_hardened", "load_base", "load_pair", "hardened_meta"]


def hardened_meta(path: str | Path) -> dict:
    return read_metadata(path, expect="sodef_cli/hardened")


def _head_config(meta: dict) -> HeadConfig:
    try:
        return from_dict(HeadConfig, meta["config"]["head"], where="head")
    except (KeyError, TypeError) as exc:
        raise ModelFileError(f"hardened metadata has no usable head config ({exc})") from None
    except Exception as exc:
        raise ModelFileError(f"hardened metadata has an invalid head config ({exc})") from None


def _build(path: str | Path, device: str | torch.device) -> tuple[BaseClassifier, HardenedClassifier | None, dict]:
    meta = read_metadata(path)
    tensors = load_tensors(path)
    spec = ModelSpec.from_dict(meta.get("backbone", {}))
    backbone = freeze(rebuild(spec, split_state(tensors, "backbone.")))
    probe = None
    probe_state = split_state(tensors, "probe.")
    if probe_state:
        w = probe_state.get("weight")
        if w is None or w.ndim != 2:
            raise ModelFileError(f"{path}: probe weights are malformed")
        probe = nn.Linear(w.shape[1], w.shape[0])
        probe.load_state_dict(probe_state)
    base = BaseClassifier(backbone, spec, probe)
    hardened = None
    if meta["format"] == "sodef_cli/hardened":
        cfg = _head_config(meta)
        try:
            head = SODEFHead(int(meta["feature_dim"]), int(meta["num_classes"]), cfg, orthogonal=False)
            missing, unexpected = head.load_state_dict(split_state(tensors, "head."), strict=False)
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise ModelFileError(f"{path}: head weights do not match its metadata ({exc})") from None
        if missing or unexpected:
            raise ModelFileError(f"{path}: head weights missing {missing[:3]} / unexpected {unexpected[:3]}")
        hardened = HardenedClassifier(backbone, spec, head)
        freeze(hardened).to(device)
    freeze(base).to(device)
    return base, hardened, meta


def load_pair(path: str | Path, device: str | torch.device = "cpu") -> tuple[BaseClassifier, HardenedClassifier, dict]:
    """(base, hardened, metadata) from one hardened file; the two share the backbone."""
    base, hardened, meta = _build(path, device)
    if hardened is None:
        raise ModelFileError(f"{path} is a base model file (from `sodef pretrain`), not a hardened one")
    return base, hardened, meta


def load_hardened(path: str | Path, device: str | torch.device = "cpu") -> HardenedClassifier:
    """The hardened classifier stored in a file written by ``sodef harden``."""
    return load_pair(path, device)[1]


def load_base(path: str | Path, device: str | torch.device = "cpu") -> BaseClassifier:
    """The base classifier of a ``sodef pretrain`` file, or the same-features baseline of a hardened file."""
    return _build(path, device)[0]
