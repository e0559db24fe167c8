"""Typed, frozen configuration for every stage, and recipe loading.

Precedence is written down once, here: dataclass defaults < recipe TOML < command-line flags
(including ``--set section.key=value``). The resolved config is saved with every output.

A recipe is TOML data whose top-level keys and tables mirror the dataclasses below, e.g.::

    seed = 0
    [head]
    solver = "rk4"
    [phase2]
    epochs = 5

Unknown keys are rejected with the list of valid ones.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError
from .inputs import check_count
from .registry import (
    ADAPTIVE_SOLVERS,
    FIXED_SOLVERS,
    HEAD_KINDS,
    NORMS,
    ODEFUNCS,
    PRETRAIN_ATTACKS,
    SOLVERS,
    TRAINING_ATTACKS,
    or_list,
)

__all__ = [
    "HeadConfig",
    "RegularizerConfig",
    "Phase1Config",
    "Phase2Config",
    "Phase3Config",
    "ProbeConfig",
    "AdversarialConfig",
    "InferenceConfig",
    "CheckConfig",
    "HardenConfig",
    "PretrainConfig",
    "load_recipe",
    "resolve",
    "to_dict",
    "from_dict",
    "parse_fraction",
    "ADAPTIVE_SOLVERS",
    "FIXED_SOLVERS",
]


@dataclass(frozen=True)
class HeadConfig:
    """The SODEF head: projection -> ODE -> linear classifier."""

    dim: int = 64  # n, the ODE state size
    odefunc: str = "sin"  # "sin": f(z)=sin(-(Wz+b)); "sin3": 3 layers n->hidden->hidden->n
    hidden: int = 256  # width of the "sin3" family
    t1: float = 5.0  # integration time T
    solver: str = "dopri5"
    rtol: float = 1e-3
    atol: float = 1e-3
    step_size: float = 0.5  # fixed-step solvers, and the fixed-step attack copy
    adjoint: bool = True  # odeint_adjoint in training (O(1) memory, inexact gradients)
    # "sodef": projection -> ODE -> classifier; "linear": the model's own classifier or a linear probe; "auto" (the
    # default): linear when training adversarially (adversarial.attack != none), sodef otherwise (the paper's method)
    kind: str = "auto"


@dataclass(frozen=True)
class RegularizerConfig:
    """Stability terms. ``form="code"`` is the released code's loss, ``"paper"`` eq. 7 of the paper."""

    form: str = "code"  # "code" | "paper"
    convention: str = "column"  # diagonal dominance over "column" (code) or "row" (paper) sums
    # code form (the released SODEF code): w_f*mean((e_f f)^2) + w_d*mean exp(e(J_ii+tau)) + w_o*mean exp(e_o(off-|J_jj|+tau_o))
    weight_f: float = 0.1
    weight_diag: float = 10.0
    weight_offdiag: float = 0.0
    exponent: float = 1.0
    trans: float = 1.0
    exponent_off: float = 0.1
    trans_off: float = 1.0
    exponent_f: float = 50.0
    # paper form (eq. 7 of the paper): a1*||f|| + a2*exp(sum_i J_ii) + a3*exp(sum_i(-|J_ii| + sum_j!=i |J_ij|))
    alpha_f: float = 1.0
    alpha_diag: float = 0.05
    alpha_offdiag: float = 0.05
    jacobian_samples: int = 0  # points per batch used for Jacobian terms; 0 = all (the code used 16)


ORTHOGONAL_MAPS = ("cayley", "householder", "matrix_exp")  # torch.nn.utils.parametrizations.orthogonal


@dataclass(frozen=True)
class Phase1Config:
    """Projection against the fixed simplex classifier V, cross-entropy, on cached features."""

    epochs: int = 4
    batch_size: int = 128
    lr: float = 0.1
    eps: float = 1e-2
    amsgrad: bool = True
    # torch's orthogonal parametrization of the projection while it trains (then a plain weight): "cayley" costs a
    # quarter of "householder" (torch's default for a non-square matrix) per step; the released code used geotorch
    orthogonal_map: str = "cayley"


