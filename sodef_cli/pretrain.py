"""``sodef pretrain``: train or fine-tune a timm classifier for a data set, optionally with fast FGSM
adversarial training (random start, Wong et al. 2020), and save it as a self-describing safetensors file.

Selection uses a validation split carved from train: clean accuracy, or for ``fgsm`` the accuracy under
a 5-step PGD on up to 1,000 validation images (which also catches catastrophic overfitting).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .adversarial import random_crop_flip, robust_accuracy
from .backbone import BaseClassifier, ModelSpec, check_timm_name, create_timm, hub_config, normalization
from .config import PretrainConfig, to_dict, validate
from .data import load_data, stratified_split
from .errors import TrainingDivergedError
from .inference import batched, eval_mode, fit_epochs, predict
from .io import versions
from .models import save_base
from .phases import Reporter
from .runtime import resolve_device, seed_everything

__all__ = ["pretrain", "random_crop_flip", "pgd_linf"]


def pgd_linf(
    model, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float, steps: int, random_start: bool = True
) -> torch.Tensor:
    """Plain Linf PGD used by training and selection (evaluation uses ``sodef attack``)."""
    delta = torch.empty_like(x).uniform_(-eps, eps) if random_start else torch.zeros_like(x)
    delta = (x + delta).clamp(0, 1) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps)
        delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()


def _accuracy(model, images, idx: torch.Tensor, device, batch_size: int) -> float:
    return robust_accuracy(model, images, idx, kind="none", eps=0.0, steps=0, device=device, batch_size=batch_size)


def _robust_accuracy(model, images, idx, device, batch_size: int, eps: float) -> float:
    def judge(a: int, b: int) -> torch.Tensor:
        j = idx[a:b]
        x, y = images.floats(j).to(device), images.labels[j].to(device)
        with torch.enable_grad():
            xa = pgd_linf(model, x, y, eps=eps, alpha=eps / 4, steps=5)
        return (predict(model, xa, len(j), device) == y.cpu()).cpu()

    with eval_mode(model):
        correct = int(batched(judge, len(idx), batch_size).sum())
    return correct / max(1, len(idx))


def pretrain(cfg: PretrainConfig, out: str | Path, *, reporter: Reporter | None = None) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data`` and write the base file ``out``. Returns the summary.

    The config and the timm name are checked before the data set is decoded.
    """
    validate(cfg)
    check_timm_name(cfg.model)
    reporter = reporter or Reporter()
    seed_everything(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    t_all = time.perf_counter()
    data = load_data(cfg.data, data_dir=cfg.data_dir, download=cfg.download, image_size=cfg.image_size)
    k = len(data.classes)
    model = create_timm(
        cfg.model,
        num_classes=None if cfg.pretrained else k,
        in_chans=data.channels,
        pretrained=cfg.pretrained,
        kwargs=cfg.model_kwargs,
    )
    if cfg.pretrained:
        model.reset_classifier(k)
    mean, std = normalization(hub_config(cfg.model) if cfg.pretrained else {}, data.channels)
    spec = ModelSpec(
        cfg.model,
        k,
        data.channels,
        [data.channels, data.image_size, data.image_size],
        mean,
        std,
        list(data.classes),
        dict(cfg.model_kwargs),
    )
    net = BaseClassifier(model, spec).to(device)

    tr_idx, val_idx = stratified_split(data.train.labels, cfg.val_fraction, cfg.seed)
    steps_per_epoch = math.ceil(len(tr_idx) / cfg.batch_size)
    opt = torch.optim.SGD(
        net.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay
    )
    total_steps = cfg.epochs * steps_per_epoch
    if total_steps >= 8:
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total_steps, pct_start=0.25)
    else:  # too few steps for a one-cycle schedule (its warm-up would be empty)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    sel_idx = val_idx[torch.randperm(len(val_idx), generator=gen)[:1000]]
    reporter.start("pretrain", cfg.epochs * steps_per_epoch)
    step = 0

    def run_epoch(number: int) -> dict[str, Any]:
        nonlocal step
        epoch = number - 1
        net.train()
        perm = tr_idx[torch.randperm(len(tr_idx), generator=gen)]
        t0 = time.perf_counter()
        for i in range(0, len(perm), cfg.batch_size):
            j = perm[i : i + cfg.batch_size]
            x = data.train.floats(j)
            if cfg.augment:
                x = random_crop_flip(x, gen)
            x, y = x.to(device), data.train.labels[j].to(device)
            if cfg.adversarial == "fgsm":
                delta = (torch.rand(x.shape, generator=gen).to(device) * 2 - 1) * cfg.adv_eps
                delta.requires_grad_(True)
                loss_adv = F.cross_entropy(net((x + delta).clamp(0, 1)), y)
                (grad,) = torch.autograd.grad(loss_adv, delta)
                delta = (delta.detach() + cfg.adv_alpha * grad.sign()).clamp(-cfg.adv_eps, cfg.adv_eps)
                x = (x + delta).clamp(0, 1)
            loss = F.cross_entropy(net(x), y, label_smoothing=cfg.label_smoothing)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"pretrain: loss became {loss.item()} at epoch {epoch + 1}, step {step}; lower --lr. No output was written"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            reporter.advance("pretrain", loss=loss.item())
        net.eval()
        clean = _accuracy(net, data.train, val_idx, device, 512)
        rec = {"epoch": epoch + 1, "val_acc": clean, "seconds": time.perf_counter() - t0}
        if cfg.adversarial == "fgsm":
            rec["val_pgd5_acc"] = _robust_accuracy(net, data.train, sel_idx, device, 256, cfg.adv_eps)
        return rec

    fit = fit_epochs(
        run_epoch,
        cfg.epochs,
        score=lambda r: r.get("val_pgd5_acc", r["val_acc"]),  # robust accuracy when training adversarially
        snapshot=lambda: {k_: v.detach().clone() for k_, v in model.state_dict().items()},
        restore=model.load_state_dict,
        on_epoch=lambda r: reporter.log(
            f"epoch {r['epoch']}/{cfg.epochs}: " + ", ".join(f"{k_}={v:.4f}" for k_, v in r.items() if k_ != "epoch")
        ),
    )
    history = fit.history
    reporter.end("pretrain")
    net.eval()
    test_idx = torch.arange(len(data.test))
    test_acc = _accuracy(net, data.test, test_idx, device, 512)
    summary = {
        "out": str(out),
        "data": data.describe(),
        "best_epoch": fit.best_epoch,
        "history": history,
        "test_clean_acc": test_acc,
        "seconds": time.perf_counter() - t_all,
        "device": str(device),
    }
    meta = {
        "backbone": spec.to_dict(),
        "config": to_dict(cfg),
        # which images the base trained on: `sodef harden` on the same data draws its guard's check images elsewhere
        "training_data": {
            "train_digest": data.train.digest(),
            "n_train": len(data.train),
            "split": "stratified_split",
            "val_fraction": cfg.val_fraction,
            "seed": cfg.seed,
        },
        "training": {
            "best_epoch": summary["best_epoch"],
            "test_clean_acc": test_acc,
            "history": [
                {k_: v for k_, v in r.items() if k_ != "seconds"} for r in history
            ],  # no timings: reproducible files
        },
        "versions": versions(),
    }
    save_base(out, model, meta)
    return summary
