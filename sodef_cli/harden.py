"""``sodef harden``: frozen timm backbone -> cached features -> phases 1-3 -> one safetensors file.

The backbone is frozen and kept in eval mode throughout; its parameters and BatchNorm buffers are
checked bitwise-unchanged before the file is written. Features are extracted once.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import torch

from .backbone import ModelSpec, backbone_features, build_backbone, freeze, load_base_file
from .config import HardenConfig, to_dict
from .data import load_data, stratified_split
from .diagnostics import jacobian_stability
from .errors import ModelError, ModelFileError, SodefError
from .head import SODEFHead, simplex_classifier
from .io import read_metadata, save_model_file, sha256_file, versions
from .phases import Reporter, accuracy_from_logits, batched_logits, extract_features, fit_probe, phase1, phase2, phase3
from .runtime import resolve_device, seed_everything

__all__ = ["harden", "state_digest"]

STABILITY_POINTS = 1000  # features sampled for the eigenvalue diagnostics


def state_digest(module: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer, bitwise."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _load_model(cfg: HardenConfig, reporter: Reporter):
    """Returns (backbone, spec, source_info, data)."""
    src = Path(cfg.model) if cfg.model else None
    if not cfg.model:
        raise ModelError("no model given: pass a timm name (e.g. resnet18) or a file made by `sodef pretrain`")
    if src is not None and (src.suffix in (".safetensors", ".pth", ".pt", ".bin") or src.exists()):
        if src.suffix != ".safetensors":
            raise ModelFileError(
                f"{src}: a model file must be a `sodef pretrain` safetensors file; for other weights use "
                "`sodef harden TIMM_NAME --checkpoint FILE`"
            )
        meta = read_metadata(src, expect="sodef_cli/base")
        spec = ModelSpec.from_dict(meta.get("backbone", {}))
        size = cfg.image_size or spec.input_size[-1]
        data = load_data(cfg.data, data_dir=cfg.data_dir, download=cfg.download, channels=spec.in_chans, image_size=size,
                         progress=lambda t, d, n: None)
        if spec.classes and len(spec.classes) != len(data.classes):
            raise ModelError(
                f"class-count mismatch: {src} was trained for {len(spec.classes)} classes, the data {cfg.data!r} has {len(data.classes)}"
            )
        if spec.classes and spec.classes != data.classes:
            reporter.log(f"warning: class names of {src.name} differ from the data's; matching by index")
        model, spec, _ = load_base_file(src)
        source = {"kind": "sodef_base_file", "path": str(src), "sha256": sha256_file(src)}
        return model, spec, source, data
    data = load_data(cfg.data, data_dir=cfg.data_dir, download=cfg.download, image_size=cfg.image_size)
    model, spec = build_backbone(
        cfg.model, data_classes=data.classes, in_chans=data.channels, image_size=data.image_size,
        pretrained=cfg.pretrained, checkpoint=cfg.checkpoint,
    )
    source = {"kind": "timm", "name": cfg.model, "pretrained": cfg.pretrained}
    if cfg.checkpoint:
        source.update(checkpoint=str(cfg.checkpoint), checkpoint_sha256=sha256_file(cfg.checkpoint))
    return model, spec, source, data


def harden(cfg: HardenConfig, out: str | Path, *, reporter: Reporter | None = None) -> dict[str, Any]:
    """Run hardening end to end and write ``out``. Returns the summary (also stored in the file)."""
    reporter = reporter or Reporter()
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    seed_everything(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    device = resolve_device(cfg.device)

    t0 = time.perf_counter()
    backbone, spec, source, data = _load_model(cfg, reporter)
    k = len(data.classes)
    if cfg.head.dim < k:
        from .errors import UsageError

        raise UsageError(f"head.dim ({cfg.head.dim}) must be >= the number of classes ({k}); pass --dim {max(64, k)}")
    backbone = freeze(backbone).to(device)
    digest_before = state_digest(backbone)
    timings["load"] = time.perf_counter() - t0

    tr_idx, val_idx = stratified_split(data.train.labels, cfg.val_fraction, cfg.seed)
    from .backbone import Normalize

    normalize = Normalize(spec.mean, spec.std).to(device)
    feature_fn = lambda x: backbone_features(backbone, normalize(x))
    t0 = time.perf_counter()
    h_train_all = extract_features(feature_fn, data.train, device=device, batch_size=cfg.feature_batch_size, reporter=reporter, task="features (train)")
    h_test = extract_features(feature_fn, data.test, device=device, batch_size=cfg.feature_batch_size, reporter=reporter, task="features (test)")
    timings["features"] = time.perf_counter() - t0
    y_all, y_test = data.train.labels, data.test.labels
    h_tr, y_tr, h_val, y_val = h_train_all[tr_idx], y_all[tr_idx], h_train_all[val_idx], y_all[val_idx]
    if not torch.isfinite(h_train_all).all():
        raise ModelError("the backbone produced NaN/inf features; check the model weights and input size")

    # the same-features baseline: the model's own head when it fits the classes, else a linear probe
    t0 = time.perf_counter()
    probe = None
    if spec.num_classes == k:
        clf = backbone.get_classifier()
        base_kind = "own"
        base_val = accuracy_from_logits(batched_logits(clf, h_val, device=device), y_val)
        base_test = accuracy_from_logits(batched_logits(clf, h_test, device=device), y_test)
    else:
        base_kind = "probe"
        probe, _ = fit_probe(h_tr, y_tr, h_val, y_val, k, cfg.probe, device=device, generator=gen, reporter=reporter)
        base_val = accuracy_from_logits(batched_logits(probe, h_val, device=device), y_val)
        base_test = accuracy_from_logits(batched_logits(probe, h_test, device=device), y_test)
    timings["base_classifier"] = time.perf_counter() - t0

    head = SODEFHead(h_tr.shape[1], k, cfg.head).to(device)
    V = simplex_classifier(k, cfg.head.dim)
    t0 = time.perf_counter()
    m1 = phase1(head, h_tr, y_tr, h_val, y_val, V, cfg.phase1, device=device, generator=gen, reporter=reporter)
    timings["phase1"] = time.perf_counter() - t0
    head.materialize()  # projection is final: a plain orthonormal weight from here on
    head.proj.requires_grad_(False)
    with torch.no_grad():
        z_tr = batched_logits(head.z0, h_tr, device=device)
        z_val = batched_logits(head.z0, h_val, device=device)
        z_test = batched_logits(head.z0, h_test, device=device)
    sample = z_test[torch.randperm(len(z_test), generator=gen)[:STABILITY_POINTS]].to(device)
    stab_before = jacobian_stability(head.odefunc, sample)

    t0 = time.perf_counter()
    m2 = phase2(head.odefunc, z_tr, cfg.phase2, cfg.regularizer, device=device, generator=gen, reporter=reporter)
    timings["phase2"] = time.perf_counter() - t0
    stab_after = jacobian_stability(head.odefunc, sample)

    t0 = time.perf_counter()
    m3 = phase3(head, z_tr, y_tr, z_val, y_val, cfg.phase3, device=device, generator=gen, reporter=reporter)
    timings["phase3"] = time.perf_counter() - t0
    stab_final = jacobian_stability(head.odefunc, sample)
    head.eval()
    with torch.no_grad():
        logits_test = batched_logits(lambda z: head.classifier(head.block(z)), z_test, device=device, batch_size=cfg.phase3.batch_size)
    hard_test = accuracy_from_logits(logits_test, y_test)

    if state_digest(backbone) != digest_before:  # pragma: no cover - a bug, never a user error
        raise SodefError("internal error: the frozen backbone changed during hardening; no file written")

    summary: dict[str, Any] = {
        "out": str(out),
        "data": data.describe(),
        "split": {"train": len(tr_idx), "val": len(val_idx), "seed": cfg.seed},
        "base": {"classifier": base_kind, "val_acc": base_val, "test_clean_acc": base_test},
        "hardened": {"val_acc": m3["val_acc"], "test_clean_acc": hard_test},
        "phases": {"phase1": m1, "phase2": m2, "phase3": m3},
        "stability": {"before_phase2": stab_before, "after_phase2": stab_after, "final": stab_final},
        "backbone_digest": digest_before,
        "device": str(device),
    }

    check = None
    if cfg.check.enabled:
        from .guard import run_check

        t0 = time.perf_counter()
        check = run_check(backbone, spec, head, probe, data.train.subset(val_idx), cfg, device=device, reporter=reporter)
        check["train_indices"] = [int(val_idx[i]) for i in check.pop("val_positions")]  # indices into the train split
        if cfg.check.require_gain and check["gain_points"] < 0:
            check["require_gain_failed"] = True  # the file is still written, marked as failing the guard
        timings["check"] = time.perf_counter() - t0
    summary["check"] = check
    timings["total"] = time.perf_counter() - t_all
    summary["timings_s"] = timings

    meta = {
        "format": "sodef_cli/hardened",
        "format_version": 1,
        "backbone": spec.to_dict(),
        "classes": list(data.classes),
        "num_classes": k,
        "feature_dim": int(h_tr.shape[1]),
        "base_classifier": base_kind,
        "source": source,
        "config": to_dict(cfg),
        # no timings or timestamps: same inputs and seed give a bitwise-identical file
        "metrics": {k_: v for k_, v in summary.items() if k_ not in ("out", "check", "timings_s", "device")},
        "check": check,
        "versions": versions(),
    }
    tensors = {f"backbone.{k_}": v for k_, v in backbone.state_dict().items()}
    tensors.update({f"head.{k_}": v for k_, v in head.export_state().items()})
    if probe is not None:
        tensors.update({f"probe.{k_}": v for k_, v in probe.state_dict().items()})
    save_model_file(out, tensors, meta)
    return summary
