"""The ``sodef`` command line (Typer). The only module that imports typer.

Each command parses options, builds a config, calls one domain function and prints. Errors of the
:class:`~sodef_cli.errors.SodefError` family become one line on stderr and the exit code of their class
(0 ok, 1 runtime error, 2 usage error, 130 interrupted); ``--debug`` shows the traceback.
Progress bars go to stderr; tables and ``--json`` go to stdout.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from collections.abc import Iterable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .config import AdversarialConfig, HeadConfig
from .errors import EXIT_INTERRUPTED, EXIT_RUNTIME, SodefError, UsageError
from .registry import (
    ADAPTIVE_SOLVERS,
    DEVICES,
    EXPORT_TARGETS,
    FIXED_SOLVERS,
    FORMAT_SUFFIXES,
    FORMATS,
    HEAD_KINDS,
    NORMS,
    PRETRAIN_ATTACKS,
    SUITES,
    TRAINING_ATTACKS,
    or_list,
)

app = typer.Typer(
    name="sodef",
    help="Harden timm classifiers with a SODEF head and evaluate them honestly (adaptive attacks included).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_state = {"debug": False}
err_console = Console(stderr=True)


def _out_console() -> Console:
    return Console()


def _choices(name: str, values: Iterable[str]) -> type[Enum]:
    """A str Enum of ``values`` (a registry's names): Typer shows them in --help and rejects anything else."""
    return Enum(name, [(v, v) for v in values], type=str)


Device = _choices("Device", DEVICES)
Adversarial = _choices("Adversarial", PRETRAIN_ATTACKS)
HeadKind = _choices("HeadKind", HEAD_KINDS)
TrainAttack = _choices("TrainAttack", TRAINING_ATTACKS)
Suite = _choices("Suite", SUITES)
Norm = _choices("Norm", NORMS)
ReportFormat = _choices("ReportFormat", FORMATS)


DataOpt = Annotated[
    str | None,
    typer.Option("--data", help="demo | folder with train/ and test/ | cifar10, cifar100, mnist, fashion-mnist, svhn."),
]
DataDirOpt = Annotated[str | None, typer.Option("--data-dir", help="Root folder for torchvision data sets.")]
DownloadOpt = Annotated[
    bool | None, typer.Option("--download/--no-download", help="Download a torchvision data set into --data-dir.")
]
RecipeOpt = Annotated[
    Path | None,
    typer.Option("--recipe", help="Recipe TOML supplying defaults; flags win.", exists=True, dir_okay=False),
]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override any recipe key: --set phase2.epochs=3 (repeatable).")
]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed.")]
DeviceOpt = Annotated[Device | None, typer.Option("--device", help=f"{or_list(DEVICES)}.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable summary on stdout.")]
ImageSizeOpt = Annotated[
    int | None, typer.Option("--image-size", min=1, help="Resize images to this size (default: the data's own).")
]
_SOLVER_HELP = (
    f"ODE solver (torchdiffeq; default {HeadConfig.solver}): adaptive {', '.join(ADAPTIVE_SOLVERS)}, "
    f"or fixed-step {', '.join(FIXED_SOLVERS)}."
)
_SUITE_HELP = "; ".join(f"{s.name}: {s.description}" for s in SUITES.values()) + "."
_FORMAT_HELP = (
    f"{or_list(FORMATS)} (table: the terminal). Default: from the --out suffix "
    f"({', '.join(FORMAT_SUFFIXES)}), else table."
)


