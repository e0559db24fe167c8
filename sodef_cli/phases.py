"""Training loops of hardening, all on cached features; progress through a :class:`Reporter`, never print.

- :func:`extract_features`: one pass of the frozen backbone (bf16 autocast on CUDA).
- :func:`fit_probe`: the same-features linear baseline when the backbone's own head does not fit.
- :func:`phase1`: projection against the fixed simplex V (cross-entropy).
- :func:`phase2`: f with the stability regularizers alone on z(0) (no integration, as the released code).
- :func:`phase3`: new linear classifier + f through the integrated ODE, with mixup.
Model selection uses the validation split carved from train, never the test split.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import Phase1Config, Phase2Config, Phase3Config, ProbeConfig, RegularizerConfig
from .errors import TrainingDivergedError
from .inference import fit_epochs, logits
from .regularizers import stability_loss

__all__ = [
    "Reporter",
    "extract_features",
    "fit_probe",
    "phase1",
    "phase2",
    "phase3",
    "accuracy_from_logits",
    "batched_logits",
    "stability_warning",
]


class Reporter:
    """Progress callbacks. The CLI subclasses this with rich progress bars; the default does nothing."""

    def start(self, task: str, total: int) -> None: ...  # again on a running task: its total changes

    def advance(self, task: str, n: int = 1, **metrics: Any) -> None: ...

    def end(self, task: str, **metrics: Any) -> None: ...

    def log(self, message: str) -> None: ...


def _check_finite(loss: torch.Tensor, phase: str, step: int, hint: str) -> None:
    if not torch.isfinite(loss):
        raise TrainingDivergedError(f"{phase}: loss became {loss.item()} at step {step}; {hint}. No output was written")


def _descend(opt: torch.optim.Optimizer, loss: torch.Tensor, phase: str, step: int, hint: str) -> float:
    """One optimizer step on a finite loss; returns the loss value."""
    _check_finite(loss, phase, step, hint)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def _solve_guard(fn, phase: str, step: int):
    try:
        return fn()
    except AssertionError as exc:  # torchdiffeq: "underflow in dt", "max_num_steps exceeded"
        raise TrainingDivergedError(
            f"{phase}: the ODE solver failed at step {step} ({exc}); lower the learning rate or tighten head.rtol/atol. No output was written"
        ) from None


@torch.no_grad()
def extract_features(
    feature_fn, images, *, device: torch.device, batch_size: int, reporter: Reporter, task: str, amp: bool = True
) -> torch.Tensor:
    """``feature_fn`` (float [0,1] images on device -> (B, d)) over an ImageSet, once. Returns float32 CPU.

    On CUDA the backbone runs under bf16 autocast unless ``amp`` is False (fp32, as the model is shipped).

    Under torchrun the batches are spread over the ranks and gathered in order (``distributed.py``).
    """
    from .distributed import map_batches

    reporter.start(task, len(images))
    use_amp = amp and device.type == "cuda"

    def one(start: int, stop: int) -> torch.Tensor:
        x = images.floats(slice(start, stop)).to(device, non_blocking=True)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
            h = feature_fn(x)
        reporter.advance(task, stop - start)
        return h.float().cpu()

    out = map_batches(one, len(images), batch_size)
    reporter.end(task)
    return out


def _batches(n: int, batch_size: int, generator: torch.Generator):
    perm = torch.randperm(n, generator=generator)
    for i in range(0, n, batch_size):
        yield perm[i : i + batch_size]


def batched_logits(fn, h: torch.Tensor, *, device: torch.device, batch_size: int = 1024) -> torch.Tensor:
    """``fn`` over cached features in batches: float32 CPU outputs (:func:`sodef_cli.inference.logits`)."""
    return logits(fn, h, device=device, batch_size=batch_size)


def accuracy_from_logits(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean().item()) if len(y) else 0.0


def fit_probe(
    h_tr, y_tr, h_val, y_val, num_classes: int, cfg: ProbeConfig, *, device, generator, reporter: Reporter
) -> tuple[nn.Linear, dict]:
    """Linear probe on frozen features (Adam, cross-entropy), selected on validation accuracy."""
    probe = nn.Linear(h_tr.shape[1], num_classes).to(device)
    opt = torch.optim.Adam(probe.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = max(1, math.ceil(len(y_tr) / cfg.batch_size))
    reporter.start("probe", cfg.epochs * steps)
    evaluate = lambda: accuracy_from_logits(batched_logits(probe, h_val, device=device), y_val)
    step = 0

    def epoch(_: int) -> float:
        nonlocal step
        for idx in _batches(len(y_tr), cfg.batch_size, generator):
            loss = F.cross_entropy(probe(h_tr[idx].to(device)), y_tr[idx].to(device))
            value = _descend(opt, loss, "probe", step, "lower probe.lr")
            step += 1
            reporter.advance("probe", loss=value)
        return evaluate()

    fit = fit_epochs(
        epoch, cfg.epochs, snapshot=lambda: copy.deepcopy(probe.state_dict()), restore=probe.load_state_dict
    )
    val_acc = fit.best_score if fit.best_epoch is not None else evaluate()  # skipped: the untrained probe, as it is
    reporter.end("probe", val_acc=val_acc)
    return probe.eval(), {"val_acc": val_acc, "epochs": cfg.epochs, "skipped": cfg.epochs == 0}


def phase1(
    head, h_tr, y_tr, h_val, y_val, V: torch.Tensor, cfg: Phase1Config, *, device, generator, reporter: Reporter
) -> dict:
    """Fit the orthogonal projection so that V z(0) classifies (V fixed); keep the best on validation."""
    V = V.to(device)
    opt = torch.optim.Adam(head.proj.parameters(), lr=cfg.lr, eps=cfg.eps, amsgrad=cfg.amsgrad)
    steps = max(1, math.ceil(len(y_tr) / cfg.batch_size))
    reporter.start("phase 1", cfg.epochs * steps)
    evaluate = lambda: accuracy_from_logits(batched_logits(lambda h: head.z0(h) @ V.T, h_val, device=device), y_val)
    step, last = 0, None  # None (JSON null) when no step ran: epochs = 0 skips the phase

    def epoch(_: int) -> float:
        nonlocal step, last
        for idx in _batches(len(y_tr), cfg.batch_size, generator):
            loss = F.cross_entropy(head.z0(h_tr[idx].to(device)) @ V.T, y_tr[idx].to(device))
            value = _descend(opt, loss, "phase 1", step, "lower phase1.lr")
            step, last = step + 1, value
            reporter.advance("phase 1", loss=last)
        return evaluate()

    # the starting projection is a candidate too: training must beat it on validation to be kept
    fit = fit_epochs(
        epoch,
        cfg.epochs,
        start=evaluate(),
        snapshot=lambda: copy.deepcopy(head.proj.state_dict()),
        restore=head.proj.load_state_dict,
    )
    reporter.end("phase 1", val_acc=fit.best_score)
    return {"val_acc_V": fit.best_score, "final_loss": last, "steps": step, "skipped": cfg.epochs == 0}


def phase2(
    odefunc, z_tr: torch.Tensor, cfg: Phase2Config, reg: RegularizerConfig, *, device, generator, reporter: Reporter
) -> dict:
    """Fit f with the stability regularizers alone. Returns last-epoch mean terms."""
    opt = torch.optim.Adam(odefunc.parameters(), lr=cfg.lr, eps=cfg.eps, amsgrad=cfg.amsgrad)
    steps = max(1, math.ceil(len(z_tr) / cfg.batch_size))
    reporter.start("phase 2", cfg.epochs * steps)
    step = 0
    sums = {"loss": 0.0, "f": 0.0, "diag": 0.0, "offdiag": 0.0}
    count = 0
    for _ in range(cfg.epochs):
        sums = dict.fromkeys(sums, 0.0)
        count = 0
        for idx in _batches(len(z_tr), cfg.batch_size, generator):
            terms = stability_loss(odefunc, z_tr[idx].to(device), reg)
            loss = terms["loss"]
            value = _descend(opt, loss, "phase 2", step, "lower phase2.lr or the regularizer weights")
            step += 1
            count += 1
            for k in sums:
                sums[k] += float(terms[k].detach())
            reporter.advance("phase 2", loss=value)
    means = {k: (v / count if count else None) for k, v in sums.items()}  # None (JSON null): the phase was skipped
    reporter.end("phase 2", **{k: v for k, v in means.items() if v is not None})
    return {"steps": step, **{f"last_epoch_{k}": v for k, v in means.items()}, "skipped": cfg.epochs == 0}


def phase3(head, z_tr, y_tr, z_val, y_val, cfg: Phase3Config, *, device, generator, reporter: Reporter) -> dict:
    """New classifier + f through the integrated ODE with mixup; best validation accuracy kept."""
    nn.init.zeros_(head.classifier.bias)
    groups = [{"params": head.classifier.parameters(), "lr": cfg.lr_fc, "eps": cfg.eps_fc}]
    if cfg.train_odefunc:
        groups.append({"params": head.odefunc.parameters(), "lr": cfg.lr_f, "eps": cfg.eps_f})
    else:
        head.odefunc.requires_grad_(False)
    opt = torch.optim.Adam(groups, amsgrad=cfg.amsgrad)
    block = head.block
    if cfg.solver:  # a fixed-step solver at the head's step size, exact gradients by plain backprop
        block = block.with_solver(cfg.solver, adjoint=False)
    elif block.adjoint and not cfg.adjoint:  # exact gradients: direct backprop through the same solver and tolerances
        block = block.with_solver(block.solver, adjoint=False)
    forward = lambda z: head.classifier(block(z))
    steps = max(1, math.ceil(len(y_tr) / cfg.batch_size))
    reporter.start("phase 3", cfg.epochs * steps)

    evaluate = lambda: accuracy_from_logits(
        batched_logits(forward, z_val, device=device, batch_size=cfg.batch_size), y_val
    )
    beta = torch.distributions.Beta(cfg.mixup_alpha, cfg.mixup_alpha) if cfg.mixup_alpha > 0 else None
    step, last = 0, None  # None (JSON null) when no step ran: epochs = 0 skips the phase

    def epoch(_: int) -> float:
        nonlocal step, last
        for idx in _batches(len(y_tr), cfg.batch_size, generator):
            z, y = z_tr[idx].to(device), y_tr[idx].to(device)
            if beta is not None:
                lam = float(beta.sample())  # global RNG, seeded by the caller
                perm = torch.randperm(z.shape[0], generator=generator).to(device)
                out = _solve_guard(lambda: forward(lam * z + (1 - lam) * z[perm]), "phase 3", step)
                loss = lam * F.cross_entropy(out, y) + (1 - lam) * F.cross_entropy(out, y[perm])
            else:
                loss = F.cross_entropy(_solve_guard(lambda: forward(z), "phase 3", step), y)
            value = _descend(opt, loss, "phase 3", step, "lower phase3.lr_fc/lr_f or tighten head.rtol/atol")
            step, last = step + 1, value
            reporter.advance("phase 3", loss=last)
        return evaluate()

    fit = fit_epochs(
        epoch,
        cfg.epochs,
        snapshot=lambda: {k: v.detach().clone() for k, v in head.state_dict().items()},
        restore=head.load_state_dict,
    )
    best_acc = fit.best_score if fit.best_epoch is not None else evaluate()  # skipped: the head as it is
    head.odefunc.requires_grad_(True)
    reporter.end("phase 3", val_acc=best_acc)
    return {"val_acc": best_acc, "final_loss": last, "steps": step, "skipped": cfg.epochs == 0}


STABLE_SHARE = 0.9  # below this share of stable Jacobians after phase 2, harden says so


def stability_warning(stab: dict, phase2: Phase2Config, reg: RegularizerConfig) -> str | None:
    """One plain sentence when phase 2 left fewer than 90% of the Jacobians at z(0) with all Re(eig) < 0."""
    frac = stab.get("frac_eig_negative")
    if frac is None or frac >= STABLE_SHARE:
        return None
    weight = (
        ("regularizer.weight_diag", reg.weight_diag)
        if reg.form == "code"
        else ("regularizer.alpha_diag", reg.alpha_diag)
    )
    return (
        f"phase 2 left only {100 * frac:.1f}% of the Jacobians stable (all Re(eig) < 0; mean largest "
        f"{stab.get('mean_max_real_eig', float('nan')):+.4f}), below {100 * STABLE_SHARE:.0f}%: this head has no "
        f"Lyapunov-stable equilibria to speak of; train phase 2 longer (phase2.epochs, now {phase2.epochs}) or raise "
        f"{weight[0]} (now {weight[1]:g})"
    )
