"""``sodef harden``: frozen timm backbone -> cached features -> phases 1-3 -> one safetensors file.

The backbone is frozen and kept in eval mode throughout; its parameters and BatchNorm buffers are
checked bitwise-unchanged before the file is written. Features are extracted once.
"""
from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch

from .backbone import BaseClassifier, ModelSpec, build_backbone, freeze, rebuild, split_state
from .config import HardenConfig, to_dict
from .data import check_split, load_data, stratified_split
from .diagnostics import jacobian_stability
from .errors import ModelError, ModelFileError, OutputError, SodefError, TrainingDivergedError, UsageError
from .head import HardenedClassifier, SODEFHead, simplex_classifier
from .io import load_tensors, read_metadata, save_model_file, sha256_file, versions
from .models import is_file_arg
from .phases import Reporter, accuracy_from_logits, batched_logits, extract_features, fit_probe, phase1, phase2, phase3, stability_warning
from .regularizers import stability_loss
from .distributed import device_for_rank, is_main, local, rank
from .runtime import resolve_device, seed_everything

__all__ = ["harden", "state_digest", "training_view", "training_line"]

STABILITY_POINTS = 1000  # features sampled for the eigenvalue diagnostics


STAGES = ("features", "base", "phase1", "phase2")


class _Resume:
    """Checkpoint beside the output after each finished stage, so ``--resume`` continues from there.

    ``OUT.resume`` is a safetensors file (cached features, head weights, RNG states) with the stage name
    and a digest of the config; it is written atomically and removed once the hardened file exists.
    """

    KEY = "sodef_cli_resume"

    def __init__(self, out: str | Path, cfg: HardenConfig, enabled: bool, reporter: Reporter, inputs: str = ""):
        self.path = Path(str(out) + ".resume")
        relevant = {k: v for k, v in to_dict(cfg).items() if k not in ("check", "device")}
        # the config, plus the backbone's weights and the data: cached features must come from the same inputs
        self.digest = hashlib.sha256((json.dumps(relevant, sort_keys=True) + inputs).encode()).hexdigest()
        self.tensors: dict[str, torch.Tensor] = {}
        self.meta: dict[str, Any] = {"stage": None}
        if self.path.exists() and not enabled:
            reporter.log(f"note: {self.path} holds an interrupted run; pass --resume to continue it (starting over)")
        if enabled and self.path.exists():
            from safetensors import safe_open

            try:
                with safe_open(str(self.path), framework="pt", device="cpu") as fh:
                    meta = json.loads((fh.metadata() or {}).get(self.KEY, "{}"))
                    tensors = {k: fh.get_tensor(k) for k in fh.keys()}
            except Exception as exc:  # noqa: BLE001 - a damaged checkpoint is reported, never trusted
                raise ModelFileError(f"cannot read the resume file {self.path} ({exc}); delete it to start over") from None
            if meta.get("digest") != self.digest:
                raise ModelFileError(f"{self.path} was made with a different configuration; delete it or rerun with the same options")
            self.tensors, self.meta = tensors, meta
            reporter.log(f"resuming after stage '{meta['stage']}' from {self.path}")
        elif enabled:
            reporter.log(f"nothing to resume ({self.path} does not exist); starting from the beginning")

    def done(self, stage: str) -> bool:
        return self.meta["stage"] is not None and STAGES.index(self.meta["stage"]) >= STAGES.index(stage)

    def save(self, stage: str, gen: torch.Generator, tensors: dict[str, torch.Tensor], **meta: Any) -> None:
        from safetensors.torch import save_file

        from .io import atomic_path

        self.tensors.update({k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()})
        self.tensors["rng.torch"] = torch.get_rng_state()
        self.tensors["rng.gen"] = gen.get_state()
        self.meta.update(meta, stage=stage, digest=self.digest)
        with atomic_path(self.path) as tmp:
            save_file(self.tensors, str(tmp), metadata={self.KEY: json.dumps(self.meta)})

    def restore_rng_if_last(self, stage: str, gen: torch.Generator) -> None:
        """Continue the random streams exactly where the interrupted run saved its last stage."""
        if self.meta["stage"] == stage:
            torch.set_rng_state(self.tensors["rng.torch"])
            gen.set_state(self.tensors["rng.gen"])

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


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
    if src is not None and is_file_arg(cfg.model):
        if src.suffix != ".safetensors":
            raise ModelFileError(
                f"{src}: a model file must be a `sodef pretrain` safetensors file; for other weights use "
                "`sodef harden TIMM_NAME --checkpoint FILE`"
            )
        meta = read_metadata(src, expect="sodef_cli/base")
        spec = ModelSpec.from_dict(meta.get("backbone", {}))
        size = cfg.image_size or spec.input_size[-1]
        data = load_data(cfg.data, data_dir=cfg.data_dir, download=cfg.download, channels=spec.in_chans, image_size=size)
        if spec.classes and len(spec.classes) != len(data.classes):
            raise ModelError(
                f"class-count mismatch: {src} was trained for {len(spec.classes)} classes, the data {cfg.data!r} has {len(data.classes)}"
            )
        if spec.classes and spec.classes != data.classes:
            reporter.log(f"warning: class names of {src.name} differ from the data's; matching by index")
        model = rebuild(spec, split_state(load_tensors(src), "backbone."))  # metadata already read and checked
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


