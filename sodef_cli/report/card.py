"""Model cards and the ``sodef harden`` summary, as data and as blocks.

- ``card_data`` / ``card_blocks``: the card of a hardened file (its metadata plus optional stability
  diagnostics computed by ``diagnostics.card_diagnostics``), led by the hardening guard's verdict;
- ``base_card_data`` / ``base_card_blocks``: the card of a ``sodef pretrain`` base file;
- ``harden_summary_blocks``: what ``sodef harden`` prints when it finishes.

Metadata comes from a model file, i.e. from outside: ``card_data`` and ``base_card_data`` check its shape once
(``ModelFileError`` otherwise), so that the blocks of what they return draw in every format.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..config import ADAPTIVE_SOLVERS
from ..errors import ModelFileError
from ..inference_solver import summary_line as solver_line
from ..models import describe_hardened
from ..stats import decide
from .blocks import (
    Block,
    HistSeries,
    Series,
    Verdict,
    chart,
    col,
    heading,
    hist,
    kv,
    note,
    table,
    title,
    verdict,
)
from .format import acc_ci, delta, fmt_eps, num, p_eq, pct, pct_ci, points, points_ci
from .schema import (
    REPORT_SCHEMA,
    Check,
    Malformed,
    anything,
    boolean,
    finite,
    fraction,
    interval,
    listof,
    mapof,
    obj,
    opt,
    predicate,
    real,
    string,
)

__all__ = ["base_card_blocks", "base_card_data", "card_blocks", "card_data", "harden_summary_blocks"]

_NOT_EVALUATED = (
    "Not evaluated: the hardening guard was skipped (--no-check); evaluate with `sodef attack` before deploying."
)


# ----------------------------------------------------------------------------------------------------
# the shape of the metadata a card reads


def _histogram(v: Any, where: str) -> None:
    """A stored histogram ``{"lo", "hi", "counts"}`` (anything else is ignored: no picture)."""
    if isinstance(v, dict):
        obj(
            {
                "counts": listof(
                    predicate("a count", lambda c: isinstance(c, int) and not isinstance(c, bool) and c >= 0)
                ),
                "lo": finite,
                "hi": finite,
            },
            required=("lo", "hi") if v.get("counts") else (),
        )(v, where)


_STAGE = obj(
    {
        "frac_eig_negative": opt(real),
        "frac_diag_dominant_col": opt(real),
        "frac_diag_dominant_row": opt(real),
        "max_real_eig_hist": _histogram,
    }
)
_CLEAN = opt(obj({"test_clean_acc": opt(real), "val_acc": opt(real)}))
_GUARD_MODEL = opt(
    obj({"clean": opt(real), "clean_ci95": opt(interval), "worst_case": opt(real), "worst_case_ci95": opt(interval)})
)
_SETTINGS = opt(obj({}))
_HARDENED = obj(
    {
        "config": obj(
            {
                "head": _SETTINGS,
                "regularizer": _SETTINGS,
                "phase1": _SETTINGS,
                "phase2": _SETTINGS,
                "phase3": _SETTINGS,
                "probe": _SETTINGS,
                "adversarial": _SETTINGS,
            }
        ),
        "metrics": obj(
            {
                "adversarial": opt(
                    obj(
                        {
                            "select": obj({}),
                            "val_pgd_acc": opt(real),
                            "history": opt(listof(obj({"val_pgd_acc": opt(real)}))),
                            "tuned_backbone_state": opt(predicate("a list", lambda v: isinstance(v, (list, dict)))),
                        }
                    )
                ),
                "data": _SETTINGS,
                "split": _SETTINGS,
                "phases": opt(mapof(_SETTINGS)),
                "base": _CLEAN,
                "hardened": _CLEAN,
                "stability": opt(obj({"before_phase2": _STAGE, "after_phase2": _STAGE, "final": _STAGE})),
            }
        ),
        "check": opt(
            obj(
                {
                    "base": _GUARD_MODEL,
                    "hardened": _GUARD_MODEL,
                    "gain_points": opt(real),
                    "gain_points_ci95": opt(interval),
                    "clean_delta_points": opt(real),
                    "clean_delta_points_ci95": opt(interval),
                    "eps": opt(finite),
                    "p_mcnemar": opt(real),
                    "outcome": opt(string),
                    "checks": listof(obj({"name": string, "flagged": opt(boolean)}, required=("name",))),
                }
            )
        ),
        "backbone": obj({"input_size": listof(anything)}),
        "source": obj({"sha256": opt(string)}),
        "classes": listof(string),
        "base_classifier": opt(string),
        "versions": obj({}),
    }
)
_BASE = obj(
    {
        "config": obj({"adversarial": opt(string), "adv_eps": opt(finite)}),
        "training": obj(
            {
                "test_clean_acc": opt(real),
                "history": opt(listof(obj({"epoch": finite, "val_acc": opt(fraction), "val_pgd5_acc": opt(fraction)}))),
            }
        ),
        "backbone": obj({"input_size": listof(anything), "classes": opt(listof(string))}),
        "versions": obj({}),
    }
)


def _checked(meta: Any, path: str, shape: Check, fields: tuple[str, ...]) -> dict:
    """The metadata's ``fields`` (a missing or empty field as null, else as stored) once they have ``shape``."""
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path}: malformed metadata in the model file (not an object)")
    out = {k: meta.get(k) or None for k in fields}
    try:
        shape({k: v for k, v in out.items() if v is not None}, "metadata")
    except Malformed as exc:
        raise ModelFileError(f"{path}: malformed metadata in the model file ({exc})") from None
    return out


