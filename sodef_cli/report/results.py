"""The results model: ``sodef attack`` results documents checked once when loaded, and ``results_data``, every
figure and sentence the results report shows (what ``--format json`` prints).

A document is checked (``check_results``: schema, version and the shape of every field the report reads) and
analysed (``evaluate.analyze``: accuracies with intervals, paired differences, masking checks, attack kinds)
once, in ``Results.load``; everything after that reads well-formed data and cannot fail on the file's content.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ResultsError
from ..evaluate import COMPARISON_VERSION, SCHEMA, SCHEMA_VERSION, analyze
from .format import eps_key, fmt_eps, num
from .schema import (
    REPORT_SCHEMA,
    Malformed,
    anything,
    boolean,
    finite,
    integer,
    listof,
    mapof,
    obj,
    opt,
    real,
    string,
)
from .verdict import comparison_verdict, file_verdict

__all__ = ["Results", "check_results", "results_data", "tags"]

_VERSIONS = ("sodef-cli", "torch", "timm", "torchattacks", "torchdiffeq")  # the versions shown in the setup

_CHECK = obj({"name": string, "flagged": opt(boolean), "evidence": string}, required=("name",))
_ATTACK = obj(
    {"kind": opt(string), "params": obj({}), "seconds": real, "robust": listof(opt(boolean))}, required=("robust",)
)
_MODEL_RECORD = obj({"clean": listof(boolean), "attacks": mapof(_ATTACK), "checks": listof(_CHECK)})
_RUN = obj(
    {"eps": finite, "models": mapof(_MODEL_RECORD), "checks": opt(listof(_CHECK)), "extra_checks": listof(_CHECK)},
    required=("eps",),
)
_DESCRIPTION = obj({"text": string, "ode": opt(obj({"solver": opt(string)}))}, required=("text",))
_NORMS = obj({"count": integer, "linf_median": finite, "linf_max": finite, "l2_median": finite, "l2_max": finite})
_SAVED = obj(
    {
        "eps": finite,
        "file": string,
        "grid": opt(string),
        "saved": integer,
        "uint8": integer,
        "float32": integer,
        "norms": mapof(_NORMS),
    },
    required=("eps", "file", "norms"),
)
_DOCUMENT = obj(
    {
        "adversarial_examples": mapof(listof(_SAVED)),
        "schema_version": integer,
        "config": obj(
            {
                "norm": string,
                "eps": listof(finite),
                "steps": opt(integer),
                "queries": opt(integer),
                "attacks": opt(listof(string)),
            }
        ),
        "plan": mapof(listof(string)),
        "model": obj(
            {
                "sha256": opt(string),
                "base_classifier": opt(string),
                "head": opt(obj({"solver": opt(string)})),
                "description": opt(_DESCRIPTION),
            }
        ),
        "data": obj({"classes": listof(anything)}),
        "versions": obj({}),
        "n": opt(integer),
        "estimate": opt(obj({})),
        "runs": listof(_RUN),
        "models": listof(
            obj(
                {"label": string, "head": opt(obj({})), "description": opt(_DESCRIPTION), "sha256": opt(string)},
                required=("label",),
            )
        ),
        "reference": string,
    },
    required=("runs",),
)


def _is_comparison(doc: dict) -> bool:
    return doc.get("kind") == "comparison" or doc.get("schema_version") == COMPARISON_VERSION


def _check_consistency(doc: dict) -> None:
    """What the shape alone does not say: per-sample flags of equal length, a reference among the models."""
    for i, run in enumerate(doc["runs"]):
        for lab, mrec in run.get("models", {}).items():
            for name, rec in mrec.get("attacks", {}).items() if "clean" in mrec else ():
                if len(rec["robust"]) != len(mrec["clean"]):
                    raise Malformed(
                        f"runs[{i}].models.{lab}.attacks.{name}.robust",
                        f"{len(mrec['clean'])} flags (one per sample)",
                        f"{len(rec['robust'])} flags",
                    )
    if _is_comparison(doc) and doc["reference"] not in [m["label"] for m in doc["models"]]:
        raise Malformed("reference", "the label of one of the models", doc["reference"])


def check_results(doc: Any, name: str) -> None:
    """Raise ResultsError unless ``doc`` is a well-formed ``sodef attack`` results document (one this version reads)."""
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ResultsError(
            f'{name} is not a sodef attack results file (expected "schema": "{SCHEMA}"); '
            "make one with `sodef attack MODEL --out FILE`"
        )
    top = max(SCHEMA_VERSION, COMPARISON_VERSION)
    if not isinstance(doc.get("schema_version"), int) or doc["schema_version"] > top:
        raise ResultsError(
            f"{name} has results schema version {doc.get('schema_version')!r}; this sodef_cli reads "
            f"up to {top}: upgrade sodef_cli"
        )
    if _is_comparison(doc) and not (isinstance(doc.get("models"), list) and doc.get("reference")):
        raise ResultsError(f'{name}: a results file of several models needs "models" and "reference"')
    if not isinstance(doc.get("runs"), list):
        raise ResultsError(f'{name}: "runs" is missing or not a list')
    try:
        _DOCUMENT(doc, "results")
        _check_consistency(doc)
    except Malformed as exc:
        raise ResultsError(f"{name}: malformed results file ({exc})") from None


@dataclass(frozen=True)
class Results:
    """One results document, checked and analysed (``load``): what the results report is built from."""

    label: str
    doc: dict
    figures: dict  # evaluate.analyze(doc)

    @classmethod
    def load(cls, doc: Any, label: str) -> Results:
        """Check ``doc`` (ResultsError if it is not a well-formed results document) and compute its figures."""
        check_results(doc, label)
        return cls(label, doc, analyze(doc))

    @property
    def comparison(self) -> bool:
        return self.doc.get("kind") == "comparison"


# ----------------------------------------------------------------------------------------------------
# the data of one file


def tags(n: int) -> list[str]:
    """A, B, C, ...: the short names of files (or models) side by side."""
    return [chr(ord("A") + i) if i < 26 else str(i + 1) for i in range(n)]


def _iterations(doc: dict, reduced: dict) -> tuple[bool, str]:
    """(reduced?, the header's sentence about attack iterations)."""
    cfg = doc.get("config", {})
    flags = " ".join(f"--{k} {cfg[k]}" for k in ("steps", "queries") if cfg.get(k) is not None)
    if reduced:
        refs = ", ".join(
            f"{n} " + "/".join(f"{u} of {r} {k}" for k, (u, r) in low.items()) for n, low in reduced.items()
        )
        return True, f"REDUCED ({flags}): {refs}; weaker than the reference evaluation"
    if flags:
        return False, f"overridden ({flags}), at or above the reference settings"
    return False, "reference settings"


def _model_data(s: dict | None, mrec: dict, planned: list[str]) -> dict | None:
    """One model at one eps: its figures (``s``, from ``analyze``) beside each attack's settings and cost."""
    if s is None:
        return None
    atk = mrec.get("attacks", {})
    return {
        "clean": s["clean"],
        "clean_ci95": s["clean_ci95"],
        "worst_case": s["worst_case"],
        "worst_case_ci95": s["worst_case_ci95"],
        "white_box_direct": s.get("white_box_direct"),
        "white_box_direct_ci95": s.get("white_box_direct_ci95"),
        "attacks": {
            name: {
                "accuracy": s["attacks"][name],
                "accuracy_ci95": s["attacks_ci95"][name],
                "kind": rec.get("kind"),
                "params": rec.get("params", {}),
                "attacked": rec.get("attacked"),
                "seconds": rec.get("seconds"),
            }
            for name, rec in atk.items()
        },
        "missing": [a for a in planned if a not in atk],
        "seconds": s["seconds"],
    }


def _runs(res: Results, labels: list[str]) -> list[dict]:
    doc, plan = res.doc, res.doc.get("plan", {})
    runs = []
    for run, fig in zip(doc["runs"], res.figures["runs"]):
        recs = run.get("models", {})
        models = {lab: _model_data(fig["models"][lab], recs.get(lab) or {}, plan.get(lab, [])) for lab in labels}
        runs.append(
            {
                "eps": float(run["eps"]),
                "done": bool(run.get("done", False)),
                "models": models,
                "pending": [
                    lab
                    for lab in labels
                    if models[lab] is None and (res.comparison or plan.get(lab)) and not doc.get("complete")
                ],
                "difference": fig["difference"],
                "checks": fig["checks"],
            }
        )
        if not res.comparison:
            runs[-1]["checks_provisional"] = fig["checks_provisional"]
    return runs


def _setup(doc: dict, models: dict[str, str], attacks: str, samples: str, iterations: str, run: str) -> dict[str, str]:
    """The setup rows shared by both kinds of results file, around what differs (the models, the run)."""
    cfg, data = doc.get("config", {}), doc.get("data", {})
    norm = cfg.get("norm", "Linf")
    return {
        **models,
        "data": f"{data.get('spec', '?')}, {data.get('split', 'test')} split: {doc.get('n', '?')} of {data.get('test_size', '?')} images",
        "threat model": f"{norm}, eps " + ", ".join(fmt_eps(e, norm) for e in cfg.get("eps", [])),
        "samples": samples,
        "attacks": (f"suite {cfg.get('suite')}" if not cfg.get("attacks") else "--attacks " + ",".join(cfg["attacks"]))
        + attacks,
        "mode": (
            "all samples: each attack ran on every clean-correct sample"
            if cfg.get("all_samples")
            else "cascade: each attack ran on the samples still robust (per-attack rows are cumulative)"
        ),
        "iterations": iterations,
        "device": str(doc.get("device", "?")),
        "versions": ", ".join(f"{k} {v}" for k, v in doc.get("versions", {}).items() if k in _VERSIONS) or "-",
        "run": run,
    }


def _description(model: dict) -> dict:
    """What a hardened model is (``text``) and its ODE as shipped (``ode``, None without one): the record
    ``models.describe_hardened`` wrote, or for a file written before it, what its head settings say."""
    if model.get("description"):
        return {"text": model["description"]["text"], "ode": model["description"].get("ode")}
    head = model.get("head") or {}
    if not head or head.get("kind", "sodef") != "sodef":
        return {"text": "linear head", "ode": None}
    return {
        "text": f"SODEF head ({head.get('odefunc', '?')} ODE, dim {head.get('dim', '?')}, "
        f"{head.get('solver', '?')} solver, T={num(head.get('t1'))})",
        "ode": head,
    }


def _run_time(doc: dict) -> str:
    """The run's measured time next to the plan's estimate, where the document has them."""
    est = (doc.get("estimate") or {}).get("seconds")
    ran = doc.get("seconds_run")
    return (f", attacks and checks {ran:.1f} s" if isinstance(ran, (int, float)) else "") + (
        f" (estimated before the run: {est:.1f} s)" if isinstance(est, (int, float)) else ""
    )


def _file_data(res: Results) -> dict:
    """Everything the report shows about one base-vs-hardened results file (schema v1), as data."""
    doc, label = res.doc, res.label
    cfg = doc.get("config", {})
    norm = cfg.get("norm", "Linf")
    plan = doc.get("plan", {})
    runs = _runs(res, ["base", "hardened"])
    ran = {eps_key(r["eps"]) for r in runs}
    not_started = [float(e) for e in cfg.get("eps", []) if eps_key(e) not in ran]
    complete = bool(doc.get("complete", False))
    reduced, iterations = _iterations(doc, res.figures["reduced"])
    model = doc.get("model", {})
    desc = _description(model)
    seconds = {m: sum((r["models"].get(m) or {}).get("seconds", 0.0) for r in runs) for m in ("base", "hardened")}
    started, finished = doc.get("started"), doc.get("finished")
    status = "complete" if complete else "INTERRUPTED (partial results)"
    base_kind = {"own": "the model's own head", "probe": "linear probe on frozen features"}
    header = {
        "results": label,
        **_setup(
            doc,
            {
                "model": f"{model.get('path', '?')}"
                + (f" (sha256 {model['sha256'][:12]})" if model.get("sha256") else ""),
                "backbone": f"{model.get('backbone') or '?'}, base classifier: "
                + base_kind.get(model.get("base_classifier"), str(model.get("base_classifier"))),
                "head": desc["text"],
            },
            attacks="".join(f"; {m}: {', '.join(v)}" for m, v in plan.items()),
            samples=f"n={doc.get('n', '?')}, seed {cfg.get('seed', '?')} (drawn class by class)",
            iterations=iterations,
            run=f"{status}; started {started or '?'}"
            + (f", finished {finished}" if finished else "")
            + f"; attack time base {seconds['base']:.1f} s, hardened {seconds['hardened']:.1f} s"
            + _run_time(doc),
        ),
    }
    fd = {
        "label": label,
        "model": model.get("path"),
        "norm": norm,
        "n": doc.get("n"),
        "complete": complete,
        "cascade": not cfg.get("all_samples", False),
        "reduced_iterations": reduced,
        "evaluation": res.figures["evaluation"],
        "has_ode": desc["ode"] is not None,
        "solver": (desc["ode"] or {}).get("solver"),  # a verdict names a solver only where the model has an ODE
        "header": header,
        "runs": runs,
        "eps_not_started": not_started,
        "notes": _file_notes(label, doc, runs, not_started, complete),
        "attack_kinds": res.figures["kinds"],
        "adversarial_examples": doc.get("adversarial_examples") or {},
        # adversarial training kept the starting weights: the verdict says so before any figure
        "kept_start": bool(((model.get("description") or {}).get("adversarial") or {}).get("kept_start")),
    }
    fd["verdict"] = file_verdict(fd)
    return fd


def _file_notes(label: str, doc: dict, runs: list[dict], not_started: list[float], complete: bool) -> list[dict]:
    norm = doc.get("config", {}).get("norm", "Linf")
    model_path = doc.get("model", {}).get("path", "MODEL")
    resume = f"resume with `sodef attack {model_path} --out {label}` and the same options"
    if not runs:
        return [
            {
                "level": "warn",
                "text": f"{label}: no results yet: the file holds no finished attack "
                f"(the run stopped before its first attack finished); {resume}.",
            }
        ]
    if complete:
        return []
    missing = []
    for r in runs:
        for m in ("base", "hardened"):
            md = r["models"].get(m)
            if md is None:
                if doc.get("plan", {}).get(m, []):
                    missing.append(f"{m} at {fmt_eps(r['eps'], norm)} (not started)")
            elif md["missing"]:
                missing.append(f"{m} at {fmt_eps(r['eps'], norm)} ({', '.join(md['missing'])})")
    missing += [f"eps {fmt_eps(e, norm)} (not started)" for e in not_started]
    done = sum(1 for r in runs if r["done"])
    total = len(runs) + len(not_started)
    return [
        {
            "level": "warn",
            "text": f"{label}: interrupted run: {done} of {total} eps finished"
            + (f"; missing: {'; '.join(missing)}" if missing else "")
            + ". Worst cases cover only the attacks that finished, so they can only go down (marked †); "
            + f"{resume}.",
        }
    ]


def _model_line(m: dict) -> str:
    """One line about a model of a comparison: what it is."""
    kind = m.get("kind")
    if kind == "hardened":
        what = "hardened file, " + _description(m)["text"]
    elif kind == "base":
        adv = m.get("adversarial")
        what = "base file (`sodef pretrain`" + (f", {adv} adversarial training)" if adv and adv != "none" else ")")
    else:
        what = "timm model" + (f" with checkpoint {m['checkpoint']}" if m.get("checkpoint") else " (hub weights)")
    src = f"; transfer attacks from {m['transfer_source']}" if m.get("transfer_source") else ""
    sha = f" (sha256 {m['sha256'][:12]})" if m.get("sha256") else ""
    return f"{m.get('backbone') or '?'}: {what}; {m.get('path', '?')}{sha}{src}"


def _comparison_data(res: Results) -> dict:
    """Everything the report shows about one results file of several models (schema v2), as data."""
    doc, label = res.doc, res.label
    cfg = doc.get("config", {})
    models = [m["label"] for m in doc["models"]]
    ref = doc["reference"]
    complete = bool(doc.get("complete", False))
    runs = _runs(res, models)
    reduced, iterations = _iterations(doc, res.figures["reduced"])
    model_tags = tags(len(models))
    plan = doc.get("plan", {})
    spent = sum((r["models"].get(lab) or {}).get("seconds", 0.0) for r in runs for lab in models)
    header = {
        "results": label,
        **_setup(
            doc,
            {
                f"model {tag}": _model_line(m) + (" [reference]" if m["label"] == ref else "")
                for tag, m in zip(model_tags, doc["models"])
            },
            attacks="".join(f"; {tag}: {', '.join(plan.get(lab, []))}" for tag, lab in zip(model_tags, models)),
            samples=f"n={doc.get('n', '?')}, seed {cfg.get('seed', '?')} (drawn class by class); the same samples and attack seeds for every model",
            iterations=iterations,
            run=("complete" if complete else "INTERRUPTED (partial results)")
            + f"; started {doc.get('started') or '?'}"
            + (f", finished {doc['finished']}" if doc.get("finished") else "")
            + f"; attack time {spent:.1f} s"
            + _run_time(doc),
        ),
    }
    notes = []
    if not complete:
        notes.append(
            {
                "level": "warn",
                "text": f"{label}: interrupted run: worst cases cover only the attacks that finished, so they "
                "can only go down; rerun the same command with the same --out to resume.",
            }
        )
    fd = {
        "kind": "comparison",
        "label": label,
        "models": models,
        "tags": model_tags,
        "reference": ref,
        "norm": cfg.get("norm", "Linf"),
        "n": doc.get("n"),
        "complete": complete,
        "cascade": not cfg.get("all_samples", False),
        "reduced_iterations": reduced,
        "evaluation": res.figures["evaluation"],
        "header": header,
        "runs": runs,
        "notes": notes,
        "attack_kinds": res.figures["kinds"],
        "adversarial_examples": doc.get("adversarial_examples") or {},
    }
    fd["verdict"] = comparison_verdict(fd)
    return fd


# ----------------------------------------------------------------------------------------------------
# several files


def _default_label(doc: Any, i: int) -> str:
    """A document's name when none is given: its model file's name (or how many models it compares)."""
    if not isinstance(doc, dict):
        return f"results {i + 1}"
    if isinstance(doc.get("models"), list):
        return f"{len(doc['models'])} model(s)"
    model = doc.get("model")
    path = model.get("path", f"results {i + 1}") if isinstance(model, dict) else f"results {i + 1}"
    return str(path).rsplit("/", 1)[-1]


def _unique_labels(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
        out.append(lab if seen[lab] == 1 else f"{lab} ({seen[lab]})")
    return out


def results_data(docs: list[dict], labels: list[str] | None = None) -> dict:
    """Everything the results report shows, as data (this is ``--format json``).

    Args:
        docs: ``sodef attack`` results documents (complete, partial or empty).
        labels: a name per document (the results file names); default: the model file names.

    Raises:
        ResultsError: a document that is not a results file or is malformed.
    """
    names = _unique_labels(list(labels) if labels is not None else [_default_label(d, i) for i, d in enumerate(docs)])
    files = []
    for doc, label in zip(docs, names):
        res = Results.load(doc, label)
        fd = _comparison_data(res) if res.comparison else _file_data(res)
        files.append({"verdict": fd.pop("verdict"), **fd})  # the conclusion first, in JSON too
    verdicts = [{"file": fd["label"], "level": fd["verdict"]["level"], "text": fd["verdict"]["text"]} for fd in files]
    return {"schema": REPORT_SCHEMA, "kind": "results", "verdicts": verdicts, "files": files}
