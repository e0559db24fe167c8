"""``sodef export``: a hardened file leaves the tool as a timm state dict, a Hugging Face Hub folder or an ONNX graph.

- ``timm``: one safetensors state dict of the hardened model (tuned backbone stages in place, a trained linear head
  as timm's own classifier) that plain timm loads with no sodef_cli installed::

      timm.create_model(ARCH, num_classes=N, pretrained=True, pretrained_cfg_overlay=dict(file=OUT, num_classes=N))

  timm's model takes *normalized* images (the file's mean/std, in the printed line and in ``hub``'s config.json).
- ``hub``: a folder ``timm.create_model("local-dir:OUT", pretrained=True)`` reads (``model.safetensors``,
  ``config.json`` with the preprocessing) and a ``README.md`` model card; ``hf upload USER/NAME OUT .`` publishes it.
- ``onnx``: the whole model, normalization inside, [0,1] images in, dynamic batch; a SODEF head's fixed-step solver
  is unrolled into the graph (an adaptive solver has no fixed graph: refused).

A SODEF head is an ODE, which timm cannot express: ``timm`` and ``hub`` refuse it (exit 2) and name ``onnx``.
Every export is checked before it replaces anything: the written artifact is read back the way its users read it
(timm, timm's ``local-dir:``, onnxruntime) and its logits are compared with the hardened model's on random images;
a difference above the tolerance writes nothing. Outputs are built beside ``--out`` and renamed into place, so an
error or Ctrl-C leaves no partial file or folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .backbone import BaseClassifier, ModelSpec, check_shapes, hub_config
from .config import HeadConfig
from .errors import ModelFileError, OutputError, SodefError, UsageError
from .io import _file_mode, read_json, sha256_file
from .models import hardened_meta, load_pair, shipped_head_config
from .registry import EXPORT_TARGETS, SOLVERS, or_list

__all__ = ["export", "timm_state_dict", "hub_config_json", "model_card", "CHECK_IMAGES", "TOLERANCE"]

CHECK_IMAGES = 8  # random [0,1] images the written artifact is checked on
TOLERANCE = 1e-4  # most |logit difference| accepted, relative to max(1, largest |logit|)
HUB_FILES = ("model.safetensors", "config.json", "README.md")
_INSTALL = "pip install 'sodef-cli[export]'"
_NO_TIMM_ODE = (
    "{path} has a SODEF head (a neural ODE), which a timm model cannot express; export the whole model with --to onnx"
)


def export(
    path: str | Path, *, to: str, out: str | Path, force: bool = False, results: str | Path | None = None
) -> dict[str, Any]:
    """Export the hardened file ``path`` as ``to`` (timm, hub or onnx) to ``out``; returns what was written and checked.

    Args:
        path: a file written by ``sodef harden``.
        to: ``timm``, ``hub`` or ``onnx``.
        out: the file (timm: ``.safetensors``; onnx) or folder (hub) to write.
        force: replace an existing ``out`` (a folder only when it is an earlier ``--to hub`` export).
        results: hub only: a ``sodef attack`` results JSON of this file, whose figures the card shows.

    Raises:
        UsageError: an unknown target, an existing ``out`` without ``force``, a model the target cannot express.
        ModelFileError: ``path`` is not a complete hardened file. ResultsError: an unreadable ``results``.
        SodefError: the written artifact does not reproduce the model's logits (nothing is written then).
    """
    if to not in EXPORT_TARGETS:
        raise UsageError(f"unknown export target {to!r}; --to must be {or_list(EXPORT_TARGETS)}")
    path, out = Path(path), Path(out)
    if results is not None and to != "hub":
        raise UsageError("--results applies to --to hub (its model card), not to --to " + to)
    if to == "timm" and out.suffix != ".safetensors":
        raise UsageError(f"--to timm writes a safetensors file: give --out a .safetensors name, not {out.name!r}")
    _check_out(out, force, folder=to == "hub")
    meta = hardened_meta(path)  # ModelFileError for anything but a complete hardened file, before any tensor is read
    head = shipped_head_config(meta)  # what the head is and how it solves its ODE: refusals before loading weights
    if head.kind == "sodef" and to != "onnx":
        raise UsageError(_NO_TIMM_ODE.format(path=path))
    if head.kind == "sodef" and SOLVERS.require(head.solver, "head.solver").adaptive:
        raise _adaptive_refusal(path, meta, head)
    doc = _results_for(Path(results), path) if results is not None else None
    model = load_pair(path, meta=meta)[1]
    if to == "onnx":
        return _to_onnx(path, model, meta, out)
    state = timm_state_dict(model, meta, path=path)
    if to == "timm":
        return _to_timm(path, model, meta, state, out)
    return _to_hub(path, model, meta, state, out, doc, results)


# ----------------------------------------------------------------------------------------------------
# outputs: checked first, built beside, renamed into place


def _check_out(out: Path, force: bool, *, folder: bool) -> None:
    if not (out.exists() or out.is_symlink()):
        return
    if not force:
        raise UsageError(f"{out} exists; pass --force to replace it")
    if out.is_dir() and not folder:
        raise UsageError(f"{out} is a folder; give --out a file name")
    if out.is_dir() and not _is_hub_export(out):
        raise UsageError(f"refusing to replace the folder {out}: it is not an earlier `sodef export --to hub` folder")


def _is_hub_export(folder: Path) -> bool:
    """An empty folder, or one holding exactly the files a hub export writes."""
    names = {p.name for p in folder.iterdir()}
    return not names or (names == set(HUB_FILES) and all((folder / n).is_file() for n in names))


@contextlib.contextmanager
def _staged(out: Path) -> Iterator[Path]:
    """A path named like ``out`` in a fresh hidden folder beside it; on success it replaces ``out`` (a file or a
    folder), and the folder (with whatever ``out`` was before) is removed either way."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".export", dir=out.parent))
    except OSError as exc:
        raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from None
    try:
        new = stage / out.name
        yield new
        try:
            for f in [new, *new.rglob("*")] if new.is_dir() else [new]:
                if f.is_file():  # mkstemp-like 0600 from some writers: the mode a plain open() gives
                    os.chmod(f, _file_mode(out / f.relative_to(new) if new.is_dir() else out))
            if out.is_dir() and not out.is_symlink():
                os.replace(out, stage / ".replaced")  # removed with the stage below
            elif (out.exists() or out.is_symlink()) and new.is_dir():
                out.unlink()
            os.replace(new, out)
        except OSError as exc:
            raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------
