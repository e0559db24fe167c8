"""``sodef attack``: the per-sample attack cascade over the base and hardened models, masking checks,
and the results file (schema ``sodef_cli/attack-results`` v1).

Both models are evaluated on the same N test samples, drawn class by class with a fixed seed. Each
attack runs only on samples still robust for that model (AutoAttack's cascade), or on every clean-correct
sample with ``all_samples``. A sample's flag for an attack is ``true`` (survived), ``false`` (fooled) or
``null`` (not attacked: already fooled or misclassified). ``worst_case`` is the fraction of samples that
are correct and survive every attack, i.e. the per-sample AND of the flags with null as false.

The results file is rewritten atomically after every attack; rerunning with the same ``--out`` skips
attacks already finished. What has been done lives in a typed state (``results.EvaluationState``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .attacks import ATTACKS, AttackParams, Target, project, suite_attacks
from .distributed import all_gather_objects, gather_merge, is_main, map_batches, mine
from .errors import ModelError, ResultsError, UsageError
from .examples import ExampleBank
from .head import has_ode
from .inference import logits
from .inference import predict as _predict  # module global: tests spy on the judging of attacked images
from .io import sha256_file, versions
from .plan import AttackProgress, eps_text, estimate_plan, estimate_record, plan_text
from .registry import ADAPTIVE_KINDS, NORMS, or_list
from .results import AttackResult, EpsRun, EvaluationState, now, worst_case_flags
from .stats import paired_difference, wilson

__all__ = [
    "AttackConfig",
    "run_evaluation",
    "summarize",
    "worst_case_flags",
    "SCHEMA",
    "SCHEMA_VERSION",
    "masking_checks",
    "differences",
    "evaluation_strength",
    "reduced_budgets",
    "ADAPTIVE_KINDS",
    "estimate_plan",
    "plan_text",
    "run_comparison",
    "comparison_differences",
    "summarize_comparison",
    "COMPARISON_VERSION",
    "cascade",
    "EvaluationState",
]

SCHEMA = "sodef_cli/attack-results"
SCHEMA_VERSION = 1
LARGE_EPS = {"Linf": 0.5, "L2": 20.0}  # budgets that must break any model whose gradients are honest


@dataclass(frozen=True)
class AttackConfig:
    suite: str = "adaptive"
    attacks: tuple[str, ...] = ()
    norm: str = "Linf"
    eps: tuple[float, ...] = (8 / 255,)
    n: int = 1000
    seed: int = 0
    batch_size: int = 256
    all_samples: bool = False
    steps: int | None = None
    queries: int | None = None
    checks: bool = True  # masking checks (large-eps and batch-composition run extra forward passes)
    check_samples: int = 64  # samples for the large-eps and batch-composition checks
    fast_cpu: bool = True  # on CPU: channels-last weights, and no-gradient forwards through TorchScript traces

    def __post_init__(self) -> None:  # checked once, where the options are made, before any data or model is read
        self.validate()

    def validate(self) -> None:
        if self.norm not in NORMS:
            raise UsageError(f"--norm must be {or_list(NORMS)}, got {self.norm!r}")
        for e in self.eps:
            if not 0.0 <= e <= 1.0 and self.norm == "Linf":
                raise UsageError(f"--eps {e} is outside [0, 1]")
            if e < 0 or (self.norm == "L2" and e > 1000):
                raise UsageError(f"--eps {e} is not a valid {self.norm} radius")
        if not self.eps:
            raise UsageError("--eps needs at least one value")
        if self.n < 1 or self.batch_size < 1:
            raise UsageError("--n and --batch-size must be positive")
        if self.steps is not None and self.steps < 1 or self.queries is not None and self.queries < 1:
            raise UsageError("--steps and --queries must be positive")
        suite_attacks(self.suite, list(self.attacks), self.norm)


def _seed_for(seed: int, *parts: Any) -> int:
    h = hashlib.sha256(("|".join(map(str, (seed,) + parts))).encode()).digest()
    return int.from_bytes(h[:4], "little")


def _frac(flags: list) -> float:
    return sum(1 for f in flags if f is True) / max(1, len(flags))


def masking_checks(run: dict) -> list[dict]:
    """Gradient-masking signatures from one eps run of the hardened model (evidence as data)."""
    hard = run["models"].get("hardened", {})
    atk = hard.get("attacks", {})
    clean = hard.get("clean", [])
    checks: list[dict] = []

    def add(name: str, later_kind: str, earlier: tuple[str, ...], label: str) -> None:
        later = [n for n in atk if ATTACKS[n].kind == later_kind]
        direct = [n for n in atk if ATTACKS[n].kind in earlier]
        if not later or not direct:
            checks.append({"name": name, "flagged": None, "evidence": f"not run: the suite has no {label}"})
            return
        # samples that survived every direct white-box attack; which of them did the later attacks fool?
        survivors = [bool(c) for c in clean]
        for n in direct:
            survivors = [s and (f is True) for s, f in zip(survivors, atk[n]["robust"])]
        ran = [i for i, s in enumerate(survivors) if s and any(atk[n]["robust"][i] is not None for n in later)]
        hit = sum(1 for i in ran if any(atk[n]["robust"][i] is False for n in later))
        surv = sum(survivors)
        evidence = f"{', '.join(later)} fooled {hit} of the {surv} samples that survived {', '.join(direct)}"
        if len(ran) < surv:  # cascade: attacks in between already fooled some of them
            evidence += f" (it ran on {len(ran)} of them; the others were fooled by attacks in between; --all-samples compares each attack on all)"
        checks.append(
            {
                "name": name,
                "flagged": hit > 0,
                "fooled_after_direct": hit,
                "survivors_of_direct": surv,
                "attacked_survivors": len(ran),
                "evidence": evidence,
            }
        )

    add("black-box beats white-box", "black-box", ("white-box",), "black-box attack after a white-box one")
    add("transfer beats direct", "transfer", ("white-box",), "transfer attack after a direct one")
    add(
        "fixed-step gradients beat adaptive-solver gradients",
        "fixed-step",
        ("white-box",),
        "fixed-step attack after a direct one",
    )
    add("feature-space attack beats direct", "feature", ("white-box",), "feature attack after a direct one")
    for extra in run.get("extra_checks", []):
        checks.append(extra)
    return checks


def _large_eps_check(hardened, base, x, y, cfg: AttackConfig, device) -> dict:
    """Accuracy under a budget that must break any model: not near zero = gradients are not informative."""
    eps = LARGE_EPS[cfg.norm]
    with torch.no_grad():
        n_classes = int(hardened(x[:1].to(device)).shape[1])
    p = AttackParams(norm=cfg.norm, eps=eps, n_classes=n_classes, seed=cfg.seed, steps=20)
    out = {}
    for name, model in (("base", base), ("hardened", hardened)):
        xa = ATTACKS["pgd" if cfg.norm == "Linf" else "pgd-l2"].run(
            Target(name, model, base), x.to(device), y.to(device), p
        )
        out[name] = float((_predict(model, xa, cfg.batch_size, device) == y).float().mean())
    threshold = 0.5 / p.n_classes  # half of chance: a model with informative gradients ends near 0
    flagged = out["hardened"] > threshold
    return {
        "name": "accuracy near zero at a very large eps",
        "flagged": flagged,
        "eps": eps,
        "accuracy": out,
        "threshold": threshold,
        "evidence": f"PGD-20 at {cfg.norm} eps={eps} on {len(y)} samples leaves hardened {100 * out['hardened']:.1f}%, "
        f"base {100 * out['base']:.1f}% (flag above {100 * threshold:.1f}%)",
    }


def _surrogate_check(hardened, x, cfg: AttackConfig, device, fixed_step) -> dict:
    """The fixed-step copy must predict like the real model, or attacks through it are weak without saying so."""
    fixed = hardened.variant("fixed", step_size=fixed_step)
    real = logits(hardened, x, device=device, batch_size=cfg.batch_size)
    copy = logits(fixed, x, device=device, batch_size=cfg.batch_size)
    agree = (real.argmax(1) == copy.argmax(1)).float().mean().item()
    return {
        "name": "fixed-step copy agrees with the real model",
        "flagged": agree < 0.99,
        "agreement": agree,
        "max_abs_logit_diff": (real - copy).abs().max().item(),
        "step_size": fixed.head.ode.step_size,
        "evidence": f"RK4 with step {fixed.head.ode.step_size} predicts like the real model on {100 * agree:.1f}% of {len(x)} "
        f"clean samples (max |logit diff| {(real - copy).abs().max().item():.2e})"
        + ("; fixed-step attacks may be weaker than they look: lower head.step_size" if agree < 0.99 else ""),
    }


def batch_dependence(model, x: torch.Tensor, batch_size: int, device, seed: int) -> dict:
    """Do predictions change with batch composition? Full batches vs one sample at a time vs shuffled."""
    full = logits(model, x, device=device, batch_size=batch_size)
    single = logits(model, x, device=device, batch_size=1)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    shuf = torch.empty_like(full)
    shuf[perm] = logits(model, x[perm], device=device, batch_size=batch_size)  # batches of the shuffled order
    changed = ((full.argmax(1) != single.argmax(1)) | (full.argmax(1) != shuf.argmax(1))).float().mean().item()
    dlogit = max((full - single).abs().max().item(), (full - shuf).abs().max().item())
    return {"samples": len(x), "frac_predictions_changed": changed, "max_abs_logit_change": dlogit}


def _batch_check(hardened, x, cfg: AttackConfig, device) -> dict:
    stats = batch_dependence(hardened, x, cfg.batch_size, device, cfg.seed)
    adaptive = has_ode(hardened) and hardened.head.block.adaptive
    return {
        "name": "predictions independent of batch composition",
        "flagged": stats["frac_predictions_changed"] > 0,
        **stats,
        "solver_adaptive": adaptive,
        "evidence": (
            f"{100 * stats['frac_predictions_changed']:.1f}% of {stats['samples']} predictions changed between batch size "
            f"{cfg.batch_size}, 1 and a shuffled batch; max |logit change| {stats['max_abs_logit_change']:.2e}"
            + (" (the adaptive solver shares its step size across the batch)" if adaptive else "")
        ),
    }


def _new_results(
    model_path: Path, meta: dict, data_desc: dict, cfg: AttackConfig, indices, labels, device, plan
) -> dict:
    from .models import describe_hardened

    desc = describe_hardened(meta)
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "complete": False,
        "model": {
            "path": str(model_path),
            "sha256": sha256_file(model_path),
            "backbone": meta.get("backbone", {}).get("timm_name"),
            # what the file holds (models.describe_hardened): a linear-head file records no ODE settings
            "head": meta.get("config", {}).get("head", {}) if desc["ode"] else None,
            "description": desc,
            "base_classifier": meta.get("base_classifier"),
        },
        "data": data_desc,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "plan": plan,
        "n": len(indices),
        "indices": [int(i) for i in indices],
        "labels": [int(v) for v in labels],
        "device": str(device),
        "versions": versions(),
        "started": now(),
        "runs": [],
    }


_EXECUTION_ONLY = ("batch_size", "fast_cpu")  # how the attacks run, not what they compute: a resume may change them


def _settings(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in _EXECUTION_ONLY}


def fast_cpu_models(models, cfg: AttackConfig, device) -> None:
    """The CPU fast paths (``ImageModel.fast_cpu``) on for every model that has them, when ``cfg.fast_cpu`` and
    the models run on CPU."""
    from .backbone import ImageModel

    on = cfg.fast_cpu and torch.device(device or "cpu").type == "cpu"
    for m in models:
        if isinstance(m, ImageModel):
            m.fast_cpu(on)


def _paths_text(named: dict) -> str:
    """One log line: how each model's no-gradient forwards ran (``ImageModel.inference_status``)."""
    paths = [f"{k} {m.inference_status()}" for k, m in named.items() if hasattr(m, "inference_status")]
    return "no-gradient forwards: " + "; ".join(paths)


