"""``sodef harden``: frozen timm backbone -> cached features -> phases 1-3 -> one safetensors file.

:func:`harden` checks its inputs before any expensive work, then runs its stages in order: load the model and
the data, extract features once, fit the same-features baseline, phases 1-3 of the SODEF head (with the stability
diagnostics), optional adversarial training, the hardening guard, and the file (``models.save_hardened``).
The stages up to phase 2 are cached for ``--resume`` by :meth:`resume.Checkpoint.stage`.

The backbone is frozen and kept in eval mode throughout; its parameters and BatchNorm buffers are checked
bitwise-unchanged before the file is written.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .backbone import BaseClassifier, ModelSpec, build_backbone, check_timm_name, freeze, split_state
from .config import HardenConfig, hardening_path, to_dict, validate
from .data import DataBundle, check_split, held_out_check_split, load_data, stratified_split
from .diagnostics import jacobian_stability
from .distributed import device_for_rank, is_main, local, rank
from .errors import ModelError, ModelFileError, OutputError, SodefError, TrainingDivergedError
from .head import HardenedClassifier, SODEFHead, simplex_classifier
from .inference_solver import apply as apply_solver
from .inference_solver import select_solver
from .inference_solver import summary_line as solver_line
from .inputs import check_head_dim
from .io import sha256_file, versions
from .models import is_file_arg, load_base_file, save_hardened
from .phases import (
    Reporter,
    accuracy_from_logits,
    batched_logits,
    extract_features,
    fit_probe,
    phase1,
    phase2,
    phase3,
    stability_warning,
)
from .regularizers import stability_loss
from .resume import Checkpoint
from .runtime import resolve_device, seed_everything

__all__ = ["harden", "state_digest", "training_view", "training_line"]

STABILITY_POINTS = 1000  # features sampled for the eigenvalue diagnostics


def harden(
    cfg: HardenConfig, out: str | Path, *, reporter: Reporter | None = None, resume: bool = False
) -> dict[str, Any]:
    """Run hardening end to end and write ``out``. Returns the summary (also stored in the file).

    The config, the output path and the model argument (a timm name, or a base file's metadata) are checked
    first, before the data set is decoded. With ``resume``, stages finished by an interrupted run with the same
    config are loaded from ``OUT.resume`` instead of recomputed. A run that diverges (NaN/inf) leaves no file at
    all: its checkpoint would only replay the divergence.
    """
    out_path = Path(out)
    _check_inputs(cfg, out_path)
    try:
        return _harden(cfg, out_path, reporter=reporter or Reporter(), resume=resume)
    except TrainingDivergedError:
        Checkpoint.path_for(out_path).unlink(missing_ok=True)
        raise


def _harden(cfg: HardenConfig, out: Path, *, reporter: Reporter, resume: bool) -> dict[str, Any]:
    t_all = time.perf_counter()
    seed_everything(cfg.seed)
    run = _Run(cfg, device_for_rank(resolve_device(cfg.device)), torch.Generator().manual_seed(cfg.seed), reporter)
    with run.timed("load"):
        src = _load(run)
    split = _split(cfg, src.data, src.base_trained)
    ckpt = Checkpoint(
        out,
        config={k: v for k, v in to_dict(cfg).items() if k not in ("check", "device")},
        inputs=_inputs_text(src, split),
        generator=run.gen,
        resume=resume,
        log=reporter.log,
    )
    with run.timed("features"):
        h_train, h_test = _features(run, src, ckpt)
    if not is_main():  # torchrun: the other ranks only helped extract features; the head trains on rank 0
        return {"rank": rank(), "features": int(h_train.shape[0] + h_test.shape[0])}
    f = _Features.of(h_train, h_test, src.data, split)
    with run.timed("base_classifier"):
        base = _baseline(run, src, f, ckpt)
    head, sodef = _sodef_head(run, f, ckpt) if cfg.head.kind == "sodef" else (None, {"phases": None, "stability": None})
    tuned, linear, adv = src.backbone, None, None
    if cfg.adversarial.attack != "none":
        with run.timed("adversarial"):
            tuned, head, linear, adv = _adversarial_stage(
                cfg,
                src.backbone,
                src.spec,
                head,
                base.probe,
                src.data,
                split.train,
                split.val,
                device=run.device,
                generator=run.gen,
                reporter=reporter,
                ckpt=ckpt,
            )
    inference = None
    if head is not None and adv is None and cfg.inference.solver == "auto":
        with run.timed("inference_solver"):
            inference = _inference_solver(run, head, f)
    hardened = _hardened_model(tuned, src.spec, head, linear).to(run.device).eval()
    hard_val, hard_test = _hardened_accuracy(run, hardened, head, adv, f, src.data, split)
    if state_digest(src.backbone) != src.digest:  # pragma: no cover - a bug, never a user error
        raise SodefError("internal error: the frozen backbone changed during hardening; no file written")
    summary = {
        "out": str(out),
        "data": src.data.describe(),
        "split": {
            "train": len(split.train),
            "val": len(split.val),
            "check": len(split.check),
            "seed": cfg.seed,
            "check_held_out_from_base": split.held_out_from_base,
        },
        "base": {"classifier": base.kind, "val_acc": base.val_acc, "test_clean_acc": base.test_acc},
        "hardened": {"head": cfg.head.kind, "val_acc": hard_val, "test_clean_acc": hard_test},
        "path": hardening_path(cfg),
        **sodef,
        "adversarial": adv,
        "inference": inference,
        "backbone_digest": src.digest,
        "device": str(run.device),
        "check": None,
    }
    if cfg.check.enabled:
        with run.timed("check"):
            summary["check"] = _guard(run, src, base.probe, hardened, split)
    summary["require_gain_failed"] = _require_gain_failed(cfg, summary)
    run.timings["total"] = time.perf_counter() - t_all
    summary["timings_s"] = run.timings
    _save(out, cfg, src, f, base, summary, head=head, tuned=tuned, linear=linear)
    ckpt.remove()
    return summary


# ----------------------------------------------------------------------------------------------------
# what the stages share and pass on


@dataclass
class _Run:
    """What every stage of one run uses: the config, the device, the data-order generator, progress, timings."""

    cfg: HardenConfig
    device: torch.device
    gen: torch.Generator
    reporter: Reporter
    timings: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.timings[name] = time.perf_counter() - t0


@dataclass
class _Source:
    """The frozen backbone on the device, its spec, where it came from, the data, and the backbone's digest."""

    backbone: nn.Module
    spec: ModelSpec
    source: dict[str, Any]
    data: DataBundle
    digest: str
    base_trained: torch.Tensor | None = None  # indices of the train split the base trained on, when known


@dataclass
class _Split:
    """Indices into the train split: training, validation (model selection) and the guard's own check images."""

    train: torch.Tensor
    val: torch.Tensor
    check: torch.Tensor
    held_out_from_base: bool = False  # the check images are known not to be among the base's training images


@dataclass
class _Features:
    """Cached backbone features and labels of the training, validation and test images."""

    h_tr: torch.Tensor
    y_tr: torch.Tensor
    h_val: torch.Tensor
    y_val: torch.Tensor
    h_test: torch.Tensor
    y_test: torch.Tensor
    k: int

    @classmethod
    def of(cls, h_train: torch.Tensor, h_test: torch.Tensor, data: DataBundle, split: _Split) -> _Features:
        if not torch.isfinite(h_train).all():
            raise ModelError("the backbone produced NaN/inf features; check the model weights and input size")
        y = data.train.labels
        return cls(
            h_train[split.train],
            y[split.train],
            h_train[split.val],
            y[split.val],
            h_test,
            data.test.labels,
            len(data.classes),
        )


@dataclass
class _Baseline:
    """The same-features baseline: the model's own classifier ("own") or a linear probe ("probe")."""

    kind: str
    probe: nn.Linear | None
    val_acc: float
    test_acc: float


def state_digest(module: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer, bitwise."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------
# the stages, in the order they run


def _check_inputs(cfg: HardenConfig, out: Path) -> None:
    """Everything that can be checked without the data: the config, the output path, the model argument."""
    validate(cfg)
    if out.is_dir():
        raise OutputError(f"cannot write {out}: it is a folder")
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise OutputError(f"cannot write {out}: a parent of it is a file, not a folder")
    if not cfg.model:
        raise ModelError("no model given: pass a timm name (e.g. resnet18) or a file made by `sodef pretrain`")
    if not is_file_arg(cfg.model):
        check_timm_name(cfg.model)
    elif Path(cfg.model).suffix != ".safetensors":
        raise ModelFileError(
            f"{cfg.model}: a model file must be a `sodef pretrain` safetensors file; for other weights use "
            "`sodef harden TIMM_NAME --checkpoint FILE`"
        )


def _load(run: _Run) -> _Source:
    """The backbone (a base file's, or timm's by name) and the data; then the checks that need both."""
    cfg = run.cfg
    if is_file_arg(cfg.model):
        src = Path(cfg.model)
        model, spec, base_meta = load_base_file(src)  # the whole file is checked before the data is decoded
        data = load_data(
            cfg.data,
            data_dir=cfg.data_dir,
            download=cfg.download,
            channels=spec.in_chans,
            image_size=cfg.image_size or spec.input_size[-1],
        )
        if spec.classes and len(spec.classes) != len(data.classes):
            raise ModelError(
                f"class-count mismatch: {src} was trained for {len(spec.classes)} classes, the data {cfg.data!r} "
                f"has {len(data.classes)}"
            )
        if spec.classes and spec.classes != data.classes:
            run.reporter.log(f"warning: class names of {src.name} differ from the data's; matching by index")
        source = {"kind": "sodef_base_file", "path": str(src), "sha256": sha256_file(src)}
    else:
        data = load_data(cfg.data, data_dir=cfg.data_dir, download=cfg.download, image_size=cfg.image_size)
        model, spec = build_backbone(
            cfg.model,
            in_chans=data.channels,
            image_size=data.image_size,
            pretrained=cfg.pretrained,
            checkpoint=cfg.checkpoint,
        )
        source = {"kind": "timm", "name": cfg.model, "pretrained": cfg.pretrained}
        if cfg.checkpoint:
            source.update(checkpoint=str(cfg.checkpoint), checkpoint_sha256=sha256_file(cfg.checkpoint))
    if cfg.head.kind == "sodef":
        check_head_dim(cfg.head.dim, len(data.classes))
    if cfg.adversarial.attack != "none":  # before any expensive work: does the model have that many stages?
        from .adversarial import stage_parameters

        stage_parameters(model, cfg.adversarial.stages)
    backbone = freeze(model).to(run.device)
    data = data.materialize()
    trained = _base_trained(base_meta, data) if is_file_arg(cfg.model) and cfg.check.enabled else None
    return _Source(backbone, spec, source, data, state_digest(backbone), trained)


def _split(cfg: HardenConfig, data: DataBundle, base_trained: torch.Tensor | None = None) -> _Split:
    """Train, validation and the guard's check images. With ``base_trained`` (the base's own training images, known
    for `sodef pretrain` files on the same data) the check images are drawn outside them."""
    labels = data.train.labels
    train, val = stratified_split(labels, cfg.val_fraction, cfg.seed)
    check = torch.empty(0, dtype=torch.long)
    if not cfg.check.enabled:
        return _Split(train, val, check)
    # the guard's own images: held out from training and from every selection step
    if base_trained is None:
        train, check = check_split(labels, train, cfg.check.n, cfg.seed)
        return _Split(train, val, check)
    train, val, check = held_out_check_split(labels, train, val, base_trained, cfg.check.n, cfg.seed)
    return _Split(train, val, check, held_out_from_base=True)


def _base_trained(meta: dict[str, Any], data: DataBundle) -> torch.Tensor | None:
    """The train-split indices a `sodef pretrain` base trained on, when its file records them for these very
    images (same decoded training images, bitwise); None when unknown (older files, other data, timm weights)."""
    rec = meta.get("training_data")
    if not isinstance(rec, dict) or rec.get("split") != "stratified_split":
        return None
    if rec.get("n_train") != len(data.train) or rec.get("train_digest") != data.train.digest():
        return None
    try:
        return stratified_split(data.train.labels, float(rec["val_fraction"]), int(rec["seed"]))[0]
    except (KeyError, TypeError, ValueError):
        return None


def _inputs_text(src: _Source, split: _Split) -> str:
    """What a resumed run must share with the interrupted one besides the config: the backbone's weights, the data."""
    d = src.data
    data_digest = hashlib.sha256(
        d.train.labels.numpy().tobytes()
        + d.test.labels.numpy().tobytes()
        + d.train.images.numpy().tobytes()
        + d.test.images.numpy().tobytes()
    ).hexdigest()
    return src.digest + data_digest + f"|check {len(split.check)}"


def _features(run: _Run, src: _Source, ckpt: Checkpoint) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-logits features of every train and test image (normalize -> frozen backbone), once."""
    feature_fn = BaseClassifier(src.backbone, src.spec).to(run.device).features
    opts = dict(device=run.device, batch_size=run.cfg.feature_batch_size, reporter=run.reporter)

    def extract():
        train = extract_features(feature_fn, src.data.train, task="features (train)", **opts)
        # fp32 (no autocast): the test accuracies stored in the file are those of the model as shipped
        test = extract_features(feature_fn, src.data.test, task="features (test)", amp=False, **opts)
        return {"features.train": train, "features.test": test}, {}

    tensors, _ = ckpt.stage("features", extract)
    return tensors["features.train"], tensors["features.test"]


def _baseline(run: _Run, src: _Source, f: _Features, ckpt: Checkpoint) -> _Baseline:
    """The model's own classifier when it fits the classes, else a linear probe fitted on the same features."""
    own = src.spec.num_classes == f.k

    def fit():
        if own:
            return {}, {}
        probe, _ = fit_probe(
            f.h_tr,
            f.y_tr,
            f.h_val,
            f.y_val,
            f.k,
            run.cfg.probe,
            device=run.device,
            generator=run.gen,
            reporter=run.reporter,
        )
        return {f"probe.{n}": v for n, v in probe.state_dict().items()}, {}

    tensors, _ = ckpt.stage("base", fit)
    if own:
        probe, clf = None, src.backbone.get_classifier()
        if src.spec.classes != src.data.classes:
            run.reporter.log(
                f"note: the baseline is the model's own {f.k}-class head; its class order is assumed to be the "
                f"data's ({', '.join(src.data.classes[:3])}, ...)"
            )
    else:  # built from the stage's tensors without touching the random streams
        probe = clf = torch.nn.utils.skip_init(nn.Linear, f.h_tr.shape[1], f.k)
        probe.load_state_dict(split_state(tensors, "probe."))
        probe = probe.to(run.device).eval()
    acc = lambda h, y: accuracy_from_logits(batched_logits(clf, h, device=run.device), y)
    return _Baseline("own" if own else "probe", probe, acc(f.h_val, f.y_val), acc(f.h_test, f.y_test))


def _sodef_head(run: _Run, f: _Features, ckpt: Checkpoint) -> tuple[SODEFHead, dict[str, Any]]:
    """Phases 1-3 of the paper on the cached features, with the stability diagnostics before phase 2, after it and
    at the end. Returns (head, {"phases", "stability"})."""
    head = SODEFHead(f.h_tr.shape[1], f.k, run.cfg.head, orthogonal_map=run.cfg.phase1.orthogonal_map).to(run.device)
    with run.timed("phase1"):
        m1 = _phase1(run, head, f, ckpt)
    with torch.no_grad():
        z_tr, z_val, z_test = (batched_logits(head.z0, h, device=run.device) for h in (f.h_tr, f.h_val, f.h_test))
    # own generator: the diagnostics sample must not depend on where a resumed run restarted
    sample_gen = torch.Generator().manual_seed(run.cfg.seed + 1)
    sample = z_test[torch.randperm(len(z_test), generator=sample_gen)[:STABILITY_POINTS]].to(run.device)
    with run.timed("phase2"):
        m2, stab_before = _phase2(run, head, z_tr, sample, ckpt)
    stab_after, warning = _stability_after_phase2(run, head, sample)
    with run.timed("phase3"):
        m3 = phase3(
            head,
            z_tr,
            f.y_tr,
            z_val,
            f.y_val,
            run.cfg.phase3,
            device=run.device,
            generator=run.gen,
            reporter=run.reporter,
        )
    stab_final = jacobian_stability(head.odefunc, sample)
    head.eval()
    return head, {
        "phases": {"phase1": m1, "phase2": m2, "phase3": m3},
        "stability": {
            "before_phase2": stab_before,
            "after_phase2": stab_after,
            "final": stab_final,
            "warning": warning,
        },
    }


def _phase1(run: _Run, head: SODEFHead, f: _Features, ckpt: Checkpoint) -> dict:
    """The projection against the fixed simplex classifier; from here on a plain (materialized) weight, frozen."""
    cfg = run.cfg

    def fit():
        V = simplex_classifier(f.k, cfg.head.dim)
        m1 = phase1(
            head,
            f.h_tr,
            f.y_tr,
            f.h_val,
            f.y_val,
            V,
            cfg.phase1,
            device=run.device,
            generator=run.gen,
            reporter=run.reporter,
        )
        head.materialize()  # projection is final: a plain orthonormal weight from here on
        return {f"head.{n}": v for n, v in head.state_dict().items()}, {"phase1": m1}

    tensors, records = ckpt.stage("phase1", fit)
    head.materialize()
    # the latest saved head (after phase 1 or 2) carries the final projection that z(0) needs
    head.load_state_dict(split_state(tensors, "head."))
    head.proj.requires_grad_(False)
    return records["phase1"]


def _phase2(
    run: _Run, head: SODEFHead, z_tr: torch.Tensor, sample: torch.Tensor, ckpt: Checkpoint
) -> tuple[dict, dict]:
    """f with the stability regularizers alone on z(0). Returns (phase 2 figures, stability before phase 2)."""
    cfg = run.cfg

    def fit():
        before = jacobian_stability(head.odefunc, sample)
        m2 = phase2(
            head.odefunc, z_tr, cfg.phase2, cfg.regularizer, device=run.device, generator=run.gen, reporter=run.reporter
        )
        return {f"head.{n}": v for n, v in head.state_dict().items()}, {"phase2": m2, "stab_before": before}

    tensors, records = ckpt.stage("phase2", fit)
    head.load_state_dict(split_state(tensors, "head."))
    return records["phase2"], records["stab_before"]


def _stability_after_phase2(run: _Run, head: SODEFHead, sample: torch.Tensor) -> tuple[dict, str | None]:
    """The Jacobian statistics phase 2 left, and the warning (also logged) when too few are stable."""
    stab = jacobian_stability(head.odefunc, sample)
    warning = stability_warning(stab, run.cfg.phase2, run.cfg.regularizer)
    if warning:
        run.reporter.log(f"warning: {warning}")
    return stab, warning


def _inference_solver(run: _Run, head: SODEFHead, f: _Features) -> dict[str, Any]:
    """The solver the model ships with: the cheapest fixed-step solver whose validation predictions agree with
    ``head.solver``'s (``inference.*``); the head is switched to it. Returns the selection record."""
    c = run.cfg.inference
    record = select_solver(
        head,
        f.h_val.to(run.device),
        f.y_val.to(run.device),
        agreement=c.agreement,
        accuracy_tolerance=c.accuracy_tolerance,
        batch_size=run.cfg.feature_batch_size,
    )
    apply_solver(head, record)
    run.reporter.log(f"inference solver: {solver_line(record)}")
    return record


def _hardened_accuracy(
    run: _Run,
    hardened: nn.Module,
    head: SODEFHead | None,
    adv: dict | None,
    f: _Features,
    data: DataBundle,
    split: _Split,
) -> tuple[float, float]:
    """(validation, test) clean accuracy of the model as shipped (with its inference solver)."""
    if adv is None and head is not None:  # clean phases only: the cached features give the same logits
        acc = lambda h, y: accuracy_from_logits(
            batched_logits(head, h, device=run.device, batch_size=run.cfg.feature_batch_size), y
        )
        return acc(f.h_val, f.y_val), acc(f.h_test, f.y_test)
    # the backbone or the head changed in image space: measure the model as shipped on the images
    from .adversarial import robust_accuracy

    clean = dict(kind="none", eps=0.0, steps=0, device=run.device, batch_size=run.cfg.feature_batch_size)
    test = robust_accuracy(hardened, data.test, torch.arange(len(data.test)), **clean)
    return robust_accuracy(hardened, data.train, split.val, **clean), test


def _guard(run: _Run, src: _Source, probe: nn.Linear | None, hardened: nn.Module, split: _Split) -> dict[str, Any]:
    """The hardening guard on the held-out check images; with ``check.require_gain`` a significant loss (with
    ``check.require_significant_gain`` anything but a significant gain) is marked in its record (the file is still
    written)."""
    from .guard import require_gain_failure, run_check

    check_idx = split.check
    base_model = BaseClassifier(src.backbone, src.spec, probe).to(run.device).eval()
    with local():  # torchrun: the other ranks have finished; rank 0 checks alone
        check = run_check(
            base_model, hardened, src.data.train.subset(check_idx), run.cfg, device=run.device, reporter=run.reporter
        )
    check["train_indices"] = [int(check_idx[i]) for i in check.pop("positions")]  # indices into the train split
    check["path"] = hardening_path(run.cfg)  # which path was checked
    # True: drawn outside the base's recorded training images; False: the base's training images are unknown
    check["held_out_from_base"] = split.held_out_from_base
    c = run.cfg.check
    failed = require_gain_failure(
        check, require_gain=c.require_gain, require_significant_gain=c.require_significant_gain
    )
    if failed:
        check["require_gain_failed"] = True
        check["require_gain_rule"] = failed
    return check


def _require_gain_failed(cfg: HardenConfig, summary: dict[str, Any]) -> str | None:
    """The rule ``--require-gain`` / ``--require-significant-gain`` found broken, or None: the guard's (stored in
    its record), or a selection that kept the starting weights (the file is not hardened at all)."""
    c = cfg.check
    if not (c.require_gain or c.require_significant_gain):
        return None
    warning = (summary.get("adversarial") or {}).get("selection_warning")
    if warning:
        return f"{'--require-gain' if c.require_gain else '--require-significant-gain'}: {warning}"
    check = summary.get("check") or {}
    return check.get("require_gain_rule") if check.get("require_gain_failed") else None


def _save(
    out: Path,
    cfg: HardenConfig,
    src: _Source,
    f: _Features,
    base: _Baseline,
    summary: dict[str, Any],
    *,
    head: SODEFHead | None,
    tuned: nn.Module,
    linear: nn.Linear | None,
) -> None:
    """The hardened file: the tensors (``models.save_hardened``) and the metadata, with no timings or timestamps:
    the same inputs and seed give a bitwise-identical file."""
    adv = summary["adversarial"]
    meta = {
        "backbone": src.spec.to_dict(),
        "classes": list(src.data.classes),
        "num_classes": f.k,
        "feature_dim": int(f.h_tr.shape[1]),
        "base_classifier": base.kind,
        "source": src.source,
        "config": to_dict(cfg),
        "metrics": {
            k: v
            for k, v in summary.items()
            if k not in ("out", "check", "timings_s", "device", "inference", "require_gain_failed")
        },
        "inference": summary["inference"],
        "check": summary["check"],
        "versions": versions(),
    }
    tuned_state = {}
    if adv is not None:
        meta["metrics"]["adversarial"] = {k: v for k, v in adv.items() if k != "seconds"}
        tuned_sd = tuned.state_dict()
        tuned_state = {n: tuned_sd[n] for n in adv["tuned_backbone_state"]}
    save_hardened(out, backbone=src.backbone, meta=meta, head=head, probe=base.probe, tuned=tuned_state, linear=linear)


def _hardened_model(
    backbone, spec: ModelSpec, head: SODEFHead | None, linear: torch.nn.Linear | None
) -> torch.nn.Module:
    """The model as shipped: SODEF head on the (possibly tuned) backbone, or a linear head (own classifier or ``linear``)."""
    if head is not None:
        return HardenedClassifier(backbone, spec, head)
    return BaseClassifier(backbone, spec, linear)


def _adversarial_stage(
    cfg: HardenConfig,
    backbone,
    spec: ModelSpec,
    head: SODEFHead | None,
    probe,
    data,
    tr_idx,
    val_idx,
    *,
    device,
    generator,
    reporter,
    ckpt: Checkpoint | None = None,
):
    """Adversarial training in image space (``cfg.adversarial``). Returns (tuned backbone, head, linear head, record).

    With ``ckpt`` every finished epoch is saved to the resume file, and an interrupted run continues from there.

    The original backbone is never touched: the last ``stages`` stages are trained on a copy, and the file stores
    only the copy's trained tensors (``tuned.*``) next to the original weights. Gradients through a SODEF head come
    from the fixed-step ``adversarial.ode_solver`` with plain backprop (no adjoint), in training and its attack alike.
    """
    from .adversarial import adversarial_train, resolve_stages, stage_parameters, trained_state_names

    a = cfg.adversarial
    n_stages = resolve_stages(backbone, a.stages)
    # a copy only when backbone tensors will change (stages, or the model's own classifier as the linear head)
    tuned = copy.deepcopy(backbone) if n_stages or (head is None and probe is None) else backbone
    stage_names = stage_parameters(tuned, a.stages)  # UsageError when the model has fewer stages
    trained = [f"backbone.{n}" for n in stage_names]
    linear = None
    extra_loss = None
    if (
        head is None
    ):  # linear head: the model's own classifier, or an adversarial linear probe started from the clean probe
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
    if n_stages:
        what += f" + the last {n_stages} backbone stage(s) ({len(stage_names)} tensors)"
    reporter.log(f"adversarial training of {what}: {a.attack}, eps {a.eps:.4g}, {a.epochs} epoch(s)")
    lr_scale = {n: a.lr_ode for n in trained if n.startswith("head.ode.odefunc.")}
    rec = adversarial_train(
        model,
        trained,
        data.train,
        tr_idx,
        data.train,
        val_idx,
        a,
        device=device,
        generator=generator,
        reporter=reporter,
        extra_loss=extra_loss,
        lr_scale=lr_scale,
        save_state=None if ckpt is None else (lambda t, r: ckpt.progress("adversarial", t, r)),
        resume_state=None if ckpt is None else ckpt.partial("adversarial"),
    )
    tuned_state = [n[len("backbone.") :] for n in trained_state_names(model, set(trained)) if n.startswith("backbone.")]
    # bitwise check: everything outside the trained stages is the original
    orig, new = backbone.state_dict(), tuned.state_dict()
    changed = [n for n in orig if n not in tuned_state and not torch.equal(orig[n], new[n])]
    if changed:  # pragma: no cover - a bug, never a user error
        raise SodefError(
            f"internal error: frozen tensors changed during adversarial training ({changed[:3]}); no file written"
        )
    freeze(tuned)
    if linear is not None:
        freeze(linear)
    if head is not None:
        head.eval()
    # names as stored in the file (the training view of the head calls its ODE block "ode", the file "block")
    rec["trained_parameters"] = sorted(n.replace("head.ode.", "head.block.") for n in rec["trained_parameters"])
    rec["trained_state"] = sorted(n.replace("head.ode.", "head.block.") for n in rec["trained_state"])
    rec["tuned_backbone_state"] = tuned_state
    rec["stages"] = n_stages
    rec["head"] = cfg.head.kind
    rec["ode_solver"] = a.ode_solver if head is not None else None
    rec["summary"] = training_line(rec)
    return tuned, head, linear, rec


def training_view(head: SODEFHead, cfg: HardenConfig):
    """The head as adversarial training and its attack see it: the same weights, the ODE solved with the fixed-step
    ``adversarial.ode_solver`` at ``head.step_size`` and differentiated by plain backprop (never the adjoint)."""
    return head.with_ode(
        head.block.with_solver(cfg.adversarial.ode_solver, step_size=cfg.head.step_size, adjoint=False)
    )


def training_line(rec: dict) -> str:
    """One line for the model card: what was trained, with which attack, for how long."""
    attack = {
        "fgsm": "FGSM (random start)",
        "nfgsm": "N-FGSM",
        "pgd": f"PGD-{rec['steps']}",
        "trades": f"TRADES-{rec['steps']} (beta {rec['beta']})",
    }.get(rec["attack"], rec["attack"])
    what = "SODEF head" if rec["head"] == "sodef" else "linear head"
    if rec["stages"]:
        what += f" + last {rec['stages']} backbone stage(s)"
    return (
        f"{what} trained adversarially with {attack} at Linf {rec['eps'] * 255:.1f}/255 for {rec['epochs']} epoch(s), "
        f"kept epoch {rec['best_epoch']} ({len(rec['trained_parameters'])} parameter tensors)"
    )