@dataclass(frozen=True)
class Phase2Config:
    """Regularizers alone on cached z(0); no integration (as the released code)."""

    epochs: int = 20
    batch_size: int = 128  # the released code: 32 (recipes/paper-cifar10.toml); 128 reaches the same stability in a quarter of the steps
    lr: float = 1e-2
    eps: float = 1e-3
    amsgrad: bool = True


@dataclass(frozen=True)
class Phase3Config:
    """New linear classifier, f fine-tuned through the integrated ODE, mixup."""

    epochs: int = 10
    batch_size: int = 128
    lr_fc: float = 1e-2
    eps_fc: float = 1e-4
    lr_f: float = 1e-5
    eps_f: float = 1e-6
    amsgrad: bool = True
    mixup_alpha: float = 1.0
    train_odefunc: bool = True
    # f's gradients through odeint_adjoint when head.adjoint (the released code: inexact); false = exact
    adjoint: bool = False
    # the solver phase 3 trains through: a fixed-step one at head.step_size with exact backprop (fast, honest
    # gradients; midpoint: 2 evaluations a step, the same test accuracy as RK4's 4 on CIFAR-10), or "" for the head's
    # own solver (the released code: dopri5, recipes/paper-cifar10.toml)
    solver: str = "midpoint"


@dataclass(frozen=True)
class ProbeConfig:
    """Linear probe fitted on the same cached features when the backbone's own head does not fit."""

    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-2
    weight_decay: float = 0.0


@dataclass(frozen=True)
class AdversarialConfig:
    """Adversarial training in image space after the head is fitted (``sodef_cli/adversarial.py``).

    The defaults are the default path of ``sodef harden``: adversarial fine-tuning of the model's own classifier and
    every stage but the stem (``benchmarks/hardening.py`` chose them). ``attack = "none"`` skips it (the paper's
    method: a SODEF head on the frozen extractor). Gradients through a SODEF head use the fixed-step ``ode_solver``
    with plain backprop (never the adjoint), in training and in its attack alike.
    """

    attack: str = "nfgsm"  # none | fgsm | nfgsm | pgd | trades
    eps: float = 8 / 255  # Linf radius of the training attack
    eps_ramp: float = 0.0  # epochs over which the training attack's eps (and step) grows linearly from 0 (0 = off)
    step: float = 0.0  # attack step; 0 = 1.25 eps (fgsm), eps (nfgsm) or 2.5 eps / steps (pgd, trades)
    steps: int = 5  # pgd / trades iterations
    beta: float = 6.0  # trades: weight of the KL term
    stages: int = (
        -1
    )  # last N backbone stages trained with the head (timm's grouping; the stem is the first); -1: all but the stem
    epochs: int = 8
    batch_size: int = 128
    lr: float = 0.05  # peak of a one-cycle schedule (linear warm-up, linear decay), SGD + Nesterov
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup: float = 0.3  # fraction of the steps spent warming up
    ema: float = 0.999  # weight averaging: decay of an exponential moving average of the trained weights (0 = off)
    augment: bool = True  # random crop + flip
    select_n: int = 1000  # validation images for model selection
    select_steps: int = 10  # PGD steps of the selection attack
    max_clean_drop: float = 1.0  # selection: epochs whose val clean accuracy is more than this many points below the start's are not kept (< 0 = off)
    ode_solver: str = "rk4"  # fixed-step solver used whenever training differentiates through the ODE
    stability_weight: float = 1.0  # SODEF head: weight of the stability regularizers during adversarial training
    lr_ode: float = (
        0.01  # SODEF head: the ODE function's learning rate as a fraction of lr (phase 3 also keeps f's small)
    )
    grad_clip: float = (
        0.0  # clip the gradient norm of the trained parameters (0 = off); the SODEF head's exp terms need it
    )