def _check_resume(doc: dict, fresh: dict) -> None:
    if doc.get("schema") != SCHEMA:
        raise ResultsError("the --out file is not a sodef attack results file; choose another --out")
    if doc.get("schema_version", 0) > SCHEMA_VERSION:
        raise ResultsError("the --out file was written by a newer sodef_cli; upgrade or choose another --out")
    for key, what in (("indices", "samples"), ("plan", "attack plan")):
        if doc.get(key) != fresh[key]:
            raise ResultsError(
                f"the --out file holds results for different {what}; use another --out or the same options"
            )
    if doc["model"]["sha256"] != fresh["model"]["sha256"]:
        raise ResultsError("the --out file holds results for a different model file; use another --out")
    if _settings(doc.get("config", {})) != _settings(fresh["config"]):
        raise ResultsError(
            "the --out file was made with different attack settings; use another --out or the same options"
        )


def run_evaluation(
    model_path: str | Path,
    data,
    cfg: AttackConfig,
    *,
    out: str | Path | None = None,
    device=None,
    reporter=None,
    data_spec: str = "",
    dry_run: bool = False,
    meta: dict | None = None,
    save_adversarial: str | Path | None = None,
) -> dict:
    """Run the suite on base and hardened; returns the results document (also written to ``out``), or
    ``{"plan": ...}`` with ``dry_run`` (the plan is logged through ``reporter`` before the first attack either way).

    ``cfg`` is validated here. ``meta``: the file's metadata as ``models.describe_model`` already read and
    checked it (not read again); None reads it. ``save_adversarial``: a directory for each model's adversarial
    examples (``examples.ExampleBank``), recorded under ``adversarial_examples``."""
    from .models import load_pair
    from .phases import Reporter

    reporter = reporter or Reporter()
    bank = _bank(save_adversarial, dry_run)  # a bad directory fails before anything is loaded
    model_path = Path(model_path)
    base, hardened, meta = load_pair(model_path, device, meta=meta)
    fast_cpu_models((base, hardened), cfg, device)
    classes = meta.get("classes", [])
    if len(classes) != len(data.classes):
        raise ModelError(
            f"class-count mismatch: {model_path} has {len(classes)} classes, the data has {len(data.classes)}"
        )
    spec_size = meta["backbone"]["input_size"]
    if list(data.test.images.shape[1:]) != list(spec_size):
        raise UsageError(
            f"the data's images are {list(data.test.images.shape[1:])}, the model expects {spec_size}; pass --image-size"
        )
    from .data import select_samples

    indices = select_samples(data.test.labels, cfg.n, cfg.seed)
    x_all = data.test.floats(indices)
    y_all = data.test.labels[indices]
    plan = suite_attacks(cfg.suite, list(cfg.attacks), cfg.norm, n_classes=len(classes), has_ode=has_ode(hardened))
    data_desc = {
        "spec": data_spec or data.name,
        "split": "test",
        "classes": list(data.classes),
        "test_size": len(data.test),
    }
    fixed_step = meta.get("config", {}).get("head", {}).get("step_size") if has_ode(hardened) else None
    entries = _pair_entries(base, hardened, plan, fixed_step)
    estimate = estimate_plan(entries, x_all, y_all, cfg, n_classes=len(classes), device=device) if is_main() else {}
    reporter.log(plan_text(estimate))
    if dry_run:
        return {"plan": estimate}
    fresh = _new_results(model_path, meta, data_desc, cfg, indices, y_all, device, plan)
    fresh["estimate"] = estimate_record(estimate)
    state = EvaluationState.open(fresh, out, check=_check_resume)
    work = AttackProgress(estimate, cfg, reporter)
    work.start()
    t_run = time.perf_counter()
    _cascade(
        entries,
        x_all,
        y_all,
        cfg,
        n_classes=len(classes),
        state=state,
        reporter=reporter,
        device=device,
        run_checks=_pair_checks(base, hardened, x_all, y_all, cfg, device, fixed_step),
        work=work,
        bank=bank,
    )
    reporter.end("all attacks")
    reporter.log(_paths_text({"base": base, "hardened": hardened}))
    seconds_run = time.perf_counter() - t_run  # attacks and checks of this session, to compare with the estimate
    saved = _write_examples(bank, ["base", "hardened"], cfg, x_all, y_all, indices, fresh, reporter)
    return state.finish(seconds_run=seconds_run, **saved)