# the timm state dict


def _classifier_names(model: nn.Module) -> list[str]:
    """State-dict names of the parameters of timm's classifier (``get_classifier()``) in ``model``."""
    clf = model.get_classifier()
    own = [id(p) for p in clf.parameters()]
    return [n for n, p in model.named_parameters() if id(p) in own]


def _timm_model(spec: ModelSpec, num_classes: int, device: str | torch.device = "meta") -> nn.Module:
    """timm's model of ``spec`` with a ``num_classes`` classifier (on the meta device: shapes and names only)."""
    from .backbone import create_timm

    with torch.device(device):
        return create_timm(spec.timm_name, num_classes=num_classes, in_chans=spec.in_chans, kwargs=spec.model_kwargs)


def timm_state_dict(model: nn.Module, meta: dict, *, path: str | Path = "FILE") -> dict[str, torch.Tensor]:
    """The hardened model (``models.load_pair``'s second model) as the state dict of timm's ``ARCH`` with
    ``num_classes`` classes: the backbone with its tuned tensors, and a linear head (``linear.*``, or the baseline's
    probe) as timm's classifier.

    Raises:
        UsageError: a SODEF head (an ODE: timm has no such layer), or a linear head that does not have the shape of
            timm's classifier for the architecture.
    """
    from .head import has_ode

    if has_ode(model) or not isinstance(model, BaseClassifier):
        raise UsageError(_NO_TIMM_ODE.format(path=path))
    spec, k = model.spec, int(meta["num_classes"])
    state = dict(model.backbone.state_dict())
    target = _timm_model(spec, k)
    expected = {n: v.shape for n, v in target.state_dict().items()}
    if model.probe is not None:
        clf, probe = target.get_classifier(), model.probe
        names = _classifier_names(target)
        fits = (
            isinstance(clf, nn.Linear)
            and clf.weight.shape == probe.weight.shape
            and (clf.bias is None) == (probe.bias is None)
        )
        if not fits:
            raise UsageError(
                f"{path}: its linear head ({probe.in_features} features -> {k} classes) cannot be expressed as the "
                f"classifier of timm {spec.timm_name} ({type(clf).__name__}); export the whole model with --to onnx"
            )
        for n in _classifier_names(model.backbone):  # the backbone's own classifier (another size) is replaced
            state.pop(n, None)
        weight = next(n for n in names if n.endswith("weight"))
        state[weight] = probe.weight.detach()
        if probe.bias is not None:
            state[next(n for n in names if n.endswith("bias"))] = probe.bias.detach()
    elif int(spec.num_classes) != k:
        raise ModelFileError(f"{path}: its backbone classifies {spec.num_classes} classes, its metadata {k}")
    try:
        check_shapes(expected, state, f"the hardened weights do not fit timm {spec.timm_name} with {k} classes")
    except ModelFileError as exc:
        raise UsageError(f"{path}: {exc}; export the whole model with --to onnx") from None
    return {n: v.detach().cpu().contiguous() for n, v in state.items()}


