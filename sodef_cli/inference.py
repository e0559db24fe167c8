"""Batched inference and "train epochs, keep the best on validation", shared by every command.

- :func:`batched`: concatenate ``fn(start, stop)`` over consecutive batches of ``range(n)``, without
  gradients (this process only; ``distributed.map_batches`` spreads batches over torchrun ranks).
- :func:`logits` / :func:`predict`: a model's outputs / predicted labels over a tensor of inputs, batch by
  batch in order, on CPU; the model runs in eval mode and gets its train/eval flags back afterwards.
- :func:`fit_epochs`: run training epochs, score each on validation, keep the best epoch's weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch
from torch import nn

__all__ = ["eval_mode", "batched", "logits", "predict", "fit_epochs", "Fit"]

R = TypeVar("R")  # an epoch's record
S = TypeVar("S")  # a snapshot of the weights


def _module_of(fn: Callable) -> nn.Module | None:
    """The module behind ``fn``: the module itself, or the owner of a bound method (``head.z0``); else None."""
    if isinstance(fn, nn.Module):
        return fn
    owner = getattr(fn, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


@contextlib.contextmanager
def eval_mode(*modules: nn.Module | None) -> Iterator[None]:
    """Put ``modules`` (None skipped) in eval mode; give every submodule its own train/eval flag back on exit.

    Flags are restored per submodule, so a model with some parts training and others frozen (adversarial
    training keeps frozen BatchNorm layers in eval mode) comes back exactly as it was.
    """
    saved = [(m, m.training) for mod in modules if mod is not None for m in mod.modules()]
    try:
        for mod in modules:
            if mod is not None:
                mod.eval()
        yield
    finally:
        for m, flag in saved:
            m.training = flag


def batched(fn: Callable[[int, int], torch.Tensor], n: int, batch_size: int) -> torch.Tensor:
    """``torch.cat`` of ``fn(start, stop)`` over the batches ``[0, b), [b, 2b), ...`` of ``range(n)``, in order,
    under ``torch.no_grad()`` (``fn`` may still enable gradients itself, as an attack does). Empty for ``n == 0``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    with torch.no_grad():
        chunks = [fn(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]
    return torch.cat(chunks) if chunks else torch.empty(0)


def logits(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, device, batch_size: int = 1024
) -> torch.Tensor:
    """``fn`` (a model, a bound method of one, or any function of a batch) over ``x`` in batches: float32 outputs on CPU.

    A module (or the module of a bound method) runs in eval mode and gets its train/eval flags back afterwards;
    a plain function is called as it is.
    """
    with eval_mode(_module_of(fn)):
        return batched(lambda a, b: fn(x[a:b].to(device)).float().cpu(), x.shape[0], batch_size)


def predict(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    """Predicted labels (argmax of the outputs, int64 on CPU) of ``model`` over ``x`` in batches of ``batch_size``."""
    with eval_mode(_module_of(model)):
        out = batched(lambda a, b: model(x[a:b].to(device)).argmax(1).cpu(), x.shape[0], batch_size)
    return out if len(out) else torch.empty(0, dtype=torch.long)


# ----------------------------------------------------------------------------------------------------
# train epochs, keep the best on validation


@dataclass
class Fit(Generic[R]):
    """What :func:`fit_epochs` did: every epoch's record (the starting point first when it was a candidate),
    the epoch kept (None when no epoch was a candidate: no epochs and no start) and its score."""

    history: list[R] = field(default_factory=list)
    best_epoch: int | None = None
    best_score: Any = None
    stopped_early: bool = False
    epochs_run: int = 0  # training epochs finished (the start record not counted)


def fit_epochs(
    run_epoch: Callable[[int], R],
    epochs: int,
    *,
    snapshot: Callable[[], S],
    restore: Callable[[S], None],
    score: Callable[[R], Any] = lambda rec: rec,
    start: R | None = None,
    eligible: Callable[[R], bool] | None = None,
    stop: Callable[[R, list[R]], bool] | None = None,
    on_epoch: Callable[[R], None] | None = None,
    after_epoch: Callable[[Fit[R], Any], None] | None = None,
    resume: tuple[Fit[R], Any] | None = None,
) -> Fit[R]:
    """Run epochs ``1..epochs`` and keep the best one's weights.

    ``run_epoch(epoch)`` trains one epoch and returns its validation record; ``score(record)`` is what is
    compared (any ordered value: a tuple breaks ties by its later items). An epoch replaces the best one only
    when its score is strictly greater, so ties keep the earlier epoch. ``start``, when given, is the record of
    the weights before training (epoch 0), the first candidate. ``eligible(record)`` False: the epoch is
    recorded but never kept. ``stop(record, history_so_far)`` True: the epoch is recorded, never kept, and
    training ends there (no later epoch runs). ``on_epoch(record)`` runs after those two decisions, before the
    weights are kept. ``snapshot()`` copies the weights to keep; ``restore(copy)`` loads the best copy at the end
    (not called when no epoch was a candidate).

    Resuming: ``after_epoch(fit, best_copy)`` runs after every epoch that does not stop training (a checkpoint);
    ``resume=(fit, best_copy)`` continues from such a checkpoint at epoch ``fit.epochs_run + 1`` (``start`` is then
    not used again).
    """
    fit: Fit[R] = Fit()
    best_state: Any = None
    if resume is not None:
        fit, best_state = resume
    elif start is not None:
        fit.history.append(start)
        fit.best_epoch, fit.best_score, best_state = 0, score(start), snapshot()
    for epoch in range(fit.epochs_run + 1, epochs + 1):
        rec = run_epoch(epoch)
        halt = bool(stop(rec, list(fit.history))) if stop is not None else False
        fit.history.append(rec)
        fit.epochs_run = epoch
        ok = not halt and (eligible is None or bool(eligible(rec)))
        if on_epoch is not None:
            on_epoch(rec)
        if halt:
            fit.stopped_early = True
            break
        if ok:
            s = score(rec)
            if fit.best_epoch is None or s > fit.best_score:
                fit.best_epoch, fit.best_score, best_state = epoch, s, snapshot()
        if after_epoch is not None:
            after_epoch(fit, best_state)
    if fit.best_epoch is not None:
        restore(best_state)
    return fit
