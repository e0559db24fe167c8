"""Shared helpers for the benchmark scripts: timing, device naming, JSON output, RESULTS.md rows.

Timing protocol (the same for every benchmark): all candidates are timed in one process, interleaved
round-robin (A, B, C, A, B, C, ...) so that load from other processes hits them alike; each candidate's
figure is the median over ``repeats`` rounds of the mean time of ``inner`` back-to-back calls, with
``inner`` calibrated once so that a round lasts at least ``min_round_s``. On CUDA every round is bracketed
by ``torch.cuda.synchronize``. Ratios are what the benchmarks report; absolute times are written to
RESULTS.md only for GPU runs (CPU absolute times depend on whatever else the machine is doing).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run as `python benchmarks/x.py` from a checkout without installing
    sys.path.insert(0, str(ROOT))

RESULTS_MD = HERE / "RESULTS.md"
OUT_DIR = HERE / "out"

RESULTS_HEADER = """# Benchmark results

One row per benchmark run, appended by `benchmarks/*.py` (see `benchmarks/_common.py` for the timing
protocol: candidates interleaved in one process, median of repeated rounds).

Columns:
- **date**: UTC time of the run.
- **benchmark**: the script and its main options.
- **device**: CPU model name (from /proc/cpuinfo) with the torch thread count, or the CUDA device name.
- **versions**: torch / torchdiffeq / timm (and the git commit of the checkout when known).
- **figures**: the run's results. Ratios and speedups compare numbers measured in the same run on the
  same machine. Absolute times appear only for GPU runs. `regularizer.py`: `per_point_speedup` =
  (reference ms per point) / (project ms per point), reference = per-sample
  `torch.autograd.functional.jacobian` loop; `agree` = values and parameter gradients within 1e-5.
  `inference.py`: `x` = hardened / base forward time at the given batch, `acc` = clean test accuracy (%),
  `agree` = share of test predictions equal to the stored (adaptive-solver) model's, `nfe` = ODE function
  evaluations per forward.
  `adjoint_gradients.py`: cosine similarity and norm ratio (median over batches) of phase 3's gradient of f's
  weights through `odeint_adjoint` vs direct backprop through the same solver and tolerances, and vs direct
  backprop at rtol = atol = 1e-7.

