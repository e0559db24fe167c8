"""Clean (and optionally APGD-CE) accuracy of a base model file on a full test split.

    python benchmarks/demo_base.py --data CIFAR_DIR [--model sodef_cli/assets/demo_base.safetensors] [--robust 500]

CIFAR_DIR is CIFAR-10 in ImageFolder layout (``train/<class>/*.jpg``, ``test/<class>/*.jpg``; e.g. the
CIFAR-10 JPEG export, or torchvision's download written out as images). Writes JSON and
appends a row to benchmarks/RESULTS.md. ``--robust N`` adds APGD-CE (100 iterations, Linf 8/255) on N test
images drawn class by class (seed 0).
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import add_common_args, append_results, environment, setup, write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="sodef_cli/assets/demo_base.safetensors")
    ap.add_argument("--data", required=True, help="ImageFolder root with test/ (e.g. unzipped CIFAR-10 JPEGs)")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument(
        "--robust", type=int, default=0, help="also APGD-CE (Linf 8/255, 100 iterations) on this many images"
    )
    add_common_args(ap, default_out="demo_base.json", default_repeats=1)
    args = ap.parse_args()
    device = setup(args)

    from sodef_cli import load_base
    from sodef_cli.attacks import ATTACKS, AttackParams, Target
    from sodef_cli.data import load_data, select_samples
    from sodef_cli.io import read_metadata, sha256_file

    meta = read_metadata(args.model)
    spec = meta["backbone"]
    model = load_base(args.model, device)
    data = load_data(args.data, channels=spec["in_chans"], image_size=spec["input_size"][-1])
    t0 = time.perf_counter()
    correct = 0
    with torch.no_grad():
        for x, y in data.test.batches(args.batch_size):
            correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
    clean = correct / len(data.test)
    doc = {
        "model": args.model,
        "sha256": sha256_file(args.model),
        "timm_name": spec["timm_name"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "test_images": len(data.test),
        "clean_acc": clean,
        "clean_seconds": time.perf_counter() - t0,
        "training": meta.get("training", {}),
        "env": environment(device),
    }
    figures = (
        f"clean {100 * clean:.2f}% on {len(data.test)} test images ({spec['timm_name']}, {doc['parameters']} params)"
    )
    if args.robust:
        idx = select_samples(data.test.labels, args.robust, 0)
        x, y = data.test.floats(idx), data.test.labels[idx]
        p = AttackParams(norm="Linf", eps=8 / 255, n_classes=len(data.classes), seed=0)
        ok = 0
        for s in range(0, len(idx), args.batch_size):
            xb, yb = x[s : s + args.batch_size].to(device), y[s : s + args.batch_size].to(device)
            xa = ATTACKS["apgd-ce"].run(Target("base", model, model), xb, yb, p)
            with torch.no_grad():
                ok += int((model(xa).argmax(1) == yb).sum())
        doc["apgd_ce_acc"] = ok / len(idx)
        doc["apgd_ce_images"] = len(idx)
        figures += f"; APGD-CE 100 Linf 8/255 {100 * doc['apgd_ce_acc']:.1f}% on {len(idx)}"
    write_json(doc, args.out)
    if args.results:
        append_results("demo_base.py", doc["env"], figures, path=args.results)
    print(figures)


if __name__ == "__main__":
    main()
