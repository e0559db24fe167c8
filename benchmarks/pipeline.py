"""End-to-end wall time and peak memory of `sodef harden` and `sodef attack` on real data.

    python benchmarks/pipeline.py --base sodef_cli/assets/demo_base.safetensors --data CIFAR_DIR \
        [--recipe recipes/paper-cifar10.toml] [--suite adaptive] [--n 500] [--device cpu|cuda] [--skip-harden]

Each stage runs as its own process (``python -m sodef_cli ...``) so that its peak resident memory (and on CUDA
its peak GPU memory, printed by the stage itself) is its own. Per-stage times come from the commands' own
``--json`` summaries. Writes JSON and appends a row to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from _common import OUT_DIR, add_common_args, append_results, environment, run_sodef, setup, write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--base", default="sodef_cli/assets/demo_base.safetensors", help="a `sodef pretrain` file (or a timm name)"
    )
    ap.add_argument("--data", required=True)
    ap.add_argument("--recipe", default="recipes/paper-cifar10.toml", help="'' = the defaults (no recipe)")
    ap.add_argument("--suite", default="adaptive")
    ap.add_argument("--attacks", default="", help="comma-separated attacks instead of --suite")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--hardened", default=str(OUT_DIR / "pipeline_hardened.safetensors"))
    ap.add_argument("--skip-harden", action="store_true", help="attack an existing --hardened file")
    ap.add_argument("--skip-attack", action="store_true", help="harden only (the harden profile)")
    ap.add_argument("--set", action="append", default=[], help="extra `harden --set key=value`")
    ap.add_argument("--attack-args", default="", help="extra `sodef attack` options, e.g. '--queries 1000' (recorded)")
    add_common_args(ap, default_out="pipeline.json", default_repeats=1)
    args = ap.parse_args()
    device = setup(args)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if args.threads > 0:
        env["OMP_NUM_THREADS"] = str(args.threads)
    doc: dict = {"base": args.base, "data": args.data, "recipe": args.recipe, "env": environment(device)}
    figures = []
    if not args.skip_harden:
        cmd = [
            "harden",
            args.base,
            "--data",
            args.data,
            *(["--recipe", args.recipe] if args.recipe else []),
            "--out",
            args.hardened,
            "--device",
            device.type,
            "--json",
        ]
        for s in args.set:
            cmd += ["--set", s]
        summary, wall, peak = run_sodef(cmd, env)
        doc["harden"] = {
            "wall_s": wall,
            "peak_rss_mib": peak,
            "timings_s": summary["timings_s"],
            "base": summary["base"],
            "hardened": summary["hardened"],
            "stability": summary["stability"],
            "check": summary["check"],
            "train_images": summary["data"]["train"],
        }
        t = summary["timings_s"]
        head = sum(t.get(k, 0.0) for k in ("phase1", "phase2", "phase3"))
        doc["harden"]["total_over_features"] = t["total"] / t["features"]
        profile = ", ".join(f"{k} {v:.1f}s" for k, v in t.items() if k != "total")
        figures.append(
            f"harden {summary['data']['train']} imgs ({args.recipe or 'defaults'}): total {t['total']:.0f}s = "
            f"{t['total'] / t['features']:.1f}x features ({profile}); head (phases 1-3) {head:.0f}s, peak RSS "
            f"{peak:.0f} MiB; clean base "
            f"{100 * summary['base']['test_clean_acc']:.1f}% / hardened {100 * summary['hardened']['test_clean_acc']:.1f}%"
            + (
                f"; guard {summary['check']['gain_points']:+.1f} pts" if summary.get("check") else ""
            )  # no guard: the rest stays
        )
    if args.skip_attack:
        return _finish(doc, figures, args)
    cmd = [
        "attack",
        args.hardened,
        "--data",
        args.data,
        "--samples",
        str(args.n),
        "--batch-size",
        str(args.batch_size),
        "--out",
        str(Path(args.out).with_suffix(".results.json")),
        "--device",
        device.type,
        "--json",
    ]
    cmd += ["--attacks", args.attacks] if args.attacks else ["--suite", args.suite]
    cmd += args.attack_args.split()
    doc["attack_command"] = "sodef " + " ".join(cmd)
    Path(args.out).with_suffix(".results.json").unlink(missing_ok=True)
    summary, wall, peak = run_sodef(cmd, env)
    doc["attack"] = {"wall_s": wall, "peak_rss_mib": peak, "summary": summary}
    m = summary["models"]
    figures.append(
        f"attack {args.suite if not args.attacks else args.attacks} n={summary['n']} {summary['norm']} eps={summary['eps']:.4f}: "
        f"{wall:.0f}s, peak RSS {peak:.0f} MiB; base clean {100 * m['base']['clean']:.1f}% worst {100 * m['base']['worst_case']:.1f}%; "
        f"hardened clean {100 * m['hardened']['clean']:.1f}% white-box-direct {100 * m['hardened'].get('white_box_direct', float('nan')):.1f}% "
        f"worst {100 * m['hardened']['worst_case']:.1f}%"
    )
    _finish(doc, figures, args)


def _finish(doc: dict, figures: list[str], args) -> None:
    write_json(doc, args.out)
    text = "; ".join(f for f in figures if f)
    if args.results:
        append_results("pipeline.py", doc["env"], text, path=args.results)
    print(json.dumps(doc, indent=1) if args.json else text)


if __name__ == "__main__":
    main()
