"""Adversarial training of a classifier's trainable parts in image space (``sodef harden --adv-attack``).

What is trained is chosen from outside: the caller passes the model ([0,1] images -> logits) and the names
of the parameters to train (:func:`stage_parameters` finds the last N stages from timm's own grouping).
Every other parameter and buffer stays bitwise frozen: frozen modules are kept in eval mode (BatchNorm
statistics included), trained modules are switched to train mode.

Training attacks (Linf, in [0,1] pixel space):
- ``fgsm``: one step from a uniform random start (Wong et al. 2020), step ``1.25 eps`` by default;
- ``nfgsm``: N-FGSM (de Jorge et al. 2022): uniform noise of ``2 eps``, one signed-gradient step of ``eps`` by
  default, and no projection back onto the eps-ball (only onto the image range [0, 1]);
- ``pgd``: k steps of size ``2.5 eps / k`` from a random start (Madry et al. 2018);
- ``trades``: k steps maximizing KL(f(x) || f(x')) from x + 0.001 N(0,1); the loss is
  CE(f(x), y) + beta KL (Zhang et al. 2019).

Gradients through a SODEF head come from the model the caller passes: ``harden`` passes the fixed-step
copy of the ODE with plain backprop (no adjoint), so training and its attack see exact gradients.

Selection: after every epoch, accuracy on held-out validation images under PGD (``select_steps`` steps,
honest gradients) and under FGSM; the epoch kept is the one with the best PGD accuracy (ties go to the epoch with
the better clean accuracy). Catastrophic
overfitting (PGD accuracy falling below half of the best so far while FGSM accuracy rises) rejects the epoch and
stops training.
With ``ema > 0`` the weights evaluated and kept are an exponential moving average of the trained ones.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ModelError, TrainingDivergedError, UsageError
from .inference import Fit, batched, eval_mode, fit_epochs, predict
from .registry import TRAINING_ATTACKS

__all__ = [
    "TRAINING_ATTACKS",
    "stage_groups",
    "stage_parameters",
    "trained_modules",
    "attack_batch",
    "robust_accuracy",
    "adversarial_train",
    "catastrophic_overfitting",
    "random_crop_flip",
]


def random_crop_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding of size/8 and a horizontal flip, per sample. x: float (B,C,H,W)."""
    b, _, h, w = x.shape
    pad = max(1, h // 8)
    xp = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).tolist()
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator).tolist()
    flip = torch.rand(b, generator=generator) < 0.5
    out = torch.stack([xp[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])
    out[flip] = out[flip].flip(-1)
    return out


# ----------------------------------------------------------------------------------------------------
# what is trained: timm's own grouping


def _classifier_prefix(model: nn.Module) -> str:
    clf = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(clf, nn.Module):
        for name, mod in model.named_modules():
            if mod is clf and name:
                return name + "."
    key = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    return f"{key}." if isinstance(key, str) else "\0"


def stage_groups(model: nn.Module) -> list[list[str]]:
    """Parameter names of a timm model grouped into stages, input side first, from ``group_matcher(coarse=True)``.

    The stem is the first stage; the classifier's parameters are left out (the head is chosen separately);
    anything else in timm's last group (a final norm) joins the last stage. Models without a
    ``group_matcher`` fall back to their ``feature_info`` module names.
    """
    from timm.models import group_parameters

    clf = _classifier_prefix(model)
    names = [n for n, _ in model.named_parameters() if not n.startswith(clf)]
    if hasattr(model, "group_matcher"):
        groups = group_parameters(model, model.group_matcher(coarse=True))
        ordered = [groups[k] for k in sorted(groups)]
        # timm's last group holds the classifier, sometimes with a final norm: that norm joins the last stage
        tail = ordered.pop() if len(ordered) > 1 and any(n.startswith(clf) for n in ordered[-1]) else []
        stages = [list(g) for g in ordered if g]
        stages[-1].extend(n for n in tail if not n.startswith(clf))
        stages = [[n for n in s if not n.startswith(clf)] for s in stages]
        stages = [s for s in stages if s]
    elif getattr(model, "feature_info", None):
        mods = [f["module"] for f in model.feature_info]
        stages = [[] for _ in mods]
        stem: list[str] = []
        for n in names:
            hit = [i for i, m in enumerate(mods) if n.startswith(m + ".")]
            (stages[hit[0]] if hit else (stem if not any(stages) else stages[-1])).append(n)
        stages = [s for s in [stem] + stages if s]
    else:
        raise ModelError(
            f"{type(model).__name__} has neither timm's group_matcher nor feature_info: cannot find its stages"
        )
    missing = set(names) - {n for s in stages for n in s}
    if missing:  # never silently leave parameters out of every stage
        stages[-1].extend(sorted(missing))
    return stages


ALL_BUT_STEM = -1  # adversarial.stages: every stage but the stem (the default)


def resolve_stages(model: nn.Module, n_stages: int) -> int:
    """How many stages ``adversarial.stages`` means for ``model``: ``ALL_BUT_STEM`` (-1) is every stage but the
    first (the stem); any other value is itself."""
    return len(stage_groups(model)) - 1 if n_stages == ALL_BUT_STEM else n_stages


def stage_parameters(model: nn.Module, n_stages: int) -> list[str]:
    """Names of the parameters of the last ``n_stages`` stages (0: none; -1: all but the stem)."""
    stages = stage_groups(model)
    n_stages = resolve_stages(model, n_stages)
    if n_stages < 0 or n_stages > len(stages):
        raise UsageError(
            f"adversarial.stages = {n_stages}: {type(model).__name__} has {len(stages)} stages "
            f"(the stem counts as the first); choose 0 to {len(stages)}"
        )
    return [n for s in (stages[len(stages) - n_stages :] if n_stages else []) for n in s]


def trained_modules(model: nn.Module, trained: set[str]) -> list[tuple[str, nn.Module]]:
    """Modules whose own parameters are all trained: they go to train mode and their buffers are trained too."""
    out = []
    for name, mod in model.named_modules():
        own = [f"{name}.{p}" if name else p for p, _ in mod.named_parameters(recurse=False)]
        if own and all(p in trained for p in own):
            out.append((name, mod))
    return out


def trained_state_names(model: nn.Module, trained: set[str]) -> list[str]:
    """Parameters and buffers that training may change (sorted): trained parameters + buffers of trained modules."""
    out = set(trained)
    for name, mod in trained_modules(model, trained):
        out.update(f"{name}.{b}" if name else b for b, _ in mod.named_buffers(recurse=False))
    return sorted(out)


# ----------------------------------------------------------------------------------------------------
# attacks used in training and selection


def _project(delta: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    return (x + delta.clamp(-eps, eps)).clamp(0, 1) - x


def attack_batch(
    model: Callable,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    kind: str,
    eps: float,
    step: float,
    steps: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Adversarial images for training or selection. ``kind``: fgsm | nfgsm | pgd | trades (Linf, random start)."""
    if kind == "none":
        return x
    with torch.enable_grad():
        if kind == "nfgsm":  # noise of 2 eps, one step, clipped to the image range only
            delta = ((torch.rand(x.shape, generator=generator).to(x.device) * 2 - 1) * 2 * eps).requires_grad_(True)
            loss = F.cross_entropy(model((x + delta).clamp(0, 1)), y)
            (grad,) = torch.autograd.grad(loss, delta)
            return (x + delta.detach() + step * grad.sign()).clamp(0, 1).detach()
        if kind == "trades":
            with torch.no_grad():
                p_clean = F.softmax(model(x), dim=1)
            noise = torch.randn(x.shape, generator=generator).to(x.device)
            delta = _project(0.001 * noise, x, eps)
            for _ in range(steps):
                delta.requires_grad_(True)
                loss = F.kl_div(F.log_softmax(model(x + delta), dim=1), p_clean, reduction="sum")
                (grad,) = torch.autograd.grad(loss, delta)
                delta = _project(delta.detach() + step * grad.sign(), x, eps)
            return (x + delta).detach()
        start = (torch.rand(x.shape, generator=generator).to(x.device) * 2 - 1) * eps
        delta = _project(start, x, eps)
        for _ in range(1 if kind == "fgsm" else steps):
            delta.requires_grad_(True)
            loss = F.cross_entropy(model(x + delta), y)
            (grad,) = torch.autograd.grad(loss, delta)
            delta = _project(delta.detach() + step * grad.sign(), x, eps)
    return (x + delta).detach()


def default_step(kind: str, eps: float, steps: int, step: float = 0.0) -> float:
    if step > 0:
        return step
    if kind == "nfgsm":
        return eps
    return 1.25 * eps if kind == "fgsm" else 2.5 * eps / max(1, steps)


def robust_accuracy(
    model: Callable,
    images,
    idx: torch.Tensor,
    *,
    kind: str,
    eps: float,
    steps: int,
    device,
    batch_size: int = 256,
    seed: int = 0,
) -> float:
    """Accuracy of ``model`` (eval mode) on ``images[idx]`` under a ``kind`` attack ("none" = clean)."""
    g = torch.Generator().manual_seed(seed)

    def judge(a: int, b: int) -> torch.Tensor:  # per sample: still correct after the attack?
        j = idx[a:b]
        x, y = images.floats(j).to(device), images.labels[j].to(device)
        xa = attack_batch(
            model, x, y, kind=kind, eps=eps, step=default_step(kind, eps, steps), steps=steps, generator=g
        )
        return (predict(model, xa, len(j), device) == y.cpu()).cpu()

    with eval_mode(model if isinstance(model, nn.Module) else None):
        correct = int(batched(judge, len(idx), batch_size).sum())
    return correct / max(1, len(idx))


# ----------------------------------------------------------------------------------------------------
# the training loop


def catastrophic_overfitting(rec: dict, history: list[dict]) -> bool:
    """An epoch whose PGD accuracy fell below half the best so far while its FGSM accuracy rose (Wong et al. 2020)."""
    best_pgd = max(r["val_pgd_acc"] for r in history)
    return bool(rec["val_pgd_acc"] < 0.5 * best_pgd and rec["val_fgsm_acc"] > history[-1]["val_fgsm_acc"])


NO_ELIGIBLE_EPOCH = "no epoch met the clean constraint: the file holds the starting weights"
NO_BETTER_EPOCH = "no trained epoch was more robust on validation than the start: the file holds the starting weights"


def selection_warning(best_epoch: int | None, history: list[dict]) -> str | None:
    """What to say loudly when selection kept the starting weights (epoch 0) after training ran; None otherwise."""
    trained = history[1:]
    if best_epoch != 0 or not trained:
        return None
    return NO_BETTER_EPOCH if any(r.get("eligible") and not r.get("rejected") for r in trained) else NO_ELIGIBLE_EPOCH


class _EMA:
    """Exponential moving average of the trained tensors (float ones; integer buffers are copied)."""

    def __init__(self, tensors: dict[str, torch.Tensor], decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in tensors.items()}

    @torch.no_grad()
    def update(self, tensors: dict[str, torch.Tensor], step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))  # warm-up: early averages follow the weights closely
        for k, v in tensors.items():
            s = self.shadow[k]
            if s.is_floating_point():
                s.mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                s.copy_(v)


def _optimizer(params: dict[str, nn.Parameter], cfg, lr_scale: dict[str, float], total: int):
    """SGD (Nesterov) with a one-cycle schedule over ``total`` steps: no weight decay on biases and norms, and the
    parameters ``lr_scale`` names (an ODE function) at a scaled learning rate. Returns (optimizer, scheduler)."""
    buckets: dict[tuple[bool, float], list] = {}
    for n, p in params.items():
        buckets.setdefault((p.ndim > 1, float(lr_scale.get(n, 1.0))), []).append(p)
    groups = [
        {"params": ps, "weight_decay": cfg.weight_decay if decay else 0.0, "lr": cfg.lr * scale}
        for (decay, scale), ps in sorted(buckets.items())
    ]
    opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    if total < 8:  # too few steps for a warm-up
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    max_lr = [g["lr"] for g in groups]
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=max_lr, total_steps=total, pct_start=cfg.warmup, anneal_strategy="linear", cycle_momentum=False
    )
    return opt, sched


def training_loss(model: nn.Module, x: torch.Tensor, xa: torch.Tensor, y: torch.Tensor, *, kind: str, beta: float):
    """The training objective on a batch and its adversarial images: CE on ``xa``, or for ``trades``
    CE(f(x), y) + beta KL(f(x) || f(xa))."""
    if kind != "trades":
        return F.cross_entropy(model(xa), y)
    logits_clean = model(x)
    kl = F.kl_div(F.log_softmax(model(xa), dim=1), F.softmax(logits_clean, dim=1), reduction="batchmean")
    return F.cross_entropy(logits_clean, y) + beta * kl


def adversarial_train(
    model: nn.Module,
    trained: list[str],
    train_set,
    train_idx: torch.Tensor,
    val_set,
    val_idx: torch.Tensor,
    cfg,
    *,
    device: torch.device,
    generator: torch.Generator,
    reporter,
    extra_loss: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
    eval_model: nn.Module | None = None,
    lr_scale: dict[str, float] | None = None,
    save_state: Callable[[dict[str, torch.Tensor], dict[str, Any]], None] | None = None,
    resume_state: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Train the parameters named ``trained`` of ``model`` adversarially; load the best epoch's weights into it.

    ``cfg`` is an :class:`~sodef_cli.config.AdversarialConfig`. ``extra_loss(model, x)`` adds a term to the loss
    (the SODEF stability terms). ``eval_model`` (default ``model``) is what selection attacks: it must share
    ``model``'s weights. ``lr_scale`` multiplies the learning rate of the parameters it names. Returns the
    history and selection as data.

    Resuming: ``save_state(tensors, records)`` is called after every finished epoch with everything the next epoch
    needs (live, averaged and best weights, optimizer and schedule, step count, selection history, random states);
    ``resume_state`` (what it was last given) continues from there, so that the result equals an uninterrupted run's
    bit for bit. The caller's ``generator`` must be in the state it had when the interrupted run began this stage.
    """
    eval_model = eval_model if eval_model is not None else model
    # channels-last activations: about a quarter less time per convolution pass on CPU (benchmarks/hardening.py
    # notes); the weights go back to the default layout before returning, so the file is the same either way
    model.to(memory_format=torch.channels_last)
    tset = set(trained)
    params = dict(model.named_parameters())
    unknown = tset - set(params)
    if unknown:
        raise ModelError(f"cannot train unknown parameters {sorted(unknown)[:3]}")
    for n, p in params.items():
        p.requires_grad_(n in tset)
    modules = trained_modules(model, tset)
    state_names = trained_state_names(model, tset)
    state = model.state_dict(keep_vars=True)
    tensors = lambda: {k: state[k] for k in state_names}

    def set_mode(train: bool) -> None:
        model.eval()
        if train:
            for _, m in modules:
                m.train()

    trainable = [params[n] for n in trained]
    steps_per_epoch = max(1, math.ceil(len(train_idx) / cfg.batch_size))
    total = cfg.epochs * steps_per_epoch
    opt, sched = _optimizer({n: params[n] for n in trained}, cfg, lr_scale or {}, total)
    ema = _EMA(tensors(), cfg.ema) if cfg.ema > 0 else None
    eps, kind = cfg.eps, cfg.attack
    step_size = default_step(kind, eps, cfg.steps, cfg.step)
    sel = val_idx[torch.randperm(len(val_idx), generator=generator)[: cfg.select_n]]
    ramp_steps = cfg.eps_ramp * steps_per_epoch

    def ramp(step: int) -> float:
        """The share of eps the training attack uses at ``step``: linear from 0 over ``cfg.eps_ramp`` epochs, then 1."""
        return 1.0 if ramp_steps <= 0 else min(1.0, (step + 1) / ramp_steps)

    def evaluate(epoch: int) -> dict[str, Any]:
        set_mode(False)
        rec = {"epoch": epoch}
        rec["val_clean_acc"] = robust_accuracy(eval_model, val_set, sel, kind="none", eps=eps, steps=0, device=device)
        rec["val_pgd_acc"] = robust_accuracy(
            eval_model, val_set, sel, kind="pgd", eps=eps, steps=cfg.select_steps, device=device, seed=epoch
        )
        rec["val_fgsm_acc"] = robust_accuracy(
            eval_model, val_set, sel, kind="fgsm", eps=eps, steps=1, device=device, seed=epoch
        )
        return rec

    def snapshot() -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in (ema.shadow if ema else tensors()).items()}

    @torch.no_grad()
    def load(sd: dict[str, torch.Tensor]) -> None:
        for k, v in sd.items():
            state[k].copy_(v)

    # epoch 0: the starting point, a candidate like any other (a resumed run has its record already)
    start = evaluate(0) if resume_state is None else resume_state[1]["history"][0]

    def eligible(rec: dict[str, Any]) -> bool:
        """An epoch may be kept unless it costs more clean accuracy than ``cfg.max_clean_drop`` points."""
        rec["eligible"] = (
            cfg.max_clean_drop < 0 or 100 * (start["val_clean_acc"] - rec["val_clean_acc"]) <= cfg.max_clean_drop + 1e-9
        )
        return rec["eligible"]

    def rejected(rec: dict[str, Any], history: list[dict]) -> bool:
        """Early stopping (Wong et al. 2020): the epochs after catastrophic overfitting do not recover."""
        rec["rejected"] = catastrophic_overfitting(rec, history)
        return rec["rejected"]

    def log(rec: dict[str, Any]) -> None:
        reporter.log(
            f"adversarial epoch {rec['epoch']}/{cfg.epochs}: val clean {rec['val_clean_acc']:.4f}, PGD-{cfg.select_steps} "
            f"{rec['val_pgd_acc']:.4f}, FGSM {rec['val_fgsm_acc']:.4f}, loss {rec['train_loss']:.4f}, {rec['seconds']:.0f} s"
            + (" - REJECTED: catastrophic overfitting" if rec["rejected"] else "")
            + (
                ""
                if rec["rejected"] or rec["eligible"]
                else f" - not kept: clean more than {cfg.max_clean_drop:g} points below the start"
            )
        )

    reporter.log(
        f"adversarial training: start val clean {start['val_clean_acc']:.4f}, PGD-{cfg.select_steps} {start['val_pgd_acc']:.4f}"
    )
    task = f"adversarial training ({kind})"
    reporter.start(task, total)
    step = 0
    live = {k: v.detach().clone() for k, v in tensors().items()}
    resumed = None
    if resume_state is not None:
        r_tensors, r_records = resume_state
        step = int(r_records["step"])
        live = {k: r_tensors[f"live.{k}"].clone() for k in state_names}
        if ema is not None:
            ema.shadow = {k: r_tensors[f"ema.{k}"].clone() for k in state_names}
        load(live)
        extra = torch.load(io.BytesIO(r_tensors["train_state"].numpy().tobytes()), weights_only=True)
        opt.load_state_dict(extra["opt"])
        sched.load_state_dict(extra["sched"])
        torch.set_rng_state(extra["torch_rng"])
        generator.set_state(extra["gen"])
        fit0 = Fit(
            history=list(r_records["history"]),
            best_epoch=r_records["best_epoch"],
            best_score=tuple(r_records["best_score"]) if r_records["best_score"] is not None else None,
            epochs_run=int(r_records["epochs_run"]),
        )
        best = {k: r_tensors[f"best.{k}"].clone() for k in state_names} if fit0.best_epoch is not None else None
        resumed = (fit0, best)
        reporter.log(f"adversarial training: resuming after epoch {fit0.epochs_run}/{cfg.epochs}")
        reporter.advance(task, step)

    def checkpoint(fit: Fit, best: dict[str, torch.Tensor] | None) -> None:
        """Everything the next epoch needs, handed to ``save_state`` (the caller writes it atomically)."""
        if save_state is None:
            return
        buf = io.BytesIO()
        torch.save(
            {
                "opt": opt.state_dict(),
                "sched": sched.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "gen": generator.get_state(),
            },
            buf,
        )
        out = {f"live.{k}": v for k, v in live.items()}
        if ema is not None:
            out.update({f"ema.{k}": v for k, v in ema.shadow.items()})
        if best is not None:
            out.update({f"best.{k}": v for k, v in best.items()})
        out["train_state"] = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
        records = {
            "step": step,
            "history": fit.history,
            "best_epoch": fit.best_epoch,
            "best_score": list(fit.best_score) if fit.best_score is not None else None,
            "epochs_run": fit.epochs_run,
        }
        save_state(out, records)

    def run_epoch(epoch: int) -> dict[str, Any]:
        nonlocal step, live
        t0 = time.perf_counter()
        if ema is not None:  # train the live weights, not the averaged ones evaluated last epoch
            load(live)
        set_mode(True)
        perm = train_idx[torch.randperm(len(train_idx), generator=generator)]
        loss_sum = 0.0
        for i in range(0, len(perm), cfg.batch_size):
            j = perm[i : i + cfg.batch_size]
            x = train_set.floats(j)
            if cfg.augment:
                x = random_crop_flip(x, generator)
            x, y = x.to(device).contiguous(memory_format=torch.channels_last), train_set.labels[j].to(device)
            r = ramp(step)
            xa = attack_batch(
                model, x, y, kind=kind, eps=eps * r, step=step_size * r, steps=cfg.steps, generator=generator
            )
            loss = training_loss(model, x, xa, y, kind=kind, beta=cfg.beta)
            if extra_loss is not None:
                loss = loss + extra_loss(model, x)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"adversarial training: loss became {loss.item()} at epoch {epoch}, step {step}; "
                    "lower adversarial.lr or clip gradients (adversarial.grad_clip, e.g. 10). No output was written"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            opt.step()
            sched.step()
            step += 1
            loss_sum += loss.item()
            if ema is not None:
                ema.update(tensors(), step)
            reporter.advance(task, loss=loss.item())
        live = {k: v.detach().clone() for k, v in tensors().items()}
        if ema is not None:
            load(ema.shadow)
        rec = evaluate(epoch)
        rec["train_loss"] = loss_sum / steps_per_epoch
        rec["seconds"] = time.perf_counter() - t0
        return rec

    # the best PGD accuracy is kept; ties go to the epoch with the better clean accuracy, then to the earlier one
    fit = fit_epochs(
        run_epoch,
        cfg.epochs,
        start=start,
        score=lambda r: (r["val_pgd_acc"], r["val_clean_acc"]),
        eligible=eligible,
        stop=rejected,
        on_epoch=log,
        snapshot=snapshot,
        restore=load,
        after_epoch=checkpoint,
        resume=resumed,
    )
    history = fit.history
    model.to(memory_format=torch.contiguous_format)
    reporter.end(task)
    warning = selection_warning(fit.best_epoch, history)
    if warning:
        reporter.log(f"warning: {warning}")
    set_mode(False)
    for p in params.values():
        p.requires_grad_(False)
    return {
        "attack": kind,
        "eps": eps,
        "step": step_size,
        "steps": cfg.steps if kind in ("pgd", "trades") else (1 if kind in ("fgsm", "nfgsm") else 0),
        "beta": cfg.beta if kind == "trades" else None,
        "epochs": cfg.epochs,
        "epochs_run": len(history) - 1,
        "stopped_early": fit.stopped_early,
        "best_epoch": fit.best_epoch,
        "selection_warning": warning,
        "val_pgd_acc": fit.best_score[0],
        "select": {
            "n": len(sel),
            "attack": f"pgd-{cfg.select_steps}",
            "max_clean_drop_points": cfg.max_clean_drop if cfg.max_clean_drop >= 0 else None,
        },
        "history": [{k: v for k, v in r.items() if k != "seconds"} for r in history],
        "seconds": [r.get("seconds", 0.0) for r in history],
        "trained_parameters": sorted(tset),
        "trained_state": state_names,
    }