def _clean_flags(model, x_all: torch.Tensor, y_all: torch.Tensor, cfg: AttackConfig, device) -> list[bool]:
    """Per sample: does ``model`` classify the clean image correctly? (batches spread over torchrun ranks)"""
    pred = map_batches(lambda a, b: _predict(model, x_all[a:b], cfg.batch_size, device), len(y_all), cfg.batch_size)
    return [bool(v) for v in (pred == y_all).tolist()]


def _check_samples(n: int, cfg: AttackConfig) -> torch.Tensor:
    """Positions of the samples the masking checks use: ``cfg.check_samples`` spread over the (interleaved) classes."""
    return torch.linspace(0, n - 1, min(cfg.check_samples, n)).round().long()


def _pair_entries(base, hardened, plan: dict, fixed_step: float | None) -> list[dict]:
    """The two models of one hardened file as cascade entries (``_cascade``), each with its own attack seeds."""
    if has_ode(hardened):  # the base attacked through itself, the hardened model through its ODE copies too
        fixed = hardened.variant("fixed", step_size=fixed_step)
        bpda = hardened.variant("bpda")
        targets = [Target("base", base, base), Target("hardened", hardened, base, fixed=fixed, bpda=bpda)]
    else:  # two plain classifiers, attacked alike: each is the other's transfer source
        targets = [Target("base", base, hardened), Target("hardened", hardened, base)]
    return [
        {
            "label": t.name,
            "model": t.model,
            "attacks": plan[t.name],
            "target": dataclasses.replace(t, features=t.model.features),
            "source": t.base,
            "fixed": t.fixed,
            "seed_key": t.name,
            # an adaptive solver's output depends on the rest of the batch: an example that fools the model in
            # some batch composition is not counted robust (one extra forward per attacked sample)
            "judge_alone": t.fixed is not None and hardened.head.block.adaptive,
        }
        for t in targets
    ]