# ----------------------------------------------------------------------------------------------------
# the card of a hardened file


def _card_source(src: dict) -> str:
    kind = src.get("kind")
    if kind == "timm":
        s = f"timm {src.get('name')} ({'pretrained hub weights' if src.get('pretrained') else 'no hub weights'})"
        if src.get("checkpoint"):
            s += f", checkpoint {src['checkpoint']}"
        return s
    if kind == "sodef_base_file":
        return f"sodef pretrain file {src.get('path')}" + (
            f" (sha256 {src['sha256'][:12]})" if src.get("sha256") else ""
        )
    return str(src or "-")


def card_data(meta: dict, *, path: str, diagnostics: dict | None = None, notes: Iterable[str] = ()) -> dict:
    """Everything the model card shows, as data (this is ``--format json`` for a hardened file).

    Args:
        meta: the metadata of a hardened file (``models.hardened_meta``).
        path: the file, as given.
        diagnostics: ``diagnostics.card_diagnostics`` figures, or None when they were not computed.
        notes: sentences to show (e.g. why the diagnostics are missing).

    Raises:
        ModelFileError: metadata without the shape the card reads.
    """
    m = _checked(
        meta,
        path,
        _HARDENED,
        ("config", "metrics", "check", "backbone", "source", "classes", "base_classifier", "versions"),
    )
    check = m["check"]
    if check:
        check = {k: v for k, v in check.items() if k != "train_indices"}  # sample indices are bulk, not a figure
    return {
        "schema": REPORT_SCHEMA,
        "kind": "card",
        "verdict": (check or {}).get("recommendation") or _NOT_EVALUATED,
        "file": path,
        "format": f"{meta.get('format')} v{meta.get('format_version')}",
        "backbone": m["backbone"] or {},
        "source": m["source"] or {},
        "source_text": _card_source(m["source"] or {}),
        "classes": m["classes"] or [],
        "feature_dim": meta.get("feature_dim"),
        "base_classifier": meta.get("base_classifier"),
        "description": describe_hardened(meta),  # the head the file is built with and what training changed
        "config": m["config"] or {},
        "metrics": m["metrics"] or {},
        "inference": meta.get("inference") if isinstance(meta.get("inference"), dict) else None,
        "check": check,
        "diagnostics": diagnostics,
        "versions": m["versions"] or {},
        "notes": list(notes),
    }


def _backbone_state(metrics: dict) -> str:
    stages = (metrics.get("adversarial") or {}).get("stages") or 0
    return f"last {stages} stage(s) trained adversarially, the rest frozen" if stages else "frozen"


