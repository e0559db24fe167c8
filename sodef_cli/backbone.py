"""timm backbones: create or load a model, freeze it, and take its pre-logits features.

Features always come from timm's contract, ``forward_head(forward_features(x), pre_logits=True)``.
Normalization lives inside the models built here, so every model maps [0,1] images to logits.
"""

from __future__ import annotations

import difflib
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import ModelError, ModelFileError, UsageError
from .io import load_weights

__all__ = [
    "ModelSpec",
    "Normalize",
    "BaseClassifier",
    "ImageModel",
    "create_timm",
    "build_backbone",
    "freeze",
    "check_timm_name",
    "normalization",
]


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a timm backbone with nothing but a state dict."""

    timm_name: str
    num_classes: int
    in_chans: int
    input_size: list[int]  # [C, H, W]
    mean: list[float]
    std: list[float]
    classes: list[str] = field(default_factory=list)  # class names the backbone's own head was trained for
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        """Parse untrusted metadata; ``ModelFileError`` unless every field has a sane type and value."""
        try:
            spec = cls(
                timm_name=str(d["timm_name"]),
                num_classes=int(d["num_classes"]),
                in_chans=int(d["in_chans"]),
                input_size=[int(v) for v in d["input_size"]],
                mean=[float(v) for v in d["mean"]],
                std=[float(v) for v in d["std"]],
                classes=[str(c) for c in d.get("classes", [])],
                model_kwargs=dict(d.get("model_kwargs", {})),
            )
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise ModelFileError(f"model metadata is incomplete or malformed ({type(exc).__name__}: {exc})") from None
        c = spec.in_chans
        if (
            spec.num_classes < 0
            or c < 1
            or len(spec.input_size) != 3
            or min(spec.input_size) < 1
            or spec.input_size[0] != c
        ):
            raise ModelFileError(
                f"model metadata has impossible sizes (num_classes {spec.num_classes}, in_chans {c}, input_size {spec.input_size})"
            )
        if (
            len(spec.mean) != c
            or len(spec.std) != c
            or not all(math.isfinite(v) for v in spec.mean + spec.std)
            or 0.0 in spec.std
        ):
            raise ModelFileError(
                f"model metadata has an invalid normalization (mean {spec.mean}, std {spec.std} for {c} channels)"
            )
        reserved = sorted(set(spec.model_kwargs) & _FACTORY_KWARGS)
        if reserved:  # these make timm read other files or the hub: never from a model file
            raise ModelFileError(f"model metadata passes {', '.join(reserved)} to timm; refused")
        return spec


# timm.create_model arguments that load weights or configs from elsewhere
_FACTORY_KWARGS = {"pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir"}


class Normalize(nn.Module):
    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def freeze(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def check_timm_name(name: str) -> None:
    import timm

    if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        return
    base = name.split(".")[0]
    if not timm.is_model(base):
        close = difflib.get_close_matches(base, timm.list_models(), n=5, cutoff=0.6)
        hint = (
            f"; did you mean {', '.join(close)}?"
            if close
            else "; `python -c \"import timm; print(timm.list_models('*resnet*'))\"` lists names"
        )
        raise ModelError(f"unknown timm model {name!r}{hint}")


def create_timm(
    name: str, *, num_classes: int | None, in_chans: int, pretrained: bool = False, kwargs: dict | None = None
) -> nn.Module:
    """``timm.create_model`` with clear errors for unknown names and offline hub access.

    ``num_classes=None`` keeps the model's default head (hub weights).
    """
    import timm

    check_timm_name(name)
    extra = dict(kwargs or {})
    if num_classes is not None:
        extra["num_classes"] = num_classes
    try:
        return timm.create_model(name, pretrained=pretrained, in_chans=in_chans, **extra)
    except TypeError as exc:
        raise UsageError(f"timm rejected the model arguments for {name}: {exc}") from None
    except Exception as exc:
        if pretrained:
            offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
            why = "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached"
            raise ModelError(
                f"--pretrained needs hub weights for {name} but {why} ({type(exc).__name__}); "
                "download them on a connected machine or pass --checkpoint FILE"
            ) from None
        raise ModelError(f"timm could not create {name}: {exc}") from None


def hub_config(name: str) -> dict:
    """timm's pretrained config for a name (mean, std, classifier key), without building the model."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name.split(":")[-1])
    if cfg is None:
        return {}
    d = cfg.to_dict()
    clf = d.get("classifier")
    if isinstance(clf, (list, tuple)):
        d["classifier"] = clf[0] if clf else None
    return d