@dataclass(frozen=True)
class CheckConfig:
    """The hardening guard: the quick adaptive suite on held-out validation images."""

    enabled: bool = True
    n: int = 256
    norm: str = "Linf"
    eps: float = 8 / 255
    steps: int = 50  # APGD-CE iterations of the check's attacks
    batch_size: int = 128
    require_gain: bool = False  # exit 1 on a significant loss (McNemar p < 0.05)
    require_significant_gain: bool = False  # exit 1 on anything but a significant gain


@dataclass(frozen=True)
class InferenceConfig:
    """The solver the hardened model ships with (``sodef_cli/inference_solver.py``)."""

    solver: str = "auto"  # auto: the cheapest fixed-step solver agreeing with head.solver; declared: head.solver itself
    agreement: float = 0.995  # least share of validation predictions equal to head.solver's
    accuracy_tolerance: float = 0.2  # most validation accuracy (points) it may differ by


@dataclass(frozen=True)
class HardenConfig:
    model: str = ""  # timm name, or a file made by `sodef pretrain`
    checkpoint: str = ""  # optional weights (.safetensors, or .pth loaded weights_only)
    pretrained: bool = False  # hub weights for a timm name
    data: str = "demo"
    data_dir: str = ""
    download: bool = False
    image_size: int = 0  # 0 = the data's own size
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"
    feature_batch_size: int = 256
    head: HeadConfig = field(default_factory=HeadConfig)
    regularizer: RegularizerConfig = field(default_factory=RegularizerConfig)
    phase1: Phase1Config = field(default_factory=Phase1Config)
    phase2: Phase2Config = field(default_factory=Phase2Config)
    phase3: Phase3Config = field(default_factory=Phase3Config)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    check: CheckConfig = field(default_factory=CheckConfig)


@dataclass(frozen=True)
class PretrainConfig:
    model: str = ""
    data: str = "demo"
    data_dir: str = ""
    download: bool = False
    image_size: int = 0
    pretrained: bool = False
    model_kwargs: dict = field(default_factory=dict)  # extra timm.create_model kwargs
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1  # peak of the one-cycle schedule
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    augment: bool = True  # random crop (pad 4) + horizontal flip
    adversarial: str = "none"  # "none" | "fgsm" (fast adversarial training, random start)
    adv_eps: float = 8 / 255
    adv_alpha: float = 10 / 255
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"