class RichReporter:
    """Progress callbacks rendered as rich progress bars on stderr."""

    def __init__(self, console: Console):
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
            transient=False,
            disable=not console.is_terminal and os.environ.get("SODEF_PROGRESS") != "1",
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def start(self, task: str, total: int) -> None:
        if task in self.tasks:  # a running task started again: a new total, what is done stays (the plan's estimate)
            self.progress.update(self.tasks[task], total=total)
            return
        self.tasks[task] = self.progress.add_task(task, total=total, info="")

    def advance(self, task: str, n: int = 1, **metrics: Any) -> None:
        if task in self.tasks:
            info = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
            self.progress.update(self.tasks[task], advance=n, info=info)

    def end(self, task: str, **metrics: Any) -> None:
        if task in self.tasks:
            info = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
            tid = self.tasks[task]
            total = next(t.total for t in self.progress.tasks if t.id == tid)
            self.progress.update(tid, completed=total, info=info)

    def log(self, message: str) -> None:
        self.console.print(message, markup=False, highlight=False)


class _NullReporter:
    """Progress for ranks other than 0 under torchrun: silent."""

    def __enter__(self):
        from .phases import Reporter

        return Reporter()

    def __exit__(self, *exc):
        return None


def _reporter():
    from . import distributed

    return RichReporter(err_console) if distributed.is_main() else _NullReporter()


_FLAGS = {"head.dim": "--dim"}  # config keys with a command-line flag of their own, for error messages


def _handle(fn):
    """Map every failure to one line on stderr and an exit code, in one place."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except SodefError as exc:
            if _state["debug"]:
                traceback.print_exc()
            flag = _FLAGS.get(getattr(exc, "key", ""))  # library errors name config keys; the CLI adds its flag
            err_console.print(  # the message is text, not markup: "sodef-cli[export]" must print as written
                f"[bold red]error:[/] {escape(str(exc))}" + (f" (option {flag})" if flag else ""),
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted[/]: no partial output was left behind")
            raise typer.Exit(code=EXIT_INTERRUPTED) from None
        except Exception as exc:  # noqa: BLE001 - the last resort: never a bare traceback
            import torch

            if _state["debug"]:
                traceback.print_exc()
            if isinstance(exc, torch.cuda.OutOfMemoryError):
                msg = "out of GPU memory; lower --batch-size (attack) or --set feature_batch_size=... / phaseN.batch_size=... (harden)"
            else:
                msg = f"internal error: {type(exc).__name__}: {exc}" + (
                    "" if _state["debug"] else " (run with --debug for the traceback)"
                )
            err_console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=EXIT_RUNTIME) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", is_eager=True, callback=_version)
    ] = False,
) -> None:
    """sodef: SODEF hardening for timm models, with adaptive evaluation."""
    _state["debug"] = debug


def _print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=1, default=str) + "\n")
    sys.stdout.flush()


@app.command()
@_handle
def pretrain(
    model: Annotated[
        str | None, typer.Argument(help="timm model name, e.g. resnet18 or test_resnet (default: the recipe's model).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Output safetensors file.")] = Path("base.safetensors"),
    data: DataOpt = None,
    data_dir: DataDirOpt = None,
    download: DownloadOpt = None,
    recipe: RecipeOpt = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1)] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1)] = None,
    lr: Annotated[float | None, typer.Option("--lr", min=0.0)] = None,
    adversarial: Annotated[
        Adversarial | None,
        typer.Option("--adversarial", help=f"{or_list(PRETRAIN_ATTACKS)} (fast adversarial training, random start)."),
    ] = None,
    pretrained: Annotated[
        bool | None, typer.Option("--pretrained/--no-pretrained", help="Start from hub weights (needs the network).")
    ] = None,
    image_size: ImageSizeOpt = None,
    set_: SetOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Train or fine-tune a timm classifier for a data set and save it with its metadata."""
    from .config import PretrainConfig, parse_set_options, resolve
    from .pretrain import pretrain as run

    overrides: dict[str, Any] = {
        "model": model,
        "data": data,
        "data_dir": data_dir,
        "download": download,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "adversarial": adversarial.value if adversarial else None,
        "pretrained": pretrained,
        "image_size": image_size,
        "seed": seed,
        "device": device.value if device else None,
    }
    overrides.update(parse_set_options(set_))
    cfg = resolve(PretrainConfig, recipe=recipe, overrides=overrides)
    with RichReporter(err_console) as rep:
        summary = run(cfg, out, reporter=rep)
    if json_:
        _print_json(summary)
    else:
        _out_console().print(
            f"wrote {out}: {cfg.model} on {summary['data']['name']}, clean test accuracy "
            f"{100 * summary['test_clean_acc']:.1f}% (best epoch {summary['best_epoch']}/{cfg.epochs}, {summary['seconds']:.0f} s)"
        )


