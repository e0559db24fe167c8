"""Phase 3's weight gradients of f: odeint_adjoint against direct backprop through the same solver.

With ``head.adjoint = true`` (the released SODEF code) phase 3 fine-tunes f with gradients from the adjoint
solve, which reconstructs z(t) by integrating backward through a contracting flow. This measures, on a
hardened model, the gradient of phase 3's loss (cross-entropy of the classifier on z(T)) with respect to f's
weights three ways on the same batches of training features:

- ``adjoint``: ``odeint_adjoint`` at the model's solver and rtol/atol (what phase 3 used with ``phase3.adjoint``);
- ``direct``: plain backprop through ``odeint`` with the same solver and tolerances (``phase3.adjoint = false``);
- ``reference``: plain backprop through the same solver at rtol = atol = 1e-7.

It reports the cosine similarity and the norm ratio of each pair (all of f's parameters as one vector, per
batch, then the median over batches). Without ``--model`` it first hardens the shipped demo base on the demo
data with ``recipes/demo.toml`` (guard off, ``--phase3-epochs`` epochs of phase 3) into ``benchmarks/out/``.

    python benchmarks/adjoint_gradients.py [--model HARDENED.safetensors] [--batches 4] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__:
    from . import _common as C
else:  # python benchmarks/adjoint_gradients.py
    import _common as C

from sodef_cli.data import load_data, select_samples
from sodef_cli.errors import SodefError
from sodef_cli.head import ODEBlock
from sodef_cli.models import load_pair

TIGHT = 1e-7


def _flat_grad(loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]).double()


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300))


def _harden_demo(out: Path, phase3_epochs: int, device: str) -> dict:
    from sodef_cli.config import HardenConfig, resolve
    from sodef_cli.harden import harden

    cfg = resolve(
        HardenConfig,
        recipe=C.ROOT / "recipes" / "demo.toml",
        overrides={
            "model": str(C.ROOT / "sodef_cli" / "assets" / "demo_base.safetensors"),
            "check.enabled": False,
            "phase3.epochs": phase3_epochs,
            "device": device,
        },
    )
    return harden(cfg, out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="", help="a hardened .safetensors file (default: harden the demo base first)")
    ap.add_argument(
        "--phase3-epochs", type=int, default=2, help="phase-3 epochs of the model hardened without --model (default 2)"
    )
    ap.add_argument("--batches", type=int, default=4, help="batches of training features (default 4)")
    ap.add_argument("--batch-size", type=int, default=128, help="phase 3's batch size (default 128)")
    ap.add_argument("--seed", type=int, default=0)
    C.add_common_args(ap, default_out="adjoint_gradients.json", default_repeats=1)
    args = ap.parse_args(argv)
    device = C.setup(args)
    t0 = time.perf_counter()
    model_path = Path(args.model) if args.model else C.OUT_DIR / "adjoint_demo_hardened.safetensors"
    if not args.model:
        model_path.parent.mkdir(parents=True, exist_ok=True)
        _harden_demo(model_path, args.phase3_epochs, str(device))
    try:
        base, hardened, meta = load_pair(model_path, device)
    except SodefError as exc:
        raise SystemExit(f"error: {exc}") from None
    head_cfg = meta["config"]["head"]
    head = hardened.head
    block = head.block
    spec = hardened.spec
    data = load_data(
        meta["config"].get("data", "demo"),
        data_dir=meta["config"].get("data_dir", ""),
        channels=spec.in_chans,
        image_size=spec.input_size[-1],
    )
    idx = select_samples(data.train.labels, args.batches * args.batch_size, args.seed)
    params = list(head.odefunc.parameters())
    for p in params:
        p.requires_grad_(True)
    blocks = {
        "adjoint": ODEBlock(
            block.odefunc,
            t1=block.t1,
            solver=block.solver,
            rtol=block.rtol,
            atol=block.atol,
            step_size=block.step_size,
            adjoint=True,
        ),
        "direct": ODEBlock(
            block.odefunc,
            t1=block.t1,
            solver=block.solver,
            rtol=block.rtol,
            atol=block.atol,
            step_size=block.step_size,
            adjoint=False,
        ),
        "reference": ODEBlock(
            block.odefunc,
            t1=block.t1,
            solver=block.solver,
            rtol=TIGHT,
            atol=TIGHT,
            step_size=block.step_size,
            adjoint=False,
        ),
    }
    pairs = {
        "adjoint_vs_direct": ("adjoint", "direct"),
        "direct_vs_reference": ("direct", "reference"),
        "adjoint_vs_reference": ("adjoint", "reference"),
    }
    per_batch: dict[str, list[dict]] = {k: [] for k in pairs}
    for b in range(args.batches):
        j = idx[b * args.batch_size : (b + 1) * args.batch_size]
        x, y = data.train.floats(j).to(device), data.train.labels[j].to(device)
        with torch.no_grad():
            z0 = head.z0(hardened.features(x))
        grads = {name: _flat_grad(F.cross_entropy(head.classifier(blk(z0)), y), params) for name, blk in blocks.items()}
        for key, (a, r) in pairs.items():
            per_batch[key].append(
                {"cosine": _cos(grads[a], grads[r]), "norm_ratio": float(grads[a].norm() / grads[r].norm())}
            )
    summary = {
        key: {
            "cosine": statistics.median(v["cosine"] for v in vals),
            "norm_ratio": statistics.median(v["norm_ratio"] for v in vals),
        }
        for key, vals in per_batch.items()
    }
    env = C.environment(device)
    doc = {
        "benchmark": "adjoint_gradients",
        "environment": env,
        "settings": {
            "model": str(model_path),
            "head": head_cfg,
            "batches": args.batches,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "tight_tolerance": TIGHT,
            "phase3_epochs": None if args.model else args.phase3_epochs,
        },
        "median": summary,
        "per_batch": per_batch,
        "seconds": time.perf_counter() - t0,
    }
    C.write_json(doc, args.out)
    s = summary
    figures = (
        f"f weight grads, {args.batches}x{args.batch_size} train features, {head_cfg.get('solver')} rtol/atol "
        f"{head_cfg.get('rtol'):g}/{head_cfg.get('atol'):g}: adjoint vs direct cos {s['adjoint_vs_direct']['cosine']:.3f} "
        f"norm x{s['adjoint_vs_direct']['norm_ratio']:.3g}; direct vs rtol 1e-7 cos {s['direct_vs_reference']['cosine']:.4f} "
        f"norm x{s['direct_vs_reference']['norm_ratio']:.3g}; adjoint vs rtol 1e-7 cos {s['adjoint_vs_reference']['cosine']:.3f}"
    )
    if args.results:
        name = "adjoint_gradients.py" + (
            f" --model {model_path.name}"
            if args.model
            else f" (demo base, recipes/demo.toml, phase 3 x{args.phase3_epochs})"
        )
        C.append_results(name, env, figures, path=args.results)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"device: {env['device']}  ({C.versions_text(env)})")
        print(
            C.format_table(
                ["pair", "cosine (median)", "norm ratio (median)"],
                [[k, v["cosine"], v["norm_ratio"]] for k, v in summary.items()],
            )
        )
        print(f"wrote {args.out} in {doc['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