def _adjoint_text(head: dict) -> str:
    """What the head's ``adjoint`` setting decides: where gradients through the shipped ODE come from, for
    training and for white-box attacks alike (not only training)."""
    if head.get("adjoint"):
        return "adjoint yes (its gradients, in training and for white-box attacks, come from the adjoint solve)"
    return "adjoint no (its gradients come from direct backprop through the solver)"


def _sodef_head_rows(cfg: dict, head: dict, inference: dict | None = None) -> list[list[str]]:
    solver = head.get("solver", "?")
    if solver in ADAPTIVE_SOLVERS:
        solver_txt = f"{solver} (adaptive, rtol {num(head.get('rtol'))}, atol {num(head.get('atol'))})"
    else:
        solver_txt = f"{solver} (fixed step {num(head.get('step_size'))})"
    reg = cfg.get("regularizer") or {}
    reg_keys = (
        ("weight_f", "weight_diag", "weight_offdiag")
        if reg.get("form", "code") == "code"
        else ("alpha_f", "alpha_diag", "alpha_offdiag")
    )
    return [
        [
            "ODE function",
            f"{head.get('odefunc', '?')}, state dim n={head.get('dim', '?')}"
            + (f", hidden {head.get('hidden', '?')}" if head.get("odefunc") not in (None, "sin") else ""),
        ],
        ["solver", f"{solver_txt}, T={num(head.get('t1'))}, {_adjoint_text(head)}"],
        ["shipped solver", solver_line(inference) if inference else "head.solver as declared (no selection)"],
        ["attack copy", f"fixed-step RK4, step {num(head.get('step_size'))}"],
        [
            "regularizer",
            f"{reg.get('form', '?')} form, {reg.get('convention', '?')} dominance, "
            + ", ".join(f"{k} {num(reg.get(k))}" for k in reg_keys if k in reg),
        ],
    ]


def _phase_settings(p: dict) -> str:
    keys = ("epochs", "batch_size", "lr", "lr_fc", "lr_f", "mixup_alpha", "adjoint")
    return ", ".join(f"{k} {num(p[k])}" for k in keys if k in p)


def _phase_metrics(m: dict) -> str:
    return ", ".join(f"{k} {num(v, 4)}" for k, v in m.items() if k != "skipped")


def _classes_text(classes: list[str]) -> str:
    return f"{len(classes)}: " + ", ".join(classes[:6]) + (", ..." if len(classes) > 6 else "") if classes else "-"


def _adversarial_rows(adv: dict, acfg: dict, head: dict) -> list[list[str]]:
    settings = [(k, adv.get(k)) for k in ("eps", "step", "steps", "beta")]
    select = adv.get("select", {})
    rows = [
        ["trained", str(adv.get("summary", "?"))],
        [
            "settings",
            ", ".join(f"{k} {num(v)}" for k, v in settings if v is not None)
            + ", "
            + ", ".join(
                f"{k} {num(acfg[k])}" for k in ("epochs", "batch_size", "lr", "weight_decay", "ema") if k in acfg
            ),
        ],
        [
            "selection",
            (
                f"best validation accuracy under {select.get('attack', '?')} on {select.get('n', '?')} images: "
                f"epoch {adv.get('best_epoch')} ({pct(adv.get('val_pgd_acc'))}; "
                f"start {pct((adv.get('history') or [{}])[0].get('val_pgd_acc'))})"
            ),
        ],
        [
            "original weights",
            f"kept for the base: {len(adv.get('tuned_backbone_state') or [])} tuned backbone tensors stored beside them",
        ],
    ]
    if adv.get("ode_solver"):
        rows.append(
            [
                "ODE gradients",
                f"{adv['ode_solver']} fixed step {num(head.get('step_size'))}, plain backprop (no adjoint)",
            ]
        )
    return rows


