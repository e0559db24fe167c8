"""The hardening ablation: which adversarial training mode makes the demo base more robust under adaptive attack?

    python benchmarks/hardening.py --data CIFAR_DIR [--base sodef_cli/assets/demo_base.safetensors]
        [--recipe recipes/adversarial.toml] [--arms A,B,C,D,E,F] [--n 1000] [--jobs 2] [--threads 1] [--screen]

CIFAR_DIR is CIFAR-10 in ImageFolder layout (``train/<class>/*.jpg`` and ``test/<class>/*.jpg``). Every trained arm
starts from the same base with the same data, the same epoch budget and the same optimizer settings (those of
``--recipe``; each arm sets its own head and training attack), and is evaluated by the same ``sodef attack`` on the
same ``--n`` test images:

- A: the base as it is;
- B: continued FGSM adversarial training of the same parameters as D (more training, not a better method);
- C: the linear head alone, PGD-5, frozen backbone;
- D: linear head + the last stages, trained with the recipe's attack and budget (`recipes/adversarial.toml`);
- E: the SODEF head trained adversarially through the fixed-step solver, stability terms on, frozen backbone;
- F: D with the SODEF head in place of the linear one;
- G-L: cheaper training attacks and budgets for the default (issue 20): N-FGSM, FGSM with random start, PGD-2/3, an
  eps ramp, fewer epochs and validation images;
- M, N: the whole 8-minute budget: N-FGSM for 14 epochs, PGD-2 for 10;
- F2 (F'): the default's attack, budget and selection with the SODEF head.

The attack list is the adaptive suite without FAB-T and SPSA (too slow on CPU; ``--attacks`` changes it); attacks
that need an ODE run only on the SODEF arms. A's worst case is the base under the attacks that need no other model
(``BASE_ATTACKS``); an arm's worst case is its hardened model under every attack of its run, transfer and feature
attacks included, so the comparison leans against the arms. The gain over A comes with a paired 95% interval and an
exact McNemar p-value from the per-sample flags. Each arm's files stay in ``--work``; finished arms are reused
(``--fresh`` reruns them). ``--screen`` hardens only and tabulates each arm's wall time and its selection's validation
figures (clean and PGD-10 on the validation images, start -> kept): a cheap first look before the attacks. Writes JSON, appends a row to benchmarks/RESULTS.md and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import OUT_DIR, ROOT, append_results, choice_list, environment, run_sodef, setup, write_json

LINEAR_ATTACKS = ["apgd-ce", "apgd-t", "transfer-apgd-ce", "transfer-pgd", "feature", "square"]
ODE_ATTACKS = ["fixed-step-apgd-ce", "fixed-step-pgd", "bpda-apgd-ce"]
BASE_ATTACKS = ("apgd-ce", "apgd-t", "square")  # what A faces: attacks that need no second model

ARMS = {
    "B": ("continued FGSM training, same parameters as D", lambda a: ["--head", "linear", "--adv-attack", "fgsm"]),
    "C": (
        "linear head alone, PGD-5, frozen backbone",
        lambda a: ["--head", "linear", "--adv-attack", "pgd", "--adv-stages", "0"],
    ),
    "D": ("linear head + last stages, the recipe's attack", lambda a: ["--head", "linear"]),
    # the SODEF arms clip gradients at norm 10: the stability terms' exponentials diverged F at epoch 4 without it
    "E": (
        "SODEF head alone (fixed-step, stability terms), frozen backbone",
        lambda a: ["--head", "sodef", "--adv-attack", "pgd", "--adv-stages", "0", "--set", "adversarial.grad_clip=10"],
    ),
    "F": (
        "SODEF head + last 4 stages, PGD-5 (D with the SODEF head)",
        lambda a: ["--head", "sodef", "--adv-attack", "pgd", "--set", "adversarial.grad_clip=10"],
    ),
    # issue 20: cheaper training attacks and budgets for the default (linear head + last 4 stages, selection on
    # 1,000 validation images instead of 2,000; budgets sized for <= 8 min on the 2-core CPU)
    "G": ("N-FGSM (noise 2 eps, step eps), 8 epochs, selection on 1,000", lambda a: _cheap("nfgsm", 8)),
    "H": ("FGSM, random start, step 1.25 eps, 8 epochs, selection on 1,000", lambda a: _cheap("fgsm", 8)),
    "I": ("PGD-2, 6 epochs, selection on 1,000", lambda a: _cheap("pgd", 6, "adversarial.steps=2")),
    "J": (
        "N-FGSM, eps ramp over 2 epochs, 8 epochs, selection on 1,000",
        lambda a: _cheap("nfgsm", 8, "adversarial.eps_ramp=2"),
    ),
    "K": ("PGD-3, 5 epochs, selection on 1,000", lambda a: _cheap("pgd", 5, "adversarial.steps=3")),
    "L": ("N-FGSM, 6 epochs, selection on 500", lambda a: _cheap("nfgsm", 6, "adversarial.select_n=500")),
    # the whole 8-minute budget: more epochs of the cheap step (M), or of a two-step attack (N)
    "M": ("N-FGSM, 14 epochs, selection on 1,000", lambda a: _cheap("nfgsm", 14)),
    "N": ("PGD-2, 10 epochs, selection on 1,000", lambda a: _cheap("pgd", 10, "adversarial.steps=2")),
    # F': the default's attack, budget and selection with the SODEF head (fixed-step solver, stability terms): decides
    # whether the default keeps the SODEF head (README, "The default path")
    "F2": (
        "F': the default (N-FGSM, 8 epochs, selection on 1,000) with the SODEF head",
        lambda a: _cheap("nfgsm", 8, "adversarial.grad_clip=10", head="sodef"),
    ),
}


def _cheap(attack: str, epochs: int, *sets: str, head: str = "linear") -> list[str]:
    """An arm with the recipe's stages, learning rate and averaging, a cheaper attack and budget (linear head unless
    ``head``)."""
    out = [
        "--head",
        head,
        "--adv-attack",
        attack,
        "--adv-epochs",
        str(epochs),
        "--set",
        "adversarial.select_n=1000",
    ]
    for s in sets:
        out += ["--set", s]
    return out


def _arm(name: str, args, env: dict) -> dict:
    """Harden (unless A) and attack one arm; reuses finished files unless --fresh."""
    work = Path(args.work)
    model = work / f"arm_{name}.safetensors"
    cmd = ["harden", args.base, "--data", args.data, "--recipe", args.recipe, "--out", str(model), "--json"]
    return harden_and_attack(work / f"arm_{name}", [*cmd, *ARMS[name][1](args)], model, args, env, not args.screen)


def harden_and_attack(stem: Path, harden_cmd: list[str], model: Path, args, env: dict, attack: bool = True) -> dict:
    """Run ``sodef HARDEN_CMD`` (which writes ``model``), then (``attack``) ``sodef attack`` on it; the record goes to
    STEM.json (STEM.harden.json after the harden step) and the logs beside it. Finished steps are reused unless
    ``args.fresh``."""
    rec_path, harden_path = (stem.with_name(stem.name + suffix) for suffix in (".json", ".harden.json"))
    if rec_path.exists() and not args.fresh:
        return json.loads(rec_path.read_text())
    if harden_path.exists() and model.exists() and not args.fresh:
        rec = json.loads(harden_path.read_text())
    else:
        rec = _harden(harden_cmd, model, stem, env)
        harden_path.write_text(json.dumps(rec, indent=1))
    return _attack(rec, stem, model, args, env) if attack else rec


def _harden(harden_cmd: list[str], model: Path, stem: Path, env: dict) -> dict:
    rec: dict = {"model": str(model), "harden_command": "sodef " + " ".join(harden_cmd)}
    summary, wall, peak = run_sodef(harden_cmd, env, log=stem.with_name(stem.name + ".harden.log"))
    rec["harden"] = {
        "wall_s": wall,
        "peak_rss_mib": peak,
        "timings_s": summary["timings_s"],
        "base": summary["base"],
        "hardened": summary["hardened"],
        "check": summary.get("check"),
        "path": summary.get("path"),
        "adversarial": {
            k: v
            for k, v in (summary.get("adversarial") or {}).items()
            if k not in ("trained_parameters", "trained_state", "tuned_backbone_state")
        },
    }
    return rec


def _attack(rec: dict, stem: Path, model: Path, args, env: dict) -> dict:
    sodef = rec["harden"]["hardened"].get("head", "sodef") == "sodef"
    attacks = args.attacks.split(",") if args.attacks else LINEAR_ATTACKS[:2] + ODE_ATTACKS + LINEAR_ATTACKS[2:]
    attacks = [a for a in attacks if sodef or a not in ODE_ATTACKS]  # a linear head has no ODE
    results = stem.with_name(stem.name + ".results.json")
    acmd = [
        "attack",
        str(model),
        "--data",
        args.data,
        "--samples",
        str(args.n),
        "--attacks",
        ",".join(attacks),
        "--batch-size",
        str(args.batch_size),
        "--out",
        str(results),
        "--json",
    ]
    rec["attack_command"] = "sodef " + " ".join(acmd)
    _, wall, peak = run_sodef(acmd, env, log=stem.with_name(stem.name + ".attack.log"))
    rec["attack"] = {"wall_s": wall, "peak_rss_mib": peak, "results": str(results)}
    stem.with_name(stem.name + ".json").write_text(json.dumps(rec, indent=1))
    return rec


def _flags(results: dict, model: str, attacks=None) -> tuple[list[bool], list[bool]]:
    """(clean, worst-case) per-sample flags of ``model`` over ``attacks`` (all when None) at the first eps; only the
    first ``results["prefix"]`` samples when the analysis is restricted to a common prefix."""
    from sodef_cli.evaluate import worst_case_flags

    mrec = results["runs"][0]["models"][model]
    atk = {k: v for k, v in mrec["attacks"].items() if attacks is None or k in attacks}
    k = results.get("prefix")
    clean, worst = mrec["clean"], worst_case_flags(mrec["clean"], atk)
    return (clean[:k], worst[:k]) if k else (clean, worst)


def analyze(
    records: dict[str, dict],
    prefix: int | None = None,
    descriptions: dict[str, str] | None = None,
    attacks: list[str] | None = None,
) -> dict:
    """The ablation table as data: per arm clean and worst case (Wilson 95%), gain over A (paired 95%, McNemar).

    ``prefix``: compare arms attacked on different numbers of samples on the first ``prefix`` of them (the sample
    order is prefix-consistent: the first 500 of 1,000 images drawn with a seed are the 500 drawn with it).
    ``attacks``: count only these attacks (runs that ran more are compared on the same list)."""
    from sodef_cli.stats import paired_difference, wilson

    docs = {name: json.loads(Path(r["attack"]["results"]).read_text()) for name, r in records.items()}
    if prefix:
        for d in docs.values():
            d["prefix"] = prefix
    indices = {tuple(d["indices"][:prefix] if prefix else d["indices"]) for d in docs.values()}
    if len(indices) != 1:
        raise SystemExit("the arms were attacked on different samples; rerun with the same --n and seed (or --prefix)")
    base_attacks = [a for a in BASE_ATTACKS if attacks is None or a in attacks]
    a_runs = {name: _flags(d, "base", base_attacks) for name, d in docs.items()}
    a_clean, a_worst = next(iter(a_runs.values()))
    same = all(w == a_worst and c == a_clean for c, w in a_runs.values())
    n = len(a_worst)
    rows = {
        "A": {
            "description": "the base as it is",
            "clean": sum(a_clean) / n,
            "clean_ci95": wilson(sum(a_clean), n),
            "worst_case": sum(a_worst) / n,
            "worst_case_ci95": wilson(sum(a_worst), n),
            "harden_s": 0.0,
            "attacks": base_attacks,
        }
    }
    for name, d in docs.items():
        clean, worst = _flags(d, "hardened", attacks)
        diff = paired_difference(a_worst, worst)
        cdiff = paired_difference(a_clean, clean)
        rec = records[name]
        rows[name] = {
            "description": (descriptions or {}).get(name) or ARMS[name][0],
            "clean": sum(clean) / n,
            "clean_ci95": wilson(sum(clean), n),
            "clean_gain_points": 100 * cdiff["diff"],
            "clean_gain_points_ci95": [100 * v for v in cdiff["diff_ci95"]],
            "worst_case": sum(worst) / n,
            "worst_case_ci95": wilson(sum(worst), n),
            "gain_points": 100 * diff["diff"],
            "gain_points_ci95": [100 * v for v in diff["diff_ci95"]],
            "mcnemar_p": diff["p_mcnemar"],
            "discordant_base_only_arm_only": diff["discordant"],
            "harden_s": rec["harden"]["wall_s"],
            "attack_s": rec["attack"]["wall_s"],
            "attacks": [a for a in d["runs"][0]["models"]["hardened"]["attacks"] if attacks is None or a in attacks],
            "trained": (rec["harden"]["adversarial"] or {}).get("summary"),
            "best_epoch": (rec["harden"]["adversarial"] or {}).get("best_epoch"),
            "command": rec["harden_command"],
        }
    out = {"n": n, "a_consistent_across_runs": same, "rows": rows}
    if "F2" in docs and DEFAULT_ARM in docs:
        out["head_decision"] = head_decision(
            rows["F2"], _flags(docs["F2"], "hardened", attacks)[1], _flags(docs[DEFAULT_ARM], "hardened", attacks)[1]
        )
    return out


DEFAULT_ARM = "G"  # the arm whose settings are the default path's (linear head)


def head_decision(f2: dict, f2_worst: list[bool], default_worst: list[bool]) -> dict:
    """Issue 20's rule: the default keeps the SODEF head when F' gains >= 3 points over the base with its 95% interval
    above 0 and its worst-case flags are not significantly below the linear-head default's (paired exact McNemar
    between the two hardened models, p >= 0.05); otherwise the default head is linear."""
    from sodef_cli.stats import paired_difference

    vs = paired_difference(default_worst, f2_worst)  # F' - default
    gain_ok = f2["gain_points"] >= 3.0 and f2["gain_points_ci95"][0] > 0
    not_worse = not (vs["diff"] < 0 and vs["p_mcnemar"] < 0.05)
    return {
        "f2_gain_points": f2["gain_points"],
        "f2_gain_points_ci95": f2["gain_points_ci95"],
        "f2_minus_default_points": 100 * vs["diff"],
        "f2_minus_default_ci95": [100 * v for v in vs["diff_ci95"]],
        "f2_vs_default_p": vs["p_mcnemar"],
        "gain_rule_met": gain_ok,
        "not_significantly_worse": not_worse,
        "default_head": "sodef" if gain_ok and not_worse else "linear",
    }


def capacity(records: dict[str, dict], data_spec, n: int = 1000, steps: int = 10) -> dict:
    """What limits the gain: PGD accuracy on training images against test images, for the base and every arm.

    A model whose robust accuracy on the images it was trained on is barely above its test figure has no capacity
    left to fit the adversarial objective (underfitting); a large gap is overfitting. ``data_spec``: a ``--data``
    string, or data already loaded with ``sodef_cli.data.load_data`` (callers measuring several bases decode once).
    """
    import torch

    from sodef_cli.adversarial import robust_accuracy
    from sodef_cli.data import load_data, select_samples
    from sodef_cli.models import load_pair

    data = load_data(data_spec) if isinstance(data_spec, str) else data_spec
    tr, te = select_samples(data.train.labels, n, 1), select_samples(data.test.labels, n, 1)
    out: dict = {}
    for name, rec in records.items():
        base, hardened, _ = load_pair(
            rec.get("model") or str(Path(rec["attack"]["results"]).with_suffix("").with_suffix(".safetensors"))
        )
        for label, model in ([("A", base)] if not out else []) + [(name, hardened)]:
            fig = {}
            for split, images, idx in (("train", data.train, tr), ("test", data.test, te)):
                fig[f"{split}_clean"] = robust_accuracy(
                    model, images, idx, kind="none", eps=8 / 255, steps=0, device=torch.device("cpu")
                )
                fig[f"{split}_pgd{steps}"] = robust_accuracy(
                    model, images, idx, kind="pgd", eps=8 / 255, steps=steps, device=torch.device("cpu")
                )
            out[label] = fig
    return out


def screen(records: dict[str, dict]) -> dict[str, dict]:
    """What a harden run alone says about an arm (no attack): wall time, the epoch kept, and the selection's figures
    on its validation images (clean and PGD-10, start -> kept). A screen, not the adaptive worst case."""
    rows = {}
    for name, rec in records.items():
        adv = rec["harden"]["adversarial"]
        hist = {h["epoch"]: h for h in adv["history"]}
        start, kept = hist[0], hist[adv["best_epoch"]]
        rows[name] = {
            "description": ARMS[name][0],
            "harden_s": rec["harden"]["wall_s"],
            "epochs": adv["epochs_run"],
            "kept_epoch": adv["best_epoch"],
            "val_clean": [start["val_clean_acc"], kept["val_clean_acc"]],
            "val_pgd": [start["val_pgd_acc"], kept["val_pgd_acc"]],
            "best_val_pgd_any_epoch": max(h["val_pgd_acc"] for h in adv["history"]),
            "selection_warning": adv.get("selection_warning"),
            "val_images": (adv.get("select") or {}).get("n"),
        }
    return rows


def screen_table(rows: dict[str, dict]) -> str:
    lines = [
        "| arm | what | harden wall | kept epoch | val clean % start -> kept | val PGD-10 % start -> kept | best val PGD-10 of any epoch |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in sorted(rows.items()):
        lines.append(
            f"| {name} | {r['description']} | {r['harden_s'] / 60:.1f} min | {r['kept_epoch']}/{r['epochs']} | "
            f"{100 * r['val_clean'][0]:.1f} -> {100 * r['val_clean'][1]:.1f} | "
            f"{100 * r['val_pgd'][0]:.1f} -> {100 * r['val_pgd'][1]:.1f} | {100 * r['best_val_pgd_any_epoch']:.1f} |"
        )
    return "\n".join(lines)


def table(doc: dict) -> str:
    pct = lambda v: f"{100 * v:.1f}"
    ci = lambda c: f"[{100 * c[0]:.1f}, {100 * c[1]:.1f}]"
    lines = [
        "| arm | what | clean % (95% CI) | adaptive worst case % (95% CI) | gain over A, points (95% CI) | McNemar p | harden wall |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in sorted(doc["rows"]):
        r = doc["rows"][name]
        gain = (
            ""
            if name == "A"
            else f"{r['gain_points']:+.1f} [{r['gain_points_ci95'][0]:+.1f}, {r['gain_points_ci95'][1]:+.1f}]"
        )
        p = "" if name == "A" else f"{r['mcnemar_p']:.3g}"
        lines.append(
            f"| {name} | {r['description']} | {pct(r['clean'])} {ci(r['clean_ci95'])} | {pct(r['worst_case'])} "
            f"{ci(r['worst_case_ci95'])} | {gain} | {p} | {r['harden_s'] / 60:.1f} min |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="CIFAR-10 in ImageFolder layout (train/ and test/)")
    ap.add_argument("--base", default=str(ROOT / "sodef_cli/assets/demo_base.safetensors"))
    ap.add_argument(
        "--recipe",
        default=str(ROOT / "recipes/adversarial.toml"),
        help="budgets every arm shares (epochs, lr, weight averaging, stages); each arm sets its head and attack",
    )
    ap.add_argument("--arms", default="B,C,D,E,F", help="trained arms to run (A comes with every run)")
    ap.add_argument("--n", type=int, default=1000, help="test images attacked (default 1000)")
    ap.add_argument(
        "--prefix",
        type=int,
        default=0,
        help="analyze every arm on its first N attacked images (arms run with other --n)",
    )
    ap.add_argument("--attacks", default="", help="comma-separated attacks instead of the default list")
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--jobs", type=int, default=1, help="arms run at once, each a process with --threads threads")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    ap.add_argument("--work", default=str(OUT_DIR / "hardening"), help="folder for the arms' files")
    ap.add_argument("--fresh", action="store_true", help="rerun arms that already have results in --work")
    ap.add_argument(
        "--screen",
        action="store_true",
        help="harden only (no attack): wall time and the selection's validation figures per arm; a later run without"
        " --screen attacks the same files",
    )
    ap.add_argument(
        "--capacity",
        action="store_true",
        help="also measure PGD-10 accuracy on 1,000 training against 1,000 test images per model (what limits the gain)",
    )
    ap.add_argument("--out", default=str(OUT_DIR / "hardening.json"))
    ap.add_argument("--results", default=str(ROOT / "benchmarks/RESULTS.md"), help="'' = do not append a row")
    args = ap.parse_args()
    args.device, args.repeats = "cpu", 1
    device = setup(args)
    arms = choice_list(args.arms, ARMS, "arm")
    Path(args.work).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)}
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        records = dict(zip(arms, pool.map(lambda a: _arm(a, args, env), arms)))
    if args.screen:
        rows = screen(records)
        write_json({"data": args.data, "base": args.base, "env": environment(device), "screen": rows}, args.out)
        print(screen_table(rows))
        if args.results:
            figures = "; ".join(
                f"{k} {r['harden_s']:.0f}s kept {r['kept_epoch']}/{r['epochs']} val clean "
                f"{100 * r['val_clean'][0]:.1f}->{100 * r['val_clean'][1]:.1f} val PGD-10 "
                f"{100 * r['val_pgd'][0]:.1f}->{100 * r['val_pgd'][1]:.1f}"
                for k, r in rows.items()
            )
            append_results(
                f"hardening.py --screen (harden only, {args.threads} threads)",
                environment(device),
                figures,
                path=args.results,
            )
        return
    doc = {
        "data": args.data,
        "base": args.base,
        "recipe": args.recipe,
        "env": environment(device),
        "jobs": args.jobs,
        "threads": args.threads,
        **analyze(records, args.prefix or None, attacks=args.attacks.split(",") if args.attacks else None),
    }
    if args.capacity:
        doc["capacity"] = capacity(records, args.data)
    write_json(doc, args.out)
    text = table(doc)
    if doc.get("capacity"):
        text += (
            "\n\n| model | train clean | train PGD-10 | test clean | test PGD-10 |\n|---|---|---|---|---|\n"
            + "\n".join(
                f"| {k} | "
                + " | ".join(
                    f"{100 * v:.1f}" for v in (f["train_clean"], f["train_pgd10"], f["test_clean"], f["test_pgd10"])
                )
                + " |"
                for k, f in doc["capacity"].items()
            )
        )
    if args.results:
        figures = "; ".join(
            f"{k} clean {100 * r['clean']:.1f} worst {100 * r['worst_case']:.1f}"
            + (
                f" gain {r['gain_points']:+.1f} [{r['gain_points_ci95'][0]:+.1f}, {r['gain_points_ci95'][1]:+.1f}] "
                f"p={r['mcnemar_p']:.2g} harden {r['harden_s']:.0f}s"
                if k != "A"
                else ""
            )
            for k, r in sorted(doc["rows"].items())
        )
        append_results(
            f"hardening.py n={doc['n']} jobs={args.jobs}x{args.threads} threads", doc["env"], figures, path=args.results
        )
    hd = doc.get("head_decision")
    if hd:
        text += (
            f"\n\nHead decision: F' gains {hd['f2_gain_points']:+.1f} [{hd['f2_gain_points_ci95'][0]:+.1f}, "
            f"{hd['f2_gain_points_ci95'][1]:+.1f}]; F' - {DEFAULT_ARM} {hd['f2_minus_default_points']:+.1f} "
            f"[{hd['f2_minus_default_ci95'][0]:+.1f}, {hd['f2_minus_default_ci95'][1]:+.1f}], McNemar p={hd['f2_vs_default_p']:.3g} "
            f"-> the default head is {hd['default_head']}"
        )
    print(text)


if __name__ == "__main__":
    main()