def _timm_kwargs(spec: ModelSpec) -> dict[str, Any]:
    """The ``timm.create_model`` arguments besides ``num_classes`` that rebuild the architecture."""
    return {**({"in_chans": spec.in_chans} if spec.in_chans != 3 else {}), **spec.model_kwargs}


def _load_line(spec: ModelSpec, k: int, file: str) -> str:
    extra = "".join(f", {a}={v!r}" for a, v in _timm_kwargs(spec).items())
    return (
        f"timm.create_model({spec.timm_name!r}, num_classes={k}{extra}, pretrained=True, "
        f"pretrained_cfg_overlay=dict(file={file!r}, num_classes={k}))"
    )


def _preprocessing(spec: ModelSpec) -> str:
    c, h, w = spec.input_size
    kind = "RGB" if c == 3 else f"{c}-channel"
    return f"{kind} {h}x{w} images in [0,1], normalized with mean {spec.mean} and std {spec.std}"


# ----------------------------------------------------------------------------------------------------
# checking what was written


def _check_images(spec: ModelSpec) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(CHECK_IMAGES, *spec.input_size, generator=g)


def _compare(model: nn.Module, x: torch.Tensor, got: torch.Tensor, by: str, out: Path) -> dict[str, Any]:
    """Compare ``got`` (the exported model's logits on ``x``) with ``model``'s; SodefError above the tolerance."""
    with torch.no_grad():
        want = model(x).float()
    got = torch.as_tensor(got).float()
    if got.shape != want.shape:
        raise SodefError(f"the exported model gives outputs of shape {list(got.shape)}, not {list(want.shape)}")
    diff = (got - want).abs().max().item()
    tol = TOLERANCE * max(1.0, want.abs().max().item())
    if not diff <= tol:
        raise SodefError(
            f"the export read back by {by} gives logits {diff:.3g} away from the hardened model's on "
            f"{len(x)} random images (tolerance {tol:.3g}); {out} was not written"
        )
    return {"by": by, "images": len(x), "max_abs_diff": diff, "tolerance": tol}