def _pair_checks(base, hardened, x_all, y_all, cfg: AttackConfig, device, fixed_step):
    """The masking checks of a hardened file, run once both models finished an eps: ``run -> finish_eps`` kwargs."""

    def checks(run: EpsRun) -> dict:
        extra = None
        if cfg.checks and run.extra_checks is None and is_main():
            sub = _check_samples(len(y_all), cfg)
            extra = [_batch_check(hardened, x_all[sub], cfg, device)]
            if has_ode(hardened):
                extra.append(_surrogate_check(hardened, x_all[sub], cfg, device, fixed_step))
            if run.models["hardened"].attacks:
                extra.append(_large_eps_check(hardened, base, x_all[sub], y_all[sub], cfg, device))
        return {"extra_checks": extra, "checks": masking_checks}

    return checks


def cascade(
    base,
    hardened,
    x_all: torch.Tensor,
    y_all: torch.Tensor,
    cfg: AttackConfig,
    *,
    plan: dict,
    n_classes: int,
    fixed_step: float | None,
    state: EvaluationState,
    reporter,
    device,
) -> EvaluationState:
    """Run every eps of ``cfg`` over both models of a hardened file into ``state`` (persisted after every attack),
    skipping finished attacks and finished budgets."""
    return _cascade(
        _pair_entries(base, hardened, plan, fixed_step),
        x_all,
        y_all,
        cfg,
        n_classes=n_classes,
        state=state,
        reporter=reporter,
        device=device,
        run_checks=_pair_checks(base, hardened, x_all, y_all, cfg, device, fixed_step),
    )


def _cascade(
    entries: list[dict],
    x_all: torch.Tensor,
    y_all: torch.Tensor,
    cfg: AttackConfig,
    *,
    n_classes: int,
    state: EvaluationState,
    reporter,
    device,
    model_checks=None,
    run_checks=None,
    work: AttackProgress | None = None,
    bank: ExampleBank | None = None,
) -> EvaluationState:
    """The one cascade loop: every eps of ``cfg``, every model of ``entries`` (``label``, ``model``, ``attacks``,
    ``target``, ``seed_key``, ``judge_alone``) in order, finished attacks and budgets skipped. ``model_checks(run,
    entry)`` runs after each model's attacks; ``run_checks(run)`` gives ``state.finish_eps``'s keyword arguments;
    ``work`` counts the "all attacks" progress (``AttackProgress``); ``bank`` keeps each fooled sample's first example."""
    for eps in cfg.eps:
        run = state.eps_run(eps)
        if run.done:
            continue
        for e in entries:
            model = e["model"]
            state.clean(
                run, e["label"], lambda: _clean_flags(model, x_all, y_all, cfg, device)
            )  # the same at every eps
            _attack_model(
                state,
                run,
                e["label"],
                model,
                e["target"],
                e["attacks"],
                x_all,
                y_all,
                cfg,
                eps=eps,
                n_classes=n_classes,
                seed_key=e["seed_key"],
                judge_alone=e["judge_alone"],
                reporter=reporter,
                device=device,
                work=work,
                bank=bank,
            )
            if model_checks is not None:
                model_checks(run, e)
        state.finish_eps(run, **(run_checks(run) if run_checks is not None else {}))
        for e in entries if work is not None else ():
            work.checked(eps, e["label"])
    return state


def _attack_model(
    state: EvaluationState,
    run: EpsRun,
    label: str,
    model,
    target: Target,
    names: list[str],
    x_all: torch.Tensor,
    y_all: torch.Tensor,
    cfg: AttackConfig,
    *,
    eps: float,
    n_classes: int,
    seed_key: str,
    judge_alone: bool,
    reporter,
    device,
    work: AttackProgress | None = None,
    bank: ExampleBank | None = None,
) -> None:
    """Run ``names`` on model ``label`` at ``run``'s eps (the cascade), each recorded in ``state`` once finished;
    finished attacks are skipped."""
    mrec = run.model(label)
    if any(ATTACKS[a].kind == "feature" for a in names if a not in mrec.attacks):
        with torch.no_grad():
            feats = map_batches(lambda a, b: target.features(x_all[a:b].to(device)).float(), len(y_all), cfg.batch_size)
        target.bank = (feats, y_all)
    clean = torch.tensor(mrec.clean, dtype=torch.bool)
    if work is not None:
        work.skip(eps, label, [a for a in names if a in mrec.attacks])
    for k, aname in enumerate(names):
        if aname in mrec.attacks:
            continue
        spec = ATTACKS[aname]
        pool = clean if cfg.all_samples else torch.tensor(mrec.robust(), dtype=torch.bool)
        idx = torch.nonzero(pool).flatten()
        if work is not None:
            work.begin(eps, label, aname, len(idx), names[k + 1 :], first=k == 0)
        flags: list[bool | None] = [None] * len(y_all)
        p = AttackParams(
            norm=cfg.norm,
            eps=eps,
            n_classes=n_classes,
            seed=_seed_for(cfg.seed, aname, eps, seed_key),
            steps=cfg.steps,
            queries=cfg.queries,
        )
        task = f"{label}: {aname} (eps={eps:.4g})"
        reporter.start(task, len(idx))
        if bank is not None:
            bank.started(label, eps, aname)
        t0 = time.perf_counter()
        projected = 0
        for b, s in enumerate(range(0, len(idx), cfg.batch_size)):
            if not mine(b):  # torchrun: batch b runs on rank b % world, same composition as one process
                continue
            j = idx[s : s + cfg.batch_size]
            x, y = x_all[j].to(device), y_all[j].to(device)
            torch.manual_seed(p.seed + s)
            xa = spec.run(target, x, y, p).detach()
            xp = project(xa, x, cfg.norm, eps)
            if (xp - xa).abs().max().item() > 1e-6:
                projected += int(((xp - xa).flatten(1).abs().amax(1) > 1e-6).sum())
            pred = _predict(model, xp, cfg.batch_size, device)
            ok = pred == y.cpu()
            if judge_alone:  # adaptive solver: robust only if also correct when judged on its own
                alone = _predict(model, xp, 1, device)
                pred = torch.where(ok, alone, pred)  # the wrong prediction, where one of the two is wrong
                ok &= alone == y.cpu()
            if bank is not None and not bool(ok.all()):  # --save-adversarial: the examples that fooled it
                bad = ~ok
                _keep(
                    bank,
                    model,
                    label,
                    aname,
                    eps,
                    j[bad].tolist(),
                    xp[bad.to(xp.device)],
                    y.cpu()[bad],
                    pred[bad],
                    cfg,
                    device,
                )
            for jj, good in zip(j.tolist(), ok.tolist()):
                flags[jj] = bool(good)
            reporter.advance(task, len(j))
            if work is not None:
                work.advance(label, aname, len(j))
        flags = gather_merge(flags)
        seconds = max(all_gather_objects(time.perf_counter() - t0))
        projected = sum(all_gather_objects(projected))
        reporter.end(task)
        if work is not None:
            work.finished(eps, label, aname)
        state.record_attack(
            run,
            label,
            aname,
            AttackResult(
                kind=spec.kind,
                params={**spec.params(p), "norm": cfg.norm, "eps": eps},
                robust=flags,
                attacked=len(idx),
                seconds=seconds,
                projected=projected,
            ),
        )


