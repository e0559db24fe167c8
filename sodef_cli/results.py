"""The mutable part of an attack-results document as typed state: what has been attacked, per-sample flags,
timings, which budgets are finished, and where the document is persisted.

The document on disk is JSON (schema ``sodef_cli/attack-results``; ``evaluate.py`` writes its header and
reads it back on resume). Its ``runs`` hold one record per eps::

    {"eps": 0.03, "models": {LABEL: {"attacks": {NAME: {"kind", "params", "robust", "attacked", "seconds",
                                                         "projected"}},
                                      "clean": [bool, ...], "checks": [...]}},
     "done": bool, "extra_checks": [...], "checks": [...]}

Here each level is a dataclass (:class:`EpsRun`, :class:`ModelRun`, :class:`AttackResult`), and
:class:`EvaluationState` holds the header, the runs, and how to persist: every ``record_*`` method changes the
state and rewrites the file atomically, so an interrupted run leaves the last finished attack on disk and a
rerun with the same file continues after it. ``to_dict`` gives back the document with its keys in the order
they are written (fields this version does not know are kept as read, after the known ones).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["AttackResult", "ModelRun", "EpsRun", "EvaluationState", "now", "worst_case_flags"]


def now() -> str:
    """The current UTC time as the results files write it (ISO 8601, seconds)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def worst_case_flags(clean: list[bool], attacks: dict[str, dict]) -> list[bool]:
    """Per-sample AND of clean correctness and every attack's flag (null counts as not robust)."""
    out = [bool(c) for c in clean]
    for rec in attacks.values():
        out = [a and (f is True) for a, f in zip(out, rec["robust"])]
    return out


def _rest(d: dict, known: tuple[str, ...]) -> dict:
    return {k: v for k, v in d.items() if k not in known}


@dataclass
class AttackResult:
    """One attack on one model at one eps: a flag per sample (True survived, False fooled, None not attacked)."""

    kind: str
    params: dict[str, Any]
    robust: list[bool | None]
    attacked: int
    seconds: float
    projected: int
    extra: dict[str, Any] = field(default_factory=dict)

    KEYS = ("kind", "params", "robust", "attacked", "seconds", "projected")

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "params": self.params,
            "robust": list(self.robust),
            "attacked": self.attacked,
            "seconds": self.seconds,
            "projected": self.projected,
            **self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AttackResult:
        return cls(
            d.get("kind"),
            d.get("params", {}),
            list(d.get("robust", [])),
            d.get("attacked", 0),
            d.get("seconds", 0.0),
            d.get("projected", 0),
            _rest(d, cls.KEYS),
        )


@dataclass
class ModelRun:
    """One model at one eps: its clean correctness (None until measured), its finished attacks in the order they
    ran, and (several models compared) its own masking checks (None until made)."""

    attacks: dict[str, AttackResult] = field(default_factory=dict)
    clean: list[bool] | None = None
    checks: list[dict] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    KEYS = ("attacks", "clean", "checks")

    def robust(self) -> list[bool]:
        """Per sample: clean-correct and not fooled by any finished attack (a flag of None counts as not robust)."""
        return worst_case_flags(self.clean or [], {n: {"robust": a.robust} for n, a in self.attacks.items()})

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"attacks": {n: a.to_dict() for n, a in self.attacks.items()}}
        if self.clean is not None:
            d["clean"] = list(self.clean)
        if self.checks is not None:
            d["checks"] = self.checks
        d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelRun:
        clean = d.get("clean")
        return cls(
            {n: AttackResult.from_dict(a) for n, a in d.get("attacks", {}).items()},
            list(clean) if clean is not None else None,
            d.get("checks"),
            _rest(d, cls.KEYS),
        )


@dataclass
class EpsRun:
    """Every model at one eps; ``done`` once all attacks and checks of this eps are finished."""

    eps: float
    models: dict[str, ModelRun] = field(default_factory=dict)
    done: bool = False
    extra_checks: list[dict] | None = None  # checks that ran extra passes (large eps, batch composition, fixed step)
    checks: list[dict] | None = None  # masking checks of the whole run
    extra: dict[str, Any] = field(default_factory=dict)

    KEYS = ("eps", "models", "done", "extra_checks", "checks")

    def model(self, label: str) -> ModelRun:
        """The record of ``label`` at this eps, created empty when missing."""
        return self.models.setdefault(label, ModelRun())

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "eps": self.eps,
            "models": {m: r.to_dict() for m, r in self.models.items()},
            "done": self.done,
        }
        if self.extra_checks is not None:
            d["extra_checks"] = self.extra_checks
        if self.checks is not None:
            d["checks"] = self.checks
        d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpsRun:
        return cls(
            d["eps"],
            {m: ModelRun.from_dict(r) for m, r in d.get("models", {}).items()},
            bool(d.get("done", False)),
            d.get("extra_checks"),
            d.get("checks"),
            _rest(d, cls.KEYS),
        )


