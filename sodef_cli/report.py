"""Rendering: results in, text out. Pure functions; no file or network I/O.

Two reports come out of this module:

- the **attack results** of one or several ``sodef attack`` files side by side (header, base vs hardened
  table per eps, a robustness-vs-eps chart, the masking checks and a one-line verdict);
- the **model card** of a hardened file (its metadata plus optional stability diagnostics computed by
  ``diagnostics.card_diagnostics``).

Each report is built in three steps, so that every format shows the same figures:
``results_data`` / ``card_data`` (numbers and sentences: what ``--format json`` prints) -> blocks
(titles, key/value lists, tables, a chart, notes, a verdict) -> one renderer per format: rich renderables
for the terminal (``render``), Markdown and self-contained HTML (``render(..., "markdown"|"html")``).

    data = results_data([doc], labels=["r.json"])
    Console().print(render(data, "table"))
    text = render(data, "markdown")
"""
from __future__ import annotations

import html
import json
import math
from io import StringIO
from typing import Any, Iterable

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.table import Table
from rich.text import Text

from .errors import ModelFileError, ResultsError

__all__ = [
    "FORMATS",
    "pct",
    "render_harden_summary",
    "render_results",
    "check_results",
    "results_data",
    "card_data",
    "render",
    "to_text",
    "chart_lines",
    "bar_lines",
    "hist_lines",
    "base_card_data",
]

FORMATS = ("table", "markdown", "json", "html")
REPORT_SCHEMA = "sodef_cli/report"
_CHECK_STATUS = {True: "FLAG", False: "ok", None: "not run"}


# ----------------------------------------------------------------------------------------------------
# small formatters


def pct(v: Any) -> str:
    return "-" if v is None else f"{100 * float(v):.1f}%"


def _points(v: float | None) -> str:
    return "-" if v is None else f"{v:+.1f}"


def _delta(b: float | None, h: float | None) -> str:
    return "-" if b is None or h is None else _points(100 * (h - b))


def pct_ci(v: Any, ci: Any, sep: str = " ", mark: str = "") -> str:
    """``52.8% [48.4, 57.1]``: an accuracy with its 95% interval in percent (``sep`` before the interval)."""
    if v is None:
        return "-"
    if not ci:
        return pct(v) + mark
    return f"{pct(v)}{mark}{sep}[{100 * float(ci[0]):.1f}, {100 * float(ci[1]):.1f}]"


def points_ci(d: Any, ci: Any, sep: str = " ") -> str:
    """``+2.4 [-1.3, +6.0]``: a difference in points with its paired 95% interval."""
    if d is None:
        return "-"
    if not ci:
        return _points(100 * float(d))
    return f"{100 * float(d):+.1f}{sep}[{100 * float(ci[0]):+.1f}, {100 * float(ci[1]):+.1f}]"


def _p_eq(p: Any) -> str:
    """``=0.34`` or ``<0.001``: a p-value after the letter p."""
    text = fmt_p(p)
    return text if text.startswith("<") else f"={text}"


def acc_ci(acc: Any, n: Any) -> str:
    """An accuracy measured on ``n`` samples with its Wilson 95% interval."""
    from .stats import wilson

    if acc is None or not isinstance(n, int) or n <= 0:
        return pct(acc)
    return pct_ci(acc, wilson(min(n, max(0, round(float(acc) * n))), n))


def fmt_p(p: Any) -> str:
    if p is None:
        return "-"
    p = float(p)
    return "<0.001" if p < 0.001 else f"{p:.3f}" if p < 0.1 else f"{p:.2f}"


def fmt_eps(eps: float | None, norm: str | None = "Linf") -> str:
    """8/255 for Linf budgets on the 1/255 grid, else 4 significant digits."""
    if eps is None:
        return "-"
    k = eps * 255
    if norm == "Linf" and eps > 0 and abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return f"{eps:.4g}"


def _num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.{digits}g}"
    return str(v)


def _eps_key(eps: float) -> float:
    return round(float(eps), 10)


# ----------------------------------------------------------------------------------------------------
# the hardening summary (printed by ``sodef harden``)


