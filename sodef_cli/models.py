"""Rebuild models from this tool's files: ``load_hardened`` and ``load_base`` (the public API).

Both return an ``nn.Module`` in eval mode, every parameter frozen, mapping [0,1] images (N,C,H,W) to
logits (N, classes); normalization is inside the model.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from .backbone import BaseClassifier, ModelSpec, _meta_shapes, check_shapes, freeze, rebuild, split_state
from .config import HeadConfig, from_dict
from .errors import ModelFileError
from .head import HardenedClassifier, SODEFHead
from .inputs import guard_inputs
from .io import load_tensors, read_metadata

__all__ = ["load_hardened", "load_base", "load_pair", "hardened_meta"]


def hardened_meta(path: str | Path) -> dict:
    """The metadata of a hardened file, its fields checked (commands read them before loading the model)."""
    return _checked(read_metadata(path, expect="sodef_cli/hardened"), path)


def _checked(meta: dict, path: str | Path) -> dict:
    """``meta`` once the fields the loaders and commands use are checked (``ModelFileError`` otherwise)."""
    ModelSpec.from_dict(meta.get("backbone", {}))
    if meta["format"] != "sodef_cli/hardened":
        return meta
    _head_config(meta)
    classes, k, d = meta.get("classes"), meta.get("num_classes"), meta.get("feature_dim")
    if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise ModelFileError(f"{path}: hardened metadata has no list of class names")
    if not (isinstance(k, int) and k == len(classes) >= 2 and isinstance(d, int) and d >= 1):
        raise ModelFileError(f"{path}: hardened metadata has impossible sizes (num_classes {k!r}, {len(classes)} classes, feature_dim {d!r})")
    return meta


def _head_config(meta: dict) -> HeadConfig:
    try:
        return from_dict(HeadConfig, meta["config"]["head"], where="head")
    except (KeyError, TypeError) as exc:
        raise ModelFileError(f"hardened metadata has no usable head config ({exc})") from None
    except Exception as exc:
        raise ModelFileError(f"hardened metadata has an invalid head config ({exc})") from None


def _build(path: str | Path, device: str | torch.device) -> tuple[BaseClassifier, HardenedClassifier | None, dict]:
    meta = _checked(read_metadata(path), path)
    tensors = load_tensors(path)
    spec = ModelSpec.from_dict(meta.get("backbone", {}))
    backbone = freeze(rebuild(spec, split_state(tensors, "backbone.")))
    probe = _linear(path, split_state(tensors, "probe."), "probe")
    base = BaseClassifier(backbone, spec, probe)
    hardened = None
    if meta["format"] == "sodef_cli/hardened":
        hardened = _hardened(path, meta, tensors, backbone, spec)
        freeze(hardened).to(device)
    freeze(base).to(device)
    return base, hardened, meta


def _linear(path, state: dict[str, torch.Tensor], what: str) -> nn.Linear | None:
    if not state:
        return None
    w = state.get("weight")
    if w is None or w.ndim != 2:
        raise ModelFileError(f"{path}: {what} weights are malformed")
    lin = nn.Linear(w.shape[1], w.shape[0])
    check_shapes({k: v.shape for k, v in lin.state_dict().items()}, state, f"{path}: {what} weights are malformed")
    lin.load_state_dict(state)
    return lin


def _hardened(path, meta: dict, tensors: dict[str, torch.Tensor], backbone: nn.Module, spec: ModelSpec) -> nn.Module:
    """The hardened model: the original backbone with its tuned stages (``tuned.*``, when adversarial training
    changed them) under a SODEF head or a linear head (the backbone's own classifier, or ``linear.*``)."""
    tuned = split_state(tensors, "tuned.")
    if tuned:
        own = backbone.state_dict()
        check_shapes({k: own[k].shape for k in tuned if k in own}, tuned, f"{path}: tuned backbone tensors do not fit the backbone")
        backbone = copy.deepcopy(backbone)  # the base keeps the original weights, bit for bit
        with torch.no_grad():
            for k, v in tuned.items():
                own_t = backbone.state_dict()[k]
                own_t.copy_(v)
    cfg = _head_config(meta)
    if cfg.kind == "linear":
        return BaseClassifier(backbone, spec, _linear(path, split_state(tensors, "linear."), "linear head"))
    head_state = split_state(tensors, "head.")
    make = lambda: SODEFHead(int(meta["feature_dim"]), int(meta["num_classes"]), cfg, orthogonal=False)
    # sizes from metadata are compared with the file's tensors on the meta device before any allocation
    expected = _meta_shapes(make)
    if expected is None:
        raise ModelFileError(f"{path}: the head described by its metadata cannot be built")
    check_shapes(expected, head_state, f"{path}: head weights do not match its metadata")
    head = make()
    head.load_state_dict(head_state)
    return HardenedClassifier(backbone, spec, head)


def load_pair(path: str | Path, device: str | torch.device = "cpu") -> tuple[BaseClassifier, HardenedClassifier, dict]:
    """(base, hardened, metadata) from one hardened file; the two share the backbone."""
    base, hardened, meta = _build(path, device)
    if hardened is None:
        raise ModelFileError(f"{path} is a base model file (from `sodef pretrain`), not a hardened one")
    return base, hardened, meta


def load_hardened(path: str | Path, device: str | torch.device = "cpu") -> HardenedClassifier:
    """The hardened classifier stored in a file written by ``sodef harden``; wrong inputs raise ValueError."""
    model = load_pair(path, device)[1]
    return guard_inputs(model, model.spec.input_size)


def load_base(path: str | Path, device: str | torch.device = "cpu") -> BaseClassifier:
    """The base classifier of a ``sodef pretrain`` file, or the same-features baseline of a hardened file;
    wrong inputs raise ValueError."""
    model = _build(path, device)[0]
    return guard_inputs(model, model.spec.input_size)
