"""This tool's model files: written by ``save_base`` / ``save_hardened``, read by ``load_hardened`` and
``load_base`` (the public API), ``load_pair``, ``load_base_file`` and ``hardened_meta``.

The format names and versions come from ``io.py``; the tensors of each format are laid out here, once:

- base (``io.BASE_FORMAT``): ``backbone.*``, the timm model with its own classifier.
- hardened (``io.HARDENED_FORMAT``): ``backbone.*`` the original frozen backbone, ``probe.*`` the same-features
  linear baseline (when the backbone's own classifier does not fit the classes), ``head.*`` the SODEF head,
  ``tuned.*`` the backbone tensors adversarial training changed, ``linear.*`` a trained linear head.

The loaders return an ``nn.Module`` in eval mode, every parameter frozen, mapping [0,1] images (N,C,H,W) to
logits (N, classes); normalization is inside the model.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .backbone import BaseClassifier, ModelSpec, _meta_shapes, check_shapes, freeze, rebuild, split_state
from .config import FIXED_SOLVERS, HeadConfig, from_dict
from .errors import ModelError, ModelFileError, UsageError
from .head import HardenedClassifier, SODEFHead
from .inputs import guard_inputs
from .io import (
    BASE_FORMAT,
    FIRST_FORMAT_VERSION,
    FORMAT_VERSION,
    HARDENED_FORMAT,
    load_tensors,
    read_metadata,
    save_model_file,
)

__all__ = [
    "load_hardened",
    "load_base",
    "load_pair",
    "load_base_file",
    "hardened_meta",
    "save_base",
    "save_hardened",
    "Candidate",
    "describe_model",
    "check_comparable",
    "load_candidate",
    "describe_hardened",
]


def save_base(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """Write a base file: the timm ``model`` (``backbone.*``) with ``meta`` stamped as this version's base format."""
    save_model_file(
        path,
        {f"backbone.{k}": v for k, v in model.state_dict().items()},
        {**meta, "format": BASE_FORMAT, "format_version": FIRST_FORMAT_VERSION},
    )


def save_hardened(
    path: str | Path,
    *,
    backbone: nn.Module,
    meta: dict[str, Any],
    head: SODEFHead | None = None,
    probe: nn.Linear | None = None,
    tuned: dict[str, torch.Tensor] | None = None,
    linear: nn.Linear | None = None,
) -> None:
    """Write a hardened file: the original ``backbone``, the SODEF ``head`` (its projection stored as a plain
    weight), the baseline ``probe``, the backbone tensors adversarial training changed (``tuned``, by state-dict
    name) and a trained ``linear`` head; ``meta`` is stamped with the format.

    A file without a SODEF head, tuned tensors or a linear head is written as version 1, which older readers
    read correctly; version 2 only where an older reader would silently rebuild the wrong model.
    """
    tensors = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    if head is not None:
        tensors.update({f"head.{k}": v for k, v in head.export_state().items()})
    if probe is not None:
        tensors.update({f"probe.{k}": v for k, v in probe.state_dict().items()})
    tensors.update({f"tuned.{k}": v for k, v in (tuned or {}).items()})
    if linear is not None:
        tensors.update({f"linear.{k}": v for k, v in linear.state_dict().items()})
    new_layout = bool(tuned) or linear is not None or head is None
    version = FORMAT_VERSION if new_layout else FIRST_FORMAT_VERSION
    save_model_file(path, tensors, {**meta, "format": HARDENED_FORMAT, "format_version": version})


def load_base_file(path: str | Path) -> tuple[nn.Module, ModelSpec, dict]:
    """Rebuild the timm model of a base file (``sodef pretrain``). Returns (model, spec, metadata)."""
    meta = read_metadata(path, expect=BASE_FORMAT)
    spec = ModelSpec.from_dict(meta.get("backbone", {}))
    return rebuild(spec, split_state(load_tensors(path), "backbone.")), spec, meta


def hardened_meta(path: str | Path) -> dict:
    """The metadata of a hardened file, its fields checked (commands read them before loading the model)."""
    return _checked(read_metadata(path, expect=HARDENED_FORMAT), path)


def _checked(meta: dict, path: str | Path) -> dict:
    """``meta`` once the fields the loaders and commands use are checked (``ModelFileError`` otherwise)."""
    ModelSpec.from_dict(meta.get("backbone", {}))
    if meta["format"] != HARDENED_FORMAT:
        return meta
    _head_config(meta)
    classes, k, d = meta.get("classes"), meta.get("num_classes"), meta.get("feature_dim")
    if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise ModelFileError(f"{path}: hardened metadata has no list of class names")
    if not (isinstance(k, int) and k == len(classes) >= 2 and isinstance(d, int) and d >= 1):
        raise ModelFileError(
            f"{path}: hardened metadata has impossible sizes (num_classes {k!r}, {len(classes)} classes, feature_dim {d!r})"
        )
    return meta