def _detail_blocks(data: dict) -> list[Block]:
    """The card's detail: the base model, data, head and solver, adversarial training and the phases."""
    cfg, metrics, bb = data["config"], data["metrics"], data["backbone"]
    base_kind = {
        "own": "the backbone's own classifier head",
        "probe": "linear probe fitted on the frozen features",
    }.get(data["base_classifier"], str(data["base_classifier"]))
    mdata, split = metrics.get("data") or {}, metrics.get("split") or {}
    head = cfg.get("head") or {}
    ode = head.get("kind", "sodef") == "sodef"
    blocks: list[Block] = [
        kv(
            "Base model",
            [
                ["file", f"{data['file']} ({data['format']})"],
                [
                    "backbone",
                    (
                        f"{bb.get('timm_name', '?')} ({_backbone_state(metrics)}), "
                        f"input {'x'.join(map(str, bb.get('input_size', []))) or '?'}, {data['feature_dim']} features"
                    ),
                ],
                ["source", data["source_text"]],
                ["classes", _classes_text(data["classes"])],
                ["base classifier", base_kind],
            ],
        ),
        kv(
            "Data",
            [
                [
                    "hardening data",
                    f"{cfg.get('data', '?')} ({mdata.get('train', '?')} train, {mdata.get('test', '?')} test images)",
                ],
                [
                    "split",
                    f"{split.get('train', '?')} train / {split.get('val', '?')} validation (seed {split.get('seed', '?')})",
                ],
            ],
        ),
        kv("Head and solver", _sodef_head_rows(cfg, head, data.get("inference")))
        if ode
        else kv(
            "Head",
            [
                ["head", data["description"]["text"] if data.get("description") else "linear"],
            ],
        ),
    ]
    if metrics.get("path"):
        blocks.append(kv("Path", [[metrics["path"]]]))
    if metrics.get("adversarial"):
        blocks.append(
            kv("Adversarial training", _adversarial_rows(metrics["adversarial"], cfg.get("adversarial") or {}, head))
        )
        if metrics["adversarial"].get("selection_warning"):
            blocks.append(note(f"WARNING: {metrics['adversarial']['selection_warning']}", "warn"))
    phases = metrics.get("phases") or {}
    rows = [
        [
            p,
            _phase_settings(cfg.get(p) or {}),
            "skipped (epochs = 0)" if (cfg.get(p) or {}).get("epochs") == 0 else _phase_metrics(phases.get(p) or {}),
        ]
        for p in ("phase1", "phase2", "phase3")
        if p in phases or p in cfg and ode
    ]
    if data["base_classifier"] == "probe" and (cfg.get("probe") or {}).get("epochs") == 0:
        rows.append(
            ["probe", _phase_settings(cfg["probe"]), "skipped (epochs = 0): the baseline is an untrained linear probe"]
        )
    if rows:
        blocks.append(table("Hardening phases", [col("phase"), col("settings"), col("final metrics")], rows))
    p3 = cfg.get("phase3") or {}
    if (
        ode
        and head.get("adjoint")
        and p3.get("epochs", 1)
        and p3.get("train_odefunc", True)
        and p3.get("adjoint", True)
        and not p3.get("solver")
    ):
        blocks.append(
            note(
                "phase 3 trained f with gradients from the adjoint solve, which disagree with direct backprop "
                "through the same solver (benchmarks/adjoint_gradients.py): its fine-tuning of f is close to a "
                "random walk; set phase3.adjoint = false for exact gradients",
                "warn",
            )
        )
    return blocks


def _clean_blocks(metrics: dict) -> list[Block]:
    b, h = metrics.get("base") or {}, metrics.get("hardened") or {}
    if not (b or h):
        return []
    n_test, n_val = (metrics.get("data") or {}).get("test"), (metrics.get("split") or {}).get("val")
    rows = [
        [
            "test",
            acc_ci(b.get("test_clean_acc"), n_test),
            acc_ci(h.get("test_clean_acc"), n_test),
            delta(b.get("test_clean_acc"), h.get("test_clean_acc")),
        ],
        [
            "validation",
            acc_ci(b.get("val_acc"), n_val),
            acc_ci(h.get("val_acc"), n_val),
            delta(b.get("val_acc"), h.get("val_acc")),
        ],
    ]
    return [
        table(
            "Clean accuracy",
            [
                col("split"),
                col("base", "right", "value"),
                col("hardened", "right", "value"),
                col("delta", "right", "delta"),
            ],
            rows,
        )
    ]


