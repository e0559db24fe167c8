"""Inference overhead of the SODEF head: hardened / base forward time, and what fixed steps cost in accuracy.

Loads (base, hardened) from one hardened file (``sodef_cli.models.load_pair``): the base is the frozen
backbone with its own (or probe) head, the hardened model the same backbone with the SODEF head. Times,
under ``torch.no_grad`` after warm-up and interleaved in one process, a forward pass of ``--batch-size``
test images through:

- ``base``;
- ``stored``: the hardened model as shipped (the fixed-step solver ``harden`` chose, or its declared solver);
- ``declared``: when ``harden`` chose a shipped solver, the same model with its declared solver (e.g. dopri5);
- ``torchdiffeq``: the adaptive one of those two solved by ``torchdiffeq.odeint`` itself (without gradients the
  head runs ``sodef_cli/dopri5.py``: this is the "before" of that change);
- ``rk4@s``: ``hardened.variant("fixed", step_size=s)`` for each ``--step-sizes`` s, i.e. RK4 with fixed
  steps over [0, T] (s = 0.5, 1, 2.5, 5 at T = 5 gives 10, 5, 2, 1 steps, 4 function evaluations each).

For each it reports the time ratio to the base, ODE function evaluations per forward, clean accuracy on
the data's whole test split, and the share of test predictions equal to the stored model's.

    python benchmarks/inference.py --model HARDENED.safetensors [--device cpu|cuda] [--batch-size 256] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

if __package__:
    from . import _common as C
else:  # python benchmarks/inference.py
    import _common as C

from sodef_cli.data import load_data
from sodef_cli.errors import SodefError
from sodef_cli.head import HardenedClassifier
from sodef_cli.models import load_pair

DEFAULT_STEPS = (0.5, 1.0, 2.5, 5.0)


def predictions(model: torch.nn.Module, data, batch_size: int, device: torch.device) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for x, _ in data.batches(batch_size):
            out.append(model(x.to(device)).argmax(dim=1).cpu())
    return torch.cat(out)


def nfe_per_forward(model: torch.nn.Module, odefunc: torch.nn.Module, x: torch.Tensor) -> int:
    before = odefunc.nfe
    with torch.no_grad():
        model(x)
    return int(odefunc.nfe - before)


class _Torchdiffeq(torch.nn.Module):
    """An adaptive ODE block solved by ``torchdiffeq.odeint`` itself, as ``head.ODEBlock`` did without gradients
    before ``sodef_cli/dopri5.py`` (the "before" of that change, timed in the same run)."""

    def __init__(self, block):
        super().__init__()
        object.__setattr__(self, "_block", block)  # not registered: shared weights

    def forward(self, z0: torch.Tensor) -> torch.Tensor:
        import torchdiffeq

        b = self._block
        t = torch.tensor([0.0, b.t1], dtype=z0.dtype, device=z0.device)
        return torchdiffeq.odeint(b.odefunc, z0, t, method=b.solver, rtol=b.rtol, atol=b.atol)[-1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a hardened .safetensors file written by `sodef harden`")
    ap.add_argument("--batch-size", type=int, default=256, help="images per timed forward (default 256)")
    ap.add_argument("--data", default="demo", help="data whose test split is used (default demo)")
    ap.add_argument("--data-dir", default="", help="root for torchvision data sets")
    ap.add_argument(
        "--step-sizes",
        default=",".join(f"{s:g}" for s in DEFAULT_STEPS),
        help="fixed RK4 step sizes to try, comma-separated (default 0.5,1,2.5,5)",
    )
    ap.add_argument("--seed", type=int, default=0, help="seed of the timed batch's draw from the test split")
    C.add_common_args(ap, default_out="inference.json", default_repeats=11)
    args = ap.parse_args(argv)
    if args.batch_size < 1:
        ap.error("--batch-size must be >= 1")
    try:
        steps = [float(s) for s in args.step_sizes.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--step-sizes must be comma-separated numbers, got {args.step_sizes!r}")
    if any(s <= 0 for s in steps):
        ap.error("--step-sizes must be > 0")
    device = C.setup(args)

    try:
        base, hardened, meta = load_pair(args.model, device)
    except SodefError as exc:
        raise SystemExit(f"error: {exc}") from None
    spec = hardened.spec
    head_cfg = meta["config"]["head"]
    data = load_data(
        args.data,
        data_dir=args.data_dir,
        channels=spec.in_chans,
        image_size=spec.input_size[-1],
        progress=lambda t, d, n: None,
    )
    test = data.test
    gen = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(test), generator=gen)
    if len(test) < args.batch_size:  # a small test split: repeat it to fill the batch
        idx = idx.repeat((args.batch_size + len(test) - 1) // len(test))
    x = test.floats(idx[: args.batch_size]).to(device)

    models: dict[str, torch.nn.Module] = {"base": base, "stored": hardened}
    if (meta.get("inference") or {}).get("chosen"):  # the model with its declared solver (before the choice)
        models["declared"] = load_pair(args.model, device, solver="declared")[1]
    adaptive = next((models[k] for k in ("declared", "stored") if k in models and models[k].head.block.adaptive), None)
    if adaptive is not None:  # the same adaptive solve through torchdiffeq.odeint (before sodef_cli/dopri5.py)
        models["torchdiffeq"] = HardenedClassifier(
            adaptive.backbone, adaptive.spec, adaptive.head.with_ode(_Torchdiffeq(adaptive.head.block))
        ).eval()
    for s in steps:
        models[f"rk4@{s:g}"] = hardened.variant("fixed", step_size=s)

    def forward(m):
        def run():
            with torch.no_grad():
                m(x)

        return run

    timings = C.interleaved_timings(
        {k: forward(m) for k, m in models.items()}, device=device, repeats=args.repeats, warmup=2
    )
    base_s = timings["base"]["median_s"]

    preds = {k: predictions(m, test, args.batch_size, device) for k, m in models.items()}
    labels = test.labels
    t1 = float(head_cfg.get("t1", 5.0))
    results = {}
    for k, m in models.items():
        r = {
            "ratio_to_base": timings[k]["median_s"] / base_s,
            "ms_per_batch": C.ms(timings[k]["median_s"]),
            "rounds_ms": [C.ms(s) for s in timings[k]["seconds"]],
            "calls_per_round": timings[k]["inner"],
            "accuracy": 100.0 * float((preds[k] == labels).float().mean()),
            "agree_with_stored": 100.0 * float((preds[k] == preds["stored"]).float().mean()),
        }
        if k in ("stored", "declared", "torchdiffeq"):
            blk = m.head.block
            r.update(solver=blk.solver, rtol=blk.rtol, atol=blk.atol, step_size=blk.step_size)
        if k.startswith("rk4@"):
            s = float(k[4:])
            r.update(solver="rk4", step_size=s, steps=t1 / s)
        if k != "base":
            r["nfe"] = nfe_per_forward(m, m.head.odefunc, x)
        results[k] = r

    env = C.environment(device)
    doc = {
        "benchmark": "inference",
        "environment": env,
        "settings": {
            "model": str(args.model),
            "backbone": spec.timm_name,
            "input_size": list(spec.input_size),
            "head": head_cfg,
            "batch_size": args.batch_size,
            "data": args.data,
            "test_images": len(test),
            "repeats": args.repeats,
            "threads": torch.get_num_threads(),
            "seed": args.seed,
            "step_sizes": steps,
        },
        "models": results,
        "goal_ratio": 1.25,
        "goal_met_by": [k for k, r in results.items() if k != "base" and r["ratio_to_base"] <= 1.25],
    }
    C.write_json(doc, args.out)

    if args.results:
        parts = []
        for k, r in results.items():
            p = (
                f"{k}: "
                + ("" if k == "base" else f"{r['ratio_to_base']:.2f}x nfe {r['nfe']} ")
                + f"acc {r['accuracy']:.1f}"
            )
            if k not in ("base", "stored"):
                p += f" agree {r['agree_with_stored']:.1f}"
            if device.type == "cuda":
                p += f" ({r['ms_per_batch']:.2f} ms)"
            parts.append(p)
        bench = (
            f"inference.py {spec.timm_name} {spec.input_size[-1]}px, {Path(args.model).name}, "
            f"batch {args.batch_size}, {args.data} test n={len(test)}"
        )
        C.append_results(bench, env, "; ".join(parts), path=args.results)

    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"device: {env['device']}  ({C.versions_text(env)})")
        print(
            f"{spec.timm_name} {spec.input_size[-1]}px, batch {args.batch_size}, T={t1:g}, stored solver "
            f"{results['stored'].get('solver')} (declared {head_cfg.get('solver')}); median of {args.repeats} interleaved rounds; accuracy on {len(test)} test images"
        )
        rows = [
            [k, r.get("nfe", "-"), r["ms_per_batch"], r["ratio_to_base"], r["accuracy"], r["agree_with_stored"]]
            for k, r in results.items()
        ]
        print(C.format_table(["model", "nfe", "ms/batch", "x base", "acc %", "agree %"], rows))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