@dataclass
class EvaluationState:
    """A results document being filled: its header (every key but ``runs``, in document order), its runs, and
    where it is persisted.

    ``path`` None: nothing is written (the hardening guard, a torchrun rank other than 0). ``summary``, when
    given, computes figures from the document that are stored beside the flags (key ``summary``) on every save.
    """

    header: dict[str, Any]
    runs: list[EpsRun] = field(default_factory=list)
    path: Path | None = None
    summary: Callable[[dict], dict] | None = None

    @classmethod
    def from_dict(
        cls, doc: dict[str, Any], *, path: str | Path | None = None, summary: Callable[[dict], dict] | None = None
    ) -> EvaluationState:
        header = dict(doc)
        header.setdefault("runs", [])  # the place of the runs among the keys
        runs = [EpsRun.from_dict(r) for r in header["runs"]]
        return cls(header, runs, Path(path) if path is not None else None, summary)

    @classmethod
    def open(
        cls,
        fresh: dict[str, Any],
        path: str | Path | None,
        *,
        check: Callable[[dict, dict], None],
        summary: Callable[[dict], dict] | None = None,
    ) -> EvaluationState:
        """The state of a new run described by ``fresh``, or, when ``path`` exists, of the run stored there once
        ``check(stored, fresh)`` accepts it as the same evaluation (it raises otherwise); a resumed document is
        stamped ``resumed``. Under torchrun only rank 0 reads and writes the file; every rank continues from
        rank 0's view (no shared disk needed)."""
        from .distributed import all_gather_objects, is_main

        doc = fresh
        if path is not None and is_main() and Path(path).exists():
            from .io import read_json

            doc = read_json(path)
            check(doc, fresh)
            doc["resumed"] = now()
        doc = all_gather_objects(doc)[0]
        return cls.from_dict(doc, path=path if is_main() else None, summary=summary)

    def to_dict(self) -> dict[str, Any]:
        """The document, keys in the order they are written."""
        return {k: ([r.to_dict() for r in self.runs] if k == "runs" else v) for k, v in self.header.items()}

    def save(self) -> None:
        """Rewrite the file atomically (a no-op without ``path``)."""
        if self.path is None:
            return
        from .io import write_json

        doc = self.to_dict()
        if self.summary is not None:
            self.header["summary"] = doc["summary"] = self.summary(doc)
        write_json(self.path, doc)

    # ------------------------------------------------------------------------------------------------
    # what has been done

    def eps_run(self, eps: float) -> EpsRun:
        """The run of ``eps``, created (not done) when missing: a resumed evaluation continues it."""
        run = next((r for r in self.runs if abs(r.eps - eps) < 1e-12), None)
        if run is None:
            run = EpsRun(eps)
            self.runs.append(run)
        return run

    def clean(self, run: EpsRun, label: str, measure: Callable[[], list[bool]]) -> list[bool]:
        """Clean correctness of ``label`` at ``run``: as measured at another eps when it was (it does not depend on
        eps), else ``measure()``, recorded and persisted."""
        mrec = run.model(label)
        if mrec.clean is None:
            mrec.clean = next(
                (
                    list(r.models[label].clean)
                    for r in self.runs
                    if label in r.models and r.models[label].clean is not None
                ),
                None,
            )
        if mrec.clean is None:
            mrec.clean = [bool(v) for v in measure()]
            self.save()
        return mrec.clean

    def record_attack(self, run: EpsRun, label: str, name: str, result: AttackResult) -> None:
        run.model(label).attacks[name] = result
        self.save()

    def record_model_checks(self, run: EpsRun, label: str, checks: list[dict]) -> None:
        run.model(label).checks = checks
        self.save()

    def finish_eps(
        self, run: EpsRun, *, extra_checks: list[dict] | None = None, checks: Callable[[dict], list[dict]] | None = None
    ) -> None:
        """Mark ``run`` done and persist. ``extra_checks``: the checks that ran extra passes, recorded first;
        ``checks(run as a dict)``: the masking checks of the whole run, computed from what it now holds."""
        if extra_checks is not None:
            run.extra_checks = extra_checks
        if checks is not None:
            run.checks = checks(run.to_dict())
        run.done = True
        self.save()

    def finish(self, **fields: Any) -> dict[str, Any]:
        """Mark the document complete (``finished`` now, then ``fields``), persist, and return it."""
        self.header["complete"] = True
        self.header["finished"] = now()
        self.header.update(fields)
        self.save()
        return self.to_dict()