def _keep(bank: ExampleBank, model, label, aname, eps, positions, xf, yf, pf, cfg: AttackConfig, device) -> None:
    """Keep the examples that fooled ``model``: rounded to uint8 where the rounded image still fools it (one more
    forward pass), else as they are."""
    xr = (xf.cpu() * 255).round() / 255
    pr = _predict(model, xr, cfg.batch_size, device)
    fools = pr != yf
    bank.add(
        label,
        eps,
        aname,
        positions,
        torch.where(fools.view(-1, 1, 1, 1), xr, xf.cpu()),
        fools,
        torch.where(fools, pr, pf),
    )


def _bank(directory: str | Path | None, dry_run: bool) -> ExampleBank | None:
    """The example bank of ``--save-adversarial`` (its directory checked, and created unless ``dry_run``), or None."""
    from .examples import check_dir

    if directory is None:
        return None
    return ExampleBank(check_dir(directory, create=not dry_run))


def _write_examples(bank, labels, cfg: AttackConfig, x_all, y_all, indices, doc: dict, reporter) -> dict:
    """Write the bank's files (main process, after gathering every rank's examples); the results fields."""
    if bank is None:
        return {}
    gathered = all_gather_objects(bank)
    if not is_main():
        return {}
    bank.merge(gathered)
    meta = {"classes": doc["data"]["classes"], "data": doc["data"]["spec"], "norm": cfg.norm}
    saved = bank.write(labels=labels, eps_list=list(cfg.eps), x_all=x_all, y_all=y_all, indices=indices, meta=meta)
    for lab, recs in saved.items():
        for r in recs:
            reporter.log(
                f"adversarial examples of {lab} at eps {eps_text(r['eps'], cfg.norm)}: {r['saved']} in {r['file']} "
                f"({r['uint8']} uint8, {r['float32']} float32)" + (f"; grid {r['grid']}" if r["grid"] else "")
            )
    return {"adversarial_examples": saved}


def _ci(flags: list) -> list[float] | None:
    w = wilson(sum(1 for f in flags if f is True), len(flags))
    return None if w is None else [w[0], w[1]]


def _model_summary(mrec: dict, n: int) -> dict:
    """Accuracies of one model at one eps, each with its Wilson 95% interval under the same name + ``_ci95``."""
    atk = mrec.get("attacks", {})
    clean = mrec.get("clean", [])
    worst = worst_case_flags(clean, atk) if "clean" in mrec else None
    out = {
        "clean": _frac(clean),
        "clean_ci95": _ci(clean),
        "worst_case": _frac(worst) if worst is not None else None,
        "worst_case_ci95": _ci(worst) if worst is not None else None,
        "attacks": {name: _frac(rec["robust"]) for name, rec in atk.items()},
        "attacks_ci95": {name: _ci(rec["robust"]) for name, rec in atk.items()},
        "seconds": sum(rec.get("seconds", 0.0) for rec in atk.values()),
    }
    white = {k: v for k, v in atk.items() if v.get("kind") == "white-box"}
    if white:
        flags = worst_case_flags(clean, white)
        out["white_box_direct"] = _frac(flags)
        out["white_box_direct_ci95"] = _ci(flags)
    return out


def paired_flags(mrec: dict) -> dict[str, list[bool]]:
    """Per-sample flags of every figure of one model: clean, each attack (cumulative in a cascade), white-box
    worst case and worst case; the same samples for both models, so differences are paired."""
    clean = [bool(c) for c in mrec.get("clean", [])]
    atk = mrec.get("attacks", {})
    out = {"clean": clean, "worst_case": worst_case_flags(clean, atk)}
    for name, rec in atk.items():
        out[f"attack:{name}"] = [f is True for f in rec["robust"]]
    white = {k: v for k, v in atk.items() if v.get("kind") == "white-box"}
    if white:
        out["white_box_direct"] = worst_case_flags(clean, white)
    return out


def differences(run: dict) -> dict:
    """Hardened - base on the same samples, per figure both models have: the difference (fraction), its paired
    95% interval (``_ci95``), the exact McNemar p-value (``_p``) and the discordant counts (base only, hardened only)."""
    models = run.get("models", {})
    if "clean" not in models.get("base", {}) or "clean" not in models.get("hardened", {}):
        return {}
    return _paired_figures(paired_flags(models["base"]), paired_flags(models["hardened"]))