def _stability_blocks(stab: dict) -> list[Block]:
    """The stability figures stored while hardening, the eigenvalue histograms and the warning."""
    if not stab:
        return []
    stages = [s for s in ("before_phase2", "after_phase2", "final") if s in stab]
    rows = [
        [label] + [f(stab[s].get(key)) for s in stages]
        for key, label, f in (
            ("frac_eig_negative", "Jacobians with all Re(eig) < 0", pct),
            ("frac_diag_dominant_col", "diag. dominant, negative diagonal (columns)", pct),
            ("frac_diag_dominant_row", "diag. dominant, negative diagonal (rows)", pct),
            ("mean_max_real_eig", "mean max Re(eig)", num),
        )
    ]
    pts = stab[stages[-1]].get("points", "?") if stages else "?"
    blocks: list[Block] = [
        table(
            "Stability while hardening (stored in the file)",
            [col("at z(0)")] + [col(s.replace("_", " "), "right") for s in stages],
            rows,
            f"on {pts} test features",
        )
    ]
    hists: list[HistSeries] = [
        {"name": s.replace("_", " "), "counts": h.get("counts") or [], "lo": h.get("lo", 0.0), "hi": h.get("hi", 0.0)}
        for s in ("before_phase2", "after_phase2")
        if s in stab
        for h in [stab[s].get("max_real_eig_hist")]
        if isinstance(h, dict)
    ]
    if hists:
        blocks.append(
            hist(
                "Largest real eigenvalue of the Jacobian at z(0), before and after phase 2",
                hists,
                "max Re(eig) of df/dz at z(0) (stable: < 0)",
                f"distribution over the {pts} test features stored in the file; left of 0 = locally stable",
            )
        )
    elif stages:
        blocks.append(
            note(
                "no eigenvalue histogram in this file (hardened before sodef_cli stored one); harden again to get the picture"
            )
        )
    if stab.get("warning"):
        blocks.append(note(f"STABILITY NOT REACHED: {stab['warning']}", "warn"))
    return blocks


def _diagnostics_blocks(d: dict | None) -> list[Block]:
    if not d:
        return []
    rows = [
        ["mean ||f(z(0))||", num(d.get("mean_norm_f_z0"), 4)],
        ["Jacobians with all Re(eig) < 0", pct(d.get("frac_eig_negative"))],
        ["diag. dominant, negative diagonal (columns)", pct(d.get("frac_diag_dominant_col"))],
        ["diag. dominant, negative diagonal (rows)", pct(d.get("frac_diag_dominant_row"))],
        ["mean max Re(eig)", num(d.get("mean_max_real_eig"), 4)],
        ["mean ||z(T) - z(0)||", num(d.get("mean_norm_zT_minus_z0"), 4)],
        ["mean ||z(0)||", num(d.get("mean_norm_z0"), 4)],
        ["mean ||f(z(T))||", num(d.get("mean_norm_f_zT"), 4)],
        [f"NFE per solve (batch of {d.get('batch', '?')})", f"{d.get('nfe_per_solve', '?')} ({d.get('solver', '?')})"],
    ]
    return [
        table(
            "Stability diagnostics (computed now)",
            [col("at z(0) of test images"), col("value", "right")],
            rows,
            f"on {d.get('samples', '?')} {d.get('split', 'test')} images of {d.get('data', '?')} drawn class by class "
            f"(seed {d.get('seed', 0)}); the ODE is solved once for the whole batch",
        )
    ]


def _guard_level(check: dict) -> str:
    outcome = check.get("outcome") or decide(check.get("gain_points") or 0.0, check.get("p_mcnemar"))
    return {"more robust": "good", "LESS robust": "bad"}.get(outcome, "warn")


