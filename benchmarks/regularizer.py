"""Stability-term cost: the project's batched terms against the original per-sample Jacobian loop.

The reference is written here, independently of ``sodef_cli``: the released SODEF code's
``df_dz_regularizer`` + ``f_regularizer`` (described in docs/method.md), i.e. a Python loop over the sampled
points calling ``torch.autograd.functional.jacobian(..., create_graph=True)`` (64 ``autograd.grad`` calls
per point), then the code-form terms, then ``loss.backward()``. The project's path is
``sodef_cli.regularizers.stability_loss`` (closed form for ``sin``, a batched chain for ``sin3``).

Both are timed forward + backward, interleaved in one process; the project's on ``--points`` points, the
reference on ``--ref-points`` (the code's ``numm``). ``per_point_speedup`` = (reference ms per point) /
(project ms per point). Correctness is checked on the same ``--ref-points`` points: loss values (all three
terms) and every parameter gradient, in float64 (absolute error) and in float32 (error relative to the
largest magnitude), both required to be <= 1e-5.

    python benchmarks/regularizer.py [--device cpu|cuda] [--odefunc sin|sin3] [--json]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys

import torch

if __package__:
    from . import _common as C
else:  # python benchmarks/regularizer.py
    import _common as C

from sodef_cli.config import HeadConfig, RegularizerConfig
from sodef_cli.head import generic_stability_stats, make_odefunc
from sodef_cli.regularizers import stability_loss

TOL = 1e-5
# The MNIST constants of the released code (docs/method.md): all three terms count (weight_offdiag != 0).
REG = RegularizerConfig(
    form="code", convention="column", weight_f=0.2, weight_diag=10.0, weight_offdiag=10.0, jacobian_samples=0
)


def reference_loss(odefunc: torch.nn.Module, z: torch.Tensor, cfg: RegularizerConfig) -> dict[str, torch.Tensor]:
    """The released code's regulariser, per sample, as written there (column dominance, code form)."""
    f = lambda x: odefunc.f(x)  # the code: lambda x: odefunc(t, x); f is autonomous
    n = z.shape[1]
    eye = torch.eye(n, dtype=z.dtype, device=z.device)
    regu_diag = 0.0
    regu_offdiag = 0.0
    for i in range(z.shape[0]):
        jac = torch.autograd.functional.jacobian(f, z[i : i + 1], create_graph=True)  # (1, n, 1, n)
        jac = jac.view(n, -1)  # J[out, in]
        tempdiag = torch.diagonal(jac, 0)
        regu_diag = regu_diag + torch.exp(cfg.exponent * (tempdiag + cfg.trans))
        offdiag = torch.sum(torch.abs(jac) * ((-1 * eye + 0.5) * 2), dim=0)  # column sums - 2|J_jj|
        regu_offdiag = regu_offdiag + torch.exp(cfg.exponent_off * (offdiag + cfg.trans_off))
    r_d = (regu_diag / z.shape[0]).mean()
    r_o = (regu_offdiag / z.shape[0]).mean()
    r_f = torch.mean(torch.abs(cfg.exponent_f * f(z)) ** 2)
    loss = cfg.weight_f * r_f + cfg.weight_diag * r_d + cfg.weight_offdiag * r_o
    return {"loss": loss, "f": r_f, "diag": r_d, "offdiag": r_o}


def generic_loss(odefunc: torch.nn.Module, z: torch.Tensor, cfg: RegularizerConfig) -> dict[str, torch.Tensor]:
    """The same terms through ``torch.func.vmap(jacrev(f))`` (sodef_cli's path for an arbitrary f)."""
    fz, diag, dom = generic_stability_stats(odefunc, z, cfg.convention)
    r_f = (cfg.exponent_f * fz).pow(2).mean()
    r_d = torch.exp(cfg.exponent * (diag + cfg.trans)).mean()
    r_o = torch.exp(cfg.exponent_off * (dom + cfg.trans_off)).mean()
    return {
        "loss": cfg.weight_f * r_f + cfg.weight_diag * r_d + cfg.weight_offdiag * r_o,
        "f": r_f,
        "diag": r_d,
        "offdiag": r_o,
    }


def values_and_grads(loss_fn, odefunc, z, cfg):
    for p in odefunc.parameters():
        p.grad = None
    out = loss_fn(odefunc, z, cfg)
    out["loss"].backward()
    vals = {k: v.detach().clone() for k, v in out.items()}
    grads = {name: p.grad.detach().clone() for name, p in odefunc.named_parameters()}
    return vals, grads


def compare(odefunc, z, cfg) -> dict:
    """Max errors of stability_loss against the reference on the same points (values and gradients)."""
    ref_v, ref_g = values_and_grads(reference_loss, odefunc, z, cfg)
    our_v, our_g = values_and_grads(stability_loss, odefunc, z, cfg)
    abs_v = max(float((our_v[k] - ref_v[k]).abs()) for k in ref_v)
    abs_g = max(float((our_g[k] - ref_g[k]).abs().max()) for k in ref_g)
    rel_v = max(float((our_v[k] - ref_v[k]).abs()) / max(float(ref_v[k].abs()), 1.0) for k in ref_v)
    rel_g = max(float((our_g[k] - ref_g[k]).abs().max()) / max(float(ref_g[k].abs().max()), 1.0) for k in ref_g)
    return {
        "value_abs": abs_v,
        "grad_abs": abs_g,
        "value_rel": rel_v,
        "grad_rel": rel_g,
        "values": {k: float(v) for k, v in ref_v.items()},
    }