def _paired_figures(fa: dict[str, list], fb: dict[str, list]) -> dict[str, Any]:
    """b - a for every figure both flag sets have: the difference, ``_ci95``, ``_p`` (McNemar) and ``_discordant``."""
    out: dict[str, Any] = {}
    for key in fb:
        if key not in fa or len(fa[key]) != len(fb[key]):
            continue
        d = paired_difference(fa[key], fb[key])
        if d is None:
            continue
        name = key.split(":", 1)[-1]
        out[name] = d["diff"]
        out[f"{name}_ci95"] = d["diff_ci95"]
        out[f"{name}_p"] = d["p_mcnemar"]
        out[f"{name}_discordant"] = d["discordant"]
    return out


def evaluation_strength(doc: dict) -> dict:
    """Whether the run is an adaptive evaluation (at least one attack on the hardened model that does not take
    its gradients from the model as shipped) and whether budgets were below the reference."""
    kinds: list[str] = []
    for run in doc.get("runs", []):
        for rec in run.get("models", {}).get("hardened", {}).get("attacks", {}).values():
            if rec.get("kind") and rec["kind"] not in kinds:
                kinds.append(rec["kind"])
    if not kinds:  # nothing finished yet: what the plan would run
        kinds = list(dict.fromkeys(ATTACKS[a].kind for a in doc.get("plan", {}).get("hardened", []) if a in ATTACKS))
    return {"adaptive": any(k in ADAPTIVE_KINDS for k in kinds), "reduced": reduced_budgets(doc) != {}, "kinds": kinds}


def reduced_budgets(doc: dict) -> dict[str, dict]:
    """{attack: {setting: [used, reference]}} for every attack that ran (or is planned) below its reference budget."""
    cfg = doc.get("config", {})
    norm = cfg.get("norm", "Linf")
    k = len(doc.get("data", {}).get("classes", [])) or 10
    eps0 = (cfg.get("eps") or [8 / 255])[0]
    used: dict[str, dict] = {}
    for run in doc.get("runs", []):
        for mrec in run.get("models", {}).values():
            for name, rec in mrec.get("attacks", {}).items():
                used.setdefault(name, rec.get("params", {}))
    for names in doc.get("plan", {}).values():
        for name in names:
            if name in ATTACKS and name not in used:
                used[name] = ATTACKS[name].params(
                    AttackParams(norm=norm, eps=eps0, n_classes=k, steps=cfg.get("steps"), queries=cfg.get("queries"))
                )
    out: dict[str, dict] = {}
    for name, u in used.items():
        if name not in ATTACKS:
            continue
        ref = ATTACKS[name].params(AttackParams(norm=norm, eps=eps0, n_classes=k))
        low = {
            key: [u[key], r]
            for key, r in ref.items()
            if isinstance(r, (int, float)) and isinstance(u.get(key), (int, float)) and u[key] < r
        }
        if low:
            out[name] = low
    return out


def summarize(doc: dict) -> dict:
    """The ``--json`` summary: first eps at top level, every eps in ``curve``."""
    curve = []
    for run in doc.get("runs", []):
        curve.append(
            {
                "eps": run["eps"],
                "models": {m: _model_summary(r, doc["n"]) for m, r in run.get("models", {}).items()},
                "difference": differences(run),
                "checks": run.get("checks", []),
                "done": run.get("done", False),
            }
        )
    first = curve[0] if curve else {"eps": None, "models": {}, "checks": []}
    return {
        "n": doc.get("n"),
        "norm": doc.get("config", {}).get("norm"),
        "eps": first["eps"],
        "suite": doc.get("config", {}).get("suite"),
        "complete": doc.get("complete", False),
        "evaluation": evaluation_strength(doc),
        "models": first["models"],
        "difference": first.get("difference", {}),
        "checks": first["checks"],
        "curve": curve,
        **({"adversarial_examples": doc["adversarial_examples"]} if doc.get("adversarial_examples") else {}),
    }


# ----------------------------------------------------------------------------------------------------
# several models side by side (results schema v2)


COMPARISON_VERSION = 2


def _comparison_entries(cands: list, cfg: AttackConfig, *, n_classes: int, transfer_from: str | None) -> list[dict]:
    """Attacks, transfer source and surrogates of every model of a comparison."""
    labels = [c.label for c in cands]
    by_label = {c.label: c for c in cands}
    any_ode = any(has_ode(c.model) for c in cands)
    if cfg.attacks:  # validated once as if some model had an ODE; ODE attacks then run where there is one
        suite_attacks(None, list(cfg.attacks), cfg.norm, n_classes=n_classes, has_ode=any_ode)
    entries = []
    for c in cands:
        ode = has_ode(c.model)
        if cfg.attacks:
            names = [a for a in cfg.attacks if ode or not ATTACKS[a].needs_ode]
        else:
            names = suite_attacks(cfg.suite, [], cfg.norm, n_classes=n_classes, has_ode=ode)["hardened"]
        if transfer_from and transfer_from != c.label:
            source, source_name = by_label[transfer_from].model, transfer_from
        elif c.own_base is not None:
            source, source_name = c.own_base, "own base"
        else:
            other = [lab for lab in labels if lab != c.label]
            source_name = other[0] if other else None
            source = by_label[source_name].model if source_name else None
        if source is None:  # a plain model alone: no other model to transfer from
            names = [a for a in names if ATTACKS[a].kind != "transfer"]
        fixed = c.model.variant("fixed", step_size=c.fixed_step) if ode else None
        entries.append(
            {
                "label": c.label,
                "model": c.model,
                "attacks": names,
                "source": source,
                "source_name": source_name,
                "fixed": fixed,
                "judge_alone": ode and c.model.head.block.adaptive,
                "seed_key": "",  # the same seed for every model: attack randomness depends on the attack and eps only
                "target": Target(
                    c.label,
                    c.model,
                    source if source is not None else c.model,
                    fixed=fixed,
                    bpda=c.model.variant("bpda") if ode else None,
                    features=c.model.features,
                ),
            }
        )
    return entries