def _guard_blocks(check: dict | None) -> tuple[Verdict, list[Block]]:
    """The card's verdict (the guard's recommendation) and the guard's table and notes."""
    if not check:
        return verdict(_NOT_EVALUATED, "warn"), [
            heading("Hardening guard"),
            note("skipped (--no-check): evaluate with `sodef attack` before deploying", "warn"),
        ]
    cb, ch = check.get("base") or {}, check.get("hardened") or {}

    def frac(v: float | None, ci: list[float] | None) -> tuple[float | None, list[float] | None]:
        return None if v is None else v / 100, None if ci is None else [c / 100 for c in ci]

    rows = [
        [
            "clean",
            pct_ci(cb.get("clean"), cb.get("clean_ci95")),
            pct_ci(ch.get("clean"), ch.get("clean_ci95")),
            points_ci(*frac(check.get("clean_delta_points"), check.get("clean_delta_points_ci95"))),
        ],
        [
            "worst case",
            pct_ci(cb.get("worst_case"), cb.get("worst_case_ci95")),
            pct_ci(ch.get("worst_case"), ch.get("worst_case_ci95")),
            points_ci(*frac(check.get("gain_points"), check.get("gain_points_ci95"))),
        ],
    ]
    split = "held-out check" if check.get("split") == "check" else str(check.get("split", "validation"))
    caption = (
        f"{check.get('suite', '?')} suite on {check.get('n', '?')} {split} images, "
        f"{check.get('norm', '?')} eps={fmt_eps(check.get('eps'), check.get('norm'))}, {check.get('steps', '?')} steps"
        + (f" (REDUCED: {check['reduced']})" if check.get("reduced") else "")
        + f"; gain {points(check.get('gain_points'))} points"
        + (f", McNemar p{p_eq(check['p_mcnemar'])}" if check.get("p_mcnemar") is not None else "")
        + "; [95% interval]: Wilson, paired (Newcombe) for delta"
    )
    blocks: list[Block] = [
        table(
            "Hardening guard",
            [col(""), col("base", "right", "value"), col("hardened", "right", "value"), col("delta", "right", "delta")],
            rows,
            caption,
        )
    ]
    if check.get("held_out_from_base") is not True:
        blocks.append(
            note(
                "check images may overlap the base's training data (its file does not record which images it trained "
                "on: a `sodef pretrain` base on the same data does, and the guard then draws its images elsewhere)",
                "warn",
            )
        )
    flagged = [c["name"] for c in check.get("checks", []) if c.get("flagged") is True]
    if flagged:
        blocks.append(note(f"the guard's masking checks flagged: {', '.join(flagged)}", "warn"))
    if check.get("require_gain_failed"):
        rule = check.get("require_gain_rule") or "--require-gain: a significant loss"
        blocks.append(note(f"this file failed {rule}; the guard's outcome: {check.get('outcome', '?')}", "warn"))
    return verdict(str(check.get("recommendation", "")), _guard_level(check), "guard"), blocks


def card_blocks(data: dict) -> list[Block]:
    """The model card of ``card_data`` as blocks: the verdict, the figures (clean accuracy, stability and its
    picture, the guard), then the detail, notes and versions."""
    name = str(data["file"]).rsplit("/", 1)[-1]
    guard_verdict, guard = _guard_blocks(data["check"])
    blocks: list[Block] = [title(f"Model card: {name}"), guard_verdict]
    blocks += _clean_blocks(data["metrics"]) + _stability_blocks(data["metrics"].get("stability") or {})
    blocks += _diagnostics_blocks(data["diagnostics"]) + guard + _detail_blocks(data)
    blocks += [note(n, "info") for n in data["notes"]]
    if data["versions"]:
        blocks.append(kv("Versions", [[", ".join(f"{k} {v}" for k, v in data["versions"].items())]]))
    return blocks


# ----------------------------------------------------------------------------------------------------
# the card of a base file


def base_card_data(meta: dict, *, path: str) -> dict:
    """The model card of a ``sodef pretrain`` base file, as data (``--format json``): architecture, data,
    training history, clean accuracy and adversarial-training settings, led by a one-paragraph verdict.

    Raises:
        ModelFileError: metadata without the shape the card reads.
    """
    m = _checked(meta, path, _BASE, ("config", "training", "backbone", "versions"))
    cfg, tr, bb = m["config"] or {}, m["training"] or {}, m["backbone"] or {}
    hist_ = [dict(r) for r in tr.get("history") or []]
    adv = cfg.get("adversarial") or "none"
    acc = tr.get("test_clean_acc")
    best = tr.get("best_epoch")
    best_rec = next((r for r in hist_ if r.get("epoch") == best), {})
    text = (
        f"Base model, not hardened: {bb.get('timm_name', '?')} trained by `sodef pretrain` on {cfg.get('data', '?')} for "
        f"{cfg.get('epochs', '?')} epoch(s) (epoch {best} kept), clean test accuracy {pct(acc)}"
    )
    if adv != "none":
        text += (
            f"; {adv.upper()} adversarial training at eps {fmt_eps(cfg.get('adv_eps'), 'Linf')}, validation accuracy under "
            f"PGD-5 {pct(best_rec.get('val_pgd5_acc'))} (a training-time check, not an evaluation)"
        )
    else:
        text += "; no adversarial training"
    text += (
        ". Its robustness has not been evaluated: run `sodef attack "
        + str(path).rsplit("/", 1)[-1]
        + f" --data {cfg.get('data', 'D')}` (adaptive suite)."
    )
    return {
        "schema": REPORT_SCHEMA,
        "kind": "card",
        "verdict": text,
        "card": "base",
        "file": path,
        "format": f"{meta.get('format')} v{meta.get('format_version')}",
        "backbone": bb,
        "config": cfg,
        "training": {"best_epoch": best, "test_clean_acc": acc, "history": hist_},
        "versions": m["versions"] or {},
    }


