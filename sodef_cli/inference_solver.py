"""The solver a hardened model ships with: the cheapest fixed-step solver that predicts like its declared one.

A SODEF head declared with an adaptive solver (``head.solver``, dopri5 in the paper) pays for its step-size control at every forward pass, and
its outputs depend on the rest of the batch (one error norm over the whole batch tensor). At the end of ``harden``,
:func:`select_solver` tries fixed-step solvers from the cheapest (fewest ODE function evaluations per forward) up
and keeps the first whose predictions on held-out features agree with the declared solver's on at least
``agreement`` of them and whose accuracy is within ``accuracy_tolerance`` points. A fixed-step model is also
batch-independent and gives exact gradients by plain backprop, so what is attacked is what is shipped. When no
candidate qualifies the declared solver stays, and the record says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .errors import UsageError
from .head import EVALUATIONS_PER_STEP
from .inference import predict

# the fixed-step solvers tried, with the f evaluations of one step (those the head solves in its own loop)
SOLVER_STAGES = EVALUATIONS_PER_STEP
STEP_COUNTS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 25, 32, 40, 50)


@dataclass(frozen=True)
class Candidate:
    solver: str
    steps: int
    t1: float

    @property
    def step_size(self) -> float:
        return self.t1 / self.steps

    @property
    def nfe(self) -> int:
        return SOLVER_STAGES[self.solver] * self.steps


def candidates(t1: float, *, max_nfe: int | None = None) -> list[Candidate]:
    """Fixed-step candidates over [0, t1], cheapest first (ties: the higher-order solver first)."""
    if not t1 > 0:
        raise UsageError(f"head.t1 must be > 0 to choose a solver, got {t1}")
    out = [Candidate(s, n, float(t1)) for s in SOLVER_STAGES for n in STEP_COUNTS]
    out = [c for c in out if max_nfe is None or c.nfe <= max_nfe]
    return sorted(out, key=lambda c: (c.nfe, -SOLVER_STAGES[c.solver]))


def _predict(head, feats: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, int]:
    """Predicted classes of ``head`` on features, and the ODE function evaluations per batch (mean)."""
    func = head.block.odefunc
    before = func.nfe
    preds = predict(head, feats, batch_size, feats.device)
    return preds, int((func.nfe - before) // max(1, -(-len(feats) // batch_size)))


def select_solver(
    head,
    feats: torch.Tensor,
    labels: torch.Tensor,
    *,
    agreement: float = 0.995,
    accuracy_tolerance: float = 0.2,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Pick the cheapest fixed-step solver for ``head`` (a :class:`~sodef_cli.head.SODEFHead`) on held-out features.

    ``agreement``: the least share of predictions equal to the declared solver's; ``accuracy_tolerance``: the most
    accuracy (points) it may lose or gain against it. Returns the record: the declared solver (``reference``), the
    candidates tried with their figures, and ``chosen`` (None when none qualified: the declared solver stays).
    Does not change ``head``; :func:`apply` does.
    """
    if not 0.0 < agreement <= 1.0 or accuracy_tolerance < 0:
        raise UsageError(
            f"inference.agreement must be in (0, 1] and accuracy_tolerance >= 0, got {agreement}, {accuracy_tolerance}"
        )
    if len(feats) == 0 or len(feats) != len(labels):
        raise UsageError(
            f"choosing a solver needs held-out features with one label each, got {len(feats)} and {len(labels)}"
        )
    block = head.block
    ref, ref_nfe = _predict(head, feats, batch_size)
    ref_acc = (ref == labels).float().mean().item()
    reference = {
        "solver": block.solver,
        "rtol": block.rtol,
        "atol": block.atol,
        "step_size": block.step_size,
        "adjoint": block.adjoint,
        "nfe": ref_nfe,
        "accuracy": ref_acc,
    }
    tried: list[dict[str, Any]] = []
    chosen = None
    # a candidate costing as many evaluations as the reference saves nothing
    for cand in candidates(block.t1, max_nfe=ref_nfe - 1):
        view = head.with_ode(block.with_solver(cand.solver, step_size=cand.step_size, adjoint=False))
        pred, _ = _predict(view, feats, batch_size)
        agree = (pred == ref).float().mean().item()
        acc = (pred == labels).float().mean().item()
        ok = agree >= agreement and abs(acc - ref_acc) * 100 <= accuracy_tolerance + 1e-9
        tried.append(
            {
                "solver": cand.solver,
                "step_size": cand.step_size,
                "steps": cand.steps,
                "nfe": cand.nfe,
                "agreement": agree,
                "accuracy": acc,
                "qualifies": ok,
            }
        )
        if ok:
            chosen = tried[-1]
            break
    return {
        "n": len(feats),
        "agreement_required": agreement,
        "accuracy_tolerance_points": accuracy_tolerance,
        "reference": reference,
        "tried": tried,
        "chosen": chosen,
    }


def apply(head, record: dict[str, Any]) -> None:
    """Make ``head`` solve its ODE with the chosen solver of ``record`` (no-op when none was chosen)."""
    chosen = record.get("chosen")
    if chosen:
        head.block = head.block.with_solver(chosen["solver"], step_size=chosen["step_size"], adjoint=False)


def summary_line(record: dict[str, Any] | None) -> str:
    """One line for the card and the harden summary."""
    if not record:
        return "head.solver as declared (no selection)"
    try:
        return _summary(record)
    except (KeyError, TypeError, ValueError) as exc:  # a damaged file's record: say so, the card still renders
        return f"unreadable inference record in the metadata ({type(exc).__name__}: {exc})"


def _summary(record: dict[str, Any]) -> str:
    t, c = record["reference"], record.get("chosen")
    if c is None:
        return (
            f"{t['solver']} as declared: no fixed-step solver cheaper than its {t['nfe']} evaluations agreed on "
            f">= {100 * record['agreement_required']:.1f}% of {record['n']} held-out images"
        )
    return (
        f"{c['solver']} with {c['steps']} step(s) of {c['step_size']:g} ({c['nfe']} evaluations per forward, "
        f"{t['solver']} took {t['nfe']}): agrees with {t['solver']} on {100 * c['agreement']:.2f}% of {record['n']} "
        f"held-out images, accuracy {100 * c['accuracy']:.2f}% vs {100 * t['accuracy']:.2f}%"
    )