def render_harden_summary(s: dict) -> Group:
    """The table printed at the end of ``sodef harden``."""
    t = Table(title=f"hardened -> {s['out']}", show_lines=False)
    t.add_column("")
    t.add_column("base", justify="right")
    t.add_column("hardened", justify="right")
    n_test, n_val = (s.get("data") or {}).get("test"), (s.get("split") or {}).get("val")
    t.add_row("clean accuracy (test)", acc_ci(s["base"]["test_clean_acc"], n_test), acc_ci(s["hardened"]["test_clean_acc"], n_test))
    t.add_row("clean accuracy (val)", acc_ci(s["base"]["val_acc"], n_val), acc_ci(s["hardened"]["val_acc"], n_val))
    st = s.get("stability")
    if st:
        t.add_row("Jacobians with all Re(eig) < 0", "", f"{pct(st['before_phase2']['frac_eig_negative'])} -> {pct(st['after_phase2']['frac_eig_negative'])} (phase 2) -> {pct(st['final']['frac_eig_negative'])}")
    parts: list[Any] = [t]
    if st and st.get("warning"):
        parts.append(Text(f"warning: {st['warning']}", style="bold yellow"))
    skipped = [p for p, m in (s.get("phases") or {}).items() if isinstance(m, dict) and m.get("skipped")]
    if skipped:
        parts.append(Text(f"skipped (epochs = 0): {', '.join(skipped)}", style="yellow"))
    adv = s.get("adversarial")
    if adv:
        parts.append(Text(f"adversarial training: {adv['summary']}; validation PGD-{adv['select']['attack'].split('-')[-1]} "
                          f"accuracy {pct(adv['history'][0]['val_pgd_acc'])} -> {pct(adv['val_pgd_acc'])}"))
    tim = s.get("timings_s", {})
    if tim:
        parts.append(Text("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in tim.items()), style="dim"))
    check = s.get("check")
    if check:
        b, h = check["base"], check["hardened"]
        split = "held-out check images" if check.get("split") == "check" else f"{check.get('split', 'validation')} images"
        budget = f", REDUCED: {check['reduced']}" if check.get("reduced") else ""
        g = Table(title=f"hardening guard: quick adaptive suite, {check['n']} {split}, {check['norm']} "
                        f"eps={fmt_eps(check['eps'], check['norm'])}{budget}")
        g.add_column("")
        g.add_column("base", justify="right")
        g.add_column("hardened", justify="right")
        g.add_row("clean", pct_ci(b["clean"], b.get("clean_ci95")), pct_ci(h["clean"], h.get("clean_ci95")))
        for name in h.get("attacks", {}):
            g.add_row(name, pct_ci(b.get("attacks", {}).get(name), b.get("attacks_ci95", {}).get(name)),
                      pct_ci(h["attacks"][name], h.get("attacks_ci95", {}).get(name)))
        g.add_row("worst case", pct_ci(b["worst_case"], b.get("worst_case_ci95")), pct_ci(h["worst_case"], h.get("worst_case_ci95")))
        parts.append(g)
        for c in check.get("checks", []):
            if c.get("flagged"):
                parts.append(Text(f"gradient masking signature ({c['name']}): {c['evidence']}", style="yellow"))
        outcome = check.get("outcome", "more robust" if check["gain_points"] > 0 else "LESS robust")
        style = {"more robust": "bold green", "LESS robust": "bold red"}.get(outcome, "bold yellow")
        parts.append(Text(check["recommendation"], style=style))
    else:
        parts.append(Text("hardening guard skipped (--no-check): evaluate with `sodef attack` before deploying", style="yellow"))
    return Group(*parts)


# ----------------------------------------------------------------------------------------------------
# attack results -> data


def check_results(doc: Any, name: str) -> None:
    """Raise ResultsError unless ``doc`` looks like a ``sodef attack`` results document."""
    from .evaluate import SCHEMA, SCHEMA_VERSION

    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ResultsError(f'{name} is not a sodef attack results file (expected "schema": "{SCHEMA}"); '
                           "make one with `sodef attack MODEL --out FILE`")
    from .evaluate import COMPARISON_VERSION

    top = max(SCHEMA_VERSION, COMPARISON_VERSION)
    if not isinstance(doc.get("schema_version"), int) or doc["schema_version"] > top:
        raise ResultsError(f"{name} has results schema version {doc.get('schema_version')!r}; this sodef_cli reads "
                           f"up to {top}: upgrade sodef_cli")
    if doc["schema_version"] == COMPARISON_VERSION and not (isinstance(doc.get("models"), list) and doc.get("reference")):
        raise ResultsError(f'{name}: a results file of several models needs "models" and "reference"')
    if not isinstance(doc.get("runs"), list):
        raise ResultsError(f'{name}: "runs" is missing or not a list')


def _iterations(doc: dict) -> tuple[bool, str]:
    """(reduced?, the header's sentence about attack iterations)."""
    from .evaluate import reduced_budgets

    cfg = doc.get("config", {})
    reduced = reduced_budgets(doc)
    flags = " ".join(f"--{k} {cfg[k]}" for k in ("steps", "queries") if cfg.get(k) is not None)
    if reduced:
        refs = ", ".join(f"{n} " + "/".join(f"{u} of {r} {k}" for k, (u, r) in low.items()) for n, low in reduced.items())
        return True, f"REDUCED ({flags}): {refs}; weaker than the reference evaluation"
    if flags:
        return False, f"overridden ({flags}), at or above the reference settings"
    return False, "reference settings"


def _model_data(mrec: dict | None, planned: list[str]) -> dict | None:
    from .evaluate import _model_summary

    if not mrec or "clean" not in mrec:
        return None
    s = _model_summary(mrec, len(mrec["clean"]))
    atk = mrec.get("attacks", {})
    return {
        "clean": s["clean"],
        "clean_ci95": s["clean_ci95"],
        "worst_case": s["worst_case"],
        "worst_case_ci95": s["worst_case_ci95"],
        "white_box_direct": s.get("white_box_direct"),
        "white_box_direct_ci95": s.get("white_box_direct_ci95"),
        "attacks": {
            name: {"accuracy": s["attacks"][name], "accuracy_ci95": s["attacks_ci95"][name], "kind": rec.get("kind"),
                   "params": rec.get("params", {}), "attacked": rec.get("attacked"), "seconds": rec.get("seconds")}
            for name, rec in atk.items()
        },
        "missing": [a for a in planned if a not in atk],
        "seconds": s["seconds"],
    }


def _file_data(doc: dict, label: str) -> dict:
    from .evaluate import differences, evaluation_strength, masking_checks

    cfg = doc.get("config", {})
    norm = cfg.get("norm", "Linf")
    plan = doc.get("plan", {})
    runs = []
    for run in doc["runs"]:
        models = {m: _model_data(run.get("models", {}).get(m), plan.get(m, [])) for m in ("base", "hardened")}
        checks = run.get("checks")
        provisional = False
        if checks is None:
            checks = masking_checks(run) if models["hardened"] else []
            provisional = bool(checks)
        pending = [m for m in ("base", "hardened") if models[m] is None and plan.get(m) and not doc.get("complete")]
        runs.append({"eps": float(run["eps"]), "done": bool(run.get("done", False)), "models": models, "pending": pending,
                     "difference": differences(run), "checks": checks, "checks_provisional": provisional})
    ran = {_eps_key(r["eps"]) for r in runs}
    not_started = [float(e) for e in cfg.get("eps", []) if _eps_key(e) not in ran]
    complete = bool(doc.get("complete", False))
    reduced, iterations = _iterations(doc)
    model = doc.get("model", {})
    head = model.get("head") or {}
    data = doc.get("data", {})
    vers = doc.get("versions", {})
    seconds = {m: sum((r["models"].get(m) or {}).get("seconds", 0.0) for r in runs) for m in ("base", "hardened")}
    started, finished = doc.get("started"), doc.get("finished")
    status = "complete" if complete else "INTERRUPTED (partial results)"
    header = {
        "results": label,
        "model": f"{model.get('path', '?')}" + (f" (sha256 {model['sha256'][:12]})" if model.get("sha256") else ""),
        "backbone": f"{model.get('backbone') or '?'}, base classifier: "
                    + {"own": "the model's own head", "probe": "linear probe on frozen features"}.get(model.get("base_classifier"), str(model.get("base_classifier"))),
        "head": (f"{head.get('odefunc', '?')} ODE, dim {head.get('dim', '?')}, {head.get('solver', '?')} solver, T={_num(head.get('t1'))}"
                 if head else "-"),
        "data": f"{data.get('spec', '?')}, {data.get('split', 'test')} split: {doc.get('n', '?')} of {data.get('test_size', '?')} images",
        "threat model": f"{norm}, eps " + ", ".join(fmt_eps(e, norm) for e in cfg.get("eps", [])),
        "samples": f"n={doc.get('n', '?')}, seed {cfg.get('seed', '?')} (drawn class by class)",
        "attacks": (f"suite {cfg.get('suite')}" if not cfg.get("attacks") else "--attacks " + ",".join(cfg["attacks"]))
                   + "".join(f"; {m}: {', '.join(v)}" for m, v in plan.items()),
        "mode": ("all samples: each attack ran on every clean-correct sample" if cfg.get("all_samples")
                 else "cascade: each attack ran on the samples still robust (per-attack rows are cumulative)"),
        "iterations": iterations,
        "device": str(doc.get("device", "?")),
        "versions": ", ".join(f"{k} {v}" for k, v in vers.items() if k in ("sodef-cli", "torch", "timm", "torchattacks", "torchdiffeq")) or "-",
        "run": f"{status}; started {started or '?'}" + (f", finished {finished}" if finished else "")
               + f"; attack time base {seconds['base']:.1f} s, hardened {seconds['hardened']:.1f} s",
    }
    notes = _file_notes(label, doc, runs, not_started, complete)
    fd = {
        "label": label,
        "model": model.get("path"),
        "norm": norm,
        "n": doc.get("n"),
        "complete": complete,
        "cascade": not cfg.get("all_samples", False),
        "reduced_iterations": reduced,
        "evaluation": evaluation_strength(doc),
        "solver": head.get("solver"),
        "header": header,
        "runs": runs,
        "eps_not_started": not_started,
        "notes": notes,
    }
    fd["verdict"] = _verdict(fd)
    return fd


def _file_notes(label: str, doc: dict, runs: list[dict], not_started: list[float], complete: bool) -> list[dict]:
    norm = doc.get("config", {}).get("norm", "Linf")
    model_path = doc.get("model", {}).get("path", "MODEL")
    resume = f"resume with `sodef attack {model_path} --out {label}` and the same options"
    notes = []
    if not runs:
        notes.append({"level": "warn", "text": f"{label}: no results yet: the file holds no finished attack "
                      f"(the run stopped before its first attack finished); {resume}."})
        return notes
    if not complete:
        missing = []
        for r in runs:
            for m in ("base", "hardened"):
                md = r["models"].get(m)
                planned = doc.get("plan", {}).get(m, [])
                if md is None:
                    if planned:
                        missing.append(f"{m} at {fmt_eps(r['eps'], norm)} (not started)")
                elif md["missing"]:
                    missing.append(f"{m} at {fmt_eps(r['eps'], norm)} ({', '.join(md['missing'])})")
        missing += [f"eps {fmt_eps(e, norm)} (not started)" for e in not_started]
        done = sum(1 for r in runs if r["done"])
        total = len(runs) + len(not_started)
        notes.append({"level": "warn", "text": f"{label}: interrupted run: {done} of {total} eps finished"
                      + (f"; missing: {'; '.join(missing)}" if missing else "")
                      + ". Worst cases cover only the attacks that finished, so they can only go down (marked †); "
                      + f"{resume}."})
    return notes


def _verdict(fd: dict) -> dict:
    """The one-line verdict of one results file, as data plus its sentence."""
    norm = fd["norm"]
    usable = [r for r in fd["runs"] if r["models"].get("base") and r["models"].get("hardened")]
    flagged = list(dict.fromkeys(c["name"] for r in fd["runs"] for c in r["checks"] if c.get("flagged") is True))
    ran_checks = any(c.get("flagged") is not None for r in fd["runs"] for c in r["checks"])
    out: dict[str, Any] = {"available": bool(usable), "masking_suspected": bool(flagged), "flagged_checks": flagged}
    if not usable:
        out.update(level="warn", text="No verdict: neither model has finished an attack at any eps yet.")
        return out
    r = usable[0]
    b, h = r["models"]["base"], r["models"]["hardened"]
    gain = 100 * (h["worst_case"] - b["worst_case"])
    claimed = h.get("white_box_direct")
    claimed_gain = None if claimed is None else 100 * (claimed - b["worst_case"])
    out.update(eps=r["eps"], gain_points=gain, base_worst_case=b["worst_case"], hardened_worst_case=h["worst_case"],
               white_box_direct=claimed, white_box_claimed_gain_points=claimed_gain)
    from .config import ADAPTIVE_SOLVERS

    solver = fd.get("solver")
    through = (f"the adaptive solver ({solver})" if solver in ADAPTIVE_SOLVERS else f"the {solver} solver") if solver else "the solver"
    ev = fd["evaluation"]
    diff = r.get("difference", {})
    ci, p = diff.get("worst_case_ci95"), diff.get("worst_case_p")
    significant = ci is not None and (ci[0] > 0 or ci[1] < 0)
    out.update(evaluation=ev, gain_ci95_points=None if ci is None else [100 * ci[0], 100 * ci[1]], p_mcnemar=p,
               significant=significant)
    which = "adaptive worst case" if ev["adaptive"] else "white-box worst case"
    text = (f"Hardening gain under the {which} at eps={fmt_eps(r['eps'], norm)}: {gain:+.1f} points"
             + (f" (95% CI {100 * ci[0]:+.1f} to {100 * ci[1]:+.1f}, McNemar p{_p_eq(p)}, n={fd['n']})" if ci is not None else "")
             + f" (base {pct(b['worst_case'])} -> hardened {pct(h['worst_case'])})"
             + ("" if significant or ci is None else "; not significant")
             + "; ")
    if claimed is None:
        text += f"no direct white-box attack through {through} was run."
    else:
        text += f"white-box attacks through {through} claimed {pct(claimed)} ({claimed_gain:+.1f})."
    others = [f"{fmt_eps(o['eps'], norm)} {100 * (o['models']['hardened']['worst_case'] - o['models']['base']['worst_case']):+.1f}"
              for o in usable[1:]]
    if others:
        text += f" Gain at other eps: {', '.join(others)}."
    out["gain_by_eps"] = {fmt_eps(o["eps"], norm): 100 * (o["models"]["hardened"]["worst_case"] - o["models"]["base"]["worst_case"]) for o in usable}
    if flagged:
        text += f" Gradient masking suspected: {', '.join(flagged)}."
    elif ran_checks:
        text += " No gradient-masking signature in the checks that ran."
    else:
        text += " Masking checks not run."
    if not fd["complete"]:
        text = "Provisional (interrupted run): " + text
    if fd["reduced_iterations"]:
        text += f" REDUCED budgets ({fd['header']['iterations'].split(': ', 1)[-1].split(';')[0]}): weaker than the reference evaluation."
    if not ev["adaptive"]:
        text = ("white-box only: not an adaptive evaluation (no transfer, fixed-step, BPDA, feature or black-box attack ran; "
                "use --suite adaptive). " + text)
    good = ev["adaptive"] and significant and fd["complete"] and not fd["reduced_iterations"]
    out["level"] = "bad" if flagged or gain <= 0 else ("good" if good else "warn")
    out["text"] = text
    return out


def _model_strength(doc: dict, label: str) -> dict:
    """evaluation_strength of one model of a comparison: adaptive when some attack on it does not take its
    gradients from the model itself."""
    from .attacks import ATTACKS
    from .evaluate import ADAPTIVE_KINDS

    kinds: list[str] = []
    for run in doc.get("runs", []):
        for rec in (run.get("models", {}).get(label) or {}).get("attacks", {}).values():
            if rec.get("kind") and rec["kind"] not in kinds:
                kinds.append(rec["kind"])
    if not kinds:
        kinds = list(dict.fromkeys(ATTACKS[a].kind for a in doc.get("plan", {}).get(label, []) if a in ATTACKS))
    return {"adaptive": any(k in ADAPTIVE_KINDS for k in kinds), "kinds": kinds}


def _model_line(m: dict) -> str:
    """One line about a model of a comparison: what it is."""
    kind = m.get("kind")
    head = m.get("head") or {}
    if kind == "hardened":
        what = (f"hardened file, {head.get('odefunc', '?')} ODE head ({head.get('solver', '?')}, dim {head.get('dim', '?')})"
                if m.get("has_ode") else "hardened file, linear head")
    elif kind == "base":
        adv = m.get("adversarial")
        what = "base file (`sodef pretrain`" + (f", {adv} adversarial training)" if adv and adv != "none" else ")")
    else:
        what = "timm model" + (f" with checkpoint {m['checkpoint']}" if m.get("checkpoint") else " (hub weights)")
    src = f"; transfer attacks from {m['transfer_source']}" if m.get("transfer_source") else ""
    sha = f" (sha256 {m['sha256'][:12]})" if m.get("sha256") else ""
    return f"{m.get('backbone') or '?'}: {what}; {m.get('path', '?')}{sha}{src}"


def _comparison_data(doc: dict, label: str) -> dict:
    """Everything the report shows about one results file of several models (schema v2), as data."""
    from .evaluate import comparison_differences

    cfg = doc.get("config", {})
    norm = cfg.get("norm", "Linf")
    plan = doc.get("plan", {})
    models = [m["label"] for m in doc["models"]]
    ref = doc["reference"]
    complete = bool(doc.get("complete", False))
    runs = []
    for run in doc["runs"]:
        mds = {lab: _model_data(run.get("models", {}).get(lab), plan.get(lab, [])) for lab in models}
        runs.append({"eps": float(run["eps"]), "done": bool(run.get("done", False)), "models": mds,
                     "pending": [lab for lab in models if mds[lab] is None and not complete],
                     "difference": comparison_differences(run, ref),
                     "checks": {lab: (run.get("models", {}).get(lab) or {}).get("checks", []) for lab in models}})
    reduced, iterations = _iterations(doc)
    data = doc.get("data", {})
    tags = _tags(len(models))
    vers = doc.get("versions", {})
    est = (doc.get("estimate") or {}).get("seconds")
    spent = sum((r["models"].get(lab) or {}).get("seconds", 0.0) for r in runs for lab in models)
    header = {
        "results": label,
        **{f"model {tag}": _model_line(m) + (" [reference]" if m["label"] == ref else "") for tag, m in zip(tags, doc["models"])},
        "data": f"{data.get('spec', '?')}, {data.get('split', 'test')} split: {doc.get('n', '?')} of {data.get('test_size', '?')} images",
        "threat model": f"{norm}, eps " + ", ".join(fmt_eps(e, norm) for e in cfg.get("eps", [])),
        "samples": f"n={doc.get('n', '?')}, seed {cfg.get('seed', '?')} (drawn class by class); the same samples and attack seeds for every model",
        "attacks": (f"suite {cfg.get('suite')}" if not cfg.get("attacks") else "--attacks " + ",".join(cfg["attacks"]))
                   + "".join(f"; {tag}: {', '.join(plan.get(lab, []))}" for tag, lab in zip(tags, models)),
        "mode": ("all samples: each attack ran on every clean-correct sample" if cfg.get("all_samples")
                 else "cascade: each attack ran on the samples still robust (per-attack rows are cumulative)"),
        "iterations": iterations,
        "device": str(doc.get("device", "?")),
        "versions": ", ".join(f"{k} {v}" for k, v in vers.items() if k in ("sodef-cli", "torch", "timm", "torchattacks", "torchdiffeq")) or "-",
        "run": ("complete" if complete else "INTERRUPTED (partial results)") + f"; started {doc.get('started') or '?'}"
               + (f", finished {doc['finished']}" if doc.get("finished") else "") + f"; attack time {spent:.1f} s"
               + (f", attacks and checks {doc['seconds_run']:.1f} s" if isinstance(doc.get("seconds_run"), (int, float)) else "")
               + (f" (estimated before the run: {est:.1f} s)" if isinstance(est, (int, float)) else ""),
    }
    notes = []
    if not complete:
        notes.append({"level": "warn", "text": f"{label}: interrupted run: worst cases cover only the attacks that finished, so they "
                                                 "can only go down; rerun the same command with the same --out to resume."})
    fd = {"kind": "comparison", "label": label, "models": models, "tags": tags, "reference": ref, "norm": norm, "n": doc.get("n"),
          "complete": complete, "cascade": not cfg.get("all_samples", False), "reduced_iterations": reduced,
          "evaluation": {lab: _model_strength(doc, lab) for lab in models}, "header": header, "runs": runs,
          "notes": notes}
    fd["verdict"] = _comparison_verdict(fd)
    return fd


def _tags(n: int) -> list[str]:
    return [chr(ord("A") + i) if i < 26 else str(i + 1) for i in range(n)]


def _comparison_verdict(fd: dict) -> dict:
    """One paragraph: each model's worst case with its interval and its paired difference to the reference."""
    norm, ref = fd["norm"], fd["reference"]
    usable = [r for r in fd["runs"] if all(r["models"].get(lab) for lab in fd["models"])]
    flagged = {lab: list(dict.fromkeys(c["name"] for r in fd["runs"] for c in r["checks"].get(lab, []) if c.get("flagged") is True))
               for lab in fd["models"]}
    out: dict[str, Any] = {"available": bool(usable), "reference": ref,
                           "masking_suspected": {lab: bool(v) for lab, v in flagged.items()}}
    if not usable:
        out.update(level="warn", text="No verdict: not every model has finished its attacks at any eps yet.")
        return out
    r = usable[0]
    tag = dict(zip(fd["models"], fd["tags"]))
    parts, significant_better, worse = [], [], []
    for lab in fd["models"]:
        md = r["models"][lab]
        txt = f"{tag[lab]} {lab} {pct_ci(md['worst_case'], md.get('worst_case_ci95'))}"
        if lab == ref:
            txt += " (reference)"
        else:
            d = r["difference"].get(lab, {})
            ci, p = d.get("worst_case_ci95"), d.get("worst_case_p")
            if "worst_case" in d:
                txt += f", {points_ci(d['worst_case'], ci)} points vs {tag[ref]} (McNemar p{_p_eq(p)})"
                if ci and ci[0] > 0:
                    significant_better.append(lab)
                elif ci and ci[1] < 0:
                    worse.append(lab)
        if not fd["evaluation"][lab]["adaptive"]:
            txt += " [white-box only]"
        parts.append(txt)
    best = max(fd["models"], key=lambda lab: r["models"][lab]["worst_case"])
    if len(fd["models"]) == 1:
        text = f"Worst-case robust accuracy at eps={fmt_eps(r['eps'], norm)} on {fd['n']} samples: {parts[0].replace(' (reference)', '')}."
    else:
        text = (f"Worst-case robust accuracy at eps={fmt_eps(r['eps'], norm)} on the same {fd['n']} samples: " + "; ".join(parts) + ". ")
        if significant_better:
            text += f"Significantly more robust than the reference: {', '.join(significant_better)}. "
        else:
            text += "No model is significantly more robust than the reference. "
        if worse:
            text += f"Significantly LESS robust: {', '.join(worse)}. "
        text += f"Highest worst case: {best}."
    bad = [f"{lab} ({', '.join(v)})" for lab, v in flagged.items() if v]
    if bad:
        text += f" Gradient masking suspected: {'; '.join(bad)}."
    white = [lab for lab in fd["models"] if not fd["evaluation"][lab]["adaptive"]]
    if white:
        text += (f" White-box only for {', '.join(white)}: not an adaptive evaluation (no transfer, fixed-step, BPDA, feature "
                 "or black-box attack ran on it).")
    if fd["reduced_iterations"]:
        text += f" REDUCED budgets ({fd['header']['iterations'].split(': ', 1)[-1].split(';')[0]}): weaker than the reference evaluation."
    if not fd["complete"]:
        text = "Provisional (interrupted run): " + text
    out.update(eps=r["eps"], best=best, more_robust=significant_better, less_robust=worse,
               worst_case={lab: r["models"][lab]["worst_case"] for lab in fd["models"]})
    good = significant_better and not bad and not white and fd["complete"] and not fd["reduced_iterations"]
    out["level"] = "bad" if bad else ("good" if good else "warn")
    out["text"] = text
    return out


def _unique_labels(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
        out.append(lab if seen[lab] == 1 else f"{lab} ({seen[lab]})")
    return out


def results_data(docs: list[dict], labels: list[str] | None = None) -> dict:
    """Everything the results report shows, as data (this is ``--format json``).

    Args:
        docs: ``sodef attack`` results documents (complete, partial or empty).
        labels: a name per document (the results file names); default: the model file names.

    Raises:
        ResultsError: a document that is not a results file or is malformed.
    """
    if labels is None:
        labels = [(f"{len(d['models'])} model(s)" if isinstance(d.get("models"), list) else
                   str((d.get("model") or {}).get("path", f"results {i + 1}")).rsplit("/", 1)[-1]) if isinstance(d, dict) else f"results {i + 1}"
                  for i, d in enumerate(docs)]
    labels = _unique_labels(list(labels))
    files = []
    for doc, label in zip(docs, labels):
        check_results(doc, label)
        try:
            fd = _comparison_data(doc, label) if doc.get("kind") == "comparison" else _file_data(doc, label)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise ResultsError(f"{label}: malformed results file ({type(exc).__name__}: {exc})") from None
        files.append({"verdict": fd.pop("verdict"), **fd})  # the conclusion first, in JSON too
    verdicts = [{"file": fd["label"], "level": fd["verdict"]["level"], "text": fd["verdict"]["text"]} for fd in files]
    return {"schema": REPORT_SCHEMA, "kind": "results", "verdicts": verdicts, "files": files}


# ----------------------------------------------------------------------------------------------------
# blocks: a format-neutral description of what is shown


def _title(text: str) -> dict:
    return {"type": "title", "text": text}


def _heading(text: str) -> dict:
    return {"type": "heading", "text": text}


def _kv(title: str, rows: list[list[str]], header: list[str] | None = None) -> dict:
    return {"type": "kv", "title": title, "rows": rows, "header": header}


def _table(title: str, columns: list[dict], rows: list[list[str]], caption: str = "", row_styles: list[str] | None = None) -> dict:
    return {"type": "table", "title": title, "columns": columns, "rows": rows, "caption": caption,
            "row_styles": row_styles or [""] * len(rows)}


def _col(name: str, align: str = "left", role: str = "text", *, nowrap: bool = False) -> dict:
    return {"name": name, "align": align, "role": role, "nowrap": nowrap}


def _note(text: str, level: str = "info") -> dict:
    return {"type": "note", "level": level, "text": text}


def _attack_order(files: list[dict]) -> list[tuple[str, str]]:
    """(name, kind) of every attack in any file, hardened plan order first."""
    names: dict[str, str] = {}
    for fd in files:
        for r in fd["runs"]:
            for m in ("hardened", "base"):
                md = r["models"].get(m)
                if md:
                    for name, a in md["attacks"].items():
                        names.setdefault(name, a.get("kind") or "")
                    for name in md["missing"]:
                        names.setdefault(name, "")
    from .attacks import ATTACKS

    return [(n, k or (ATTACKS[n].kind if n in ATTACKS else "?")) for n, k in names.items()]


def _cell(md: dict | None, key: str, *, attack: bool = False, partial: bool = False, pending: bool = False) -> tuple[float | None, str]:
    if md is None:
        return None, "pending" if pending else "-"
    if attack:
        if key in md["attacks"]:
            v = md["attacks"][key]["accuracy"]
            return v, pct_ci(v, md["attacks"][key].get("accuracy_ci95"), "\n")
        return None, ("pending" if key in md["missing"] else "-")
    v = md.get(key)
    from .attacks import ATTACKS

    missing_white = any(ATTACKS[a].kind == "white-box" for a in md["missing"] if a in ATTACKS)
    mark = "†" if partial and (key == "worst_case" and md["missing"] or key == "white_box_direct" and missing_white) else ""
    return v, pct_ci(v, md.get(f"{key}_ci95"), "\n", mark)


def _delta_cells(r: dict | None, key: str, bv: float | None, hv: float | None) -> list[str]:
    """The paired difference (points, 95% interval) and its McNemar p-value, when both models have the figure."""
    diff = (r or {}).get("difference", {})
    if bv is None or hv is None or key not in diff:
        return [_delta(bv, hv), "-"]
    return [points_ci(diff[key], diff.get(f"{key}_ci95"), "\n"), fmt_p(diff.get(f"{key}_p"))]


def results_blocks(data: dict) -> list[dict]:
    """The results report as blocks (see ``render``): the verdict first, then the tables and pictures, then the
    setup, notes and checks."""
    files = data["files"]
    multi = len(files) > 1
    blocks: list[dict] = [_title("sodef attack results" + ("" if multi else f": {files[0]['label']}") if files else "sodef attack results")]
    if not files:
        blocks.append(_note("no results files given", "warn"))
        return blocks
    tags = _tags(len(files))
    for tag, fd in zip(tags, files):
        v = fd["verdict"]
        blocks.append({"type": "verdict", "label": f"{tag}: {fd['label']}" if multi else "", "level": v["level"], "text": v["text"]})
    pairs = [(tag, fd) for tag, fd in zip(tags, files) if fd.get("kind") != "comparison"]
    if pairs:
        blocks += _pair_blocks([fd for _, fd in pairs], [tag for tag, _ in pairs], multi)
    for tag, fd in zip(tags, files):
        if fd.get("kind") == "comparison":
            if multi:
                blocks.append(_heading(f"{tag}: {fd['label']}"))
            blocks += _comparison_blocks(fd)
    return blocks


def _pair_blocks(files: list[dict], tags: list[str], multi: bool) -> list[dict]:
    """Tables, pictures, setup, notes and checks of base-vs-hardened results files (schema v1)."""
    blocks: list[dict] = []

    eps_all = sorted({_eps_key(r["eps"]) for fd in files for r in fd["runs"]})
    norms = list(dict.fromkeys(fd["norm"] for fd in files))
    norm = norms[0] if len(norms) == 1 else None
    attacks = _attack_order(files)
    for eps in eps_all:
        # several files: columns tagged A, B, ... (named in the setup table); no kind column, to fit 80 columns
        cols = [_col("attack", nowrap=True)]  # one file: the attack's kind on the line below its name
        for tag, fd in zip(tags, files):
            pre = f"{tag}\n" if multi else ""
            cols += [_col(f"{pre}base", "right", "value"), _col(f"{pre}hardened", "right", "value"), _col(f"{pre}delta", "right", "delta"),
                     _col(f"{pre}p", "right")]
        rows, styles = [], []
        row_defs = [("clean accuracy", "", "clean", False)] + [(n, k, n, True) for n, k in attacks] + [
            ("white-box worst case", "", "white_box_direct", False), ("worst case", "", "worst_case", False)]
        for label, kind, key, is_attack in row_defs:
            row = [label + (f"\n({kind})" if kind and not multi else "")]
            for fd in files:
                r = next((r for r in fd["runs"] if _eps_key(r["eps"]) == eps), None)
                b = r["models"].get("base") if r else None
                h = r["models"].get("hardened") if r else None
                partial = not fd["complete"]
                pend = r["pending"] if r else []
                bv, bs = _cell(b, key, attack=is_attack, partial=partial, pending="base" in pend)
                hv, hs = _cell(h, key, attack=is_attack, partial=partial, pending="hardened" in pend)
                row += [bs, hs, *_delta_cells(r, key, bv, hv)]
            rows.append(row)
            styles.append("bold" if key == "worst_case" else ("dim" if key == "white_box_direct" else ""))
        cascade = {fd["cascade"] for fd in files}
        if cascade == {True}:
            caption = "cascade: each attack row is the accuracy after that attack and all above it (cumulative)"
        elif cascade == {False}:
            caption = "all samples: each attack row is that attack alone on every clean-correct sample"
        else:
            caption = "mixed modes: " + "; ".join(f"{tag}: {'cascade (cumulative rows)' if fd['cascade'] else 'all samples'}" for tag, fd in zip(tags, files))
        caption += ("; worst case = correct and robust to every attack; [95% interval]: Wilson for accuracies, Newcombe's "
                    "paired score interval for delta (points, hardened - base, same samples); p = exact McNemar test")
        n_set = {fd["n"] for fd in files}
        n_txt = f", n={n_set.pop()}" if len(n_set) == 1 else ""
        blocks.append(_table(f"Robust accuracy at eps = {fmt_eps(eps, norm)}" + (f" ({norm})" if norm else "") + n_txt,
                             cols, rows, caption, styles))

    if len(eps_all) >= 2:
        series = []
        for i, fd in enumerate(files):
            for m in ("base", "hardened"):
                ys = []
                for eps in eps_all:
                    r = next((r for r in fd["runs"] if _eps_key(r["eps"]) == eps), None)
                    md = r["models"].get(m) if r else None
                    ys.append(md["worst_case"] if md else None)
                marker = m[0] if not multi else (tags[i].lower() if m == "base" else tags[i])
                series.append({"name": m if not multi else f"{tags[i]} {m}", "marker": marker, "ys": ys})
        blocks.append({"type": "chart", "title": "Worst-case accuracy vs eps", "xs": eps_all,
                       "xlabels": [fmt_eps(e, norm) for e in eps_all], "xname": f"eps ({norm})" if norm else "eps",
                       "series": series})

    blocks += _cascade_bars([(f"{tag + ': ' if multi else ''}{m}", fd["runs"][0]["models"].get(m), fd["runs"][0]["eps"], fd["cascade"])
                             for tag, fd in zip(tags, files) if fd["runs"] for m in ("base", "hardened")], files[0]["norm"])
    keys = list(files[0]["header"])
    if multi:
        blocks.append(_kv("Setup", [[k] + [fd["header"].get(k, "-") for fd in files] for k in keys if k != "results"],
                          header=[""] + [f"{tag}: {fd['label']}" for tag, fd in zip(tags, files)]))
    else:
        blocks.append(_kv("Setup", [[k, files[0]["header"][k]] for k in keys if k != "results"]))
    for fd in files:
        for n in fd["notes"]:
            blocks.append(_note(n["text"], n["level"]))
    for tag, fd in zip(tags, files):
        merged: dict[tuple, list[str]] = {}  # the same outcome at several eps is shown once
        for r in fd["runs"]:
            for c in r["checks"]:
                key = (_CHECK_STATUS.get(c.get("flagged"), "?"), c.get("name", "?"), c.get("evidence", ""))
                merged.setdefault(key, []).append(fmt_eps(r["eps"], fd["norm"]))
        order = {name: i for i, name in enumerate(dict.fromkeys(k[1] for k in merged))}
        rows = [[", ".join(eps), *key] for key, eps in sorted(merged.items(), key=lambda kv: order[kv[0][1]])]
        title = "Gradient-masking checks" + (f" ({tag}: {fd['label']})" if multi else "")
        if not fd["runs"]:
            continue  # the file's note already says there are no results
        if rows:
            prov = any(r["checks_provisional"] for r in fd["runs"])
            blocks.append(_table(title, [_col("eps"), _col("result", role="status"), _col("check"), _col("evidence")], rows,
                                 "FLAG = the signature of gradient masking was found; the hardened model's robustness is then overstated"
                                 + ("; some checks are provisional (their eps did not finish)" if prov else "")))
        else:
            blocks.append(_heading(title))
            blocks.append(_note("no masking checks yet: they run after each eps finishes", "info"))

    return blocks


def _cascade_bars(items: list[tuple], norm: str | None) -> list[dict]:
    """A bar picture per model: robust accuracy after each attack (cumulative in a cascade) and the worst case,
    each with its 95% interval. ``items``: (name, model data, eps, cascade?)."""
    groups = []
    for name, md, eps, _ in items:
        if not md:
            continue
        bars = [{"label": "clean", "value": md["clean"], "ci": md.get("clean_ci95")}]
        bars += [{"label": a, "value": rec["accuracy"], "ci": rec.get("accuracy_ci95")} for a, rec in md["attacks"].items()]
        bars.append({"label": "worst case", "value": md["worst_case"], "ci": md.get("worst_case_ci95")})
        groups.append({"name": name, "bars": bars, "eps": eps})
    if not groups:
        return []
    eps_set = {g["eps"] for g in groups}
    at = f" at eps = {fmt_eps(groups[0]['eps'], norm)}" if len(eps_set) == 1 else ""
    cascade = {c for *_, c in items}
    what = "after each attack of the cascade (cumulative)" if cascade == {True} else "under each attack"
    return [{"type": "bars", "title": f"Robust accuracy {what}{at}", "groups": groups,
             "caption": "bar: accuracy; whisker (html) and [interval] (text): Wilson 95% interval"}]


def _comparison_blocks(fd: dict) -> list[dict]:
    """Tables, pictures, setup, notes and checks of one results file of several models."""
    blocks: list[dict] = []
    models, tags, ref, norm = fd["models"], fd["tags"], fd["reference"], fd["norm"]
    tag = dict(zip(models, tags))
    others = [lab for lab in models if lab != ref]
    order: dict[str, None] = {}  # rows in the order of the longest plan (an ODE model's), then the others'
    for r in fd["runs"]:
        for lab in sorted(models, key=lambda m: -len((r["models"].get(m) or {}).get("attacks", {}))):
            md = r["models"].get(lab)
            for name in list(md["attacks"]) + list(md["missing"]) if md else []:
                order.setdefault(name)
    attacks = [(name, "") for name in order]
    for r in fd["runs"]:
        cols = [_col("attack", nowrap=True)] + [_col(tag[lab], "right", "value") for lab in models]
        cols += [_col(f"{tag[lab]} - {tag[ref]}", "right", "delta") for lab in others]
        rows, styles = [], []
        row_defs = [("clean accuracy", "clean", False)] + [(n, n, True) for n, _ in attacks] + [
            ("white-box worst case", "white_box_direct", False), ("worst case", "worst_case", False)]
        for label, key, is_attack in row_defs:
            row = [label]
            vals = {}
            for lab in models:
                v, txt = _cell(r["models"].get(lab), key, attack=is_attack, partial=not fd["complete"], pending=lab in r["pending"])
                vals[lab] = v
                row.append(txt)
            for lab in others:  # the paired difference, its interval and McNemar's p in one cell
                d, p = _delta_cells({"difference": r["difference"].get(lab, {})}, key, vals[ref], vals[lab])
                row.append(d + ("" if p == "-" else f"\np={p}"))
            rows.append(row)
            styles.append("bold" if key == "worst_case" else ("dim" if key == "white_box_direct" else ""))
        caption = ("cascade: each attack row is the accuracy after that attack and all above it (cumulative)" if fd["cascade"]
                   else "all samples: each attack row is that attack alone on every clean-correct sample")
        caption += ("; " + ", ".join(f"{tag[lab]} = {lab}" for lab in models) + f"; reference {tag[ref]}; [95% interval]: Wilson for "
                    "accuracies, Newcombe's paired score interval for differences (points, same samples); p = exact McNemar test")
        blocks.append(_table(f"Robust accuracy at eps = {fmt_eps(r['eps'], norm)} ({norm}), n={fd['n']}", cols, rows, caption, styles))
    if fd["runs"]:
        r0 = fd["runs"][0]
        blocks += _cascade_bars([(f"{tag[lab]}: {lab}", r0["models"].get(lab), r0["eps"], fd["cascade"]) for lab in models], norm)
    eps_all = [r["eps"] for r in fd["runs"]]
    if len(eps_all) >= 2:
        series = [{"name": lab, "marker": tag[lab],
                   "ys": [(r["models"].get(lab) or {}).get("worst_case") for r in fd["runs"]]} for lab in models]
        blocks.append({"type": "chart", "title": "Worst-case accuracy vs eps", "xs": eps_all,
                       "xlabels": [fmt_eps(e, norm) for e in eps_all], "xname": f"eps ({norm})", "series": series})
    blocks.append(_kv("Setup", [[k, v] for k, v in fd["header"].items() if k != "results"]))
    for n in fd["notes"]:
        blocks.append(_note(n["text"], n["level"]))
    merged: dict[tuple, list[str]] = {}
    for r in fd["runs"]:
        for lab in models:
            for c in r["checks"].get(lab, []):
                key = (tag[lab], _CHECK_STATUS.get(c.get("flagged"), "?"), c.get("name", "?"), c.get("evidence", ""))
                merged.setdefault(key, []).append(fmt_eps(r["eps"], norm))
    if merged:
        rows = [[", ".join(eps), *key] for key, eps in merged.items()]
        blocks.append(_table("Gradient-masking checks", [_col("eps"), _col("model"), _col("result", role="status"), _col("check"),
                                                         _col("evidence")], rows,
                             "FLAG = the signature of gradient masking was found; that model's robustness is then overstated"))
    return blocks


# ----------------------------------------------------------------------------------------------------
# the model card


def _card_source(meta: dict) -> str:
    src = meta.get("source") or {}
    kind = src.get("kind")
    if kind == "timm":
        s = f"timm {src.get('name')} ({'pretrained hub weights' if src.get('pretrained') else 'no hub weights'})"
        if src.get("checkpoint"):
            s += f", checkpoint {src['checkpoint']}"
        return s
    if kind == "sodef_base_file":
        return f"sodef pretrain file {src.get('path')}" + (f" (sha256 {src['sha256'][:12]})" if src.get("sha256") else "")
    return str(src or "-")


def card_data(meta: dict, *, path: str, diagnostics: dict | None = None, notes: Iterable[str] = ()) -> dict:
    """Everything the model card shows, as data; malformed metadata is a ModelFileError (see ``_card_data``)."""
    try:
        return _card_data(meta, path=path, diagnostics=diagnostics, notes=notes)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise ModelFileError(f"{path}: malformed metadata in the model file ({type(exc).__name__}: {exc})") from None


def _card_data(meta: dict, *, path: str, diagnostics: dict | None = None, notes: Iterable[str] = ()) -> dict:
    """Everything the model card shows, as data (this is ``--format json`` for a hardened file).

    Args:
        meta: the metadata of a hardened file (``models.hardened_meta``).
        path: the file, as given.
        diagnostics: ``diagnostics.card_diagnostics`` figures, or None when they were not computed.
        notes: sentences to show (e.g. why the diagnostics are missing).
    """
    cfg = meta.get("config") or {}
    check = meta.get("check") or None
    if check is not None and not isinstance(check, dict) or not isinstance(cfg, dict) or not isinstance(meta.get("metrics") or {}, dict):
        raise ModelFileError(f"{path}: malformed metadata in the model file (config, metrics and check must be objects)")
    if check:
        check = {k: v for k, v in check.items() if k != "train_indices"}  # sample indices are bulk, not a figure
    guard = (check or {}).get("recommendation")
    verdict = guard or "Not evaluated: the hardening guard was skipped (--no-check); evaluate with `sodef attack` before deploying."
    return {
        "schema": REPORT_SCHEMA,
        "kind": "card",
        "verdict": verdict,
        "file": path,
        "format": f"{meta.get('format')} v{meta.get('format_version')}",
        "backbone": meta.get("backbone") or {},
        "source": meta.get("source") or {},
        "source_text": _card_source(meta),
        "classes": meta.get("classes") or [],
        "feature_dim": meta.get("feature_dim"),
        "base_classifier": meta.get("base_classifier"),
        "config": cfg,
        "metrics": meta.get("metrics") or {},
        "check": check,
        "diagnostics": diagnostics,
        "versions": meta.get("versions") or {},
        "notes": list(notes),
    }


def _backbone_state(metrics: dict) -> str:
    stages = (metrics.get("adversarial") or {}).get("stages") or 0
    return f"last {stages} stage(s) trained adversarially, the rest frozen" if stages else "frozen"


def _sodef_head_rows(cfg: dict, head: dict) -> list[list[str]]:
    from .config import ADAPTIVE_SOLVERS

    solver = head.get("solver", "?")
    if solver in ADAPTIVE_SOLVERS:
        solver_txt = f"{solver} (adaptive, rtol {_num(head.get('rtol'))}, atol {_num(head.get('atol'))})"
    else:
        solver_txt = f"{solver} (fixed step {_num(head.get('step_size'))})"
    reg = cfg.get("regularizer") or {}
    reg_keys = ("weight_f", "weight_diag", "weight_offdiag") if reg.get("form", "code") == "code" else ("alpha_f", "alpha_diag", "alpha_offdiag")
    return [
        ["ODE function", f"{head.get('odefunc', '?')}, state dim n={head.get('dim', '?')}" + (f", hidden {head['hidden']}" if head.get("odefunc") not in (None, "sin") else "")],
        ["solver", f"{solver_txt}, T={_num(head.get('t1'))}, adjoint {'yes' if head.get('adjoint') else 'no'} in training"],
        ["attack copy", f"fixed-step RK4, step {_num(head.get('step_size'))}"],
        ["regularizer", f"{reg.get('form', '?')} form, {reg.get('convention', '?')} dominance, "
                        + ", ".join(f"{k} {_num(reg.get(k))}" for k in reg_keys if k in reg)],
    ]


def _phase_settings(p: dict) -> str:
    keys = ("epochs", "batch_size", "lr", "lr_fc", "lr_f", "mixup_alpha", "adjoint")
    return ", ".join(f"{k} {_num(p[k])}" for k in keys if k in p)


def _phase_metrics(m: dict) -> str:
    return ", ".join(f"{k} {_num(v, 4)}" for k, v in m.items() if k != "skipped")


def card_blocks(data: dict) -> list[dict]:
    """The model card as blocks (see ``render``)."""
    cfg, metrics, bb = data["config"], data["metrics"], data["backbone"]
    name = str(data["file"]).rsplit("/", 1)[-1]
    blocks: list[dict] = [_title(f"Model card: {name}")]
    classes = data["classes"]
    cls = f"{len(classes)}: " + ", ".join(classes[:6]) + (", ..." if len(classes) > 6 else "") if classes else "-"
    base_kind = {"own": "the backbone's own classifier head", "probe": "linear probe fitted on the frozen features"}.get(
        data["base_classifier"], str(data["base_classifier"]))
    blocks.append(_kv("Base model", [
        ["file", f"{data['file']} ({data['format']})"],
        ["backbone", f"{bb.get('timm_name', '?')} ({_backbone_state(metrics)}), input {'x'.join(map(str, bb.get('input_size', []))) or '?'}, "
                     f"{data['feature_dim']} features"],
        ["source", data["source_text"]],
        ["classes", cls],
        ["base classifier", base_kind],
    ]))
    mdata = metrics.get("data") or {}
    split = metrics.get("split") or {}
    blocks.append(_kv("Data", [
        ["hardening data", f"{cfg.get('data', '?')} ({mdata.get('train', '?')} train, {mdata.get('test', '?')} test images)"],
        ["split", f"{split.get('train', '?')} train / {split.get('val', '?')} validation (seed {split.get('seed', '?')})"],
    ]))
    head = cfg.get("head") or {}
    if head.get("kind", "sodef") == "sodef":
        blocks.append(_kv("Head and solver", _sodef_head_rows(cfg, head)))
    else:
        blocks.append(_kv("Head", [["head", "linear: " + ("the backbone's own classifier" if data["base_classifier"] == "own"
                                                           else "a linear probe on the backbone's features")]]))
    adv = metrics.get("adversarial")
    if adv:
        acfg = cfg.get("adversarial") or {}
        rows = [["trained", adv.get("summary", "?")],
                ["settings", ", ".join(f"{k} {_num(v)}" for k, v in (("eps", adv.get("eps")), ("step", adv.get("step")),
                                                                       ("steps", adv.get("steps")), ("beta", adv.get("beta")))
                                       if v is not None)
                 + ", " + ", ".join(f"{k} {_num(acfg[k])}" for k in ("epochs", "batch_size", "lr", "weight_decay", "ema") if k in acfg)],
                ["selection", f"best validation accuracy under {adv.get('select', {}).get('attack', '?')} on "
                              f"{adv.get('select', {}).get('n', '?')} images: epoch {adv.get('best_epoch')} "
                              f"({pct(adv.get('val_pgd_acc'))}; start {pct((adv.get('history') or [{}])[0].get('val_pgd_acc'))})"],
                ["original weights", f"kept for the base: {len(adv.get('tuned_backbone_state') or [])} tuned backbone tensors stored beside them"]]
        if adv.get("ode_solver"):
            rows.append(["ODE gradients", f"{adv['ode_solver']} fixed step {_num(head.get('step_size'))}, plain backprop (no adjoint)"])
        blocks.append(_kv("Adversarial training", rows))
    phases = metrics.get("phases") or {}
    rows = [[p, _phase_settings(cfg.get(p) or {}),
             "skipped (epochs = 0)" if (cfg.get(p) or {}).get("epochs") == 0 else _phase_metrics(phases.get(p) or {})]
            for p in ("phase1", "phase2", "phase3") if p in phases or p in cfg and head.get("kind", "sodef") == "sodef"]
    if data["base_classifier"] == "probe" and (cfg.get("probe") or {}).get("epochs") == 0:
        rows.append(["probe", _phase_settings(cfg["probe"]), "skipped (epochs = 0): the baseline is an untrained linear probe"])
    if rows:
        blocks.append(_table("Hardening phases", [_col("phase"), _col("settings"), _col("final metrics")], rows))
    p3 = cfg.get("phase3") or {}
    if head.get("kind", "sodef") == "sodef" and head.get("adjoint") and p3.get("epochs", 1) and p3.get("train_odefunc", True) and p3.get("adjoint", True):
        blocks.append(_note("phase 3 trained f with gradients from the adjoint solve, which disagree with direct backprop "
                            "through the same solver (benchmarks/adjoint_gradients.py): its fine-tuning of f is close to a "
                            "random walk; set phase3.adjoint = false for exact gradients", "warn"))
    detail_end = len(blocks)  # what comes before is detail; the figures follow and are shown first
    b, h = metrics.get("base") or {}, metrics.get("hardened") or {}
    if b or h:
        n_test, n_val = mdata.get("test"), split.get("val")
        acc = [["test", acc_ci(b.get("test_clean_acc"), n_test), acc_ci(h.get("test_clean_acc"), n_test),
                _delta(b.get("test_clean_acc"), h.get("test_clean_acc"))],
               ["validation", acc_ci(b.get("val_acc"), n_val), acc_ci(h.get("val_acc"), n_val), _delta(b.get("val_acc"), h.get("val_acc"))]]
        blocks.append(_table("Clean accuracy", [_col("split"), _col("base", "right", "value"), _col("hardened", "right", "value"),
                                                _col("delta", "right", "delta")], acc))
    stab = metrics.get("stability") or {}
    if stab:
        stages = [s for s in ("before_phase2", "after_phase2", "final") if s in stab]
        rows = []
        for key, label, f in (("frac_eig_negative", "Jacobians with all Re(eig) < 0", pct),
                              ("frac_diag_dominant_col", "diag. dominant, negative diagonal (columns)", pct),
                              ("frac_diag_dominant_row", "diag. dominant, negative diagonal (rows)", pct),
                              ("mean_max_real_eig", "mean max Re(eig)", _num)):
            rows.append([label] + [f(stab[s].get(key)) for s in stages])
        pts = stab[stages[-1]].get("points", "?") if stages else "?"
        blocks.append(_table("Stability while hardening (stored in the file)",
                             [_col("at z(0)")] + [_col(s.replace("_", " "), "right") for s in stages], rows,
                             f"on {pts} test features"))
        hists = [{"name": s.replace("_", " "), **stab[s]["max_real_eig_hist"]} for s in ("before_phase2", "after_phase2")
                 if s in stab and isinstance(stab[s].get("max_real_eig_hist"), dict)]
        if hists:
            blocks.append({"type": "hist", "title": "Largest real eigenvalue of the Jacobian at z(0), before and after phase 2",
                           "series": hists, "xname": "max Re(eig) of df/dz at z(0) (stable: < 0)",
                           "caption": f"distribution over the {pts} test features stored in the file; left of 0 = locally stable"})
        elif stages:
            blocks.append(_note("no eigenvalue histogram in this file (hardened before sodef_cli stored one); harden again to get the picture"))
        if stab.get("warning"):
            blocks.append(_note(f"STABILITY NOT REACHED: {stab['warning']}", "warn"))
    d = data["diagnostics"]
    if d:
        rows = [
            ["mean ||f(z(0))||", _num(d.get("mean_norm_f_z0"), 4)],
            ["Jacobians with all Re(eig) < 0", pct(d.get("frac_eig_negative"))],
            ["diag. dominant, negative diagonal (columns)", pct(d.get("frac_diag_dominant_col"))],
            ["diag. dominant, negative diagonal (rows)", pct(d.get("frac_diag_dominant_row"))],
            ["mean max Re(eig)", _num(d.get("mean_max_real_eig"), 4)],
            ["mean ||z(T) - z(0)||", _num(d.get("mean_norm_zT_minus_z0"), 4)],
            ["mean ||z(0)||", _num(d.get("mean_norm_z0"), 4)],
            ["mean ||f(z(T))||", _num(d.get("mean_norm_f_zT"), 4)],
            [f"NFE per solve (batch of {d.get('batch', '?')})", f"{d.get('nfe_per_solve', '?')} ({d.get('solver', '?')})"],
        ]
        blocks.append(_table("Stability diagnostics (computed now)", [_col("at z(0) of test images"), _col("value", "right")], rows,
                             f"on {d.get('samples', '?')} {d.get('split', 'test')} images of {d.get('data', '?')} drawn class by class "
                             f"(seed {d.get('seed', 0)}); the ODE is solved once for the whole batch"))
    check = data["check"]
    if check:
        cb, ch = check.get("base") or {}, check.get("hardened") or {}
        gain_ci = check.get("gain_points_ci95")
        clean_ci = check.get("clean_delta_points_ci95")
        to_frac = lambda v, ci: (None if v is None else v / 100, None if ci is None else [c / 100 for c in ci])
        rows = [["clean", pct_ci(cb.get("clean"), cb.get("clean_ci95")), pct_ci(ch.get("clean"), ch.get("clean_ci95")),
                 points_ci(*to_frac(check.get("clean_delta_points"), clean_ci))],
                ["worst case", pct_ci(cb.get("worst_case"), cb.get("worst_case_ci95")), pct_ci(ch.get("worst_case"), ch.get("worst_case_ci95")),
                 points_ci(*to_frac(check.get("gain_points"), gain_ci))]]
        split = "held-out check" if check.get("split") == "check" else str(check.get("split", "validation"))
        caption = (f"{check.get('suite', '?')} suite on {check.get('n', '?')} {split} images, "
                   f"{check.get('norm', '?')} eps={fmt_eps(check.get('eps'), check.get('norm'))}, {check.get('steps', '?')} steps"
                   + (f" (REDUCED: {check['reduced']})" if check.get("reduced") else "")
                   + f"; gain {_points(check.get('gain_points'))} points"
                   + (f", McNemar p{_p_eq(check['p_mcnemar'])}" if check.get("p_mcnemar") is not None else "")
                   + "; [95% interval]: Wilson, paired (Newcombe) for delta")
        blocks.append(_table("Hardening guard", [_col(""), _col("base", "right", "value"), _col("hardened", "right", "value"),
                                                 _col("delta", "right", "delta")], rows, caption))
        gain = check.get("gain_points") or 0.0
        outcome = check.get("outcome") or ("more robust" if gain > 0 else "LESS robust")
        verdict = {"type": "verdict", "label": "guard", "level": {"more robust": "good", "LESS robust": "bad"}.get(outcome, "warn"),
                   "text": str(check.get("recommendation", ""))}
        flagged = [c["name"] for c in check.get("checks", []) if c.get("flagged") is True]
        if flagged:
            blocks.append(_note(f"the guard's masking checks flagged: {', '.join(flagged)}", "warn"))
        if check.get("require_gain_failed"):
            blocks.append(_note("this file failed --require-gain: the guard found it less robust than its base", "warn"))
    else:
        verdict = {"type": "verdict", "label": "", "level": "warn",
                   "text": "Not evaluated: the hardening guard was skipped (--no-check); evaluate with `sodef attack` before deploying."}
        blocks.append(_heading("Hardening guard"))
        blocks.append(_note("skipped (--no-check): evaluate with `sodef attack` before deploying", "warn"))
    figures_end = len(blocks)
    # the verdict, then the figures (accuracy, stability and its picture, guard), then the detail
    blocks = blocks[:1] + [verdict] + blocks[detail_end:figures_end] + blocks[1:detail_end]
    for n in data["notes"]:
        blocks.append(_note(n, "info"))
    vers = data["versions"]
    if vers:
        blocks.append(_kv("Versions", [[", ".join(f"{k} {v}" for k, v in vers.items())]]))
    return blocks


def base_card_data(meta: dict, *, path: str) -> dict:
    """The model card of a ``sodef pretrain`` base file, as data (``--format json``): architecture, data,
    training history, clean accuracy and adversarial-training settings, led by a one-paragraph verdict."""
    try:
        cfg = meta.get("config") or {}
        tr = meta.get("training") or {}
        bb = meta.get("backbone") or {}
        hist = [dict(r) for r in tr.get("history") or []]
        adv = cfg.get("adversarial") or "none"
        acc = tr.get("test_clean_acc")
        best = tr.get("best_epoch")
        best_rec = next((r for r in hist if r.get("epoch") == best), {})
        text = (f"Base model, not hardened: {bb.get('timm_name', '?')} trained by `sodef pretrain` on {cfg.get('data', '?')} for "
                f"{cfg.get('epochs', '?')} epoch(s) (epoch {best} kept), clean test accuracy {pct(acc)}")
        if adv != "none":
            text += (f"; {adv.upper()} adversarial training at eps {fmt_eps(cfg.get('adv_eps'), 'Linf')}, validation accuracy under "
                     f"PGD-5 {pct(best_rec.get('val_pgd5_acc'))} (a training-time check, not an evaluation)")
        else:
            text += "; no adversarial training"
        text += (". Its robustness has not been evaluated: run `sodef attack " + str(path).rsplit("/", 1)[-1]
                 + f" --data {cfg.get('data', 'D')}` (adaptive suite).")
        return {
            "schema": REPORT_SCHEMA, "kind": "card", "verdict": text, "card": "base", "file": path,
            "format": f"{meta.get('format')} v{meta.get('format_version')}", "backbone": bb, "config": cfg,
            "training": {"best_epoch": best, "test_clean_acc": acc, "history": hist}, "versions": meta.get("versions") or {},
        }
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise ModelFileError(f"{path}: malformed metadata in the model file ({type(exc).__name__}: {exc})") from None


def base_card_blocks(data: dict) -> list[dict]:
    """The model card of a base file as blocks: verdict, clean accuracy and history, then the details."""
    cfg, bb, tr = data["config"], data["backbone"], data["training"]
    name = str(data["file"]).rsplit("/", 1)[-1]
    blocks: list[dict] = [_title(f"Model card: {name}"), {"type": "verdict", "label": "", "level": "warn", "text": data["verdict"]}]
    hist = tr["history"]
    if hist:
        keys = [k for k in ("val_acc", "val_pgd5_acc") if any(k in r for r in hist)]
        names = {"val_acc": "validation accuracy", "val_pgd5_acc": "validation PGD-5 accuracy"}
        rows = [[str(r.get("epoch", "?")) + (" (kept)" if r.get("epoch") == tr["best_epoch"] else "")] + [pct(r.get(k)) for k in keys]
                for r in hist]
        blocks.append(_table("Training history", [_col("epoch")] + [_col(names[k], "right", "value") for k in keys], rows,
                             f"the kept epoch has the best {'PGD-5' if 'val_pgd5_acc' in keys else 'clean'} validation accuracy; "
                             f"clean test accuracy of the kept weights {pct(tr['test_clean_acc'])}"))
        vals = [r.get("val_pgd5_acc") for r in hist]
        if len(hist) >= 2 and any(v is not None for v in vals):
            blocks.append({"type": "chart", "title": "Validation accuracy by epoch", "xs": [float(r.get("epoch", i + 1)) for i, r in enumerate(hist)],
                           "xlabels": [str(r.get("epoch", i + 1)) for i, r in enumerate(hist)], "xname": "epoch",
                           "yname": "validation accuracy",
                           "series": [{"name": "clean", "marker": "c", "ys": [r.get("val_acc") for r in hist]},
                                      {"name": "PGD-5", "marker": "p", "ys": vals}]})
    classes = bb.get("classes") or []
    blocks.append(_kv("Architecture", [
        ["file", f"{data['file']} ({data['format']})"],
        ["backbone", f"timm {bb.get('timm_name', '?')}, input {'x'.join(map(str, bb.get('input_size', []))) or '?'}, "
                     f"{bb.get('num_classes', '?')} classes, mean {bb.get('mean')}, std {bb.get('std')}"
                     + (f", kwargs {bb['model_kwargs']}" if bb.get("model_kwargs") else "")],
        ["classes", f"{len(classes)}: " + ", ".join(classes[:6]) + (", ..." if len(classes) > 6 else "") if classes else "-"],
    ]))
    train_keys = ("data", "epochs", "batch_size", "lr", "momentum", "weight_decay", "augment", "val_fraction", "pretrained", "seed", "image_size")
    blocks.append(_kv("Data and training", [[k, _num(cfg[k]) if not isinstance(cfg[k], str) else cfg[k]] for k in train_keys if k in cfg]))
    adv = cfg.get("adversarial") or "none"
    adv_keys = [k for k in cfg if k.startswith("adv_") or k.startswith("select")]
    blocks.append(_kv("Adversarial training", [["mode", adv]] + ([[k, _num(cfg[k])] for k in adv_keys] if adv != "none" else [])))
    vers = data["versions"]
    if vers:
        blocks.append(_kv("Versions", [[", ".join(f"{k} {v}" for k, v in vers.items())]]))
    return blocks


# ----------------------------------------------------------------------------------------------------
# the text chart


def chart_lines(block: dict, width: int = 72, height: int = 9) -> list[str]:
    """A plain-text plot of the chart block's series (y: accuracy, x: eps) within ``width`` characters."""
    xs = [float(x) for x in block["xs"]]
    series = block["series"]
    values = [y for s in series for y in s["ys"] if y is not None]
    top = min(1.0, max(0.1, math.ceil(max(values, default=0.0) * 10 - 1e-9) / 10))
    ticks = {r: 100 * top * (height - 1 - r) / (height - 1) for r in range(0, height, 2)}
    decimals = 0 if all(abs(v - round(v)) < 1e-9 for v in ticks.values()) else 1
    labels = {r: f"{v:.{decimals}f}%" for r, v in ticks.items()}
    lab_w = max(len(v) for v in labels.values())
    plot_w = max(16, width - lab_w - 2)
    x0, x1 = min(xs), max(xs)

    def col(x: float) -> int:
        return plot_w // 2 if x1 == x0 else round((x - x0) / (x1 - x0) * (plot_w - 1))

    def row(y: float) -> int:
        return height - 1 - round(min(y, top) / top * (height - 1))

    grid = [[" "] * plot_w for _ in range(height)]
    for s in series:  # lines first, so that markers win
        for (xa, ya), (xb, yb) in zip(zip(xs, s["ys"]), zip(xs[1:], s["ys"][1:])):
            if ya is None or yb is None:
                continue
            ca, cb = col(xa), col(xb)
            for c in range(ca + 1, cb):
                r = row(ya + (yb - ya) * (c - ca) / (cb - ca))
                if grid[r][c] == " ":
                    grid[r][c] = "."
    overlap = False
    for s in series:
        for x, y in zip(xs, s["ys"]):
            if y is None:
                continue
            r, c = row(y), col(x)
            if grid[r][c] not in (" ", ".", s["marker"]):
                grid[r][c] = "*"
                overlap = True
            elif grid[r][c] != "*":
                grid[r][c] = s["marker"]
    lines = []
    for r in range(height):
        label = labels.get(r, "").rjust(lab_w)
        lines.append(f"{label} |" + "".join(grid[r]).rstrip())
    lines.append(" " * lab_w + " +" + "-" * plot_w)
    xl = [" "] * plot_w
    last_end = -1
    for x, lab in zip(xs, block["xlabels"]):
        start = min(max(0, col(x) - len(lab) // 2), plot_w - len(lab))
        if start <= last_end:
            continue
        xl[start : start + len(lab)] = list(lab)
        last_end = start + len(lab)
    lines.append(" " * (lab_w + 2) + "".join(xl).rstrip())
    items = [f"x: {block.get('xname', 'eps')}, y: {block.get('yname', 'worst-case accuracy')}"] + [f"{s['marker']} = {s['name']}" for s in series]
    items += ["* = overlapping points"] if overlap else []
    line = ""
    for item in items:  # the legend, wrapped to the width
        if line and lab_w + 2 + len(line) + 3 + len(item) > width:
            lines.append(" " * (lab_w + 2) + line)
            line = ""
        line = f"{line}   {item}" if line else item
    lines.append(" " * (lab_w + 2) + line)
    return lines


class _Chart:
    """The chart as a rich renderable: redrawn for the width it is given."""

    STYLES = ("cyan", "magenta", "green", "yellow", "blue", "red")

    def __init__(self, block: dict):
        self.block = block

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        lines = chart_lines(self.block, width=min(options.max_width, 72))
        styles = {s["marker"]: self.STYLES[i % len(self.STYLES)] for i, s in enumerate(self.block["series"])}
        for i, line in enumerate(lines):
            t = Text(line)
            if i < len(lines) - 3:  # the plot area: colour the markers
                start = line.find("|") + 1
                for j, ch in enumerate(line[start:], start=start):
                    if ch in styles:
                        t.stylize(styles[ch], j, j + 1)
            yield t


# ----------------------------------------------------------------------------------------------------
# the text pictures: bars of the cascade and histograms (unicode)


_EIGHTHS = " ▏▎▍▌▋▊▉"
_LEVELS = " ▁▂▃▄▅▆▇█"


def _ubar(v: float | None, width: int) -> str:
    if v is None:
        return ""
    n = max(0, min(width * 8, round(float(v) * width * 8)))
    return "█" * (n // 8) + (_EIGHTHS[n % 8] if n % 8 else "")


def bar_lines(block: dict, width: int = 72) -> list[str]:
    """The bars block as text: one group per model, one bar per figure (0 to 100% over the bar width)."""
    lab_w = max((len(b["label"]) for g in block["groups"] for b in g["bars"]), default=5)
    bar_w = max(10, min(40, width - lab_w - 4 - 24))
    lines = []
    for g in block["groups"]:
        lines.append(g["name"])
        for b in g["bars"]:
            lines.append(f"  {b['label']:<{lab_w}} {_ubar(b['value'], bar_w):<{bar_w}} {pct_ci(b['value'], b.get('ci'))}".rstrip())
    return lines


def _hist_columns(s: dict, x0: float, x1: float, cols: int) -> list[float]:
    counts = s["counts"]
    nb = len(counts)
    acc = [0.0] * cols
    for i, c in enumerate(counts):
        centre = s["lo"] + (i + 0.5) * (s["hi"] - s["lo"]) / nb
        j = cols // 2 if x1 == x0 else min(cols - 1, max(0, int((centre - x0) / (x1 - x0) * cols)))
        acc[j] += c
    return acc


def hist_lines(block: dict, width: int = 72) -> list[str]:
    """The histogram block as text: one row of unicode levels per series over a shared x axis."""
    series = [s for s in block["series"] if s.get("counts")]
    if not series:
        return ["(no histogram stored)"]
    name_w = max(len(s["name"]) for s in series)
    cols = max(16, min(60, width - name_w - 2))
    x0, x1 = min(s["lo"] for s in series), max(s["hi"] for s in series)
    lines = []
    for s in series:
        acc = _hist_columns(s, x0, x1, cols)
        top = max(acc) or 1.0
        row = "".join(_LEVELS[0 if v <= 0 else max(1, round(v / top * 8))] for v in acc)
        lines.append(f"{s['name']:<{name_w}}  {row}".rstrip())
    axis = ["─"] * cols
    zero = None
    if x0 < 0 < x1:
        zero = min(cols - 1, int(-x0 / (x1 - x0) * cols))
        axis[zero] = "┼"
    lines.append(" " * (name_w + 2) + "".join(axis))
    left, right = f"{x0:.3g}", f"{x1:.3g}"
    lab = [" "] * cols
    lab[: len(left)] = list(left)
    lab[cols - len(right):] = list(right)
    if zero is not None and len(left) < zero - 1 and zero + 2 < cols - len(right):
        lab[zero] = "0"
    lines.append(" " * (name_w + 2) + "".join(lab).rstrip())
    lines.append(" " * (name_w + 2) + f"x: {block.get('xname', '')}; height: share of points (per row)")
    return lines


class _Lines:
    """Text lines as a rich renderable, redrawn for the width it is given; ``paint`` colours the bars."""

    def __init__(self, block: dict, fn):
        self.block, self.fn = block, fn

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for line in self.fn(self.block, width=min(options.max_width, 100)):
            t = Text(line)
            for j, ch in enumerate(line):
                if ch in _EIGHTHS[1:] + "█" + _LEVELS[1:]:
                    t.stylize("cyan", j, j + 1)
            yield t


# ----------------------------------------------------------------------------------------------------
# renderers: rich, markdown, html


_LEVEL_STYLE = {"info": "dim", "warn": "yellow", "good": "bold green", "bad": "bold red"}


def _styled_cell(text: str, role: str) -> Text:
    if role == "delta" and text not in ("-", ""):
        head = text.split()[0]
        return Text(text, style="green" if head.startswith("+") and head != "+0.0" else ("red" if head.startswith("-") else ""))
    if role == "status":
        return Text(text, style={"FLAG": "bold red", "ok": "green", "not run": "dim"}.get(text, ""))
    return Text(text)


def _rich_blocks(blocks: list[dict]) -> Group:
    parts: list[RenderableType] = []
    prev = ""
    for bl in blocks:
        t = bl["type"]
        if t == "title":
            parts.append(Text(bl["text"], style="bold underline"))
        elif t == "heading":
            parts.append(Text(""))
            parts.append(Text(bl["text"], style="bold"))
        elif t == "kv":
            parts.append(Text(""))
            parts.append(Text(bl["title"], style="bold"))
            if bl["header"]:
                tab = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
                for h in bl["header"]:
                    tab.add_column(Text(h), overflow="fold")
            else:
                tab = Table.grid(padding=(0, 2))
                ncol = max((len(r) for r in bl["rows"]), default=1)
                for i in range(ncol):
                    tab.add_column(style="bold" if i == 0 and ncol > 1 else None, overflow="fold", no_wrap=i == 0 and ncol > 1)
            for r in bl["rows"]:
                tab.add_row(*[Text(c) for c in r])
            parts.append(tab)
        elif t == "table":
            parts.append(Text(""))
            tab = Table(title=Text(bl["title"], style="bold"), caption=Text(bl["caption"]) if bl["caption"] else None,
                        box=box.SIMPLE_HEAD, show_edge=False, title_justify="left", caption_justify="left")
            for c in bl["columns"]:
                tab.add_column(Text(c["name"]), justify=c["align"], overflow="fold", no_wrap=c.get("nowrap", False))
            for r, style in zip(bl["rows"], bl["row_styles"]):
                tab.add_row(*[_styled_cell(v, c["role"]) for v, c in zip(r, bl["columns"])], style=style or None)
            parts.append(tab)
        elif t == "chart":
            parts.append(Text(""))
            parts.append(Text(bl["title"], style="bold"))
            parts.append(_Chart(bl))
        elif t in ("bars", "hist"):
            parts.append(Text(""))
            parts.append(Text(bl["title"], style="bold"))
            parts.append(_Lines(bl, bar_lines if t == "bars" else hist_lines))
            if bl.get("caption"):
                parts.append(Text(bl["caption"], style="dim"))
        elif t == "note":
            if prev not in ("note", "title"):
                parts.append(Text(""))
            parts.append(Text.assemble(("note: ", "bold " + _LEVEL_STYLE[bl["level"]]), (bl["text"], _LEVEL_STYLE[bl["level"]] if bl["level"] == "warn" else "")))
        elif t == "verdict":
            parts.append(Text(""))
            label = f"Verdict ({bl['label']}): " if bl["label"] else "Verdict: "
            parts.append(Text.assemble((label, "bold"), (bl["text"], _LEVEL_STYLE[bl["level"]])))
        prev = t
    return Group(*parts)


def _md_escape(s: str) -> str:
    return str(s).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("*", "\\*").replace("_", "\\_")


def _md_table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> list[str]:
    align = align or ["left"] * len(header)
    out = ["| " + " | ".join(_md_escape(h) for h in header) + " |",
           "|" + "|".join("---:" if a == "right" else ":---" for a in align) + "|"]
    out += ["| " + " | ".join(_md_escape(c) for c in r) + " |" for r in rows]
    return out


def _markdown(blocks: list[dict]) -> str:
    lines: list[str] = []
    for bl in blocks:
        t = bl["type"]
        if t == "title":
            lines += [f"# {_md_escape(bl['text'])}", ""]
        elif t == "heading":
            lines += [f"## {_md_escape(bl['text'])}", ""]
        elif t == "kv":
            lines += [f"## {_md_escape(bl['title'])}", ""]
            if bl["header"]:
                lines += _md_table([h.replace("\n", " ") for h in bl["header"]], bl["rows"])
            elif all(len(r) == 2 for r in bl["rows"]):
                lines += [f"- **{_md_escape(k)}:** {_md_escape(v)}" for k, v in bl["rows"]]
            else:
                lines += [_md_escape(" ".join(r)) for r in bl["rows"]]
            lines.append("")
        elif t == "table":
            lines += [f"## {_md_escape(bl['title'])}", ""]
            lines += _md_table([c["name"].replace("\n", " ") for c in bl["columns"]], bl["rows"], [c["align"] for c in bl["columns"]])
            if bl["caption"]:
                lines += ["", f"*{_md_escape(bl['caption'])}*"]
            lines.append("")
        elif t == "chart":
            lines += [f"## {_md_escape(bl['title'])}", "", "```text", *chart_lines(bl, width=72), "```", ""]
        elif t in ("bars", "hist"):
            pic = bar_lines(bl, width=72) if t == "bars" else hist_lines(bl, width=72)
            lines += [f"## {_md_escape(bl['title'])}", "", "```text", *pic, "```", ""]
            if bl.get("caption"):
                lines += [f"*{_md_escape(bl['caption'])}*", ""]
        elif t == "note":
            lines += [f"> **Note:** {_md_escape(bl['text'])}", ""]
        elif t == "verdict":
            label = f"Verdict ({bl['label']})" if bl["label"] else "Verdict"
            lines += [f"**{_md_escape(label)}:** {_md_escape(bl['text'])}", ""]
    return "\n".join(lines).rstrip() + "\n"


_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;max-width:60em;color:#222;line-height:1.4}
h1{font-size:1.5em;border-bottom:1px solid #ccc;padding-bottom:.2em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;margin:.4em 0}th,td{padding:.2em .7em;border-bottom:1px solid #ddd;vertical-align:top}
th{text-align:left;border-bottom:2px solid #999}td.r,th.r{text-align:right;font-variant-numeric:tabular-nums}
tr.bold td{font-weight:bold}tr.dim td{color:#666}caption{caption-side:bottom;text-align:left;font-size:.85em;color:#555;padding-top:.3em}
.pos{color:#1a7f37}.neg{color:#c62828}.FLAG{color:#c62828;font-weight:bold}.ok{color:#1a7f37}.notrun{color:#777}
.note{border-left:4px solid #999;padding:.3em .8em;background:#f6f6f6;margin:.6em 0}.note.warn{border-color:#d4a017;background:#fff8e1}
.verdict{border:1px solid #999;padding:.5em .8em;margin:1em 0}.verdict.good{border-color:#1a7f37;background:#eef8f0}
.verdict.bad{border-color:#c62828;background:#fdecea}.verdict.warn{border-color:#d4a017;background:#fff8e1}
dl{display:grid;grid-template-columns:max-content auto;gap:.15em 1.2em}dt{font-weight:bold}dd{margin:0}
svg text{font-family:inherit;font-size:11px}.cap{font-size:.85em;color:#555;margin-top:0}
""".strip()
_SVG_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")


def _svg_chart(bl: dict) -> str:
    w, h, ml, mr, mt, mb = 560, 260, 48, 16, 12, 56
    xs = [float(x) for x in bl["xs"]]
    values = [y for s in bl["series"] for y in s["ys"] if y is not None]
    top = min(1.0, max(0.1, math.ceil(max(values, default=0.0) * 10 - 1e-9) / 10))
    x0, x1 = min(xs), max(xs)
    pw, ph = w - ml - mr, h - mt - mb
    px = lambda x: ml + (pw / 2 if x1 == x0 else (x - x0) / (x1 - x0) * pw)
    py = lambda y: mt + ph - min(y, top) / top * ph
    e = html.escape
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="{e(bl["title"])}">']
    for i in range(6):
        v = top * i / 5
        y = py(v)
        out.append(f'<line x1="{ml}" y1="{y:.1f}" x2="{w - mr}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{ml - 6}" y="{y + 4:.1f}" text-anchor="end">{100 * v:.0f}%</text>')
    for x, lab in zip(xs, bl["xlabels"]):
        out.append(f'<text x="{px(x):.1f}" y="{mt + ph + 16}" text-anchor="middle">{e(lab)}</text>')
    out.append(f'<line x1="{ml}" y1="{mt + ph}" x2="{w - mr}" y2="{mt + ph}" stroke="#999"/>')
    out.append(f'<text x="{ml + pw / 2:.1f}" y="{mt + ph + 32}" text-anchor="middle">{e(bl.get("xname", ""))}</text>')
    lx = ml
    for i, s in enumerate(bl["series"]):
        c = _SVG_COLORS[i % len(_SVG_COLORS)]
        seg: list[str] = []
        for x, y in zip(xs, s["ys"]):
            if y is None:
                if len(seg) > 1:
                    out.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="{" ".join(seg)}"/>')
                seg = []
                continue
            seg.append(f"{px(x):.1f},{py(y):.1f}")
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="{c}"><title>{e(s["name"])}: {pct(y)}</title></circle>')
        if len(seg) > 1:
            out.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="{" ".join(seg)}"/>')
        out.append(f'<rect x="{lx}" y="{h - 14}" width="10" height="10" fill="{c}"/><text x="{lx + 14}" y="{h - 5}">{e(s["name"])}</text>')
        lx += 24 + 7 * len(s["name"])
    out.append("</svg>")
    return "\n".join(out)


def _svg_bars(bl: dict) -> str:
    """Horizontal bars per model (0-100%), the 95% interval as a whisker."""
    e = html.escape
    lab_w = 8 + 7 * max((len(b["label"]) for g in bl["groups"] for b in g["bars"]), default=6)
    bar_w, row_h, w = 300, 18, 0
    w = lab_w + bar_w + 150
    rows = sum(len(g["bars"]) + 1 for g in bl["groups"])
    h = rows * row_h + 24
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="{e(bl["title"])}">']
    y = 4
    for i, g in enumerate(bl["groups"]):
        c = _SVG_COLORS[i % len(_SVG_COLORS)]
        out.append(f'<text x="0" y="{y + 13}" font-weight="bold">{e(g["name"])}</text>')
        y += row_h
        for b in g["bars"]:
            v = b["value"]
            out.append(f'<text x="{lab_w - 6}" y="{y + 12}" text-anchor="end">{e(b["label"])}</text>')
            out.append(f'<rect x="{lab_w}" y="{y + 2}" width="{bar_w}" height="{row_h - 5}" fill="#f0f0f0"/>')
            if v is not None:
                out.append(f'<rect class="bar" x="{lab_w}" y="{y + 2}" width="{bar_w * float(v):.1f}" height="{row_h - 5}" fill="{c}">'
                           f'<title>{e(g["name"])}, {e(b["label"])}: {e(pct_ci(v, b.get("ci")))}</title></rect>')
                if b.get("ci"):
                    lo, hi = (lab_w + bar_w * float(q) for q in b["ci"])
                    ym = y + 2 + (row_h - 5) / 2
                    out.append(f'<line x1="{lo:.1f}" y1="{ym:.1f}" x2="{hi:.1f}" y2="{ym:.1f}" stroke="#222" stroke-width="1.2"/>'
                               f'<line x1="{lo:.1f}" y1="{ym - 4:.1f}" x2="{lo:.1f}" y2="{ym + 4:.1f}" stroke="#222"/>'
                               f'<line x1="{hi:.1f}" y1="{ym - 4:.1f}" x2="{hi:.1f}" y2="{ym + 4:.1f}" stroke="#222"/>')
            out.append(f'<text x="{lab_w + bar_w + 6}" y="{y + 12}">{e(pct_ci(v, b.get("ci")))}</text>')
            y += row_h
    for q in (0, 0.5, 1.0):
        x = lab_w + bar_w * q
        out.append(f'<text x="{x:.1f}" y="{h - 4}" text-anchor="middle" fill="#777">{100 * q:.0f}%</text>')
    out.append("</svg>")
    return "\n".join(out)


def _svg_hist(bl: dict) -> str:
    """Histograms of several series over a shared x axis (bars at their real bin edges), zero marked."""
    e = html.escape
    series = [s for s in bl["series"] if s.get("counts")]
    w, h, ml, mr, mt, mb = 560, 220, 40, 16, 12, 52
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="{e(bl["title"])}">']
    if not series:
        out.append(f'<text x="{ml}" y="{h / 2}">no histogram stored</text></svg>')
        return "\n".join(out)
    x0, x1 = min(s["lo"] for s in series), max(s["hi"] for s in series)
    if x1 <= x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    pw, ph = w - ml - mr, h - mt - mb
    px = lambda x: ml + (x - x0) / (x1 - x0) * pw
    top = max(max(c / max(1, sum(s["counts"])) for c in s["counts"]) for s in series) or 1.0
    for i, s in enumerate(series):
        c = _SVG_COLORS[i % len(_SVG_COLORS)]
        total = max(1, sum(s["counts"]))
        nb = len(s["counts"])
        bw = (s["hi"] - s["lo"]) / nb
        for j, k in enumerate(s["counts"]):
            if not k:
                continue
            a, b = px(s["lo"] + j * bw), px(s["lo"] + (j + 1) * bw)
            hh = k / total / top * ph
            out.append(f'<rect class="bin" x="{a:.1f}" y="{mt + ph - hh:.1f}" width="{max(1.0, b - a):.1f}" height="{hh:.1f}" '
                       f'fill="{c}" fill-opacity="0.55"><title>{e(s["name"])}: {k} of {total}</title></rect>')
        out.append(f'<rect x="{ml + 150 * i}" y="{h - 14}" width="10" height="10" fill="{c}" fill-opacity="0.55"/>'
                   f'<text x="{ml + 150 * i + 14}" y="{h - 5}">{e(s["name"])}</text>')
    out.append(f'<line x1="{ml}" y1="{mt + ph}" x2="{w - mr}" y2="{mt + ph}" stroke="#999"/>')
    ticks = [x0, x1] + ([0.0] if x0 < 0 < x1 else [])
    for t in ticks:
        out.append(f'<text x="{px(t):.1f}" y="{mt + ph + 14}" text-anchor="middle">{t:.3g}</text>')
    if x0 < 0 < x1:
        out.append(f'<line x1="{px(0):.1f}" y1="{mt}" x2="{px(0):.1f}" y2="{mt + ph}" stroke="#444" stroke-dasharray="4 3"/>')
    out.append(f'<text x="{ml + pw / 2:.1f}" y="{mt + ph + 30}" text-anchor="middle">{e(bl.get("xname", ""))}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _html(blocks: list[dict]) -> str:
    e = html.escape
    title = next((b["text"] for b in blocks if b["type"] == "title"), "sodef report")
    body: list[str] = []
    for bl in blocks:
        t = bl["type"]
        if t == "title":
            body.append(f"<h1>{e(bl['text'])}</h1>")
        elif t == "heading":
            body.append(f"<h2>{e(bl['text'])}</h2>")
        elif t == "kv":
            body.append(f"<h2>{e(bl['title'])}</h2>")
            if bl["header"]:
                body.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in bl["header"]) + "</tr></thead><tbody>")
                body += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in bl["rows"]]
                body.append("</tbody></table>")
            elif all(len(r) == 2 for r in bl["rows"]):
                body.append("<dl>" + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in bl["rows"]) + "</dl>")
            else:
                body += [f"<p>{e(' '.join(r))}</p>" for r in bl["rows"]]
        elif t == "table":
            cols = bl["columns"]
            body.append(f"<h2>{e(bl['title'])}</h2>")
            body.append("<table>" + (f"<caption>{e(bl['caption'])}</caption>" if bl["caption"] else ""))
            body.append("<thead><tr>" + "".join(f'<th class="{"r" if c["align"] == "right" else ""}">{e(c["name"]).replace(chr(10), "<br>")}</th>'
                                                for c in cols) + "</tr></thead><tbody>")
            for r, style in zip(bl["rows"], bl["row_styles"]):
                cells = []
                for v, c in zip(r, cols):
                    cls = ["r"] if c["align"] == "right" else []
                    if c["role"] == "delta" and v.split()[0] not in ("-", "", "+0.0"):
                        cls.append("pos" if v.startswith("+") else "neg")
                    if c["role"] == "status":
                        cls.append(v.replace(" ", ""))
                    cell = e(v).replace(chr(10), "<br>")  # a figure and its interval on two lines
                    cells.append(f'<td class="{" ".join(cls)}">{cell}</td>' if cls else f"<td>{cell}</td>")
                body.append((f'<tr class="{style}">' if style else "<tr>") + "".join(cells) + "</tr>")
            body.append("</tbody></table>")
        elif t == "chart":
            body.append(f"<h2>{e(bl['title'])}</h2>")
            body.append(_svg_chart(bl))
        elif t in ("bars", "hist"):
            body.append(f"<h2>{e(bl['title'])}</h2>")
            body.append(_svg_bars(bl) if t == "bars" else _svg_hist(bl))
            if bl.get("caption"):
                body.append(f'<p class="cap">{e(bl["caption"])}</p>')
        elif t == "note":
            body.append(f'<div class="note {bl["level"]}"><b>Note:</b> {e(bl["text"])}</div>')
        elif t == "verdict":
            label = f"Verdict ({bl['label']})" if bl["label"] else "Verdict"
            body.append(f'<div class="verdict {bl["level"]}"><b>{e(label)}:</b> {e(bl["text"])}</div>')
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{e(title)}</title>\n<style>\n{_CSS}\n</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")


def _finite(o: Any) -> Any:
    """NaN/inf -> None, so that ``--format json`` is strict JSON."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def _blocks(data: dict) -> list[dict]:
    if data.get("kind") == "card":
        return base_card_blocks(data) if data.get("card") == "base" else card_blocks(data)
    return results_blocks(data)


def render(data: dict, fmt: str = "table") -> RenderableType | str:
    """Render ``results_data`` or ``card_data``: a rich renderable for ``table``, text for the other formats."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; must be one of {FORMATS}")
    try:
        if fmt == "table":
            return _rich_blocks(_blocks(data))
        if fmt == "markdown":
            return _markdown(_blocks(data))
        if fmt == "html":
            return _html(_blocks(data))
        return json.dumps(_finite(data), indent=1, allow_nan=False, default=str) + "\n"
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        # files are data from outside: an ill-typed field is the file's fault, reported as such
        what = f"{type(exc).__name__}: {exc}"
        if data.get("kind") == "card":
            raise ModelFileError(f"{data.get('file')}: malformed metadata in the model file ({what})") from None
        raise ResultsError(f"malformed results file ({what})") from None


def to_text(renderable: RenderableType, width: int = 100) -> str:
    """Plain text of a rich renderable at a fixed width (no colour, no control codes)."""
    buf = StringIO()
    Console(file=buf, width=width, color_system=None, force_terminal=False, legacy_windows=False).print(renderable)
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"


def render_results(docs: list[dict], labels: list[str] | None = None) -> RenderableType:
    """The full results report of one or more results documents, for the terminal."""
    return render(results_data(docs, labels), "table")