def _history_blocks(tr: dict) -> list[Block]:
    records = tr["history"]
    if not records:
        return []
    keys = [k for k in ("val_acc", "val_pgd5_acc") if any(k in r for r in records)]
    names = {"val_acc": "validation accuracy", "val_pgd5_acc": "validation PGD-5 accuracy"}
    rows = [
        [str(r.get("epoch", "?")) + (" (kept)" if r.get("epoch") == tr["best_epoch"] else "")]
        + [pct(r.get(k)) for k in keys]
        for r in records
    ]
    blocks: list[Block] = [
        table(
            "Training history",
            [col("epoch")] + [col(names[k], "right", "value") for k in keys],
            rows,
            f"the kept epoch has the best {'PGD-5' if 'val_pgd5_acc' in keys else 'clean'} validation accuracy; "
            f"clean test accuracy of the kept weights {pct(tr['test_clean_acc'])}",
        )
    ]
    vals = [r.get("val_pgd5_acc") for r in records]
    if len(records) >= 2 and any(v is not None for v in vals):
        series: list[Series] = [
            {"name": "clean", "marker": "c", "ys": [r.get("val_acc") for r in records]},
            {"name": "PGD-5", "marker": "p", "ys": vals},
        ]
        blocks.append(
            chart(
                "Validation accuracy by epoch",
                [float(r.get("epoch", i + 1)) for i, r in enumerate(records)],
                [str(r.get("epoch", i + 1)) for i, r in enumerate(records)],
                "epoch",
                series,
                yname="validation accuracy",
            )
        )
    return blocks


def base_card_blocks(data: dict) -> list[Block]:
    """The model card of a base file as blocks: verdict, clean accuracy and history, then the details."""
    cfg, bb = data["config"], data["backbone"]
    name = str(data["file"]).rsplit("/", 1)[-1]
    blocks: list[Block] = [title(f"Model card: {name}"), verdict(data["verdict"], "warn")] + _history_blocks(
        data["training"]
    )
    blocks.append(
        kv(
            "Architecture",
            [
                ["file", f"{data['file']} ({data['format']})"],
                [
                    "backbone",
                    f"timm {bb.get('timm_name', '?')}, input {'x'.join(map(str, bb.get('input_size', []))) or '?'}, "
                    f"{bb.get('num_classes', '?')} classes, mean {bb.get('mean')}, std {bb.get('std')}"
                    + (f", kwargs {bb['model_kwargs']}" if bb.get("model_kwargs") else ""),
                ],
                ["classes", _classes_text(bb.get("classes") or [])],
            ],
        )
    )
    train_keys = (
        "data",
        "epochs",
        "batch_size",
        "lr",
        "momentum",
        "weight_decay",
        "augment",
        "val_fraction",
        "pretrained",
        "seed",
        "image_size",
    )
    blocks.append(
        kv(
            "Data and training",
            [[k, num(cfg[k]) if not isinstance(cfg[k], str) else cfg[k]] for k in train_keys if k in cfg],
        )
    )
    adv = cfg.get("adversarial") or "none"
    adv_keys = [k for k in cfg if k.startswith(("adv_", "select"))]
    blocks.append(
        kv("Adversarial training", [["mode", adv]] + ([[k, num(cfg[k])] for k in adv_keys] if adv != "none" else []))
    )
    if data["versions"]:
        blocks.append(kv("Versions", [[", ".join(f"{k} {v}" for k, v in data["versions"].items())]]))
    return blocks