def normalization(hub_cfg: dict, in_chans: int) -> tuple[list[float], list[float]]:
    """(mean, std) per channel for a model whose weights come with ``hub_cfg`` (timm's pretrained config; ``{}``
    for weights trained here, which use a neutral 0.5/0.5: the data is normalized inside the model either way).

    Hub or third-party weights expect the model's own normalization. When it has another channel count than the
    data (an RGB model on grey images), its per-channel values are averaged to one grey value for every channel.
    """
    mean = list(hub_cfg.get("mean") or [0.5] * in_chans)
    std = list(hub_cfg.get("std") or [0.5] * in_chans)
    if len(mean) != in_chans:
        mean = [sum(mean) / len(mean)] * in_chans
    if len(std) != in_chans:
        std = [sum(std) / len(std)] * in_chans
    return [float(v) for v in mean], [float(v) for v in std]


def build_backbone(
    name: str,
    *,
    in_chans: int,
    image_size: int,
    pretrained: bool = False,
    checkpoint: str = "",
    kwargs: dict | None = None,
) -> tuple[nn.Module, ModelSpec]:
    """A timm model for ``harden``: by name (random or hub weights) or with a local checkpoint.

    The model's classifier keeps the size it was trained with (hub: its own classes; checkpoint: the
    size of its classifier weight; random weights: none); whether it fits the data is decided by the caller.
    """
    kwargs = dict(kwargs or {})
    check_timm_name(name)
    hub_cfg = hub_config(name)
    if checkpoint:
        sd = load_weights(checkpoint)
        key = hub_cfg.get("classifier") if hub_cfg else None
        w = sd.get(f"{key}.weight") if key else None
        num_classes = int(w.shape[0]) if isinstance(w, torch.Tensor) and w.ndim == 2 else 0
        model = create_timm(name, num_classes=num_classes, in_chans=in_chans, kwargs=kwargs)
        missing, unexpected = model.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise ModelFileError(
                f"checkpoint {checkpoint} does not fit timm {name}: {len(missing)} missing keys "
                f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
            )
    elif pretrained:
        model = create_timm(name, num_classes=None, in_chans=in_chans, pretrained=True, kwargs=kwargs)
    else:  # random weights: a feature extractor only; a random head is no baseline, harden fits a probe
        model = create_timm(name, num_classes=0, in_chans=in_chans, kwargs=kwargs)
    mean, std = normalization(hub_cfg if pretrained or checkpoint else {}, in_chans)
    classes: list[str] = []  # unknown: only `sodef pretrain` files name the classes their head was trained for
    spec = ModelSpec(
        timm_name=name,
        num_classes=int(getattr(model, "num_classes", 0)),
        in_chans=in_chans,
        input_size=[in_chans, image_size, image_size],
        mean=mean,
        std=std,
        classes=classes,
        model_kwargs=kwargs,
    )
    return model, spec


