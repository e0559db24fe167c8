"""`sodef attack` profiled per attack: wall time with and without the CPU fast paths, and the model passes each
attack spends per attacked sample next to the reference AutoAttack's published iteration counts.

    python benchmarks/suite.py [--model demo_hardened.safetensors] [--data demo] [--n 100] [--suite standard]
        [--attacks a,b,...] [--modes fast,plain] [--threads 2]

The reference AutoAttack cannot be installed here, so "no slower than the reference" is measured in two parts:
1. **the same work**: every pass through a model (images forwarded with and without gradients, counted at
   the model) per attacked sample, against the reference's own counts: APGD-CE 1 + 100 gradient passes,
   APGD-T 9 targets x 101, FAB-T 9 targets x 100 gradient passes (+ one forward each), Square 5,003 forwards
   at most (clean check, initial margins, 5,000 queries, judging; a sample leaves once fooled); the cascade
   attacks only samples still robust, as AutoAttack does;
2. **each pass no slower**: the run repeated with ``--plain-cpu`` (plain eager PyTorch, what the reference
   runs) next to the default CPU fast paths, in one process, one after the other, with the same samples
   and seeds (and the same verdicts, which this script checks).

Writes JSON and appends a row to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import time
from pathlib import Path

import torch
from _common import OUT_DIR, add_common_args, append_results, environment, format_table, setup, write_json

# per attacked sample, at the reference settings: (gradient passes, "at most" or "exactly")
REFERENCE_GRAD_PASSES = {"apgd-ce": 101, "apgd-t": 9 * 101, "fab-t": 9 * 100}
# forwards without gradients, at most: the clean check in perturb, the initial margins, 5,000 queries, the judging
REFERENCE_FORWARDS = {"square": 5003}


class _Counting:
    """Counts images through ``ImageModel._stem`` (every forward of every model and surrogate), per task."""

    def __init__(self):
        self.task = "setup"
        self.counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)

    def install(self):
        from sodef_cli.backbone import ImageModel

        real = ImageModel._stem
        counter = self

        def stem(model, x, logits):
            grad = torch.is_grad_enabled() and x.requires_grad
            counter.counts[counter.task]["grad" if grad else "forward"] += int(x.shape[0])
            return real(model, x, logits)

        ImageModel._stem = stem
        return lambda: setattr(ImageModel, "_stem", real)


def _reporter(counting: _Counting):
    from sodef_cli.phases import Reporter

    class R(Reporter):
        def start(self, task, total):
            if task != "all attacks":
                counting.task = task

        def end(self, task, **metrics):
            if task != "all attacks":
                counting.task = "between attacks"

    return R()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(OUT_DIR / "demo_hardened.safetensors"), help="a hardened file")
    ap.add_argument("--data", default="demo")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--suite", default="standard")
    ap.add_argument("--attacks", default="", help="comma-separated attacks instead of --suite")
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--modes", default="fast,plain", help="fast (the default CPU paths) and/or plain (--plain-cpu)")
    ap.add_argument("--render", default="", help="print (and record) the figures of an earlier run's JSON; no run")
    add_common_args(ap, default_out="suite.json", default_repeats=1)
    ap.set_defaults(threads=2)
    args = ap.parse_args()
    if args.render:
        return _report(json.loads(Path(args.render).read_text()), args.results)
    device = setup(args)
    from sodef_cli.data import load_data
    from sodef_cli.evaluate import AttackConfig, run_evaluation

    data = load_data(args.data)
    counting = _Counting()
    uninstall = counting.install()
    names = tuple(a for a in args.attacks.split(",") if a)
    runs = {}
    try:
        for mode in args.modes.split(","):
            cfg = AttackConfig(
                suite=args.suite,
                attacks=names,
                n=args.n,
                batch_size=args.batch_size,
                fast_cpu=mode == "fast",
                checks=False,
            )
            counting.counts.clear()
            t0 = time.perf_counter()
            doc = run_evaluation(args.model, data, cfg, device=device, reporter=_reporter(counting))
            wall = time.perf_counter() - t0
            runs[mode] = {"wall_s": wall, "doc": doc, "counts": {k: dict(v) for k, v in counting.counts.items()}}
    finally:
        uninstall()
    doc = {
        "args": {k: v for k, v in vars(args).items()},
        "env": environment(device),
        "runs": {m: {"wall_s": r["wall_s"], "counts": r["counts"], "doc": r["doc"]} for m, r in runs.items()},
        "config": dataclasses.asdict(cfg),
    }
    write_json(doc, args.out)
    _report(doc, args.results)


def _rows(doc: dict) -> list[dict]:
    rows = []
    for mode, r in doc["runs"].items():
        run = r["doc"]["runs"][0]
        for label, mrec in run["models"].items():
            for attack, res in mrec["attacks"].items():
                c = r["counts"].get(f"{label}: {attack} (eps={res['params']['eps']:.4g})", {})
                n = max(res["attacked"], 1)
                rows.append(
                    {
                        "mode": mode,
                        "model": label,
                        "attack": attack,
                        "attacked": res["attacked"],
                        "seconds": res["seconds"],
                        "grad_per_sample": c.get("grad", 0) / n,
                        "forward_per_sample": c.get("forward", 0) / n,
                        "robust": sum(1 for f in res["robust"] if f),
                    }
                )
    return rows


def _report(doc: dict, results: str) -> None:
    rows, runs, a = _rows(doc), doc["runs"], doc["args"]
    print(
        format_table(
            ["mode", "model", "attack", "attacked", "s", "grad/sample", "ref", "fwd/sample", "ref max"],
            [
                [
                    x["mode"],
                    x["model"],
                    x["attack"],
                    x["attacked"],
                    x["seconds"],
                    x["grad_per_sample"],
                    REFERENCE_GRAD_PASSES.get(x["attack"], "-"),
                    x["forward_per_sample"],
                    REFERENCE_FORWARDS.get(x["attack"], "-"),
                ]
                for x in rows
            ],
        )
    )
    verdicts = {m: sorted((x["model"], x["attack"], x["robust"]) for x in rows if x["mode"] == m) for m in runs}
    same = all(v == next(iter(verdicts.values())) for v in verdicts.values())
    totals = {m: sum(x["seconds"] for x in rows if x["mode"] == m) for m in runs}
    per_model = {
        m: ", ".join(
            f"{lab} {sum(x['seconds'] for x in rows if x['mode'] == m and x['model'] == lab):.1f}s"
            for lab in dict.fromkeys(x["model"] for x in rows)
        )
        for m in runs
    }
    first = next(iter(runs))

    def passes(x: dict) -> str:
        if x["attack"] in REFERENCE_FORWARDS:
            return f"{x['forward_per_sample']:.0f} forwards (reference <= {REFERENCE_FORWARDS[x['attack']]})"
        ref = REFERENCE_GRAD_PASSES.get(x["attack"])
        return f"{x['grad_per_sample']:.0f} gradient passes" + (f" (reference <= {ref})" if ref else "")

    text = (
        f"{a['suite'] if not a['attacks'] else a['attacks']} n={a['n']} on {Path(a['model']).name}: "
        + "; ".join(f"{m}: attacks {totals[m]:.1f}s ({per_model[m]}), wall {runs[m]['wall_s']:.1f}s" for m in runs)
        + (f"; plain/fast {totals['plain'] / totals['fast']:.2f}x" if {"fast", "plain"} <= set(runs) else "")
        + "; per attacked sample: "
        + ", ".join(f"{x['model']} {x['attack']} {passes(x)}" for x in rows if x["mode"] == first)
        + f"; the same robust counts in every mode: {'yes' if same else 'NO'}"
    )
    print(text)
    if results:
        append_results("suite.py", doc["env"], text, path=results)


if __name__ == "__main__":
    main()
