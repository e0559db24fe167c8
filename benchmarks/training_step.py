"""Cost of one adversarial-training step per training attack (what `sodef harden`'s default path spends).

    python benchmarks/training_step.py [--base sodef_cli/assets/demo_base.safetensors] [--batch-size 128]
        [--attacks nfgsm,pgd-2,pgd-5,fgsm] [--threads 2]

One step = the training attack on a batch + the training forward/backward + an SGD step, with channels-last
activations as `adversarial_train` runs them. Candidates are timed interleaved in one process (`_common.py`); the
figures are ms per step and each attack's ratio to the first.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from _common import ROOT, add_common_args, append_results, environment, interleaved_timings, ms, setup, write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default=str(ROOT / "sodef_cli/assets/demo_base.safetensors"))
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--attacks", default="nfgsm,pgd-2,pgd-5,fgsm", help="training attacks; pgd-K = K steps")
    add_common_args(ap, default_out="training_step.json", default_repeats=5)
    args = ap.parse_args()
    device = setup(args)
    from sodef_cli.adversarial import attack_batch, default_step
    from sodef_cli.models import BaseClassifier, load_base_file

    model, spec, _ = load_base_file(args.base)
    net = BaseClassifier(model, spec).to(device).to(memory_format=torch.channels_last).train()
    g = torch.Generator().manual_seed(0)
    shape = (args.batch_size, *spec.input_size)
    x = torch.rand(shape, generator=g).to(device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, spec.num_classes, (args.batch_size,), generator=g).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    eps = 8 / 255

    def step_fn(kind: str, steps: int):
        def run() -> None:
            xa = attack_batch(
                net, x, y, kind=kind, eps=eps, step=default_step(kind, eps, steps), steps=steps, generator=g
            )
            loss = F.cross_entropy(net(xa), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return run

    fns = {}
    for name in (a.strip() for a in args.attacks.split(",") if a.strip()):
        kind, _, k = name.partition("-")
        fns[name] = step_fn(kind, int(k) if k else 1)
    res = interleaved_timings(fns, device=device, repeats=args.repeats, warmup=1, min_round_s=0.5)
    first = next(iter(res))
    rows = {n: {"ms": ms(r["median_s"]), "ratio": r["median_s"] / res[first]["median_s"]} for n, r in res.items()}
    env = environment(device)
    write_json({"env": env, "batch_size": args.batch_size, "base": args.base, "rows": rows}, args.out)
    text = "; ".join(f"{n} {r['ms']:.0f} ms ({r['ratio']:.2f}x)" for n, r in rows.items())
    if args.results:
        append_results(
            f"training_step.py batch {args.batch_size}, demo base, channels-last", env, text, path=args.results
        )
    print(text)


if __name__ == "__main__":
    main()