@app.command()
@_handle
def harden(
    model: Annotated[str | None, typer.Argument(help="timm model name, or a file made by `sodef pretrain`.")] = None,
    out: Annotated[Path, typer.Option("--out", help="Output safetensors file.")] = Path("hardened.safetensors"),
    data: DataOpt = None,
    data_dir: DataDirOpt = None,
    download: DownloadOpt = None,
    recipe: RecipeOpt = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint", help="Weights for a timm name: .safetensors, or .pth read with weights_only=True."
        ),
    ] = None,
    pretrained: Annotated[
        bool | None,
        typer.Option("--pretrained/--no-pretrained", help="Hub weights for a timm name (needs the network)."),
    ] = None,
    dim: Annotated[int | None, typer.Option("--dim", min=2, help="ODE state size n.")] = None,
    solver: Annotated[str | None, typer.Option("--solver", help=_SOLVER_HELP)] = None,
    t1: Annotated[float | None, typer.Option("--t1", help="Integration time T.")] = None,
    head: Annotated[
        HeadKind | None,
        typer.Option(
            "--head",
            help="sodef (projection -> ODE -> classifier) or linear (the model's own classifier, or a linear probe); "
            "default: linear with adversarial training, sodef with --adv-attack none.",
        ),
    ] = None,
    adv_attack: Annotated[
        TrainAttack | None,
        typer.Option(
            "--adv-attack",
            help=f"Adversarial training after the head is fitted: {or_list(TRAINING_ATTACKS)} (default {AdversarialConfig.attack}; "
            "none = the paper's method).",
        ),
    ] = None,
    adv_stages: Annotated[
        int | None,
        typer.Option(
            "--adv-stages",
            min=-1,
            help="Also train the last N backbone stages (timm's grouping; 0 = head only; -1 = all but the stem, the default).",
        ),
    ] = None,
    adv_epochs: Annotated[
        int | None, typer.Option("--adv-epochs", min=1, help="Epochs of adversarial training.")
    ] = None,
    image_size: ImageSizeOpt = None,
    set_: SetOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    no_check: Annotated[
        bool, typer.Option("--no-check", help="Skip the hardening guard (adaptive check on validation images).")
    ] = False,
    require_gain: Annotated[
        bool,
        typer.Option(
            "--require-gain",
            help="Exit 1 when the guard finds the hardened model significantly less robust than its base "
            "(exact McNemar p < 0.05); the file is still written and marked.",
        ),
    ] = False,
    require_significant_gain: Annotated[
        bool,
        typer.Option(
            "--require-significant-gain",
            help="Exit 1 unless the guard finds a significant gain (McNemar p < 0.05): stricter than --require-gain.",
        ),
    ] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run from OUT.resume (same options).")
    ] = False,
    json_: JsonOpt = False,
) -> None:
    """Harden a timm model and save it. By default: adversarial fine-tuning (N-FGSM) of its own classifier and every
    stage but the stem, keeping the most robust epoch within 1 point of its clean accuracy (the path the hardening
    ablation in the README measured to harden). --head sodef trains a SODEF head that way; --adv-attack none is the
    paper's method (SODEF head on the frozen extractor, no adversarial training)."""
    from .config import HardenConfig, parse_set_options, resolve
    from .harden import harden as run

    overrides: dict[str, Any] = {
        "model": model,
        "data": data,
        "data_dir": data_dir,
        "download": download,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "pretrained": pretrained,
        "image_size": image_size,
        "seed": seed,
        "device": device.value if device else None,
        "head.dim": dim,
        "head.solver": solver,
        "head.t1": t1,
        "head.kind": head.value if head else None,
        "adversarial.attack": adv_attack.value if adv_attack else None,
        "adversarial.stages": adv_stages,
        "adversarial.epochs": adv_epochs,
    }
    if no_check:
        overrides["check.enabled"] = False
    if require_gain:
        overrides["check.require_gain"] = True
    if require_significant_gain:
        overrides["check.require_significant_gain"] = True
    overrides.update(parse_set_options(set_))
    cfg = resolve(HardenConfig, recipe=recipe, overrides=overrides)
    if not cfg.model:
        raise UsageError("no MODEL given and the recipe names none")
    from . import distributed

    distributed.init_from_env(cfg.device)
    try:
        with _reporter() as rep:
            summary = run(cfg, out, reporter=rep, resume=resume)
    except KeyboardInterrupt:
        from .resume import Checkpoint

        kept = Checkpoint.path_for(out)
        if not kept.exists():
            raise
        err_console.print(
            f"[bold red]interrupted[/]: {out} was not written; {kept} holds the finished stages and epochs: "
            "rerun the same command with --resume to continue",
            highlight=False,
        )
        raise typer.Exit(code=EXIT_INTERRUPTED) from None
    if not distributed.is_main():
        return
    if json_:
        _print_json(summary)
    else:
        from .report import render_harden_summary

        _out_console().print(render_harden_summary(summary))
    check = summary.get("check") or {}
    rule = summary.get("require_gain_failed") or (
        (check.get("require_gain_rule") or "--require-gain") if check.get("require_gain_failed") else None
    )
    if rule:  # decided by harden, stored in the file
        guard = f"; the guard: {check['recommendation']}" if check.get("recommendation") else ""
        err_console.print(f"[bold red]{rule}[/] (file written, marked in its metadata){guard}", highlight=False)
        raise typer.Exit(code=EXIT_RUNTIME)