| date | benchmark | device | versions | figures |
|---|---|---|---|---|
"""


# ----------------------------------------------------------------------------------------------------
# devices and versions


def resolve_device(spec: str) -> torch.device:
    from sodef_cli.runtime import resolve_device as _resolve

    return _resolve(spec)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model_name()} ({torch.get_num_threads()} threads)"


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except Exception:
        return None
    return getattr(mod, "__version__", "unknown")


def git_commit() -> str | None:
    try:
        import subprocess

        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except Exception:
        return None


def environment(device: torch.device) -> dict[str, Any]:
    env = {
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "torchdiffeq": _version("torchdiffeq"),
        "timm": _version("timm"),
        "sodef_cli": _version("sodef_cli"),
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "git_commit": git_commit(),
    }
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
    return env


def versions_text(env: dict[str, Any]) -> str:
    parts = [f"torch {env['torch']}"]
    if env.get("cuda"):
        parts.append(f"CUDA {env['cuda']}")
    if env.get("torchdiffeq"):
        parts.append(f"torchdiffeq {env['torchdiffeq']}")
    if env.get("timm"):
        parts.append(f"timm {env['timm']}")
    if env.get("git_commit"):
        parts.append(f"@{env['git_commit']}")
    return ", ".join(parts)


# ----------------------------------------------------------------------------------------------------
# command line


def add_common_args(ap, *, default_out: str, default_repeats: int = 7) -> None:
    """The options every benchmark shares."""
    ap.add_argument("--device", default="cpu", help="cpu | cuda[:N] | auto (default cpu)")
    ap.add_argument(
        "--repeats",
        type=int,
        default=default_repeats,
        help=f"timed rounds per candidate, interleaved; the median is reported (default {default_repeats})",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for torch (default 1: the timed ops are small, and on a shared machine extra "
        "OpenMP threads spin against other jobs and distort them; 0 = torch's default)",
    )
    ap.add_argument(
        "--out", default=str(OUT_DIR / default_out), help=f"JSON output path (default benchmarks/out/{default_out})"
    )
    ap.add_argument(
        "--results",
        default=str(RESULTS_MD),
        help="markdown table to append a row to ('' = none; default benchmarks/RESULTS.md)",
    )
    ap.add_argument("--json", action="store_true", help="print the JSON document instead of the table")


def setup(args) -> torch.device:
    """Resolve --device and apply --threads; validates --repeats."""
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    from sodef_cli.errors import SodefError

    try:
        device = resolve_device(args.device)
    except SodefError as exc:
        raise SystemExit(f"error: {exc}") from None
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    return device


# ----------------------------------------------------------------------------------------------------
# timing


def interleaved_timings(
    fns: dict[str, Callable[[], Any]],
    *,
    device: torch.device,
    repeats: int = 7,
    warmup: int = 2,
    min_round_s: float = 0.2,
) -> dict[str, dict[str, Any]]:
    """Time each callable in ``fns``, interleaved. Returns name -> {median_s, seconds (per round), inner}."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    for fn in fns.values():
        for _ in range(max(warmup, 1)):
            fn()
        sync(device)
    inner: dict[str, int] = {}
    for name, fn in fns.items():  # calibrate: enough calls per round to last min_round_s
        t0 = time.perf_counter()
        fn()
        sync(device)
        dt = max(time.perf_counter() - t0, 1e-7)
        inner[name] = max(1, math.ceil(min_round_s / dt))
    per_round: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            n = inner[name]
            sync(device)
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            sync(device)
            per_round[name].append((time.perf_counter() - t0) / n)
    return {
        name: {"median_s": statistics.median(s), "seconds": s, "inner": inner[name]} for name, s in per_round.items()
    }


def ms(seconds: float) -> float:
    return seconds * 1e3


# ----------------------------------------------------------------------------------------------------
# output


def write_json(doc: dict[str, Any], path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return p


def append_results(benchmark: str, env: dict[str, Any], figures: str, *, path: str | Path = RESULTS_MD) -> Path:
    """Append one row to RESULTS.md, writing the header first when the file is missing or empty."""
    p = Path(path)
    if not p.is_file() or not p.read_text().strip():
        p.write_text(RESULTS_HEADER)
    date = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    cells = [date, benchmark, env["device"], versions_text(env), figures]
    row = "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |\n"
    text = p.read_text()
    if not text.endswith("\n"):
        text += "\n"
    p.write_text(text + row)
    return p


def choice_list(text: str, choices, what: str) -> list[str]:
    """The comma-separated names of ``text``, each one of ``choices``; SystemExit naming the unknown ones."""
    names = [a.strip() for a in text.split(",") if a.strip()]
    unknown = [a for a in names if a not in choices]
    if unknown or not names:
        raise SystemExit(f"unknown {what}(s) {unknown}; choose from {', '.join(choices)}")
    return names


def run_sodef(args: list[str], env: dict, log: str | Path | None = None) -> tuple[dict, float, float]:
    """Run ``python -m sodef_cli ARGS --json`` as its own process: (parsed stdout, wall seconds, peak RSS MiB of it alone).

    ``log``: a file that receives the process's stderr (its progress) as it runs.
    """
    import os
    import subprocess
    import tempfile

    with tempfile.TemporaryFile("w+") as out, open(log, "w+") if log else tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "sodef_cli", *args], stdout=out, stderr=err, env=env, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        code = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        if code != 0:
            raise SystemExit(f"stage failed ({code}): sodef {' '.join(args)}\n{err.read()[-2000:]}")
        return json.loads(out.read()), wall, usage.ru_maxrss / 1024


def format_table(header: list[str], rows: list[list[Any]]) -> str:
    """A plain fixed-width text table for the console."""
    cells = [[str(c) for c in header]] + [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