def step(loss_fn, odefunc, z, cfg):
    def run():
        for p in odefunc.parameters():
            p.grad = None
        loss_fn(odefunc, z, cfg)["loss"].backward()

    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=256, help="points for the project's batched terms (default 256)")
    ap.add_argument(
        "--ref-points", type=int, default=16, help="points for the reference loop, as the code's numm (default 16)"
    )
    ap.add_argument("--odefunc", choices=("sin", "sin3"), default="sin")
    ap.add_argument("--dim", type=int, default=64, help="ODE state size n (default 64)")
    ap.add_argument("--no-generic", action="store_true", help="skip the informational vmap(jacrev) timing")
    ap.add_argument("--seed", type=int, default=0)
    C.add_common_args(ap, default_out="regularizer.json")
    args = ap.parse_args(argv)
    if args.points < 1 or args.ref_points < 1:
        ap.error("--points and --ref-points must be >= 1")
    device = C.setup(args)
    torch.manual_seed(args.seed)
    odefunc = make_odefunc(HeadConfig(dim=args.dim, odefunc=args.odefunc)).to(device)
    gen = torch.Generator().manual_seed(args.seed + 1)
    z = torch.randn(max(args.points, args.ref_points), args.dim, generator=gen).to(device)
    z_ours, z_ref = z[: args.points].contiguous(), z[: args.ref_points].contiguous()

    # correctness on the same ref points: float64 (absolute) and the timed float32 (relative)
    check64 = compare(copy.deepcopy(odefunc).double(), z_ref.double(), REG)
    check32 = compare(odefunc, z_ref, REG)
    agree = (
        check64["value_abs"] <= TOL
        and check64["grad_abs"] <= TOL
        and check32["value_rel"] <= TOL
        and check32["grad_rel"] <= TOL
    )

    fns = {
        "reference": step(reference_loss, odefunc, z_ref, REG),
        "stability_loss": step(stability_loss, odefunc, z_ours, REG),
    }
    if not args.no_generic:
        fns["vmap_jacrev"] = step(generic_loss, odefunc, z_ours, REG)
    timings = C.interleaved_timings(fns, device=device, repeats=args.repeats, warmup=2)
    npts = {"reference": args.ref_points, "stability_loss": args.points, "vmap_jacrev": args.points}
    methods = {}
    for name, t in timings.items():
        step_ms = C.ms(t["median_s"])
        methods[name] = {
            "points": npts[name],
            "ms_per_step": step_ms,
            "ms_per_point": step_ms / npts[name],
            "rounds_ms": [C.ms(s) for s in t["seconds"]],
            "calls_per_round": t["inner"],
        }
    ref_pp = methods["reference"]["ms_per_point"]
    for m in methods.values():
        m["per_point_speedup"] = ref_pp / m["ms_per_point"]
    speedup = methods["stability_loss"]["per_point_speedup"]

    goal = 1000 if device.type == "cuda" else 200
    env = C.environment(device)
    doc = {
        "benchmark": "regularizer",
        "environment": env,
        "settings": {
            "odefunc": args.odefunc,
            "dim": args.dim,
            "points": args.points,
            "ref_points": args.ref_points,
            "repeats": args.repeats,
            "threads": torch.get_num_threads(),
            "seed": args.seed,
            "regularizer": dataclasses.asdict(REG),
        },
        "methods": methods,
        "per_point_speedup": speedup,
        "check": {"tolerance": TOL, "points": args.ref_points, "agree": agree, "float64": check64, "float32": check32},
        "goal": goal,
        "goal_met": speedup >= goal,
    }
    C.write_json(doc, args.out)

    if args.results:
        figs = [f"per_point_speedup={speedup:.0f}x"]
        if "vmap_jacrev" in methods:
            figs.append(f"vmap_jacrev={methods['vmap_jacrev']['per_point_speedup']:.0f}x")
        figs.append(
            f"agree={'yes' if agree else 'NO'} (f64 max abs grad err {check64['grad_abs']:.1e}, f32 rel {check32['grad_rel']:.1e})"
        )
        if device.type == "cuda":
            figs.append(
                f"ref {methods['reference']['ms_per_step']:.2f} ms/{args.ref_points} pts, "
                f"ours {methods['stability_loss']['ms_per_step']:.3f} ms/{args.points} pts"
            )
        C.append_results(
            f"regularizer.py --odefunc {args.odefunc} --points {args.points} --ref-points {args.ref_points}",
            env,
            "; ".join(figs),
            path=args.results,
        )

    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"device: {env['device']}  ({C.versions_text(env)})")
        print(f"odefunc={args.odefunc} n={args.dim}, forward+backward, median of {args.repeats} interleaved rounds")
        rows = [
            [name, m["points"], m["ms_per_step"], m["ms_per_point"], m["per_point_speedup"]]
            for name, m in methods.items()
        ]
        print(C.format_table(["method", "points", "ms/step", "ms/point", "speedup/point"], rows))
        print(
            f"check on {args.ref_points} points: float64 max|dvalue|={check64['value_abs']:.2e} max|dgrad|={check64['grad_abs']:.2e}; "
            f"float32 rel dvalue={check32['value_rel']:.2e} rel dgrad={check32['grad_rel']:.2e} -> "
            f"{'agree' if agree else 'DISAGREE'} (tol {TOL:g})"
        )
        print(f"per_point_speedup={speedup:.1f}")
        print(f"wrote {args.out}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