def _head_config(meta: dict) -> HeadConfig:
    try:
        return from_dict(HeadConfig, meta["config"]["head"], where="head")
    except (KeyError, TypeError) as exc:
        raise ModelFileError(f"hardened metadata has no usable head config ({exc})") from None
    except Exception as exc:
        raise ModelFileError(f"hardened metadata has an invalid head config ({exc})") from None


def _build(
    path: str | Path, device: str | torch.device, meta: dict | None = None, solver: str = "shipped"
) -> tuple[BaseClassifier, HardenedClassifier | None, dict]:
    """(base, hardened or None, metadata); ``meta``: the file's metadata already read and checked (else read here);
    ``solver``: see :func:`load_pair`."""
    meta = meta if meta is not None else _checked(read_metadata(path), path)
    tensors = load_tensors(path)
    spec = ModelSpec.from_dict(meta.get("backbone", {}))
    backbone = freeze(rebuild(spec, split_state(tensors, "backbone.")))
    probe = _linear(path, split_state(tensors, "probe."), "probe")
    base = BaseClassifier(backbone, spec, probe)
    hardened = None
    if meta["format"] == HARDENED_FORMAT:
        hardened = _hardened(path, meta, tensors, backbone, spec, solver)
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


def shipped_head_config(meta: dict, solver: str = "shipped") -> HeadConfig:
    """The head config a hardened model is built with: ``head.solver`` as declared, or (``solver="shipped"``, the
    default) the fixed-step solver ``harden`` chose for inference (``meta["inference"]["chosen"]``) when there is one."""
    if solver not in ("shipped", "declared"):
        raise UsageError(f"solver must be 'shipped' or 'declared', got {solver!r}")
    cfg = _head_config(meta)
    record = meta.get("inference")
    if record is not None and not isinstance(record, dict):
        raise ModelFileError("hardened metadata has an invalid inference record")
    chosen = (record or {}).get("chosen")
    if solver == "declared" or not chosen:
        return cfg
    try:
        step = float(chosen["step_size"])
        if chosen["solver"] not in FIXED_SOLVERS or not step > 0:
            raise ValueError(chosen["solver"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"hardened metadata has an invalid inference solver ({exc})") from None
    return dataclasses.replace(cfg, solver=chosen["solver"], step_size=step, adjoint=False)


def _hardened(
    path, meta: dict, tensors: dict[str, torch.Tensor], backbone: nn.Module, spec: ModelSpec, solver: str = "shipped"
) -> nn.Module:
    """The hardened model: the original backbone with its tuned stages (``tuned.*``, when adversarial training
    changed them) under a SODEF head or a linear head (the backbone's own classifier, or ``linear.*``)."""
    tuned = split_state(tensors, "tuned.")
    if tuned:
        own = backbone.state_dict()
        check_shapes(
            {k: own[k].shape for k in tuned if k in own},
            tuned,
            f"{path}: tuned backbone tensors do not fit the backbone",
        )
        backbone = copy.deepcopy(backbone)  # the base keeps the original weights, bit for bit
        state = backbone.state_dict()  # tensors shared with the copy's parameters and buffers
        with torch.no_grad():
            for k, v in tuned.items():
                state[k].copy_(v)
    cfg = shipped_head_config(meta, solver)
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


_LINEAR_HEADS = {"own": "the base's own classifier", "probe": "a linear probe on the base's features"}


def describe_hardened(meta: dict) -> dict[str, Any]:
    """What a hardened file holds, from its metadata alone: the head it is built with and what adversarial
    training changed. Every report and card describes a model from this, never from config sections that did not
    apply (a linear-head file keeps the recipe's ODE settings in ``config.head`` though it has no ODE).

    Returns:
        ``head``: "sodef" or "linear"; ``linear``: for a linear head, "own" (the base's own classifier) or "probe";
        ``ode``: the ODE as shipped (odefunc, dim, t1, solver, step_size; ``solver`` the fixed-step one chosen for
        inference where ``harden`` chose one) or None; ``adversarial``: {stages, attack, eps, tensors} or None;
        ``text``: one line, e.g. "linear head (the base's own classifier) + last 4 stages trained adversarially".
    """
    cfg = shipped_head_config(meta)
    adv = (meta.get("metrics") or {}).get("adversarial")
    ode = None
    if cfg.kind == "linear":
        linear = "own" if meta.get("base_classifier") == "own" else "probe"
        text = f"linear head ({_LINEAR_HEADS[linear]})"
    else:
        linear = None
        ode = {k: getattr(cfg, k) for k in ("odefunc", "dim", "t1", "solver", "step_size")}
        step = f" step {cfg.step_size:g}" if cfg.solver in FIXED_SOLVERS else ""
        text = f"SODEF head ({cfg.odefunc} ODE, dim {cfg.dim}, {cfg.solver} solver{step}, T={cfg.t1:g})"
    trained = None
    if isinstance(adv, dict):
        trained = {
            "stages": int(adv.get("stages") or 0),
            "attack": adv.get("attack"),
            "eps": adv.get("eps"),
            "tensors": len(adv.get("trained_parameters") or []),
            "tuned_backbone_tensors": len(adv.get("tuned_backbone_state") or []),
        }
        stages = trained["stages"]
        text += (f" + last {stages} stage{'s' if stages > 1 else ''}" if stages else "") + " trained adversarially"
        if adv.get("best_epoch") == 0:  # no epoch beat the start: the file holds the weights as they were
            text += " (no epoch kept: the weights before training)"
            trained["kept_start"] = True
    elif cfg.kind == "sodef":
        text += " fitted on the frozen backbone's features"
    else:
        text += ", nothing trained"
    return {"head": cfg.kind, "linear": linear, "ode": ode, "adversarial": trained, "text": text}


def load_pair(
    path: str | Path, device: str | torch.device = "cpu", *, meta: dict | None = None, solver: str = "shipped"
) -> tuple[BaseClassifier, HardenedClassifier, dict]:
    """(base, hardened, metadata) from one hardened file; the two share the backbone unless adversarial training
    tuned some of its stages (then the base keeps the original weights). ``meta``: the file's metadata as
    :func:`describe_model` read and checked it (not read again); None reads it. ``solver``: ``"shipped"`` (the
    fixed-step solver chosen for inference at the end of ``harden``, when it chose one) or ``"declared"``
    (``head.solver`` as configured, e.g. dopri5)."""
    base, hardened, meta = _build(path, device, meta, solver)
    if hardened is None:
        raise ModelFileError(f"{path} is a base model file (from `sodef pretrain`), not a hardened one")
    return base, hardened, meta


def load_hardened(
    path: str | Path, device: str | torch.device = "cpu", *, solver: str = "shipped"
) -> HardenedClassifier:
    """The hardened classifier stored in a file written by ``sodef harden``; wrong inputs raise ValueError.
    ``solver``: as in :func:`load_pair`."""
    model = load_pair(path, device, solver=solver)[1]
    return guard_inputs(model, model.spec.input_size)


def load_base(path: str | Path, device: str | torch.device = "cpu") -> BaseClassifier:
    """The base classifier of a ``sodef pretrain`` file, or the same-features baseline of a hardened file;
    wrong inputs raise ValueError."""
    model = _build(path, device)[0]
    return guard_inputs(model, model.spec.input_size)


# ----------------------------------------------------------------------------------------------------
# any model for ``sodef attack MODEL [MODEL ...]``


@dataclass
class Candidate:
    """One model of a ``sodef attack`` run, with what its report needs to say about it.

    ``own_base`` is the base classifier of a hardened file (its default transfer source, as with one file);
    ``fixed_step`` the step of the attacks' fixed-step RK4 copy when the model has an ODE.
    """

    label: str
    model: nn.Module
    desc: dict[str, Any]
    own_base: nn.Module | None = None
    fixed_step: float | None = None
    classes: list[str] = field(default_factory=list)


def is_file_arg(arg: str) -> bool:
    """Whether a MODEL argument names a file (by its suffix, or because it exists) rather than a timm name."""
    p = Path(arg)
    return p.suffix in (".safetensors", ".pth", ".pt", ".bin") or p.exists()


def describe_model(arg: str) -> dict[str, Any]:
    """What a MODEL argument is, from metadata only (nothing loaded): kind ("hardened", "base" or "timm"),
    input size and classes where a file records them. ``ModelFileError``/``ModelError`` for what is no model."""
    if is_file_arg(arg):
        if Path(arg).suffix in (".pth", ".pt", ".bin"):
            raise ModelFileError(
                f"{arg}: a model file must be a safetensors file made by `sodef pretrain` or `sodef harden`; "
                "for other weights pass the timm name and --checkpoint FILE"
            )
        meta = _checked(read_metadata(arg), arg)
        spec = meta["backbone"]
        kind = "hardened" if meta["format"] == HARDENED_FORMAT else "base"
        classes = meta.get("classes") if kind == "hardened" else spec.get("classes")
        return {
            "kind": kind,
            "input_size": [int(v) for v in spec["input_size"]],
            "in_chans": int(spec["in_chans"]),
            "classes": list(classes or []),
            "num_classes": len(classes) if classes else int(spec.get("num_classes", 0)),
            "meta": meta,
        }
    from .backbone import check_timm_name

    check_timm_name(arg)  # ModelError with close names for a typo
    return {"kind": "timm", "input_size": None, "in_chans": None, "classes": [], "num_classes": None, "meta": None}


def check_comparable(args: list[str], infos: list[dict]) -> None:
    """Models of one run must take the same images and predict the same number of classes (from metadata).

    Raises:
        UsageError: different input sizes. ModelError: different numbers of classes.
    """
    sized = [(a, i) for a, i in zip(args, infos) if i["input_size"]]
    if len({tuple(i["input_size"]) for _, i in sized}) > 1:
        raise UsageError(
            "the models expect different input sizes ("
            + ", ".join(f"{a}: {i['input_size']}" for a, i in sized)
            + "); compare models made for the same images"
        )
    counted = [(a, i) for a, i in zip(args, infos) if i["num_classes"]]
    if len({i["num_classes"] for _, i in counted}) > 1:
        raise ModelError(
            "class-count mismatch between models ("
            + ", ".join(f"{a}: {i['num_classes']} classes" for a, i in counted)
            + ")"
        )


def load_candidate(
    arg: str, label: str, *, data, checkpoint: str = "", device: str | torch.device = "cpu", info: dict | None = None
) -> Candidate:
    """A model to attack from a hardened file, a ``sodef pretrain`` file, or a timm name with ``checkpoint``
    (``.safetensors``/``.pth`` weights) or a ``local-dir:``/``hf-hub:`` name (timm loads its weights).
    ``info``: what :func:`describe_model` already said about ``arg`` (its metadata is not read again).

    Raises:
        ModelError: a timm name without weights, or a classifier whose classes do not match the data.
    """
    info = info if info is not None else describe_model(arg)
    if info["kind"] in ("hardened", "base"):
        base, hardened, meta = _build(arg, device, info["meta"])
        from .head import has_ode
        from .io import sha256_file

        head = (meta.get("config") or {}).get("head") or {}
        desc = {
            "label": label,
            "arg": arg,
            "kind": info["kind"],
            "path": str(arg),
            "sha256": sha256_file(arg),
            "backbone": meta["backbone"].get("timm_name"),
            "input_size": meta["backbone"]["input_size"],
        }
        if hardened is not None:
            what = describe_hardened(meta)  # what the file holds, not the config sections that did not apply
            desc.update(
                head=head if what["ode"] else None,
                description=what,
                base_classifier=meta.get("base_classifier"),
                has_ode=has_ode(hardened),
            )
            step = head.get("step_size") if has_ode(hardened) else None
            return Candidate(
                label, hardened, desc, own_base=base, fixed_step=step, classes=list(meta.get("classes") or [])
            )
        if base.probe is None and int(base.spec.num_classes) < 2:
            raise ModelFileError(f"{arg}: the base file has no classifier head to attack")
        desc.update(
            head=None, base_classifier="own", has_ode=False, adversarial=(meta.get("config") or {}).get("adversarial")
        )
        return Candidate(label, base, desc, classes=list(base.spec.classes))
    name = arg
    hub = name.startswith(("hf-hub:", "hf_hub:", "local-dir:"))
    if not checkpoint and not hub:
        raise ModelError(
            f"{name}: a timm name needs its weights to be attacked: pass --checkpoint FILE "
            "(or a local-dir:/hf-hub: name); random weights are no model"
        )
    from .backbone import build_backbone

    model, spec = build_backbone(
        name,
        in_chans=data.channels,
        image_size=data.image_size,
        pretrained=hub and not checkpoint,
        checkpoint=checkpoint,
    )
    k = int(getattr(model, "num_classes", 0))
    if k != len(data.classes):
        raise ModelError(
            f"class-count mismatch: {name}"
            + (f" with {checkpoint}" if checkpoint else "")
            + f" classifies {k} classes, the data has {len(data.classes)}"
        )
    base = freeze(BaseClassifier(freeze(model), spec)).to(device)
    desc = {
        "label": label,
        "arg": arg,
        "kind": "timm",
        "path": str(checkpoint) if checkpoint else name,
        "backbone": name,
        "input_size": spec.input_size,
        "head": None,
        "base_classifier": "own",
        "has_ode": False,
    }
    if checkpoint:
        from .io import sha256_file

        desc["sha256"] = sha256_file(checkpoint)
        desc["checkpoint"] = str(checkpoint)
    return Candidate(label, base, desc, classes=list(data.classes))