def parse_fraction(text: str | float) -> float:
    """Parse ``"8/255"``, ``"0.031"`` or a number into a float."""
    if isinstance(text, (int, float)):
        return float(text)
    s = str(text).strip()
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            return float(num) / float(den)
        return float(s)
    except (ValueError, ZeroDivisionError):
        raise UsageError(f"cannot read {text!r} as a number or a fraction like 8/255") from None


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, typ: Any, where: str) -> Any:
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise UsageError(f"{where} must be a table, got {value!r}")
        return from_dict(typ, value, where=where)
    origin = typing.get_origin(typ)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise UsageError(f"{where} must be true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise UsageError(f"{where} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UsageError(f"{where} must be an integer, got {value!r}")
    if typ is float:
        if isinstance(value, bool):
            raise UsageError(f"{where} must be a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            return parse_fraction(value)
        raise UsageError(f"{where} must be a number, got {value!r}")
    if typ is str:
        if isinstance(value, str):
            return value
        raise UsageError(f"{where} must be a string, got {value!r}")
    if typ is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise UsageError(f"{where} must be a table, got {value!r}")
    return value


def from_dict(cls: type, data: dict, *, where: str = "") -> Any:
    """Build dataclass ``cls`` from a (possibly partial) dict, rejecting unknown keys."""
    types_ = _field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        prefix = f"{where}." if where else ""
        raise UsageError(
            f"unknown key(s) {', '.join(prefix + k for k in unknown)}; valid keys: {', '.join(sorted(types_))}"
        )
    kwargs = {}
    for name, typ in types_.items():
        if name in data:
            kwargs[name] = _coerce(data[name], typ, f"{where}.{name}" if where else name)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def load_recipe(path: str | Path) -> dict:
    """Read a recipe TOML file into a plain dict (validated when merged by :func:`resolve`)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"recipe {p} does not exist")
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"recipe {p} is not valid TOML: {exc}") from None


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _dotted(overrides: dict[str, Any]) -> dict:
    nested: dict = {}
    for key, value in overrides.items():
        parts = key.split(".")
        cur = nested
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = value
    return nested


def parse_set_options(items: list[str] | None) -> dict[str, str]:
    """``["phase2.epochs=3", "head.solver=rk4"]`` -> ``{"phase2.epochs": "3", ...}``."""
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise UsageError(f"--set expects section.key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def resolve(cls: type, *, recipe: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Any:
    """defaults < recipe < overrides (dotted keys, ``None`` values ignored)."""
    data: dict = {}
    if recipe:
        data = load_recipe(recipe)
    flat = {k: v for k, v in (overrides or {}).items() if v is not None}
    data = _merge(data, _dotted(flat))
    cfg = from_dict(cls, data)
    if isinstance(cfg, HardenConfig) and cfg.head.kind == "auto":
        kind = "sodef" if cfg.adversarial.attack == "none" else "linear"
        cfg = dataclasses.replace(cfg, head=dataclasses.replace(cfg.head, kind=kind))
    validate(cfg)
    return cfg


def hardening_path(cfg: HardenConfig) -> str:
    """One sentence: which path `sodef harden` ran (the default, the paper's method, or another), and why the default
    is the default. The card, the guard's record and the summary print it."""
    a, d = cfg.adversarial, AdversarialConfig()
    if a.attack == "none":
        return (
            "the paper's method: a SODEF head fitted on the frozen extractor, no adversarial training "
            "(`--adv-attack none`); the default path is adversarial fine-tuning, which the hardening ablation "
            "measured to harden where this does not"
        )
    same = (a.attack, a.stages, a.epochs, a.select_n, a.max_clean_drop) == (
        d.attack,
        d.stages,
        d.epochs,
        d.select_n,
        d.max_clean_drop,
    )
    head = "the model's own classifier" if cfg.head.kind == "linear" else "a SODEF head"
    what = f"adversarial fine-tuning of {head} and " + (
        "every backbone stage but the stem" if a.stages == -1 else f"the last {a.stages} backbone stage(s)"
    )
    if same and cfg.head.kind == "linear":
        return (
            f"the default path: {what} ({a.attack}), chosen by the hardening ablation (README, benchmarks/hardening.py)"
        )
    return f"{what} ({a.attack}, {a.epochs} epochs): not the default path"


def _validate_adversarial(cfg: HardenConfig) -> None:
    a = cfg.adversarial
    if a.attack not in TRAINING_ATTACKS:
        raise UsageError(f"adversarial.attack {a.attack!r} unknown; choose one of {', '.join(TRAINING_ATTACKS)}")
    if a.attack == "none":
        trained = or_list(t for t in TRAINING_ATTACKS if t != "none")
        if cfg.head.kind == "linear":
            raise UsageError(
                "head.kind = linear trains a linear head adversarially; choose a training attack "
                f"(adversarial.attack = {trained})"
            )
        if a.stages > 0:
            raise UsageError(f"adversarial.stages needs a training attack (adversarial.attack = {trained})")
        return
    if not 0.0 < a.eps <= 1.0 or a.step < 0 or a.steps < 1 or a.beta < 0:
        raise UsageError("adversarial.eps must be in (0, 1], step >= 0, steps >= 1 and beta >= 0")
    if not 0.0 <= a.eps_ramp <= a.epochs:
        raise UsageError(f"adversarial.eps_ramp must be in [0, epochs = {a.epochs}] (epochs), got {a.eps_ramp}")
    if a.epochs < 1 or a.batch_size < 1 or a.lr <= 0 or not 0.0 <= a.warmup < 1.0 or not 0.0 <= a.ema < 1.0:
        raise UsageError("adversarial.epochs, batch_size must be >= 1, lr > 0, warmup in [0, 1) and ema in [0, 1)")
    if (
        a.stages < -1
        or a.select_n < 1
        or a.select_steps < 1
        or a.stability_weight < 0
        or a.lr_ode < 0
        or a.grad_clip < 0
    ):
        raise UsageError(
            "adversarial.stages must be >= 0 (or -1: all but the stem), select_n and select_steps >= 1, stability_weight, lr_ode and "
            "grad_clip >= 0"
        )
    fixed = [name for name, solver in SOLVERS.items() if not solver.adaptive]
    if cfg.head.kind == "sodef" and a.ode_solver not in fixed:
        raise UsageError(
            f"adversarial training differentiates through the ODE with a fixed-step solver, but adversarial.ode_solver is "
            f"{a.ode_solver!r}; choose one of {', '.join(fixed)}"
        )


def validate(cfg: Any) -> None:
    """Value checks that a type alone does not express."""
    if isinstance(cfg, HardenConfig):
        h = cfg.head
        SOLVERS.require(h.solver, "head.solver")
        ODEFUNCS.require(h.odefunc, "head.odefunc")
        if h.dim < 2 or h.t1 <= 0 or h.step_size <= 0 or h.rtol <= 0 or h.atol <= 0:
            raise UsageError("head.dim must be >= 2 and head.t1, step_size, rtol, atol must be > 0")
        if cfg.regularizer.form not in ("code", "paper"):
            raise UsageError("regularizer.form must be 'code' or 'paper'")
        if cfg.regularizer.convention not in ("column", "row"):
            raise UsageError("regularizer.convention must be 'column' or 'row'")
        if not 0.0 < cfg.val_fraction < 0.9:
            raise UsageError("val_fraction must be in (0, 0.9)")
        for name in ("phase1", "phase2", "phase3", "probe"):
            ph = getattr(cfg, name)
            if ph.epochs < 0 or ph.batch_size < 1:
                raise UsageError(f"{name}.epochs must be >= 0 and {name}.batch_size >= 1")
        if cfg.phase1.orthogonal_map not in ORTHOGONAL_MAPS:
            raise UsageError(f"phase1.orthogonal_map must be {or_list(ORTHOGONAL_MAPS)}")
        if cfg.check.norm not in NORMS or not 0.0 <= cfg.check.eps <= 1.0:
            raise UsageError(f"check.norm must be {or_list(NORMS)} and check.eps in [0, 1]")
        for key in ("n", "batch_size", "steps"):
            check_count(getattr(cfg.check, key), f"check.{key}")
        if h.kind not in HEAD_KINDS:
            raise UsageError(f"head.kind {h.kind!r} unknown; choose {or_list(HEAD_KINDS)}")
        if cfg.phase3.solver and cfg.phase3.solver not in FIXED_SOLVERS:
            raise UsageError(
                f"phase3.solver must be a fixed-step solver ({', '.join(FIXED_SOLVERS)}) or '' for head.solver, "
                f"got {cfg.phase3.solver!r}"
            )
        inf = cfg.inference
        if inf.solver not in ("auto", "declared") or not 0.0 < inf.agreement <= 1.0 or inf.accuracy_tolerance < 0:
            raise UsageError(
                "inference.solver must be 'auto' or 'declared', inference.agreement in (0, 1] and "
                "inference.accuracy_tolerance >= 0"
            )
        _validate_adversarial(cfg)
    if isinstance(cfg, PretrainConfig):
        if not cfg.model:
            raise UsageError('no model given: pass a timm name (e.g. resnet18) or a recipe with model = "NAME"')
        if cfg.adversarial not in PRETRAIN_ATTACKS:
            raise UsageError(f"adversarial must be {or_list(PRETRAIN_ATTACKS, quote=True)}")
        if cfg.epochs < 1 or cfg.batch_size < 1:
            raise UsageError("epochs and batch_size must be >= 1")
        if not 0.0 <= cfg.adv_eps <= 1.0:
            raise UsageError("adv_eps must be in [0, 1]")
        if not 0.0 < cfg.val_fraction < 0.9:
            raise UsageError("val_fraction must be in (0, 0.9)")