def _large_eps_one(model, x, y, cfg: AttackConfig, device, n_classes: int) -> dict:
    eps = LARGE_EPS[cfg.norm]
    p = AttackParams(norm=cfg.norm, eps=eps, n_classes=n_classes, seed=cfg.seed, steps=20)
    xa = ATTACKS["pgd" if cfg.norm == "Linf" else "pgd-l2"].run(
        Target("m", model, model), x.to(device), y.to(device), p
    )
    acc = float((_predict(model, xa, cfg.batch_size, device) == y).float().mean())
    threshold = 0.5 / n_classes
    return {
        "name": "accuracy near zero at a very large eps",
        "flagged": acc > threshold,
        "eps": eps,
        "accuracy": acc,
        "threshold": threshold,
        "evidence": f"PGD-20 at {cfg.norm} eps={eps} on {len(y)} samples leaves {100 * acc:.1f}% (flag above {100 * threshold:.1f}%)",
    }


def run_comparison(
    cands: list,
    data,
    cfg: AttackConfig,
    *,
    reference: str,
    transfer_from: str | None = None,
    out: str | Path | None = None,
    device=None,
    reporter=None,
    data_spec: str = "",
    dry_run: bool = False,
    save_adversarial: str | Path | None = None,
) -> dict:
    """Attack several models (``models.Candidate``) on the same samples with the same seeds.

    Every model gets the suite's attacks (ODE-aware ones where it has an ODE); a model's transfer attacks take
    ``transfer_from`` (a label), else its own base (a hardened file), else the first other model. Returns the
    results document (schema v2: ``models`` and ``reference``; written to ``out``), or ``{"plan": ...}`` with
    ``dry_run``. ``save_adversarial``: as in :func:`run_evaluation`.
    """
    from .data import select_samples
    from .phases import Reporter

    reporter = reporter or Reporter()
    bank = _bank(save_adversarial, dry_run)
    labels = [c.label for c in cands]
    if reference not in labels:
        raise UsageError(f"--reference {reference!r} is not among the models ({', '.join(labels)})")
    if transfer_from is not None and transfer_from not in labels:
        raise UsageError(f"--transfer-from {transfer_from!r} is not among the models ({', '.join(labels)})")
    k = len(data.classes)
    for c in cands:
        if c.classes and len(c.classes) != k:
            raise ModelError(f"class-count mismatch: {c.label} has {len(c.classes)} classes, the data has {k}")
        size = list(c.desc.get("input_size") or [])
        if size and list(data.test.images.shape[1:]) != size:
            raise UsageError(
                f"the data's images are {list(data.test.images.shape[1:])}, {c.label} expects {size}; pass --image-size"
            )
    indices = select_samples(data.test.labels, cfg.n, cfg.seed)
    x_all = data.test.floats(indices)
    y_all = data.test.labels[indices]
    fast_cpu_models([c.model for c in cands], cfg, device)
    entries = _comparison_entries(cands, cfg, n_classes=k, transfer_from=transfer_from)
    plan = {e["label"]: e["attacks"] for e in entries}
    estimate = estimate_plan(entries, x_all, y_all, cfg, n_classes=k, device=device) if is_main() else {}
    for e, m in zip(entries, estimate.get("models", [])):
        m["transfer_source"] = e["source_name"] if any(ATTACKS[a].kind == "transfer" for a in e["attacks"]) else None
    reporter.log(plan_text(estimate))
    if dry_run:
        return {"plan": estimate}
    models = []
    for c, e in zip(cands, entries):
        models.append({**c.desc, "transfer_source": e["source_name"]})
    doc = {
        "schema": SCHEMA,
        "schema_version": COMPARISON_VERSION,
        "kind": "comparison",
        "complete": False,
        "models": models,
        "reference": reference,
        "data": {
            "spec": data_spec or data.name,
            "split": "test",
            "classes": list(data.classes),
            "test_size": len(data.test),
        },
        "config": {k_: (list(v) if isinstance(v, tuple) else v) for k_, v in asdict(cfg).items()},
        "plan": plan,
        "estimate": estimate_record(estimate),
        "n": len(indices),
        "indices": [int(i) for i in indices],
        "labels": [int(v) for v in y_all],
        "device": str(device),
        "versions": versions(),
        "started": now(),
        "runs": [],
    }
    summary = lambda d: {
        k_: v for k_, v in summarize_comparison(d).items() if k_ != "indices"
    }  # figures beside the flags
    state = EvaluationState.open(doc, out, check=_check_comparison_resume, summary=summary)
    work = AttackProgress(estimate, cfg, reporter)
    work.start()
    t_run = time.perf_counter()

    def model_checks(run: EpsRun, e: dict) -> None:
        mrec, model = run.model(e["label"]), e["model"]
        if cfg.checks and mrec.checks is None and is_main():
            sub = _check_samples(len(y_all), cfg)
            extra = []
            if has_ode(model):
                extra += [
                    _batch_check(model, x_all[sub], cfg, device),
                    _surrogate_check(model, x_all[sub], cfg, device, e["fixed"].head.ode.step_size),
                ]
            if mrec.attacks:
                extra.append(_large_eps_one(model, x_all[sub], y_all[sub], cfg, device, k))
            state.record_model_checks(
                run, e["label"], masking_checks({"models": {"hardened": mrec.to_dict()}, "extra_checks": extra})
            )

    _cascade(
        entries,
        x_all,
        y_all,
        cfg,
        n_classes=k,
        state=state,
        reporter=reporter,
        device=device,
        model_checks=model_checks,
        work=work,
        bank=bank,
    )
    reporter.end("all attacks")
    reporter.log(_paths_text({e["label"]: e["model"] for e in entries}))
    seconds_run = time.perf_counter() - t_run  # attacks and checks of this session, to compare with the estimate
    saved = _write_examples(bank, [e["label"] for e in entries], cfg, x_all, y_all, indices, doc, reporter)
    return state.finish(seconds_run=seconds_run, **saved)


