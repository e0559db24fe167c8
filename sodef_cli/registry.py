"""Registries: every family of names the tool accepts, declared once.

The command line builds its choices and help from here, config validation checks names against here,
and the code that does the work dispatches through here. This module imports no torch, so the CLI can
read it when it starts.

- ``NORMS``, ``FORMATS`` / ``FORMAT_SUFFIXES``, ``DEVICES``, ``HEAD_KINDS``, ``TRAINING_ATTACKS``,
  ``PRETRAIN_ATTACKS``, ``EXPORT_TARGETS``: constants.
- ``SOLVERS``: the torchdiffeq methods the head accepts, each adaptive (error control at ``head.rtol``/
  ``atol``) or fixed-step (steps of ``head.step_size``), with its order. Declared below as data.
- ``ODEFUNCS``: ODE function families, registered where they are implemented (``sodef_cli.head``) with
  ``@register_odefunc(name)``.
- ``ATTACK_KINDS``: what each kind of evaluation attack takes its gradients from. Declared below.
- ``ATTACKS``: evaluation attacks, registered where they are implemented (``sodef_cli.attacks``) with
  ``@register_attack(name, kind=..., norms=..., default_steps=..., ...)``: one declaration per attack
  carries its kind, norms, default budget, minimum number of classes and the settings its results record.
- ``SUITES``: named attack lists per model role (``base``, ``hardened``). Declared below as data.

A registry filled by a module that imports torch (``ODEFUNCS``, ``ATTACKS``) names that module and
imports it the first time it is read, so its names are complete whoever asks first.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .errors import UsageError

if TYPE_CHECKING:  # annotations only: the attack implementations import torch
    from .attacks import AttackParams, Target

__all__ = [
    "Registry",
    "NORMS",
    "FORMATS",
    "FORMAT_SUFFIXES",
    "DEVICES",
    "HEAD_KINDS",
    "TRAINING_ATTACKS",
    "PRETRAIN_ATTACKS",
    "EXPORT_TARGETS",
    "Solver",
    "SOLVERS",
    "ADAPTIVE_SOLVERS",
    "FIXED_SOLVERS",
    "ODEFUNCS",
    "register_odefunc",
    "AttackKind",
    "ATTACK_KINDS",
    "ADAPTIVE_KINDS",
    "ODE_KINDS",
    "AttackSpec",
    "ATTACKS",
    "register_attack",
    "n_targets",
    "Suite",
    "SUITES",
    "or_list",
]

T = TypeVar("T")


class Registry(MutableMapping[str, T], Generic[T]):
    """Named entries in declaration order.

    ``what`` names the family in error messages. ``source``: the module whose import registers the
    entries; it is imported on the first read. Declarations use :meth:`add` (a name declared twice is a
    programming error); item assignment exists for tests that swap an entry.
    """

    def __init__(self, what: str, *, source: str | None = None) -> None:
        self.what = what
        self._source = source
        self._entries: dict[str, T] = {}

    def _all(self) -> dict[str, T]:
        if self._source is not None:
            importlib.import_module(self._source)  # registers the entries; a dictionary look-up once imported
        return self._entries

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is declared twice")
        self._entries[name] = entry
        return entry

    def names(self) -> tuple[str, ...]:
        return tuple(self._all())

    def require(self, name: str, where: str) -> T:
        """The entry called ``name``, or a usage error naming the choices (``where``: the option or key)."""
        entries = self._all()
        if name not in entries:
            raise UsageError(f"{where} {name!r} unknown; choose one of {', '.join(entries)}")
        return entries[name]

    def __getitem__(self, name: str) -> T:
        return self._all()[name]

    def __setitem__(self, name: str, entry: T) -> None:
        self._entries[name] = entry

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def __contains__(self, name: object) -> bool:
        return name in self._all()

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {', '.join(self._all())})"


def or_list(names: Iterable[str], quote: bool = False) -> str:
    """``a, b or c`` (each quoted with ``quote``): a list of choices in a message."""
    items = [repr(n) if quote else n for n in names]
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


# ---------------------------------------------------------------------------------------------- constants

NORMS: tuple[str, ...] = ("Linf", "L2")  # threat models: the eps-ball of an attack
FORMATS: tuple[str, ...] = ("table", "markdown", "json", "html")  # `sodef report --format`; table is the terminal's
FORMAT_SUFFIXES: dict[str, str] = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".json": "json",
}
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
HEAD_KINDS: tuple[str, ...] = ("sodef", "linear")  # projection -> ODE -> classifier, or a linear classifier alone
TRAINING_ATTACKS: tuple[str, ...] = ("none", "fgsm", "nfgsm", "pgd", "trades")  # adversarial training of `sodef harden`
PRETRAIN_ATTACKS: tuple[str, ...] = ("none", "fgsm")  # adversarial training of `sodef pretrain`
EXPORT_TARGETS: tuple[str, ...] = ("timm", "hub", "onnx")  # `sodef export --to`: a timm state dict, a Hub folder, ONNX


# ------------------------------------------------------------------------------------------------ solvers


@dataclass(frozen=True)
class Solver:
    """A torchdiffeq method (``odeint(method=name)``)."""

    name: str
    adaptive: bool  # error-controlled steps at head.rtol/atol; else fixed steps of head.step_size
    order: int
    description: str


SOLVERS: Registry[Solver] = Registry("solver")
for _s in (
    Solver("dopri5", True, 5, "Dormand-Prince 5(4)"),
    Solver("dopri8", True, 8, "Dormand-Prince 8(7)"),
    Solver("bosh3", True, 3, "Bogacki-Shampine 3(2)"),
    Solver("fehlberg2", True, 2, "Runge-Kutta-Fehlberg 2(1)"),
    Solver("adaptive_heun", True, 2, "Heun-Euler 2(1)"),
    Solver("rk4", False, 4, "classic Runge-Kutta, 3/8 rule"),
    Solver("euler", False, 1, "explicit Euler"),
    Solver("midpoint", False, 2, "explicit midpoint"),
    Solver("explicit_adams", False, 4, "Adams-Bashforth"),
):
    SOLVERS.add(_s.name, _s)
ADAPTIVE_SOLVERS: tuple[str, ...] = tuple(n for n, s in SOLVERS.items() if s.adaptive)
FIXED_SOLVERS: tuple[str, ...] = tuple(n for n, s in SOLVERS.items() if not s.adaptive)


# ----------------------------------------------------------------------------------------- ODE functions

ODEFUNCS: Registry[Any] = Registry("ODE function", source="sodef_cli.head")


def register_odefunc(name: str) -> Callable[[type], type]:
    """Class decorator: an ODE function family, built by its ``from_config(head_config)``."""

    def deco(cls: type) -> type:
        if not callable(getattr(cls, "from_config", None)):
            raise TypeError(f"ODE function {name!r}: {cls.__name__} has no from_config(head_config)")
        ODEFUNCS.add(name, cls)
        return cls

    return deco


# ------------------------------------------------------------------------------------------------ attacks


@dataclass(frozen=True)
class AttackKind:
    """What an attack of this kind differentiates or queries."""

    name: str
    through: str  # the Target field holding that network
    gradients: bool  # gradient passes (else forward passes only: score-based)
    adaptive: bool  # not the model as shipped: counts towards an adaptive evaluation
    needs_ode: bool  # only for a model with an ODE (a fixed-step or identity-backward copy of it)
    hardened_only: bool  # made for ODE defenses: not run on the base next to a hardened model
    description: str


ATTACK_KINDS: dict[str, AttackKind] = {
    k.name: k
    for k in (
        AttackKind("white-box", "model", True, False, False, False, "gradients of the model as shipped"),
        AttackKind(
            "transfer",
            "base",
            True,
            True,
            False,
            True,
            "made on another model (the base classifier), judged on this one",
        ),
        AttackKind("fixed-step", "fixed", True, True, True, True, "gradients through a fixed-step RK4 copy of the ODE"),
        AttackKind("bpda", "bpda", True, True, True, True, "the ODE's true forward, an identity backward"),
        AttackKind(
            "feature",
            "model",
            True,
            True,
            False,
            True,
            "pulls backbone features towards another class's; never through the ODE",
        ),
        AttackKind("black-box", "model", False, True, False, False, "scores only, no gradients"),
    )
}
ADAPTIVE_KINDS: tuple[str, ...] = tuple(
    k for k, v in ATTACK_KINDS.items() if v.adaptive
)  # gradients not from the model as shipped
ODE_KINDS: tuple[str, ...] = tuple(k for k, v in ATTACK_KINDS.items() if v.needs_ode)

REFERENCE_TARGETS = 9  # AutoAttack's target classes of APGD-T and FAB-T


def n_targets(n_classes: int) -> int:
    """Target classes of a targeted attack: the reference's 9, fewer when the data has fewer other classes."""
    return min(REFERENCE_TARGETS, n_classes - 1)