# ----------------------------------------------------------------------------------------------------
# the summary printed by ``sodef harden``


def harden_summary_blocks(s: dict) -> list[Block]:
    """What ``sodef harden`` prints when it finishes (``s``: the summary ``harden.run`` returns): clean accuracy
    and stability, what was skipped, adversarial training, timings, then the guard's table and verdict."""
    n_test, n_val = (s.get("data") or {}).get("test"), (s.get("split") or {}).get("val")
    rows = [
        [
            "clean accuracy (test)",
            acc_ci(s["base"]["test_clean_acc"], n_test),
            acc_ci(s["hardened"]["test_clean_acc"], n_test),
        ],
        ["clean accuracy (val)", acc_ci(s["base"]["val_acc"], n_val), acc_ci(s["hardened"]["val_acc"], n_val)],
    ]
    st = s.get("stability")
    if st:
        before, after, final = (pct(st[k]["frac_eig_negative"]) for k in ("before_phase2", "after_phase2", "final"))
        rows.append(["Jacobians with all Re(eig) < 0", "", f"{before} -> {after} (phase 2) -> {final}"])
    columns = [col(""), col("base", "right", "value"), col("hardened", "right", "value")]
    blocks: list[Block] = [title(f"hardened -> {s['out']}"), table("Clean accuracy and stability", columns, rows)]
    if st and st.get("warning"):
        blocks.append(note(f"STABILITY NOT REACHED: {st['warning']}", "warn"))
    skipped = [p for p, m in (s.get("phases") or {}).items() if isinstance(m, dict) and m.get("skipped")]
    if skipped:
        blocks.append(note(f"skipped (epochs = 0): {', '.join(skipped)}", "warn"))
    if s.get("path"):
        blocks.append(note(f"path: {s['path']}"))
    adv = s.get("adversarial")
    if adv:
        blocks.append(
            note(
                f"adversarial training: {adv['summary']}; validation PGD-{adv['select']['attack'].split('-')[-1]} "
                f"accuracy {pct(adv['history'][0]['val_pgd_acc'])} -> {pct(adv['val_pgd_acc'])}"
            )
        )
        if adv.get("selection_warning"):
            blocks.append(note(f"WARNING: {adv['selection_warning']}", "warn"))
    if s.get("timings_s"):
        blocks.append(note("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in s["timings_s"].items())))
    check = s.get("check")
    if not check:
        return blocks + [
            note("hardening guard skipped (--no-check): evaluate with `sodef attack` before deploying", "warn")
        ]
    b, h = check["base"], check["hardened"]
    split = "held-out check images" if check.get("split") == "check" else f"{check.get('split', 'validation')} images"
    budget = f", REDUCED: {check['reduced']}" if check.get("reduced") else ""
    rows = [["clean", pct_ci(b["clean"], b.get("clean_ci95")), pct_ci(h["clean"], h.get("clean_ci95"))]]
    rows += [
        [
            name,
            pct_ci(b.get("attacks", {}).get(name), b.get("attacks_ci95", {}).get(name)),
            pct_ci(h["attacks"][name], h.get("attacks_ci95", {}).get(name)),
        ]
        for name in h.get("attacks", {})
    ]
    rows.append(
        [
            "worst case",
            pct_ci(b["worst_case"], b.get("worst_case_ci95")),
            pct_ci(h["worst_case"], h.get("worst_case_ci95")),
        ]
    )
    blocks.append(
        table(
            f"hardening guard: quick adaptive suite, {check['n']} {split}, {check['norm']} "
            f"eps={fmt_eps(check['eps'], check['norm'])}{budget}",
            columns,
            rows,
        )
    )
    blocks += [
        note(f"gradient masking signature ({c['name']}): {c['evidence']}", "warn")
        for c in check.get("checks", [])
        if c.get("flagged")
    ]
    blocks.append(verdict(check["recommendation"], _guard_level(check), "guard"))
    return blocks