def rebuild(spec: ModelSpec, state: dict[str, torch.Tensor]) -> nn.Module:
    """The timm model of ``spec`` with ``state`` loaded; sizes from metadata are checked before allocating."""
    # the sizes come from a file: build on the meta device first (no memory) and compare every shape with the
    # file's tensors, so forged metadata cannot make us allocate more than the file holds
    expected = _meta_shapes(
        lambda: create_timm(
            spec.timm_name, num_classes=spec.num_classes, in_chans=spec.in_chans, kwargs=spec.model_kwargs
        )
    )
    if expected is not None:
        check_shapes(expected, state, f"weights do not fit timm {spec.timm_name}")
    model = create_timm(spec.timm_name, num_classes=spec.num_classes, in_chans=spec.in_chans, kwargs=spec.model_kwargs)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches raise even with strict=False
        raise ModelFileError(f"weights do not fit timm {spec.timm_name}: {str(exc).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise ModelFileError(
            f"weights do not fit timm {spec.timm_name}: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return model


def _meta_shapes(make) -> dict[str, torch.Size] | None:
    """Tensor shapes of the module ``make()`` builds, built on the meta device; None where that fails."""
    try:
        with torch.device("meta"):
            return {k: v.shape for k, v in make().state_dict().items()}
    except Exception:  # noqa: BLE001 - some models cannot be built on meta; the real build checks then
        return None


def check_shapes(expected: dict[str, torch.Size], state: dict[str, torch.Tensor], what: str) -> None:
    """``ModelFileError`` unless ``state`` holds exactly the tensors of ``expected``, shape for shape."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {list(state[k].shape)} (expected {list(v)})"
        for k, v in expected.items()
        if k in state and state[k].shape != v
    ]
    if missing or unexpected or wrong:
        raise ModelFileError(f"{what}: missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shapes {wrong[:3]}")


def split_state(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    n = len(prefix)
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix)}


def stem(normalize: nn.Module, backbone: nn.Module, x: torch.Tensor, logits: bool) -> torch.Tensor:
    """[0,1] images -> the backbone's logits (``logits``) or its unpooled ``forward_features`` (eager, or traced)."""
    x = normalize(x)
    return backbone(x) if logits else backbone.forward_features(x)


class ImageModel(nn.Module):
    """[0,1] images -> normalize -> a timm backbone: what every classifier here shares.

    :meth:`fast_cpu` turns on the CPU fast paths for a model that is only evaluated from then on (``sodef
    attack``): channels-last weights (oneDNN's faster convolutions, gradient passes included) and traced
    no-gradient forwards (``tracing.py``; a weight changed in place rebuilds the trace).
    """

    def __init__(self, backbone: nn.Module, spec: ModelSpec):
        super().__init__()
        self.normalize = Normalize(spec.mean, spec.std)
        self.backbone = backbone
        self.spec = spec
        self._traced: dict[bool, Any] = {}  # logits? -> TracedFeatures; empty: eager always

    def fast_cpu(self, on: bool = True) -> None:
        """CPU fast paths on (or off: contiguous weights, eager forwards). Results change by float rounding only."""
        from .tracing import TracedFeatures

        self.backbone.to(memory_format=torch.channels_last if on else torch.contiguous_format)
        self._traced = {}
        if on:
            self._traced = {flag: TracedFeatures(self.normalize, self.backbone, logits=flag) for flag in (False, True)}

    def inference_status(self) -> str:
        """What the traced no-gradient path did: ``off`` (not asked for), or its status (``on ...`` / ``off: why``)."""
        if not self._traced:
            return "off"
        used = [t for t in self._traced.values() if t.disabled] or [t for t in self._traced.values() if t.used]
        return used[0].status if used else "on (no forward without gradients ran)"

    def _stem(self, x: torch.Tensor, logits: bool) -> torch.Tensor:
        traced = self._traced.get(logits)
        if traced is not None and traced.applies(x):
            out = traced(x)
            if out is not None:
                return out
        return stem(self.normalize, self.backbone, x, logits)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled pre-logits features (timm's ``forward_head(..., pre_logits=True)``)."""
        return self.backbone.forward_head(self._stem(x, logits=False), pre_logits=True)


class BaseClassifier(ImageModel):
    """[0,1] images -> logits of the backbone with its own head, or with a linear probe on its features."""

    def __init__(self, backbone: nn.Module, spec: ModelSpec, probe: nn.Linear | None = None):
        super().__init__(backbone, spec)
        self.probe = probe

    def classify_features(self, h: torch.Tensor) -> torch.Tensor:
        if self.probe is not None:
            return self.probe(h)
        return self.backbone.get_classifier()(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.probe is not None:
            return self.probe(self.features(x))
        return self._stem(x, logits=True)