@dataclass(frozen=True)
class AttackSpec:
    """One evaluation attack, as declared by ``@register_attack``.

    ``fn(model, x, y, params, target)`` returns adversarial images; ``model`` is the network its kind
    differentiates or queries (``target.<kind.through>``) and ``params`` has this attack's default
    budget filled in where no override was given. Call :meth:`run` rather than ``fn``.
    """

    name: str
    kind: str
    norms: tuple[str, ...]
    fn: Callable[..., Any]
    description: str = ""
    default_steps: int | None = None  # iterations (overridden by --steps)
    default_queries: int | None = None  # queries of a score-based attack (overridden by --queries)
    steps_key: str = "steps"  # the name the results give the iterations
    targeted: bool = False  # runs against n_targets(classes) target classes (recorded as "targets")
    settings: tuple[tuple[str, int], ...] = ()  # fixed settings the results record
    min_classes: int = 2
    passes: int = 1  # passes per iteration, query and target: the plan's cost model

    @property
    def kind_info(self) -> AttackKind:
        return ATTACK_KINDS[self.kind]

    @property
    def needs_ode(self) -> bool:
        return self.kind_info.needs_ode

    @property
    def hardened_only(self) -> bool:
        return self.kind_info.hardened_only

    def resolve(self, p: AttackParams) -> AttackParams:
        """``p`` with this attack's default budget where ``p`` overrides none."""
        changes: dict[str, int] = {}
        if self.default_steps is not None and p.steps is None:
            changes["steps"] = self.default_steps
        if self.default_queries is not None and p.queries is None:
            changes["queries"] = self.default_queries
        return dataclasses.replace(p, **changes) if changes else p

    def params(self, p: AttackParams) -> dict:
        """The settings this attack runs at under ``p``, as the results record them."""
        r = self.resolve(p)
        out: dict[str, int] = {}
        if self.default_steps is not None:
            out[self.steps_key] = r.steps
        if self.targeted:
            out["targets"] = n_targets(r.n_classes)
        if self.default_queries is not None:
            out["queries"] = r.queries
        out.update(self.settings)
        return out

    def cost(self, p: AttackParams) -> tuple[float, str]:
        """(passes per attacked sample, "grad" or "forward") at ``p``: a rough cost model for the plan."""
        r = self.resolve(p)
        budget = r.steps if self.default_steps is not None else (r.queries if self.default_queries is not None else 1)
        targets = n_targets(r.n_classes) if self.targeted else 1
        return float(self.passes * budget * targets), ("grad" if self.kind_info.gradients else "forward")

    def run(self, t: Target, x: Any, y: Any, p: AttackParams) -> Any:
        """Adversarial images for clean ``x`` (labels ``y``) against target ``t``."""
        return self.fn(getattr(t, self.kind_info.through), x, y, self.resolve(p), t)