@contextlib.contextmanager
def _read_back(out: Path, failure: str = "the export does not load back") -> Iterator[None]:
    """Loading the export the way its users do (or writing it with another library): timm's info logs silenced (the
    command prints its own line), and a failure there is this export's failure, one line, with nothing written."""
    logger = logging.getLogger("timm")
    saved = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    except SodefError:
        raise
    except Exception as exc:  # noqa: BLE001 - timm and onnxruntime raise many types; none may escape as a traceback
        why = " ".join(str(exc).split())[:300]  # one line: torch's load errors spread over several
        raise SodefError(f"{failure} ({type(exc).__name__}: {why}); {out} was not written") from None
    finally:
        logger.setLevel(saved)


def _normalized(plain: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` normalized with the mean/std timm resolves for ``plain`` (its pretrained config)."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=plain)
    mean = torch.tensor(cfg["mean"], dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(cfg["std"], dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean) / std


# ----------------------------------------------------------------------------------------------------
# the three targets


def _to_timm(path: Path, model: nn.Module, meta: dict, state: dict, out: Path) -> dict:
    import timm
    from safetensors.torch import save_file

    spec, k = model.spec, int(meta["num_classes"])
    x = _check_images(spec)
    with _staged(out) as new:
        save_file(state, str(new), metadata={"format": "pt"})
        with _read_back(out), torch.no_grad():
            plain = timm.create_model(
                spec.timm_name,
                num_classes=k,
                pretrained=True,
                pretrained_cfg_overlay=dict(file=str(new), num_classes=k),
                **_timm_kwargs(spec),
            ).eval()
            got = plain(model.normalize(x))  # the file's mean/std: the load line's users normalize with them
        check = _compare(model, x, got, "timm", out)
    return {
        "to": "timm",
        "file": str(path),
        "out": str(out),
        "check": check,
        "load": _load_line(spec, k, str(out)),
        "input": _preprocessing(spec),
    }


def hub_config_json(spec: ModelSpec, meta: dict) -> dict[str, Any]:
    """The ``config.json`` timm's ``local-dir:`` / ``hf-hub:`` loader reads (``timm.models._hub._parse_model_cfg``):
    the architecture, the classes and their names, the arguments that rebuild it and the preprocessing."""
    k = int(meta["num_classes"])
    target = _timm_model(spec, k)
    src = hub_config(spec.timm_name)
    first_conv, classifier = src.get("first_conv"), src.get("classifier")
    pretrained_cfg = {
        "input_size": list(spec.input_size),
        "mean": list(spec.mean),
        "std": list(spec.std),
        "interpolation": "bilinear",  # how the data was resized (sodef_cli.data: bilinear, the whole image)
        "crop_pct": 1.0,
        "crop_mode": "center",
        "num_classes": k,
        "fixed_input_size": bool(src.get("fixed_input_size", False)),
        **({"first_conv": first_conv} if first_conv else {}),
        **({"classifier": classifier} if classifier else {}),
    }
    cfg: dict[str, Any] = {
        "architecture": spec.timm_name.split(".")[0],
        "num_classes": k,
        "num_features": int(getattr(target, "num_features", 0)),
        "label_names": list(meta["classes"]),
        "pretrained_cfg": pretrained_cfg,
    }
    args = _timm_kwargs(spec)
    if args:
        cfg["model_args"] = args
    return cfg


def _to_hub(path: Path, model: nn.Module, meta: dict, state: dict, out: Path, doc, results) -> dict:
    import timm
    from safetensors.torch import save_file

    spec = model.spec
    x = _check_images(spec)
    card = model_card(meta, path=path, results=doc, results_name=Path(results).name if results else None)
    with _staged(out) as new:
        new.mkdir()
        save_file(state, str(new / "model.safetensors"), metadata={"format": "pt"})
        (new / "config.json").write_text(json.dumps(hub_config_json(spec, meta), indent=2) + "\n", encoding="utf-8")
        (new / "README.md").write_text(card, encoding="utf-8")
        with _read_back(out), torch.no_grad():
            plain = timm.create_model(f"local-dir:{new}", pretrained=True).eval()
            got = plain(_normalized(plain, x))  # the mean/std timm reads from config.json
        check = _compare(model, x, got, "timm local-dir:", out)
    return {
        "to": "hub",
        "file": str(path),
        "out": str(out),
        "files": list(HUB_FILES),
        "check": check,
        "load": f"timm.create_model('local-dir:{out}', pretrained=True)",
        "publish": f"hf upload USER/NAME {out} .",
        "input": _preprocessing(spec),
    }


def _adaptive_refusal(path: Path, meta: dict, block: HeadConfig) -> UsageError:
    """Why an adaptive solver cannot be exported, naming the fixed-step solver the file ships or can rebuild."""
    adv = (meta.get("config") or {}).get("adversarial") or {}
    trained = (adv.get("attack") or "none") != "none"
    record = meta.get("inference") if isinstance(meta.get("inference"), dict) else {}
    tried = [
        t
        for t in record.get("tried") or []  # from the file: only well-formed candidates are quoted
        if isinstance(t, dict)
        and isinstance(t.get("agreement"), (int, float))
        and isinstance(t.get("steps"), int)
        and t.get("solver") in SOLVERS
    ]
    required = record.get("agreement_required")
    if trained:
        alt = (
            f"{adv.get('ode_solver', 'rk4')} with step {block.step_size:g}, the solver its adversarial training "
            f"differentiated through: re-harden with --set head.solver={adv.get('ode_solver', 'rk4')}"
        )
    elif tried:
        best = max(tried, key=lambda t: t["agreement"])
        alt = (
            f"{best['solver']} with {best['steps']} step(s) agreed best with {block.solver} "
            f"({100 * best['agreement']:.2f}% of its predictions"
            + (f", {100 * required:.1f}% required" if isinstance(required, (int, float)) else "")
            + "): re-harden with --set inference.agreement=... to ship it"
        )
    else:
        alt = (
            f"rk4 with step {block.step_size:g} (head.step_size, the attacks' fixed-step copy): re-harden with "
            "--set inference.solver=auto to choose and check one"
        )
    return UsageError(
        f"{path}: its SODEF head ships the adaptive {block.solver} solver, whose steps depend on the input; "
        f"ONNX needs fixed steps, and the file ships none; the fixed-step alternative: {alt}"
    )


def _to_onnx(path: Path, model: nn.Module, meta: dict, out: Path) -> dict:
    from .head import has_ode

    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise UsageError(f"--to onnx needs the onnx and onnxruntime packages: {_INSTALL}") from None
    ode = has_ode(model)
    if ode and model.head.block.adaptive:  # export() refuses these from the metadata already
        raise _adaptive_refusal(path, meta, shipped_head_config(meta))
    spec = model.spec
    x = _check_images(spec)
    with _staged(out) as new:
        with torch.no_grad(), warnings.catch_warnings(), _read_back(out, "torch.onnx cannot export this model"):
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notes and the solver loop's constants
            # the TorchScript-based exporter: the dynamo one needs onnxscript, and tracing unrolls the fixed-step loop
            torch.onnx.export(
                model,
                (x[:2],),
                str(new),
                dynamo=False,
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=17,
            )
        graph = onnx.load(str(new))
        info = {
            "source": path.name,
            "sha256": sha256_file(path),
            "input": "images (N, C, H, W) in [0,1]; normalization is inside the graph",
            "input_size": list(spec.input_size),
            "classes": list(meta["classes"]),
            "head": "sodef" if ode else "linear",
            "ode_solver": (
                f"{model.head.block.solver}, step {model.head.block.step_size:g}, unrolled" if ode else None
            ),
        }
        onnx.helper.set_model_props(graph, {"sodef_cli": json.dumps(info)})
        onnx.save(graph, str(new))
        with _read_back(out):
            session = onnxruntime.InferenceSession(str(new), providers=["CPUExecutionProvider"])
            got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
        check = _compare(model, x, got, "onnxruntime", out)
    return {
        "to": "onnx",
        "file": str(path),
        "out": str(out),
        "check": check,
        "solver": info["ode_solver"],
        "load": f"onnxruntime.InferenceSession({str(out)!r}).run(None, {{'images': x}})",
        "input": f"{spec.input_size[0]}-channel {spec.input_size[1]}x{spec.input_size[2]} images in [0,1], "
        "float32 (N, C, H, W); normalization is inside the graph",
    }


# ----------------------------------------------------------------------------------------------------
# the model card of the hub folder


def _results_for(results: Path, path: Path) -> dict:
    """The ``sodef attack`` results document ``results``, checked to hold results of the file ``path``."""
    from .report.results import check_results

    doc = read_json(results)
    check_results(doc, str(results))
    sha = sha256_file(path)
    models = doc["models"] if isinstance(doc.get("models"), list) else [doc.get("model") or {}]
    known = [m.get("sha256") for m in models if isinstance(m, dict) and m.get("sha256")]
    if known and sha not in known:
        raise UsageError(
            f"{results} holds results of other models (sha256 {', '.join(s[:12] for s in known)}), not of {path}"
        )
    return doc


def _md(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _guard_section(check: dict | None) -> list[str]:
    from .attacks import suite_attacks
    from .report.format import fmt_eps, pct_ci, points

    if not check:
        return ["Not evaluated at hardening time (the guard was skipped with --no-check).", ""]
    b, h = check.get("base") or {}, check.get("hardened") or {}
    norm = check.get("norm", "Linf")
    try:
        attacks = ", ".join(suite_attacks("quick", [], norm, has_ode=False)["hardened"])
    except SodefError:
        attacks = "the quick suite"
    return [
        f"On {check.get('n', '?')} held-out images ({attacks}; {norm} eps={fmt_eps(check.get('eps'), norm)}, "
        f"{check.get('steps', '?')} steps" + (f", REDUCED: {check['reduced']}" if check.get("reduced") else "") + "):",
        "",
        "| model | clean [95% CI] | worst case [95% CI] |",
        "|---|---|---|",
        f"| base | {pct_ci(b.get('clean'), b.get('clean_ci95'))} | {pct_ci(b.get('worst_case'), b.get('worst_case_ci95'))} |",
        f"| hardened (this model) | {pct_ci(h.get('clean'), h.get('clean_ci95'))} | "
        f"{pct_ci(h.get('worst_case'), h.get('worst_case_ci95'))} |",
        "",
        f"Gain {points(check.get('gain_points'))} points"
        + (
            f" (95% CI {check['gain_points_ci95'][0]:+.1f} to {check['gain_points_ci95'][1]:+.1f})"
            if check.get("gain_points_ci95")
            else ""
        )
        + (f", McNemar p={check['p_mcnemar']:.3g}" if check.get("p_mcnemar") is not None else "")
        + f": {check.get('outcome', '?')}.",
        "",
    ]


def _results_section(doc: dict, fd: dict, name: str, sha: str) -> list[str]:
    """The card's section on a results document ``doc``, from ``fd``: its file in ``report.results_data``."""
    from .report.format import fmt_eps, pct_ci

    lines = [f"From `{name}` (`sodef attack`):", "", f"> {_md(fd['verdict']['text'])}", ""]
    lines += ["| eps | model | clean [95% CI] | worst case [95% CI] |", "|---|---|---|---|"]
    if fd.get("kind") == "comparison":
        mine = {m["label"] for m in doc["models"] if m.get("sha256") == sha}
        labels = [(lab, lab + (" (this model)" if lab in mine else "")) for lab in fd["models"]]
    else:
        labels = [("base", "base"), ("hardened", "hardened (this model)")]
    for run in fd["runs"]:
        for lab, shown in labels:
            md = run["models"].get(lab)
            if md:
                lines.append(
                    f"| {fmt_eps(run['eps'], fd['norm'])} | {_md(shown)} | {pct_ci(md['clean'], md.get('clean_ci95'))} | "
                    f"{pct_ci(md['worst_case'], md.get('worst_case_ci95'))} |"
                )
    head = fd["header"]
    lines += [
        "",
        f"- threat model: {_md(head.get('threat model', '?'))}",
        f"- attacks: {_md(head.get('attacks', '?'))}",
        f"- iterations: {_md(head.get('iterations', '?'))}",
        f"- samples: {_md(head.get('samples', '?'))}",
        f"- data: {_md(head.get('data', '?'))}",
        "",
    ]
    return lines


def model_card(meta: dict, *, path: str | Path, results: dict | None = None, results_name: str | None = None) -> str:
    """The ``README.md`` of a hub folder: YAML front matter, the verdict, clean and worst-case accuracy with their
    intervals (the file's guard, and ``results`` when given: reported by ``report.results_data``), the attacks and
    budgets, how the model was hardened, and how to load and publish it."""
    from .report import card_data

    path = Path(path)
    cd = card_data(meta, path=str(path))
    spec = ModelSpec.from_dict(meta["backbone"])
    cfg = cd["config"]
    src = cd["source"] or {}
    license_ = "other"  # weights trained here, or a base whose license the file does not record
    if src.get("kind") == "timm" and src.get("pretrained"):
        with contextlib.suppress(Exception):  # timm's own config names the license of its hub weights
            license_ = hub_config(str(src.get("name"))).get("license") or license_
    adv = (cd["metrics"].get("adversarial") or {}).get("summary")
    data = cfg.get("data", "?")
    name = path.stem
    verdicts = [f"**Verdict (hardening guard).** {_md(cd['verdict'])}", ""]
    fd = None
    if results is not None:
        from .report import results_data

        results_name = results_name or "results"
        fd = results_data([results], labels=[results_name])["files"][0]  # the figures as `sodef report` shows them
        verdicts += [f"**Verdict (`sodef attack`, {_md(results_name)}).** {_md(fd['verdict']['text'])}", ""]
    lines = [
        "---",
        f"license: {license_}",
        "library_name: timm",
        "pipeline_tag: image-classification",
        "tags:",
        "- image-classification",
        "- timm",
        "- adversarial-robustness",
        "- sodef-cli",
        "---",
        "",
        f"# {name}: {spec.timm_name} hardened with sodef_cli",
        "",
        *verdicts,
        "## Robustness",
        "",
        "### The hardening guard (metadata of the hardened file)",
        "",
        *_guard_section(cd["check"]),
    ]
    if results is not None and fd is not None:
        lines += ["### Attack results", "", *_results_section(results, fd, str(results_name), sha256_file(path))]
    else:
        lines += ["No `sodef attack` results were given (`sodef export ... --results RESULTS.json` adds them).", ""]
    lines += [
        "## How the model was hardened",
        "",
        f"- source: {_md(cd['source_text'])}",
        f"- data: {_md(data)} ({len(cd['classes'])} classes: {_md(', '.join(cd['classes']))})",
        f"- head: {cfg.get('head', {}).get('kind', '?')} (the linear head is timm's classifier in this export)",
        f"- adversarial training: {_md(adv or 'none')}",
        f"- hardened file: `{path.name}` (sha256 {sha256_file(path)[:12]}), "
        f"sodef_cli {cd['versions'].get('sodef-cli', '?')}",
        "",
        "## Use",
        "",
        "```python",
        "import timm",
        'model = timm.create_model("hf-hub:USER/NAME", pretrained=True).eval()  # or "local-dir:THIS_FOLDER"',
        "cfg = timm.data.resolve_data_config({}, model=model)",
        "transform = timm.data.create_transform(**cfg)",
        "```",
        "",
        f"Inputs: {_preprocessing(spec)} (timm's transform above does it). Classes, in order: "
        f"{_md(', '.join(cd['classes']))}.",
        "",
        "Accuracy under attack holds for the threat model and data above only; evaluate on your own data "
        "(`sodef attack`) before relying on it.",
        "",
        "## Publish",
        "",
        "```bash",
        "hf upload USER/NAME THIS_FOLDER .  # huggingface_hub's CLI; creates the repository if needed",
        "```",
        "",
    ]
    return "\n".join(lines)