@app.command()
@_handle
def attack(
    models: Annotated[
        list[str],
        typer.Argument(
            help="Models to attack on the same samples: hardened files (`sodef harden`), base files "
            "(`sodef pretrain`), timm names with --checkpoint, or local-dir:/hf-hub: names.",
            show_default=False,
            metavar="MODEL...",
        ),
    ],
    data: DataOpt = None,
    data_dir: DataDirOpt = None,
    download: DownloadOpt = None,
    suite: Annotated[Suite, typer.Option("--suite", help=_SUITE_HELP)] = Suite("adaptive"),
    attacks: Annotated[
        str | None, typer.Option("--attacks", help="Comma-separated attack names instead of a suite.")
    ] = None,
    norm: Annotated[Norm, typer.Option("--norm", help="Threat model.")] = Norm("Linf"),
    eps: Annotated[
        str, typer.Option("--eps", help="Budget(s) in [0,1] pixel units, e.g. 8/255 or 4/255,8/255,16/255.")
    ] = "8/255",
    n: Annotated[
        int,
        typer.Option(
            "--n",
            "--samples",
            min=1,
            help="Test samples, drawn class by class with --seed (--samples under torchrun, whose parser takes --n).",
        ),
    ] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Sample selection and attack seed.")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 256,
    steps: Annotated[
        int | None,
        typer.Option(
            "--steps",
            min=1,
            help="Override the iterations of every iterative attack (recorded; lower than reference = weaker).",
        ),
    ] = None,
    queries: Annotated[
        int | None, typer.Option("--queries", min=1, help="Override Square's query budget (reference 5000).")
    ] = None,
    all_samples: Annotated[
        bool,
        typer.Option(
            "--all-samples",
            help="Run every attack on every clean-correct sample (per-attack figures) instead of the cascade.",
        ),
    ] = False,
    no_checks: Annotated[
        bool, typer.Option("--no-checks", help="Skip the large-eps and batch-composition checks.")
    ] = False,
    plain_cpu: Annotated[
        bool,
        typer.Option(
            "--plain-cpu",
            help="On CPU, run every pass in plain eager PyTorch: no channels-last weights, no TorchScript traces for the no-gradient forwards (Square's queries, clean predictions, judging).",
        ),
    ] = False,
    checkpoint: Annotated[
        list[Path] | None,
        typer.Option(
            "--checkpoint",
            help="Weights for a timm-name MODEL (.safetensors, or .pth read with weights_only=True); repeat it for several timm names, in order.",
        ),
    ] = None,
    reference: Annotated[
        str | None,
        typer.Option(
            "--reference",
            help="The model the others are compared with (its label or argument; default: the first; a hardened file alone: its own base).",
        ),
    ] = None,
    transfer_from: Annotated[
        str | None,
        typer.Option(
            "--transfer-from",
            help="Source model of every other model's transfer attacks (default: a hardened file's own base, else the first other model).",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan (attacks per model, samples, estimated time) and exit.")
    ] = False,
    image_size: ImageSizeOpt = None,
    device: DeviceOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Results JSON (atomic; rerun with the same file to resume).")
    ] = None,
    save_adversarial: Annotated[
        Path | None,
        typer.Option(
            "--save-adversarial",
            help="Directory for each model's adversarial examples: the first attack's example that fooled each sample, "
            "as uint8 (float32 where rounding undoes it) in one safetensors file, and a PNG grid of the first 16; "
            "median and max Linf/L2 norms per attack go into the results and the report. Samples fooled in an "
            "earlier session of a resumed run are not saved.",
        ),
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Attack one or several models over the same samples and report the worst case of each.

    A hardened file alone is compared with its own base; several models are compared with --reference."""
    from .config import parse_fraction
    from .data import load_data
    from .evaluate import AttackConfig, run_comparison, run_evaluation, summarize, summarize_comparison
    from .models import check_comparable, describe_model
    from .runtime import resolve_device

    names = tuple(a.strip() for a in attacks.split(",") if a.strip()) if attacks else ()
    eps_list = tuple(parse_fraction(e) for e in eps.split(",") if e.strip())
    cfg = AttackConfig(
        suite=suite.value,
        attacks=names,
        norm=norm.value,
        eps=eps_list,
        n=n,
        seed=seed,
        batch_size=batch_size,
        all_samples=all_samples,
        steps=steps,
        queries=queries,
        checks=not no_checks,
        fast_cpu=not plain_cpu,
    )
    from . import distributed

    infos = [describe_model(m) for m in models]
    checkpoints = [str(c) for c in checkpoint or []]
    n_timm = sum(1 for i in infos if i["kind"] == "timm")
    if checkpoints and len(checkpoints) != n_timm:
        raise UsageError(
            f"{len(checkpoints)} --checkpoint given for {n_timm} timm-name model(s); give one per timm name, in order"
        )
    single = len(models) == 1 and infos[0]["kind"] == "hardened" and reference is None and transfer_from is None
    check_comparable(models, infos)
    sized = [i for i in infos if i["input_size"]]
    distributed.init_from_env(device.value if device else "auto")
    dev = resolve_device(device.value if device else "auto")
    if not data:
        raise UsageError("--data is required (the data the models were trained or hardened on, e.g. demo)")
    chans = sized[0]["in_chans"] if sized else None
    size = image_size or (sized[0]["input_size"][-1] if sized else 0)
    ds = load_data(data, data_dir=data_dir or "", download=bool(download), channels=chans, image_size=size)
    with _reporter() as rep:
        if single:
            doc = run_evaluation(
                models[0],
                ds,
                cfg,
                out=out,
                device=distributed.device_for_rank(dev),
                reporter=rep,
                data_spec=data,
                dry_run=dry_run,
                meta=infos[0]["meta"],
                save_adversarial=save_adversarial,
            )  # the metadata read above, not read again
        else:
            cands = _candidates(models, infos, checkpoints, ds, distributed.device_for_rank(dev))
            ref = _model_label(reference, models, cands, "--reference") if reference else cands[0].label
            src = _model_label(transfer_from, models, cands, "--transfer-from") if transfer_from else None
            doc = run_comparison(
                cands,
                ds,
                cfg,
                reference=ref,
                transfer_from=src,
                out=out,
                device=distributed.device_for_rank(dev),
                reporter=rep,
                data_spec=data,
                dry_run=dry_run,
                save_adversarial=save_adversarial,
            )
    if not distributed.is_main():
        return
    if dry_run:
        if json_:
            _print_json(doc["plan"])
        return
    summary = summarize(doc) if single else summarize_comparison(doc)
    if out:
        summary["out"] = str(out)
    if json_:
        _print_json(summary)
    else:
        from .report import render_results

        _out_console().print(render_results([doc], labels=[out.name] if out else None))


def _candidates(models: list[str], infos: list[dict], checkpoints: list[str], ds, device) -> list:
    """Load every MODEL with a unique label (its file name, else its path; a timm name as given)."""
    from .models import load_candidate

    names = [Path(m).name if i["kind"] != "timm" else m for m, i in zip(models, infos)]
    labels = [
        nm if names.count(nm) == 1 else (m if i["kind"] != "timm" else f"{nm} #{j + 1}")
        for j, (nm, m, i) in enumerate(zip(names, models, infos))
    ]
    if len(set(labels)) != len(labels):
        raise UsageError(
            "the same model is given twice: " + ", ".join(sorted({lab for lab in labels if labels.count(lab) > 1}))
        )
    ckpts = iter(checkpoints)
    return [
        load_candidate(
            m, lab, data=ds, checkpoint=next(ckpts, "") if i["kind"] == "timm" else "", device=device, info=i
        )
        for m, lab, i in zip(models, labels, infos)
    ]


def _model_label(value: str, models: list[str], cands: list, option: str) -> str:
    """The label of the model an option names (by label or by the argument as given)."""
    for m, c in zip(models, cands):
        if value in (c.label, m):
            return c.label
    raise UsageError(f"{option} {value!r} is not among the models ({', '.join(c.label for c in cands)})")


@app.command()
@_handle
def report(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="Results JSON files from `sodef attack` (shown side by side), or one .safetensors file, hardened or base (its model card).",
            show_default=False,
            metavar="FILE",
        ),
    ],
    format_: Annotated[ReportFormat | None, typer.Option("--format", help=_FORMAT_HELP)] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the report to this file (atomically) instead of stdout.")
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help="Model card: test images for the stability diagnostics (default: the hardening data when it is here).",
        ),
    ] = None,
    data_dir: DataDirOpt = None,
    n: Annotated[
        int | None,
        typer.Option("--n", min=1, help="Model card: number of test images for the diagnostics (default 512)."),
    ] = None,
    device: DeviceOpt = None,
) -> None:
    """Render attack results (several files side by side) or the model card of a hardened or base file."""
    from .io import read_json
    from .report import card_data, render, results_data

    fmt = format_.value if format_ else (FORMAT_SUFFIXES.get(out.suffix.lower(), "table") if out else "table")
    if any(f.suffix == ".safetensors" for f in files):
        if len(files) > 1:
            raise UsageError(
                "a model card takes exactly one .safetensors file; compare runs by passing their results JSON files"
            )
        from .diagnostics import card_diagnostics, default_card_data
        from .io import BASE_FORMAT
        from .models import describe_model
        from .report import base_card_data
        from .runtime import resolve_device

        meta = describe_model(str(files[0]))["meta"]
        if meta["format"] == BASE_FORMAT:  # a `sodef pretrain` file: its card comes from its metadata alone
            if data or data_dir or n is not None:
                raise UsageError(
                    "--data, --data-dir and --n apply to the card of a hardened file (stability diagnostics), not a base file"
                )
            _emit(render(base_card_data(meta, path=str(files[0])), fmt), fmt, out)
            return
        spec = data or default_card_data(meta)
        diag, notes = None, []
        has_ode = ((meta.get("config") or {}).get("head") or {}).get(
            "kind", "sodef"
        ) == "sodef"  # a linear head has no ODE to diagnose
        if has_ode and spec:
            diag = card_diagnostics(
                files[0],
                spec,
                n=n or 512,
                data_dir=data_dir or "",
                device=resolve_device(device.value if device else "auto"),
            )
        elif has_ode:
            notes.append(
                f"stability diagnostics not computed: the hardening data {(meta.get('config') or {}).get('data')!r} "
                "is not available here; pass --data with test images of the same classes"
            )
        doc = card_data(meta, path=str(files[0]), diagnostics=diag, notes=notes)
    else:
        if data or data_dir or n is not None or device:
            raise UsageError(
                "--data, --data-dir, --n and --device apply to a model card (a .safetensors file), not to results files"
            )
        names = [f.name for f in files]
        labels = names if len(set(names)) == len(names) else [str(f) for f in files]
        doc = results_data([read_json(f) for f in files], labels=labels)
    _emit(render(doc, fmt), fmt, out)


@app.command()
@_handle
def export(
    file: Annotated[Path, typer.Argument(help="A hardened file (`sodef harden`).", show_default=False, metavar="FILE")],
    to: Annotated[
        str,  # checked by sodef_cli.export against EXPORT_TARGETS: one line naming the targets, not Typer's box
        typer.Option(
            "--to",
            metavar=f"<{'|'.join(EXPORT_TARGETS)}>",
            help=f"{or_list(EXPORT_TARGETS)}. timm: a safetensors state dict plain timm loads (a linear head only); "
            "hub: a folder for timm's local-dir:/hf-hub: loaders with config.json and a README.md model card "
            "(a linear head only); onnx: the whole model, [0,1] images in, normalization and a fixed-step ODE "
            "unrolled inside the graph (needs the export extra: onnx, onnxruntime).",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Output file (timm: .safetensors; onnx) or folder (hub).", show_default=False)
    ],
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing --out (a folder only if an earlier hub export).")
    ] = False,
    results: Annotated[
        Path | None,
        typer.Option("--results", help="Hub: a `sodef attack` results JSON of FILE, shown in the model card."),
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Export a hardened model for timm, the Hugging Face Hub or ONNX; the written model is read back and checked
    against the hardened one before it replaces anything. A SODEF head (an ODE) exports to onnx only."""
    from .export import export as run

    summary = run(file, to=to, out=out, force=force, results=results)
    if json_:
        _print_json(summary)
        return
    c = summary["check"]
    _out_console().print(
        f"wrote {summary['out']} ({summary['to']}): read back by {c['by']}, max |logit diff| {c['max_abs_diff']:.2g} "
        f"on {c['images']} random images (tolerance {c['tolerance']:.2g})\nload: {summary['load']}\ninput: {summary['input']}"
        + (f"\npublish: {summary['publish']}" if summary.get("publish") else ""),
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def _emit(rendered, fmt: str, out: Path | None) -> None:
    """Write a rendered report to ``out`` (atomically) or stdout (plain text when piped)."""
    from .io import atomic_write_text
    from .report import to_text

    if out is not None:
        atomic_write_text(out, rendered if isinstance(rendered, str) else to_text(rendered, width=100))
        err_console.print(f"wrote {out} ({fmt})", highlight=False)
    elif isinstance(rendered, str):
        sys.stdout.write(rendered)
        sys.stdout.flush()
    else:
        console = _out_console()
        if console.is_terminal:
            console.print(rendered)
        else:  # piped: plain text, no trailing padding
            sys.stdout.write(to_text(rendered, width=console.width))
            sys.stdout.flush()


def run() -> None:
    """Console-script entry point."""
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")  # never hang on an unreachable hub
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    try:
        app()
    finally:
        from . import distributed

        distributed.shutdown()