ATTACKS: Registry[AttackSpec] = Registry("attack", source="sodef_cli.attacks")


def register_attack(
    name: str,
    *,
    kind: str,
    description: str,
    norms: tuple[str, ...] = NORMS,
    default_steps: int | None = None,
    default_queries: int | None = None,
    steps_key: str = "steps",
    targeted: bool = False,
    settings: Mapping[str, int] | None = None,
    min_classes: int = 2,
    passes: int = 1,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Function decorator: declare an evaluation attack (see :class:`AttackSpec`). Stack it to declare
    several attacks made by one function (their kinds pick the network it attacks)."""
    if kind not in ATTACK_KINDS:
        raise ValueError(f"attack {name!r}: unknown kind {kind!r}; one of {', '.join(ATTACK_KINDS)}")
    if not norms or any(n not in NORMS for n in norms):
        raise ValueError(f"attack {name!r}: norms {norms!r} must be among {', '.join(NORMS)}")

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        ATTACKS.add(
            name,
            AttackSpec(
                name=name,
                kind=kind,
                norms=tuple(norms),
                fn=fn,
                description=description,
                default_steps=default_steps,
                default_queries=default_queries,
                steps_key=steps_key,
                targeted=targeted,
                settings=tuple((settings or {}).items()),
                min_classes=min_classes,
                passes=passes,
            ),
        )
        return fn

    return deco


# ------------------------------------------------------------------------------------------------- suites


@dataclass(frozen=True)
class Suite(Mapping[str, list]):
    """Attacks per model role: ``suite["base"]``, ``suite["hardened"]`` (fresh lists)."""

    name: str
    description: str
    base: tuple[str, ...]
    hardened: tuple[str, ...]

    def __getitem__(self, role: str) -> list[str]:
        if role not in ("base", "hardened"):
            raise KeyError(role)
        return list(getattr(self, role))

    def __iter__(self) -> Iterator[str]:
        return iter(("base", "hardened"))

    def __len__(self) -> int:
        return 2


_AA = ("apgd-ce", "apgd-t", "fab-t", "square")  # AutoAttack, standard version
SUITES: Registry[Suite] = Registry("suite")
for _suite in (
    Suite(
        "quick",
        "APGD-CE, plus fixed-step and transfer APGD-CE on a hardened model",
        ("apgd-ce",),
        ("apgd-ce", "fixed-step-apgd-ce", "transfer-apgd-ce"),
    ),
    Suite("standard", "AutoAttack at reference settings", _AA, _AA),
    Suite(
        "adaptive",
        "AutoAttack and SPSA, plus the attacks made for ODE defenses",
        _AA + ("spsa",),
        (
            "apgd-ce",
            "apgd-t",
            "fab-t",
            "fixed-step-apgd-ce",
            "fixed-step-pgd",
            "bpda-apgd-ce",
            "transfer-apgd-ce",
            "transfer-pgd",
            "feature",
            "square",
            "spsa",
        ),
    ),
):
    SUITES.add(_suite.name, _suite)