def _check_comparison_resume(old: dict, doc: dict) -> None:
    """Refuse to resume from a file of another comparison (``ResultsError``)."""
    if old.get("schema") != SCHEMA or old.get("schema_version") != COMPARISON_VERSION:
        raise ResultsError("the --out file is not a results file of several models; choose another --out")
    for key, what in (("indices", "samples"), ("plan", "attack plan"), ("reference", "reference model")):
        if old.get(key) != doc[key]:
            raise ResultsError(
                f"the --out file holds results for a different {what}; use another --out or the same options"
            )
    if [m.get("sha256") for m in old.get("models", [])] != [m.get("sha256") for m in doc["models"]]:
        raise ResultsError("the --out file holds results for different models; use another --out")
    if _settings(old.get("config", {})) != _settings(doc["config"]):
        raise ResultsError(
            "the --out file was made with different attack settings; use another --out or the same options"
        )


def comparison_differences(run: dict, reference: str) -> dict[str, dict]:
    """{label: model - reference on the same samples} per figure (as ``differences``) for every other model."""
    models = run.get("models", {})
    ref = models.get(reference, {})
    out: dict[str, dict] = {}
    if "clean" not in ref:
        return out
    fr = paired_flags(ref)
    for lab, mrec in models.items():
        if lab == reference or "clean" not in mrec:
            continue
        out[lab] = _paired_figures(fr, paired_flags(mrec))
    return out


def summarize_comparison(doc: dict) -> dict:
    """The ``--json`` summary of several models: per eps, each model's figures with intervals, and each model's
    paired difference against the reference."""
    curve = []
    for run in doc.get("runs", []):
        curve.append(
            {
                "eps": run["eps"],
                "models": {
                    m: {**_model_summary(r, doc["n"]), "checks": r.get("checks", [])}
                    for m, r in run.get("models", {}).items()
                },
                "difference": comparison_differences(run, doc["reference"]),
                "done": run.get("done", False),
            }
        )
    first = curve[0] if curve else {"eps": None, "models": {}, "difference": {}}
    return {
        "n": doc.get("n"),
        "norm": doc.get("config", {}).get("norm"),
        "eps": first["eps"],
        "suite": doc.get("config", {}).get("suite"),
        "complete": doc.get("complete", False),
        "reference": doc.get("reference"),
        "models_attacked": [m["label"] for m in doc.get("models", [])],
        "indices": doc.get("indices"),
        "models": first["models"],
        "difference": first["difference"],
        "curve": curve,
        **({"adversarial_examples": doc["adversarial_examples"]} if doc.get("adversarial_examples") else {}),
    }


# ----------------------------------------------------------------------------------------------------
# the figures a report shows, from a results document


def _model_strength(doc: dict, label: str) -> dict:
    """How adaptive the evaluation of one model is: the kinds of the attacks that ran on it (else the planned
    ones), adaptive when one of them does not take its gradients from the model itself."""
    kinds: list[str] = []
    for run in doc.get("runs", []):
        for rec in (run.get("models", {}).get(label) or {}).get("attacks", {}).values():
            if rec.get("kind") and rec["kind"] not in kinds:
                kinds.append(rec["kind"])
    if not kinds:
        kinds = list(dict.fromkeys(ATTACKS[a].kind for a in doc.get("plan", {}).get(label, []) if a in ATTACKS))
    return {"adaptive": any(k in ADAPTIVE_KINDS for k in kinds), "kinds": kinds}


def analyze(doc: dict) -> dict:
    """Everything ``sodef report`` shows that is computed from a results document (v1 or v2) rather than read
    from it. The document must be well-formed (the report checks its shape first).

    Returns:
        ``runs``: per eps run, ``models`` ({label: the figures of ``summarize`` with their Wilson intervals, or
        None before the model's clean pass}), ``difference`` (v1: hardened - base as ``differences``; v2:
        {label: that model - the reference}), ``checks`` (v1: the stored masking checks, else those computed
        now from the attacks that finished, with ``checks_provisional`` true; v2: {label: stored checks});
        ``kinds``: {attack: kind} of every attack recorded or planned that this version knows;
        ``reduced``: ``reduced_budgets``; ``evaluation``: v1 ``evaluation_strength``, v2 {label: adaptive? and kinds}.
    """
    comparison = doc.get("kind") == "comparison"
    labels = [m["label"] for m in doc["models"]] if comparison else ["base", "hardened"]
    runs = []
    for run in doc.get("runs", []):
        recs = run.get("models", {})
        models = {
            lab: _model_summary(recs[lab], len(recs[lab]["clean"])) if "clean" in (recs.get(lab) or {}) else None
            for lab in labels
        }
        if comparison:
            runs.append(
                {
                    "models": models,
                    "difference": comparison_differences(run, doc["reference"]),
                    "checks": {lab: (recs.get(lab) or {}).get("checks", []) for lab in labels},
                    "checks_provisional": False,
                }
            )
            continue
        checks, provisional = run.get("checks"), False
        if checks is None:
            hard = recs.get("hardened") or {}
            known = {**hard, "attacks": {a: rec for a, rec in hard.get("attacks", {}).items() if a in ATTACKS}}
            checks = masking_checks({**run, "models": {**recs, "hardened": known}}) if models["hardened"] else []
            provisional = bool(checks)
        runs.append(
            {"models": models, "difference": differences(run), "checks": checks, "checks_provisional": provisional}
        )
    names = [a for run in doc.get("runs", []) for rec in run.get("models", {}).values() for a in rec.get("attacks", {})]
    names += [a for planned in doc.get("plan", {}).values() for a in planned]
    return {
        "runs": runs,
        "kinds": {a: ATTACKS[a].kind for a in dict.fromkeys(names) if a in ATTACKS},
        "reduced": reduced_budgets(doc),
        "evaluation": {lab: _model_strength(doc, lab) for lab in labels} if comparison else evaluation_strength(doc),
    }
