"""The verdict: the one paragraph that leads a results report, as data (its figures) plus its sentence.

``file_verdict`` judges a base-vs-hardened file (the hardening gain under the strongest evaluation that ran,
its paired interval and McNemar test, masking, budgets, completeness); ``comparison_verdict`` a file of
several models (each model's worst case and its paired difference to the reference). Both read the data of
``results_data`` only.
"""

from __future__ import annotations

from typing import Any

from ..config import ADAPTIVE_SOLVERS
from ..stats import decide, n_to_resolve
from .format import fmt_eps, p_eq, pct, pct_ci, points_ci

__all__ = ["comparison_verdict", "file_verdict"]


def _reduced_text(fd: dict) -> str:
    return f" REDUCED budgets ({fd['header']['iterations'].split(': ', 1)[-1].split(';')[0]}): weaker than the reference evaluation."


def file_verdict(fd: dict) -> dict:
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
    out.update(
        eps=r["eps"],
        gain_points=gain,
        base_worst_case=b["worst_case"],
        hardened_worst_case=h["worst_case"],
        white_box_direct=claimed,
        white_box_claimed_gain_points=claimed_gain,
    )
    solver = fd.get("solver") if fd.get("has_ode", True) else None  # no ODE, no solver to name
    through = (
        (f" through the adaptive solver ({solver})" if solver in ADAPTIVE_SOLVERS else f" through the {solver} solver")
        if solver
        else (" through the solver" if fd.get("has_ode") else "")
    )
    ev = fd["evaluation"]
    diff = r.get("difference", {})
    ci, p = diff.get("worst_case_ci95"), diff.get("worst_case_p")
    # one decision rule (stats.decide): significant when the exact McNemar p < 0.05; the interval is only reported
    outcome = decide(gain, p)
    significant = outcome != "no significant difference"
    discordant = diff.get("worst_case_discordant")
    n_needed = n_to_resolve(*discordant, fd["n"]) if discordant and not significant else None
    out.update(
        evaluation=ev,
        gain_ci95_points=None if ci is None else [100 * ci[0], 100 * ci[1]],
        p_mcnemar=p,
        significant=significant,
        outcome=outcome,
        n_to_resolve=n_needed,
    )
    which = "adaptive worst case" if ev["adaptive"] else "white-box worst case"
    text = (
        f"Hardening gain under the {which} at eps={fmt_eps(r['eps'], norm)}: {gain:+.1f} points"
        + (
            f" (95% CI {100 * ci[0]:+.1f} to {100 * ci[1]:+.1f}, McNemar p{p_eq(p)}, n={fd['n']})"
            if ci is not None
            else ""
        )
        + f" (base {pct(b['worst_case'])} -> hardened {pct(h['worst_case'])})"
        + ("" if significant or p is None else f"; {_unresolved(fd['n'], n_needed, discordant)}")
        + "; "
    )
    if claimed is None:
        text += f"no direct white-box attack{through} was run."
    else:
        text += f"white-box attacks{through} claimed {pct(claimed)} ({claimed_gain:+.1f})."
    others = [
        f"{fmt_eps(o['eps'], norm)} {100 * (o['models']['hardened']['worst_case'] - o['models']['base']['worst_case']):+.1f}"
        for o in usable[1:]
    ]
    if others:
        text += f" Gain at other eps: {', '.join(others)}."
    out["gain_by_eps"] = {
        fmt_eps(o["eps"], norm): 100 * (o["models"]["hardened"]["worst_case"] - o["models"]["base"]["worst_case"])
        for o in usable
    }
    if flagged:
        text += f" Gradient masking suspected: {', '.join(flagged)}."
    elif ran_checks:
        text += " No gradient-masking signature in the checks that ran."
    else:
        text += " Masking checks not run."
    if fd.get("kept_start"):
        text = (
            "Not hardened: adversarial training kept no epoch, so the file holds the starting weights (see its card); "
            + text
        )
    if not fd["complete"]:
        text = "Provisional (interrupted run): " + text
    if fd["reduced_iterations"]:
        text += _reduced_text(fd)
    if not ev["adaptive"]:
        text = (
            "white-box only: not an adaptive evaluation (no transfer, fixed-step, BPDA, feature or black-box attack ran; "
            "use --suite adaptive). " + text
        )
    good = ev["adaptive"] and outcome == "more robust" and fd["complete"] and not fd["reduced_iterations"]
    out["level"] = "bad" if flagged or outcome == "LESS robust" else ("good" if good else "warn")
    out["text"] = text
    return out


def _unresolved(n: int, n_needed: int | None, discordant) -> str:
    """The words for a difference McNemar's test does not resolve, whatever its sign."""
    text = f"no significant difference at n={n}"
    if n_needed is not None:
        text += f" (about n={n_needed} samples would resolve a difference of this size)"
    elif discordant and discordant[0] == discordant[1]:
        text += " (the models disagree equally often each way: no sample size would resolve it)"
    return text


def comparison_verdict(fd: dict) -> dict:
    """One paragraph: each model's worst case with its interval and its paired difference to the reference."""
    norm, ref = fd["norm"], fd["reference"]
    usable = [r for r in fd["runs"] if all(r["models"].get(lab) for lab in fd["models"])]
    flagged = {
        lab: list(
            dict.fromkeys(c["name"] for r in fd["runs"] for c in r["checks"].get(lab, []) if c.get("flagged") is True)
        )
        for lab in fd["models"]
    }
    out: dict[str, Any] = {
        "available": bool(usable),
        "reference": ref,
        "masking_suspected": {lab: bool(v) for lab, v in flagged.items()},
    }
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
                txt += f", {points_ci(d['worst_case'], ci)} points vs {tag[ref]} (McNemar p{p_eq(p)})"
                outcome = decide(d["worst_case"], p)  # the one decision rule: McNemar p < 0.05
                if outcome == "more robust":
                    significant_better.append(lab)
                elif outcome == "LESS robust":
                    worse.append(lab)
        if not fd["evaluation"][lab]["adaptive"]:
            txt += " [white-box only]"
        parts.append(txt)
    best = max(fd["models"], key=lambda lab: r["models"][lab]["worst_case"])
    if len(fd["models"]) == 1:
        text = f"Worst-case robust accuracy at eps={fmt_eps(r['eps'], norm)} on {fd['n']} samples: {parts[0].replace(' (reference)', '')}."
    else:
        text = (
            f"Worst-case robust accuracy at eps={fmt_eps(r['eps'], norm)} on the same {fd['n']} samples: "
            + "; ".join(parts)
            + ". "
        )
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
        text += (
            f" White-box only for {', '.join(white)}: not an adaptive evaluation (no transfer, fixed-step, BPDA, feature "
            "or black-box attack ran on it)."
        )
    if fd["reduced_iterations"]:
        text += _reduced_text(fd)
    if not fd["complete"]:
        text = "Provisional (interrupted run): " + text
    out.update(
        eps=r["eps"],
        best=best,
        more_robust=significant_better,
        less_robust=worse,
        worst_case={lab: r["models"][lab]["worst_case"] for lab in fd["models"]},
    )
    good = significant_better and not bad and not white and fd["complete"] and not fd["reduced_iterations"]
    out["level"] = "bad" if bad else ("good" if good else "warn")
    out["text"] = text
    return out