def harden(cfg: HardenConfig, out: str | Path, *, reporter: Reporter | None = None, resume: bool = False) -> dict[str, Any]:
    """Run hardening end to end and write ``out``. Returns the summary (also stored in the file).

    With ``resume``, stages finished by an interrupted run with the same config are loaded from
    ``OUT.resume`` instead of recomputed. A run that diverges (NaN/inf) leaves no file at all: its
    checkpoint would only replay the divergence.
    """
    out_path = Path(out)
    if out_path.is_dir():
        raise OutputError(f"cannot write {out_path}: it is a folder")
    parent = next((p for p in out_path.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise OutputError(f"cannot write {out_path}: a parent of it is a file, not a folder")
    try:
        return _harden(cfg, out_path, reporter=reporter, resume=resume)
    except TrainingDivergedError:
        Path(str(out_path) + ".resume").unlink(missing_ok=True)
        raise


def _harden(cfg: HardenConfig, out: Path, *, reporter: Reporter | None, resume: bool) -> dict[str, Any]:
    reporter = reporter or Reporter()
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    seed_everything(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    device = device_for_rank(resolve_device(cfg.device))

    t0 = time.perf_counter()
    backbone, spec, source, data = _load_model(cfg, reporter)
    k = len(data.classes)
    if cfg.head.kind == "sodef" and cfg.head.dim < k:
        raise UsageError(f"head.dim ({cfg.head.dim}) must be >= the number of classes ({k}); pass --dim {max(64, k)}")
    if cfg.adversarial.attack != "none":  # before any expensive work: does the model have that many stages?
        from .adversarial import stage_parameters

        stage_parameters(backbone, cfg.adversarial.stages)
    backbone = freeze(backbone).to(device)
    digest_before = state_digest(backbone)
    timings["load"] = time.perf_counter() - t0

    tr_idx, val_idx = stratified_split(data.train.labels, cfg.val_fraction, cfg.seed)
    check_idx = torch.empty(0, dtype=torch.long)
    if cfg.check.enabled:  # the guard's own images: held out from training and from every selection step
        tr_idx, check_idx = check_split(data.train.labels, tr_idx, cfg.check.n, cfg.seed)
    feature_fn = BaseClassifier(backbone, spec).to(device).features  # normalize -> frozen backbone -> pre-logits
    data_digest = hashlib.sha256(data.train.labels.numpy().tobytes() + data.test.labels.numpy().tobytes()
                                 + data.train.images.numpy().tobytes() + data.test.images.numpy().tobytes()).hexdigest()
    ckpt = _Resume(out, cfg, resume, reporter, inputs=digest_before + data_digest + f"|check {len(check_idx)}")
    t0 = time.perf_counter()
    if ckpt.done("features"):
        h_train_all, h_test = ckpt.tensors["features.train"], ckpt.tensors["features.test"]
        ckpt.restore_rng_if_last("features", gen)
    else:
        h_train_all = extract_features(feature_fn, data.train, device=device, batch_size=cfg.feature_batch_size, reporter=reporter, task="features (train)")
        # fp32 (no autocast): the test accuracies stored in the file are those of the model as shipped
        h_test = extract_features(feature_fn, data.test, device=device, batch_size=cfg.feature_batch_size, reporter=reporter, task="features (test)", amp=False)
        ckpt.save("features", gen, {"features.train": h_train_all, "features.test": h_test})
    timings["features"] = time.perf_counter() - t0
    if not is_main():  # torchrun: the other ranks only helped extract features; the head trains on rank 0
        return {"rank": rank(), "features": int(h_train_all.shape[0] + h_test.shape[0])}
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
        if spec.classes != data.classes:
            reporter.log(f"note: the baseline is the model's own {k}-class head; its class order is assumed to be the data's ({', '.join(data.classes[:3])}, ...)")
        base_val = accuracy_from_logits(batched_logits(clf, h_val, device=device), y_val)
        base_test = accuracy_from_logits(batched_logits(clf, h_test, device=device), y_test)
    else:
        base_kind = "probe"
        if ckpt.done("base"):
            probe = torch.nn.Linear(h_tr.shape[1], k).to(device)
            probe.load_state_dict({n: ckpt.tensors[f"probe.{n}"] for n in ("weight", "bias")})
            ckpt.restore_rng_if_last("base", gen)
        else:
            probe, _ = fit_probe(h_tr, y_tr, h_val, y_val, k, cfg.probe, device=device, generator=gen, reporter=reporter)
        base_val = accuracy_from_logits(batched_logits(probe, h_val, device=device), y_val)
        base_test = accuracy_from_logits(batched_logits(probe, h_test, device=device), y_test)
    if spec.num_classes == k and ckpt.done("base"):
        ckpt.restore_rng_if_last("base", gen)
    if not ckpt.done("base"):
        ckpt.save("base", gen, {f"probe.{n}": v for n, v in probe.state_dict().items()} if probe is not None else {})
    timings["base_classifier"] = time.perf_counter() - t0

    if cfg.head.kind == "sodef":
        head, sodef_metrics = _fit_sodef_head(cfg, ckpt, h_tr, y_tr, h_val, y_val, h_test, k, device, gen, reporter, timings)
    else:  # a linear head: the baseline's own classifier (or probe), trained adversarially below
        head, sodef_metrics = None, {"phases": None, "stability": None}

    adv = None
    tuned_backbone, linear = backbone, None
    if cfg.adversarial.attack != "none":
        t0 = time.perf_counter()
        tuned_backbone, head, linear, adv = _adversarial_stage(cfg, backbone, spec, head, probe, data, tr_idx, val_idx,
                                                               device=device, generator=gen, reporter=reporter)
        timings["adversarial"] = time.perf_counter() - t0
    hardened = _hardened_model(tuned_backbone, spec, head, linear).to(device).eval()
    if adv is None and head is not None:  # clean phases only: the cached test features give the same logits
        with torch.no_grad():
            logits_test = batched_logits(head, h_test, device=device, batch_size=cfg.phase3.batch_size)
        hard_test = accuracy_from_logits(logits_test, y_test)
        hard_val = sodef_metrics["phases"]["phase3"]["val_acc"]
    else:  # the backbone or the head changed in image space: measure the model as shipped on the images
        from .adversarial import robust_accuracy

        clean = dict(kind="none", eps=0.0, steps=0, device=device, batch_size=cfg.feature_batch_size)
        hard_test = robust_accuracy(hardened, data.test, torch.arange(len(data.test)), **clean)
        hard_val = robust_accuracy(hardened, data.train, val_idx, **clean)

    if state_digest(backbone) != digest_before:  # pragma: no cover - a bug, never a user error
        raise SodefError("internal error: the frozen backbone changed during hardening; no file written")

    summary: dict[str, Any] = {
        "out": str(out),
        "data": data.describe(),
        "split": {"train": len(tr_idx), "val": len(val_idx), "check": len(check_idx), "seed": cfg.seed},
        "base": {"classifier": base_kind, "val_acc": base_val, "test_clean_acc": base_test},
        "hardened": {"head": cfg.head.kind, "val_acc": hard_val, "test_clean_acc": hard_test},
        "phases": sodef_metrics["phases"],
        "stability": sodef_metrics["stability"],
        "adversarial": adv,
        "backbone_digest": digest_before,
        "device": str(device),
    }

    check = None
    if cfg.check.enabled:
        from .guard import run_check

        t0 = time.perf_counter()
        base_model = BaseClassifier(backbone, spec, probe).to(device).eval()
        with local():  # torchrun: the other ranks have finished; rank 0 checks alone
            check = run_check(base_model, hardened, data.train.subset(check_idx), cfg, device=device, reporter=reporter)
        check["train_indices"] = [int(check_idx[i]) for i in check.pop("positions")]  # indices into the train split
        if cfg.check.require_gain and check["gain_points"] < 0:
            check["require_gain_failed"] = True  # the file is still written, marked as failing the guard
        timings["check"] = time.perf_counter() - t0
    summary["check"] = check
    timings["total"] = time.perf_counter() - t_all
    summary["timings_s"] = timings

    tensors = {f"backbone.{k_}": v for k_, v in backbone.state_dict().items()}
    if head is not None:
        tensors.update({f"head.{k_}": v for k_, v in head.export_state().items()})
    if probe is not None:
        tensors.update({f"probe.{k_}": v for k_, v in probe.state_dict().items()})
    if adv is not None:
        tuned_sd = tuned_backbone.state_dict()
        tensors.update({f"tuned.{n}": tuned_sd[n] for n in adv["tuned_backbone_state"]})
    if linear is not None:
        tensors.update({f"linear.{k_}": v for k_, v in linear.state_dict().items()})
    # version 2 only where an older reader would silently rebuild the wrong model (tuned stages, a linear head)
    new_layout = adv is not None and (adv["tuned_backbone_state"] or linear is not None or head is None)
    meta = {
        "format": "sodef_cli/hardened",
        "format_version": 2 if new_layout else 1,
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
    if adv is not None:
        meta["metrics"]["adversarial"] = {k_: v for k_, v in adv.items() if k_ != "seconds"}
    save_model_file(out, tensors, meta)
    ckpt.remove()
    return summary


def _fit_sodef_head(cfg: HardenConfig, ckpt: _Resume, h_tr, y_tr, h_val, y_val, h_test, k: int, device, gen, reporter,
                    timings: dict[str, float]):
    """Phases 1-3 of the paper on cached features. Returns (head, {"phases", "stability"})."""
    head = SODEFHead(h_tr.shape[1], k, cfg.head).to(device)
    V = simplex_classifier(k, cfg.head.dim)
    head_state = lambda: {f"head.{n}": v for n, v in head.state_dict().items()}
    t0 = time.perf_counter()
    if ckpt.done("phase1"):
        head.materialize()
        m1 = ckpt.meta["phase1"]
        # the latest saved head (after phase 1 or 2) carries the final projection that z(0) needs
        head.load_state_dict({n[5:]: v for n, v in ckpt.tensors.items() if n.startswith("head.")})
        ckpt.restore_rng_if_last("phase1", gen)
    else:
        m1 = phase1(head, h_tr, y_tr, h_val, y_val, V, cfg.phase1, device=device, generator=gen, reporter=reporter)
        head.materialize()  # projection is final: a plain orthonormal weight from here on
        ckpt.save("phase1", gen, head_state(), phase1=m1)
    timings["phase1"] = time.perf_counter() - t0
    head.proj.requires_grad_(False)
    with torch.no_grad():
        z_tr = batched_logits(head.z0, h_tr, device=device)
        z_val = batched_logits(head.z0, h_val, device=device)
        z_test = batched_logits(head.z0, h_test, device=device)
    # own generator: the diagnostics sample must not depend on where a resumed run restarted
    sample_gen = torch.Generator().manual_seed(cfg.seed + 1)
    sample = z_test[torch.randperm(len(z_test), generator=sample_gen)[:STABILITY_POINTS]].to(device)
    stab_before = ckpt.meta["stab_before"] if ckpt.done("phase2") else jacobian_stability(head.odefunc, sample)

    t0 = time.perf_counter()
    if ckpt.done("phase2"):
        head.load_state_dict({n[5:]: v for n, v in ckpt.tensors.items() if n.startswith("head.")})
        m2 = ckpt.meta["phase2"]
        ckpt.restore_rng_if_last("phase2", gen)
    else:
        m2 = phase2(head.odefunc, z_tr, cfg.phase2, cfg.regularizer, device=device, generator=gen, reporter=reporter)
        ckpt.save("phase2", gen, head_state(), phase2=m2, stab_before=stab_before)
    timings["phase2"] = time.perf_counter() - t0
    stab_after = jacobian_stability(head.odefunc, sample)
    stab_warning = stability_warning(stab_after, cfg.phase2, cfg.regularizer)
    if stab_warning:
        reporter.log(f"warning: {stab_warning}")
    t0 = time.perf_counter()
    m3 = phase3(head, z_tr, y_tr, z_val, y_val, cfg.phase3, device=device, generator=gen, reporter=reporter)
    timings["phase3"] = time.perf_counter() - t0
    stab_final = jacobian_stability(head.odefunc, sample)
    head.eval()
    return head, {"phases": {"phase1": m1, "phase2": m2, "phase3": m3},
                  "stability": {"before_phase2": stab_before, "after_phase2": stab_after, "final": stab_final,
                                "warning": stab_warning}}


def _hardened_model(backbone, spec: ModelSpec, head: SODEFHead | None, linear: torch.nn.Linear | None) -> torch.nn.Module:
    """The model as shipped: SODEF head on the (possibly tuned) backbone, or a linear head (own classifier or ``linear``)."""
    if head is not None:
        return HardenedClassifier(backbone, spec, head)
    return BaseClassifier(backbone, spec, linear)


def _adversarial_stage(cfg: HardenConfig, backbone, spec: ModelSpec, head: SODEFHead | None, probe, data, tr_idx, val_idx, *,
                       device, generator, reporter):
    """Adversarial training in image space (``cfg.adversarial``). Returns (tuned backbone, head, linear head, record).

    The original backbone is never touched: the last ``stages`` stages are trained on a copy, and the file stores
    only the copy's trained tensors (``tuned.*``) next to the original weights. Gradients through a SODEF head come
    from the fixed-step ``adversarial.ode_solver`` with plain backprop (no adjoint), in training and its attack alike.
    """
    from .adversarial import adversarial_train, stage_parameters, trained_state_names

    a = cfg.adversarial
    # a copy only when backbone tensors will change (stages, or the model's own classifier as the linear head)
    tuned = copy.deepcopy(backbone) if a.stages or (head is None and probe is None) else backbone
    stage_names = stage_parameters(tuned, a.stages)  # UsageError when the model has fewer stages
    trained = [f"backbone.{n}" for n in stage_names]
    linear = None
    extra_loss = None
    if head is None:  # linear head: the model's own classifier, or an adversarial linear probe started from the clean probe
        if probe is None:
            clf = tuned.get_classifier()
            trained += [f"backbone.{n}" for n, p in tuned.named_parameters() if any(p is q for q in clf.parameters())]
            model = BaseClassifier(tuned, spec)
        else:
            linear = copy.deepcopy(probe)
            model = BaseClassifier(tuned, spec, linear)
            trained += [f"probe.{n}" for n, _ in linear.named_parameters()]
        what = "the linear head"
    else:
        train_head = training_view(head, cfg)
        model = HardenedClassifier(tuned, spec, train_head)
        trained += [f"head.{n}" for n, _ in train_head.named_parameters() if not n.startswith("proj.")]
        what = "the SODEF head (f and the classifier)"
        if a.stability_weight > 0:
            def extra_loss(m, x):
                with torch.no_grad():
                    z0 = train_head.proj(m.features(x))
                return a.stability_weight * stability_loss(head.odefunc, z0, cfg.regularizer)["loss"]
    model = model.to(device)
    if a.stages:
        what += f" + the last {a.stages} backbone stage(s) ({len(stage_names)} tensors)"
    reporter.log(f"adversarial training of {what}: {a.attack}, eps {a.eps:.4g}, {a.epochs} epoch(s)")
    lr_scale = {n: a.lr_ode for n in trained if n.startswith("head.ode.odefunc.")}
    rec = adversarial_train(model, trained, data.train, tr_idx, data.train, val_idx, a, device=device, generator=generator,
                            reporter=reporter, extra_loss=extra_loss, lr_scale=lr_scale)
    tuned_state = [n[len("backbone."):] for n in trained_state_names(model, set(trained)) if n.startswith("backbone.")]
    # bitwise check: everything outside the trained stages is the original
    orig, new = backbone.state_dict(), tuned.state_dict()
    changed = [n for n in orig if n not in tuned_state and not torch.equal(orig[n], new[n])]
    if changed:  # pragma: no cover - a bug, never a user error
        raise SodefError(f"internal error: frozen tensors changed during adversarial training ({changed[:3]}); no file written")
    freeze(tuned)
    if linear is not None:
        freeze(linear)
    if head is not None:
        head.eval()
    # names as stored in the file (the training view of the head calls its ODE block "ode", the file "block")
    rec["trained_parameters"] = sorted(n.replace("head.ode.", "head.block.") for n in rec["trained_parameters"])
    rec["trained_state"] = sorted(n.replace("head.ode.", "head.block.") for n in rec["trained_state"])
    rec["tuned_backbone_state"] = tuned_state
    rec["stages"] = a.stages
    rec["head"] = cfg.head.kind
    rec["ode_solver"] = a.ode_solver if head is not None else None
    rec["summary"] = training_line(rec)
    return tuned, head, linear, rec


def training_view(head: SODEFHead, cfg: HardenConfig):
    """The head as adversarial training and its attack see it: the same weights, the ODE solved with the fixed-step
    ``adversarial.ode_solver`` at ``head.step_size`` and differentiated by plain backprop (never the adjoint)."""
    return head.with_ode(head.block.with_solver(cfg.adversarial.ode_solver, step_size=cfg.head.step_size, adjoint=False))


def training_line(rec: dict) -> str:
    """One line for the model card: what was trained, with which attack, for how long."""
    attack = {"fgsm": "FGSM (random start)", "pgd": f"PGD-{rec['steps']}", "trades": f"TRADES-{rec['steps']} (beta {rec['beta']})"}.get(
        rec["attack"], rec["attack"])
    what = "SODEF head" if rec["head"] == "sodef" else "linear head"
    if rec["stages"]:
        what += f" + last {rec['stages']} backbone stage(s)"
    return (f"{what} trained adversarially with {attack} at Linf {rec['eps'] * 255:.1f}/255 for {rec['epochs']} epoch(s), "
            f"kept epoch {rec['best_epoch']} ({len(rec['trained_parameters'])} parameter tensors)")
