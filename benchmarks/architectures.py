"""The default path on three architectures: does `sodef harden BASE --data D` (no recipe) harden every base?

    python benchmarks/architectures.py --data CIFAR_DIR [--archs test_resnet,regnetx_002,test_convnext] [--n 1000]
        [--work DIR] [--capacity]

Per architecture: the base (the shipped demo base for test_resnet; for the others ``sodef pretrain NAME --recipe
recipes/<family>-base.toml --data CIFAR_DIR``, made once and reused from ``--work``), then the default
``sodef harden BASE --data CIFAR_DIR`` (timed, nothing else should run), then ``sodef attack`` on the hardened file
over the same ``--n`` test images for every architecture (APGD-CE, APGD-T, transfer, feature, Square; the same list
as ``benchmarks/hardening.py``). The base's worst case is its per-sample worst case under the attacks that need no
second model; the hardened model's is under every attack of its run. Gain: paired 95% interval and exact McNemar p.
``--capacity`` adds PGD-10 accuracy on 1,000 training against 1,000 test images (what limits a gain). Writes JSON,
appends a row to benchmarks/RESULTS.md and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from _common import OUT_DIR, ROOT, append_results, choice_list, environment, run_sodef, setup, write_json
from hardening import analyze, capacity, harden_and_attack

#: timm name -> the recipe that pretrains its CIFAR-10 base (None: the shipped demo base)
ARCHS = {
    "test_resnet": None,
    "regnetx_002": "recipes/regnet-base.toml",
    "test_convnext": "recipes/convnext-base.toml",
}
DEMO_BASE = ROOT / "sodef_cli/assets/demo_base.safetensors"


def base_file(arch: str, args, env: dict) -> tuple[Path, dict | None]:
    """The architecture's base file and its pretrain record (None for the shipped demo base)."""
    recipe = ARCHS[arch]
    if recipe is None:
        return DEMO_BASE, None
    work = Path(args.work)
    out, rec_path = work / f"{arch}_base.safetensors", work / f"{arch}_base.json"
    if rec_path.exists() and out.exists():
        return out, json.loads(rec_path.read_text())
    cmd = ["pretrain", arch, "--recipe", str(ROOT / recipe), "--data", args.data, "--out", str(out), "--json"]
    summary, wall, peak = run_sodef(cmd, env, log=work / f"{arch}_base.log")
    rec = {"command": "sodef " + " ".join(cmd), "wall_s": wall, "peak_rss_mib": peak, "summary": summary}
    rec_path.write_text(json.dumps(rec, indent=1))
    return out, rec


def parameters(path: Path) -> int:
    """Parameter count of a base file's network."""
    from sodef_cli import load_base

    return sum(p.numel() for p in load_base(str(path), "cpu").parameters())


def run_arch(arch: str, args, env: dict, data=None) -> dict:
    """Base, default harden, attack and analysis of one architecture; ``data``: the loaded data set for --capacity."""
    base, pre = base_file(arch, args, env)
    work = Path(args.work)
    model = work / f"{arch}_hardened.safetensors"
    cmd = ["harden", str(base), "--data", args.data, "--out", str(model), "--json"]  # the default: no recipe
    rec = harden_and_attack(work / arch, cmd, model, args, env)
    attacks = args.attacks.split(",") if args.attacks else None
    doc = analyze({arch: rec}, descriptions={arch: f"the default, from the {arch} base"}, attacks=attacks)
    doc["pretrain"] = pre
    doc["parameters"] = parameters(base)
    if args.capacity:
        doc["capacity"] = capacity({arch: rec}, data if data is not None else args.data)
    return doc


def table(docs: dict[str, dict]) -> str:
    pct = lambda v, c: f"{100 * v:.1f} [{100 * c[0]:.1f}, {100 * c[1]:.1f}]"
    lines = [
        "| base | clean % base -> hardened | adaptive worst case % base -> hardened | gain, points (95% CI) | McNemar p | harden wall |",
        "|---|---|---|---|---|---|",
    ]
    for arch, d in docs.items():
        a, h = d["rows"]["A"], d["rows"][arch]
        lo, hi = h["gain_points_ci95"]
        lines.append(
            f"| {arch} | {pct(a['clean'], a['clean_ci95'])} -> {pct(h['clean'], h['clean_ci95'])} | "
            f"{pct(a['worst_case'], a['worst_case_ci95'])} -> {pct(h['worst_case'], h['worst_case_ci95'])} | "
            f"{h['gain_points']:+.1f} [{lo:+.1f}, {hi:+.1f}] | {h['mcnemar_p']:.2g} | {h['harden_s'] / 60:.1f} min |"
        )
    cap = {a: d["capacity"] for a, d in docs.items() if d.get("capacity")}
    if cap:
        lines += ["", "| model | train clean | train PGD-10 | test clean | test PGD-10 |", "|---|---|---|---|---|"]
        for arch, c in cap.items():
            for label, f in c.items():
                name = f"{arch} {'base' if label == 'A' else 'hardened'}"
                vals = (f["train_clean"], f["train_pgd10"], f["test_clean"], f["test_pgd10"])
                lines.append(f"| {name} | " + " | ".join(f"{100 * v:.1f}" for v in vals) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="CIFAR-10 in ImageFolder layout (train/ and test/)")
    ap.add_argument("--archs", default=",".join(ARCHS), help=f"comma-separated, from {', '.join(ARCHS)}")
    ap.add_argument("--n", type=int, default=1000, help="test images attacked (default 1000)")
    ap.add_argument("--attacks", default="", help="comma-separated attacks instead of the default list")
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of each sodef process")
    ap.add_argument("--work", default=str(OUT_DIR / "architectures"), help="folder for bases, hardened files, results")
    ap.add_argument("--fresh", action="store_true", help="reharden and reattack (bases are always reused)")
    ap.add_argument("--capacity", action="store_true", help="PGD-10 on 1,000 train vs 1,000 test images per model")
    ap.add_argument("--out", default=str(OUT_DIR / "architectures.json"))
    ap.add_argument("--results", default=str(ROOT / "benchmarks/RESULTS.md"), help="'' = do not append a row")
    args = ap.parse_args()
    args.device, args.repeats = "cpu", 1
    device = setup(args)
    archs = choice_list(args.archs, ARCHS, "architecture")
    Path(args.work).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)}
    from sodef_cli.data import load_data

    data = load_data(args.data) if args.capacity else None  # decoded once for every architecture's capacity figures
    docs = {}
    for arch in archs:  # one at a time: the harden wall times are the figures
        docs[arch] = run_arch(arch, args, env, data)
        print(table({arch: docs[arch]}), flush=True)
    write_json({"data": args.data, "env": environment(device), "archs": docs}, args.out)
    print(table(docs))
    if args.results:
        figures = "; ".join(
            f"{a} ({d['parameters']} params) clean {100 * d['rows']['A']['clean']:.1f}->{100 * d['rows'][a]['clean']:.1f} "
            f"worst {100 * d['rows']['A']['worst_case']:.1f}->{100 * d['rows'][a]['worst_case']:.1f} "
            f"gain {d['rows'][a]['gain_points']:+.1f} [{d['rows'][a]['gain_points_ci95'][0]:+.1f}, "
            f"{d['rows'][a]['gain_points_ci95'][1]:+.1f}] p={d['rows'][a]['mcnemar_p']:.2g} "
            f"harden {d['rows'][a]['harden_s']:.0f}s"
            for a, d in docs.items()
        )
        append_results(
            f"architectures.py n={args.n} (the default path)", environment(device), figures, path=args.results
        )


if __name__ == "__main__":
    main()
