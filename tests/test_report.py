"""``sodef report``: results and model-card rendering against stored text snapshots, every format, the CLI.

Snapshots live in ``tests/snapshots/``; regenerate them after an intended change with
``UPDATE_SNAPSHOTS=1 .venv/bin/pytest tests/test_report.py`` and review the diff.
The results documents are built by hand below (fixed flags, no timestamps that change), so the
snapshots depend on nothing but the renderer.
"""

from __future__ import annotations

import copy
import io
import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from sodef_cli.cli import app
from sodef_cli.evaluate import masking_checks
from sodef_cli.report import FORMATS, card_data, chart_lines, render, render_results, results_data

SNAPSHOTS = Path(__file__).parent / "snapshots"
UPDATE = os.environ.get("UPDATE_SNAPSHOTS") == "1"
T, F, N = True, False, None
runner = CliRunner()


# --------------------------------------------------------------------------------------------------
# fixtures: hand-built documents


def _attack(kind: str, robust: list, eps: float, seconds: float, **params) -> dict:
    return {
        "kind": kind,
        "params": {**params, "norm": "Linf", "eps": eps},
        "robust": robust,
        "attacked": sum(1 for f in robust if f is not None),
        "seconds": seconds,
        "projected": 0,
    }


def _run(eps: float, shift: int) -> dict:
    """One eps run on 8 samples. The hardened model loses samples to transfer and Square that survived APGD-CE."""
    fooled = lambda flags: [F if i < shift and f is T else f for i, f in enumerate(flags)]  # larger eps: more fooled
    run = {
        "eps": eps,
        "done": True,
        "models": {
            "base": {
                "clean": [T, T, T, T, T, T, F, T],
                "attacks": {
                    "apgd-ce": _attack("white-box", fooled([T, F, T, F, T, F, N, T]), eps, 12.5, steps=100),
                    "square": _attack("black-box", fooled([T, N, F, N, T, N, N, T]), eps, 40.0, queries=5000),
                },
            },
            "hardened": {
                "clean": [T, T, T, T, T, F, T, T],
                "attacks": {
                    "apgd-ce": _attack("white-box", fooled([T, T, T, F, T, N, T, T]), eps, 20.0, steps=100),
                    "transfer-apgd-ce": _attack("transfer", fooled([F, T, T, N, T, N, F, T]), eps, 5.0, steps=100),
                    "square": _attack("black-box", fooled([N, T, F, N, T, N, N, T]), eps, 60.0, queries=5000),
                },
            },
        },
        "extra_checks": [
            {
                "name": "predictions independent of batch composition",
                "flagged": False,
                "samples": 8,
                "frac_predictions_changed": 0.0,
                "max_abs_logit_change": 1e-6,
                "evidence": "0.0% of 8 predictions changed between batch size 256, 1 and a shuffled batch",
            },
            {
                "name": "accuracy near zero at a very large eps",
                "flagged": False,
                "eps": 0.5,
                "accuracy": {"base": 0.0, "hardened": 0.0},
                "evidence": "PGD-20 at Linf eps=0.5 on 8 samples leaves hardened 0.0%, base 0.0%",
            },
        ],
    }
    run["checks"] = masking_checks(run)
    return run


def make_doc(eps=(4 / 255, 8 / 255), *, steps=None, all_samples=False, path="runs/hardened.safetensors") -> dict:
    return {
        "schema": "sodef_cli/attack-results",
        "schema_version": 1,
        "complete": True,
        "model": {
            "path": path,
            "sha256": "0123456789abcdef" * 4,
            "backbone": "resnet18",
            "base_classifier": "own",
            "head": {
                "dim": 64,
                "odefunc": "sin",
                "hidden": 256,
                "t1": 5.0,
                "solver": "dopri5",
                "rtol": 1e-3,
                "atol": 1e-3,
                "step_size": 0.5,
                "adjoint": True,
            },
        },
        "data": {"spec": "demo", "split": "test", "classes": [f"c{i}" for i in range(10)], "test_size": 500},
        "config": {
            "suite": "custom",
            "attacks": ["apgd-ce", "transfer-apgd-ce", "square"],
            "norm": "Linf",
            "eps": list(eps),
            "n": 8,
            "seed": 0,
            "batch_size": 256,
            "all_samples": all_samples,
            "steps": steps,
            "queries": None,
            "checks": True,
            "check_samples": 64,
        },
        "plan": {"base": ["apgd-ce", "square"], "hardened": ["apgd-ce", "transfer-apgd-ce", "square"]},
        "n": 8,
        "indices": list(range(8)),
        "labels": [0, 1, 2, 3, 4, 5, 6, 7],
        "device": "cpu",
        "versions": {
            "sodef-cli": "0.1.0",
            "torch": "2.4.0",
            "timm": "1.0.10",
            "torchdiffeq": "0.2.4",
            "torchattacks": "3.5.1",
        },
        "started": "2025-01-01T00:00:00+00:00",
        "finished": "2025-01-01T00:10:00+00:00",
        "runs": [_run(e, i) for i, e in enumerate(eps)],
    }


def make_partial() -> dict:
    """An interrupted run: the second eps has no hardened record, and its base record lost Square."""
    doc = make_doc()
    doc["complete"] = False
    doc.pop("finished")
    last = doc["runs"][-1]
    del last["models"]["hardened"]
    del last["models"]["base"]["attacks"]["square"]
    last["done"] = False
    del last["checks"], last["extra_checks"]
    return doc


def make_empty() -> dict:
    doc = make_doc()
    doc["complete"] = False
    doc.pop("finished")
    doc["runs"] = []
    return doc


def make_meta() -> dict:
    stab = lambda neg, dom: {
        "points": 500,
        "frac_eig_negative": neg,
        "frac_diag_dominant_col": dom,
        "frac_diag_dominant_row": dom / 2,
        "mean_max_real_eig": 0.5 - neg,
        "mean_diag": -0.5,
    }
    return {
        "format": "sodef_cli/hardened",
        "format_version": 1,
        "backbone": {"timm_name": "resnet18", "input_size": [3, 32, 32], "in_chans": 3, "num_classes": 10},
        "classes": [f"c{i}" for i in range(10)],
        "num_classes": 10,
        "feature_dim": 512,
        "base_classifier": "probe",
        "source": {"kind": "timm", "name": "resnet18", "pretrained": True},
        "config": {
            "data": "demo",
            "seed": 0,
            "head": {
                "dim": 64,
                "odefunc": "sin",
                "hidden": 256,
                "t1": 5.0,
                "solver": "dopri5",
                "rtol": 1e-3,
                "atol": 1e-3,
                "step_size": 0.5,
                "adjoint": True,
            },
            "phase1": {"epochs": 4, "batch_size": 128, "lr": 0.1},
            "phase2": {"epochs": 20, "batch_size": 32, "lr": 0.01},
            "phase3": {"epochs": 10, "batch_size": 128, "lr_fc": 0.01, "lr_f": 1e-5, "mixup_alpha": 1.0},
            "regularizer": {
                "form": "code",
                "convention": "column",
                "weight_f": 0.1,
                "weight_diag": 10.0,
                "weight_offdiag": 0.0,
            },
        },
        "metrics": {
            "data": {"name": "demo", "train": 2000, "test": 500},
            "split": {"train": 1800, "val": 200, "seed": 0},
            "base": {"classifier": "probe", "val_acc": 0.5, "test_clean_acc": 0.48},
            "hardened": {"val_acc": 0.47, "test_clean_acc": 0.46},
            "phases": {
                "phase1": {"final_loss": 1.25, "steps": 60},
                "phase2": {"last_epoch_loss": 3.5, "steps": 1140},
                "phase3": {"final_loss": 1.5, "val_acc": 0.47, "steps": 150},
            },
            "stability": {"before_phase2": stab(0.0, 0.0), "after_phase2": stab(0.9, 0.75), "final": stab(0.875, 0.5)},
        },
        "check": {
            "suite": "quick",
            "split": "check",
            "n": 256,
            "norm": "Linf",
            "eps": 8 / 255,
            "steps": 50,
            "reduced": "50 of 100 APGD-CE steps",
            "base": {
                "clean": 0.5,
                "clean_ci95": [0.439, 0.561],
                "worst_case": 0.125,
                "worst_case_ci95": [0.09, 0.171],
                "attacks": {"apgd-ce": 0.125},
                "attacks_ci95": {"apgd-ce": [0.09, 0.171]},
            },
            "hardened": {
                "clean": 0.46875,
                "clean_ci95": [0.408, 0.53],
                "worst_case": 0.15625,
                "worst_case_ci95": [0.117, 0.205],
                "attacks": {"apgd-ce": 0.2},
                "attacks_ci95": {"apgd-ce": [0.155, 0.254]},
            },
            "gain_points": 3.125,
            "gain_points_ci95": [-1.2, 7.5],
            "p_mcnemar": 0.17,
            "discordant": [10, 18],
            "clean_delta_points": -3.125,
            "clean_delta_points_ci95": [-7.0, 0.8],
            "outcome": "no significant difference",
            "n_to_resolve": 1100,
            "more_robust": False,
            "recommendation": "no significant difference at n=256 between the hardened model and its base under adaptive "
            "attack (+3.1 points, 95% CI -1.2 to +7.5, McNemar p=0.17, n=256); about n=1100 check images "
            "would resolve a difference of this size (raise check.n). REDUCED: 50 of 100 APGD-CE steps",
            "checks": [],
            "train_indices": [1, 2, 3],
        },
        "versions": {"sodef-cli": "0.1.0", "torch": "2.4.0"},
    }


DIAGNOSTICS = {
    "mean_norm_f_z0": 0.0123,
    "mean_norm_f_zT": 0.001,
    "mean_norm_zT_minus_z0": 0.25,
    "mean_norm_z0": 1.0,
    "nfe_per_solve": 26,
    "solver": "dopri5",
    "points": 64,
    "frac_eig_negative": 0.890625,
    "frac_diag_dominant_col": 0.5,
    "frac_diag_dominant_row": 0.25,
    "mean_max_real_eig": -0.0625,
    "mean_diag": -0.5,
    "data": "demo",
    "split": "test",
    "samples": 64,
    "batch": 64,
    "seed": 0,
}


# --------------------------------------------------------------------------------------------------
# helpers


def as_text(renderable, width: int = 100) -> str:
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, force_terminal=False).print(renderable)
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"


def snapshot(name: str, text: str) -> None:
    path = SNAPSHOTS / name
    if UPDATE or not path.exists():
        if not UPDATE:
            pytest.fail(f"snapshot {path} is missing; create it with UPDATE_SNAPSHOTS=1")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), (
        f"{name} differs from its snapshot; rerun with UPDATE_SNAPSHOTS=1 if intended"
    )


def write(tmp_path: Path, name: str, doc: dict) -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(doc), encoding="utf-8")
    return p


class _Html(HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.void = {"meta", "br", "line", "circle", "rect", "link", "img"}

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag not in self.void:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)

    def handle_endtag(self, tag):
        if tag in self.void:
            return
        assert self.stack and self.stack[-1] == tag, f"unbalanced </{tag}> (open: {self.stack[-3:]})"
        self.stack.pop()


def check_html(text: str) -> _Html:
    p = _Html()
    p.feed(text)
    p.close()
    assert p.stack == [], f"unclosed tags {p.stack}"
    assert "<script" not in text and "<link" not in text and "src=" not in text  # self-contained
    assert set(re.findall(r"https?://[^\"' ]+", text)) <= {
        "http://www.w3.org/2000/svg"
    }  # only SVG's namespace, no fetch
    return p


def check_markdown_tables(text: str) -> None:
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.fullmatch(r"\|(:?-+:?\|)+", line):
            cols = line.count("|")
            j = i - 1
            k = i + 1
            assert lines[j].count("|") - lines[j].count("\\|") == cols
            while k < len(lines) and lines[k].startswith("|"):
                assert lines[k].count("|") - lines[k].count("\\|") == cols, lines[k]
                k += 1


# --------------------------------------------------------------------------------------------------
# results: data and verdict


def test_results_data_and_verdict_figures():
    doc = make_doc()
    before = copy.deepcopy(doc)
    data = results_data([doc], labels=["r.json"])
    assert doc == before  # rendering is pure: the document is not touched
    fd = data["files"][0]
    v = fd["verdict"]
    # eps 4/255: base worst 3/8 robust (samples 0, 4, 7); hardened: 1, 2, 4, 7 survive apgd, transfer and square
    # leave 1, 4, 7 -> 3/8; white-box (apgd-ce) alone leaves 0, 1, 2, 4, 6, 7 -> 6/8
    assert v["eps"] == pytest.approx(4 / 255)
    assert v["base_worst_case"] == pytest.approx(3 / 8)
    assert v["hardened_worst_case"] == pytest.approx(3 / 8)
    assert v["gain_points"] == pytest.approx(0.0)
    assert v["white_box_direct"] == pytest.approx(6 / 8)
    assert v["white_box_claimed_gain_points"] == pytest.approx(37.5)
    assert v["masking_suspected"]
    assert v["flagged_checks"] == ["black-box beats white-box", "transfer beats direct"]
    assert v["text"].startswith("Hardening gain under the adaptive worst case at eps=4/255: +0.0 points (95% CI ")
    assert (
        "(base 37.5% -> hardened 37.5%); no significant difference at n=8 (the models disagree equally often each "
        "way: no sample size would resolve it); white-box attacks through the adaptive solver (dopri5) claimed 75.0% (+37.5)."
        in v["text"]
    )
    assert v["evaluation"] == {"adaptive": True, "reduced": False, "kinds": ["white-box", "transfer", "black-box"]}
    assert "Gradient masking suspected: black-box beats white-box, transfer beats direct." in v["text"]
    assert v["level"] == "bad"
    assert fd["header"]["iterations"] == "reference settings"


def test_reduced_iterations_are_named_in_the_header():
    doc = make_doc(steps=5)
    for run in doc["runs"]:
        for m in run["models"].values():
            for rec in m["attacks"].values():
                if "steps" in rec["params"]:
                    rec["params"]["steps"] = 5
    fd = results_data([doc])["files"][0]
    assert fd["reduced_iterations"]
    assert fd["header"]["iterations"].startswith("REDUCED (--steps 5): apgd-ce 5 of 100 steps")
    assert "square" not in fd["header"]["iterations"]  # queries untouched
    assert fd["verdict"]["text"].endswith(
        "REDUCED budgets (apgd-ce 5 of 100 steps, transfer-apgd-ce 5 of 100 steps): "
        "weaker than the reference evaluation."
    )
    assert fd["evaluation"]["reduced"] is True


def _only(doc: dict, keep: set[str]) -> dict:
    """The document as if only the attacks in ``keep`` had run."""
    doc["plan"] = {m: [a for a in names if a in keep] for m, names in doc["plan"].items()}
    doc["config"]["attacks"] = sorted(keep)
    for run in doc["runs"]:
        for mrec in run["models"].values():
            mrec["attacks"] = {a: r for a, r in mrec["attacks"].items() if a in keep}
        run["checks"] = masking_checks(run)
    return doc


def test_white_box_only_run_is_never_called_adaptive_nor_good():
    """`--attacks apgd-ce --no-checks`: the hardened model gains 25 points under white-box APGD-CE alone."""
    doc = _only(make_doc(), {"apgd-ce"})
    for run in doc["runs"]:
        run.pop("extra_checks")
        run["checks"] = masking_checks(run)
    fd = results_data([doc])["files"][0]
    v = fd["verdict"]
    assert fd["evaluation"] == {"adaptive": False, "reduced": False, "kinds": ["white-box"]}
    assert v["text"].startswith("white-box only: not an adaptive evaluation")
    assert "white-box worst case" in v["text"] and "adaptive worst case" not in v["text"]
    assert v["gain_points"] == pytest.approx(25.0)
    assert v["level"] != "good"
    # the same figures with a significant gain stay "warn" without an adaptive attack, "good" with one
    big = _only(make_doc(), {"apgd-ce"})
    for run in big["runs"]:
        run.pop("extra_checks")
        for m, ok in (("base", False), ("hardened", True)):
            mrec = run["models"][m]
            mrec["clean"] = [True] * 8
            mrec["attacks"]["apgd-ce"]["robust"] = [ok] * 8
        run["checks"] = masking_checks(run)
    big["n"] = 8
    v = results_data([big])["files"][0]["verdict"]
    assert v["significant"] and v["level"] == "warn"
    for run in big["runs"]:
        run["models"]["hardened"]["attacks"]["feature"] = _attack("feature", [True] * 8, run["eps"], 1.0, steps=100)
        run["checks"] = masking_checks(run)
    big["plan"]["hardened"].append("feature")
    v = results_data([big])["files"][0]["verdict"]
    assert v["evaluation"]["adaptive"] and v["level"] == "good" and not v["text"].startswith("white-box only")


def test_every_figure_has_its_interval_and_paired_difference():
    data = json.loads(render(results_data([make_doc()]), "json"))
    run = data["files"][0]["runs"][0]
    for m in ("base", "hardened"):
        md = run["models"][m]
        for key in ("clean", "worst_case", "white_box_direct"):
            lo, hi = md[f"{key}_ci95"]
            assert lo <= md[key] <= hi
        for a in md["attacks"].values():
            assert a["accuracy_ci95"][0] <= a["accuracy"] <= a["accuracy_ci95"][1]
    diff = run["difference"]
    # worst case at 4/255: base robust on 0, 4, 7; hardened on 1, 4, 7 -> one discordant pair each way
    assert diff["worst_case"] == 0.0 and diff["worst_case_discordant"] == [1, 1] and diff["worst_case_p"] == 1.0
    assert diff["worst_case_ci95"][0] < 0 < diff["worst_case_ci95"][1]
    assert diff["apgd-ce"] == pytest.approx(0.25) and "transfer-apgd-ce" not in diff  # base never ran it
    md_text = render(results_data([make_doc()]), "markdown")
    assert "[52.9, 97.8]" in md_text and "McNemar" in md_text


def test_malformed_and_foreign_documents_raise_results_error():
    from sodef_cli.errors import ResultsError

    with pytest.raises(ResultsError, match="not a sodef attack results file"):
        results_data([{"foo": 1}], labels=["x.json"])
    with pytest.raises(ResultsError, match="schema version"):
        results_data([{**make_doc(), "schema_version": 99}], labels=["x.json"])
    broken = make_doc()
    broken["runs"][0]["models"]["base"]["attacks"]["apgd-ce"]["robust"] = 3
    with pytest.raises(ResultsError, match="malformed"):
        results_data([broken], labels=["x.json"])


# --------------------------------------------------------------------------------------------------
# results: snapshots of every format


def test_results_table_snapshot():
    text = as_text(render_results([make_doc()], labels=["results.json"]))
    assert max(len(line) for line in text.splitlines()) <= 100
    snapshot("results_table.txt", text)


def test_results_table_adapts_to_a_narrow_terminal():
    text = as_text(render_results([make_doc()], labels=["results.json"]), width=60)
    assert max(len(line) for line in text.splitlines()) <= 60
    assert "Worst-case accuracy vs eps" in text and "Verdict:" in text


def test_results_markdown_snapshot():
    text = render(results_data([make_doc()], labels=["results.json"]), "markdown")
    check_markdown_tables(text)
    snapshot("results.md", text)


def test_results_html_snapshot():
    text = render(results_data([make_doc()], labels=["results.json"]), "html")
    p = check_html(text)
    assert "svg" in p.tags and "style" in p.tags
    snapshot("results.html", text)


def test_results_json_parses_and_keeps_the_figures():
    text = render(results_data([make_doc()], labels=["results.json"]), "json")
    data = json.loads(text)
    assert data["kind"] == "results"
    assert data["files"][0]["verdict"]["white_box_claimed_gain_points"] == pytest.approx(37.5)


def test_several_files_side_by_side_snapshot():
    docs = [make_doc(), make_doc(eps=(8 / 255,), all_samples=True, path="runs/recipe2.safetensors")]
    text = as_text(render_results(docs, labels=["recipe1.json", "recipe2.json"]))
    assert "A: recipe1.json" in text and "B: recipe2.json" in text
    assert "Verdict (A: recipe1.json)" in text and "Verdict (B: recipe2.json)" in text
    assert "mixed modes" in text  # the 8/255 table compares a cascade with an all-samples run
    snapshot("results_multi.txt", text)


def test_single_eps_has_no_chart():
    text = as_text(render_results([make_doc(eps=(8 / 255,))]))
    assert "Worst-case accuracy vs eps" not in text


def test_partial_results_render_with_a_note_snapshot():
    text = as_text(render_results([make_partial()], labels=["partial.json"]))
    assert "interrupted run: 1 of 2 eps finished" in text
    assert "pending" in text and "†" in text
    assert "Provisional (interrupted run)" in text
    snapshot("results_partial.txt", text)
    for fmt in FORMATS:  # every format copes with a partial document
        out = render(results_data([make_partial()], labels=["partial.json"]), fmt)
        assert out


def test_empty_results_render_with_a_note_snapshot():
    text = as_text(render_results([make_empty()], labels=["empty.json"]))
    assert "no results yet" in text and "No verdict" in text
    snapshot("results_empty.txt", text)
    data = results_data([make_empty()], labels=["empty.json"])
    check_html(render(data, "html"))
    check_markdown_tables(render(data, "markdown"))
    assert json.loads(render(data, "json"))["files"][0]["verdict"]["available"] is False


def test_no_color_and_colors(monkeypatch):
    renderable = render_results([make_doc()])
    color = re.compile(r"\x1b\[[0-9;]*3[0-9](;[0-9]+)*m|\x1b\[[0-9;]*9[0-7]m")
    buf = io.StringIO()
    Console(file=buf, width=100, force_terminal=True, color_system="standard").print(renderable)
    assert color.search(buf.getvalue())  # colours when allowed...
    monkeypatch.setenv("NO_COLOR", "1")
    buf = io.StringIO()
    Console(file=buf, width=100, force_terminal=True, color_system="standard").print(renderable)
    assert not color.search(buf.getvalue())  # ...and none under NO_COLOR


def test_chart_lines_place_the_series():
    block = {
        "xs": [0.0, 0.5, 1.0],
        "xlabels": ["0", "0.5", "1"],
        "xname": "eps",
        "series": [
            {"name": "base", "marker": "b", "ys": [1.0, 0.5, 0.0]},
            {"name": "hardened", "marker": "h", "ys": [1.0, None, 0.25]},
        ],
    }
    lines = chart_lines(block, width=40, height=5)
    assert all(len(line) <= 40 for line in lines)
    plot = [line.split("|", 1)[1] for line in lines[:5]]
    assert plot[0][0] == "*"  # both series at 100% for x=0: overlap
    assert plot[2].strip(" .") == "b"  # base 50% in the middle row (on its line)
    assert plot[4].rstrip().endswith("b")  # base at 0% on the right
    assert "h" in plot[3]  # hardened 25%
    assert "* = overlapping points" in lines[-1] or "* = overlapping points" in lines[-2]


# --------------------------------------------------------------------------------------------------
# the model card


def test_card_table_snapshot():
    data = card_data(make_meta(), path="runs/hardened.safetensors", diagnostics=DIAGNOSTICS)
    assert "train_indices" not in data["check"]
    text = as_text(render(data, "table"))
    for needle in (
        "mean ||f(z(0))||",
        "Jacobians with all Re(eig) < 0",
        "89.1%",
        "mean ||z(T) - z(0)||",
        "NFE per solve (batch of 64)",
        "26 (dopri5)",
        "no significant difference at n=256",
        "+3.1",
        "REDUCED: 50 of 100 APGD-CE steps",
        "[-1.2, +7.5]",
        "held-out check",
        "[43.9, 56.1]",
    ):
        assert needle in text, needle
    snapshot("card_table.txt", text)


def test_card_markdown_html_json():
    data = card_data(make_meta(), path="runs/hardened.safetensors", diagnostics=DIAGNOSTICS)
    md = render(data, "markdown")
    check_markdown_tables(md)
    snapshot("card.md", md)
    check_html(render(data, "html"))
    assert json.loads(render(data, "json"))["diagnostics"]["nfe_per_solve"] == 26


def test_card_without_diagnostics_or_guard():
    meta = make_meta()
    meta["check"] = None
    data = card_data(meta, path="h.safetensors", notes=["stability diagnostics not computed: pass --data"])
    text = as_text(render(data, "table"))
    assert "Stability diagnostics (computed now)" not in text
    assert "pass --data" in text and "skipped (--no-check)" in text


def test_card_json_is_strict_even_with_nan():
    data = card_data(make_meta(), path="h.safetensors", diagnostics={**DIAGNOSTICS, "mean_max_real_eig": float("nan")})
    assert json.loads(render(data, "json"))["diagnostics"]["mean_max_real_eig"] is None


# --------------------------------------------------------------------------------------------------
# CLI


@pytest.mark.parametrize("fmt", FORMATS)
def test_cli_every_format(tmp_path, fmt):
    p = write(tmp_path, "r.json", make_doc())
    result = runner.invoke(app, ["report", str(p), "--format", fmt])
    assert result.exit_code == 0, result.output
    out = result.stdout
    if fmt == "json":
        assert json.loads(out)["files"][0]["label"] == "r.json"
    elif fmt == "html":
        check_html(out)
    elif fmt == "markdown":
        assert out.startswith("# sodef attack results: r.json")
    else:
        assert "Verdict:" in out and "\x1b[" not in out  # piped: clean text
        assert all(line == line.rstrip() for line in out.splitlines())


def test_cli_out_writes_a_file_and_infers_the_format(tmp_path):
    p = write(tmp_path, "r.json", make_doc())
    out = tmp_path / "report.md"
    result = runner.invoke(app, ["report", str(p), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert out.read_text(encoding="utf-8").startswith("# sodef attack results")
    txt = tmp_path / "report.txt"
    result = runner.invoke(app, ["report", str(p), "--format", "table", "--out", str(txt)])
    assert result.exit_code == 0, result.output
    assert "Verdict:" in txt.read_text(encoding="utf-8")


def test_cli_several_files(tmp_path):
    a = write(tmp_path, "a.json", make_doc())
    b = write(tmp_path, "b.json", make_partial())
    result = runner.invoke(app, ["report", str(a), str(b)])
    assert result.exit_code == 0, result.output
    assert "A: a.json" in result.stdout and "B: b.json" in result.stdout


def one_message(stderr: str) -> str:
    """The single error message on stderr (rich may wrap it at the console width)."""
    assert stderr.startswith("error:") and stderr.count("error:") == 1, stderr
    return " ".join(stderr.split())


def test_cli_missing_file_is_one_line_error(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path / "nope.json")])
    assert result.exit_code == 1
    assert one_message(result.stderr).endswith("does not exist")


def test_cli_non_results_json_is_an_error(tmp_path):
    p = tmp_path / "other.json"
    p.write_text('{"hello": "world"}')
    result = runner.invoke(app, ["report", str(p)])
    assert result.exit_code == 1
    assert "not a sodef attack results file" in result.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = runner.invoke(app, ["report", str(bad)])
    assert result.exit_code == 1 and "cannot read results file" in result.stderr


@pytest.mark.parametrize("maker,needle", [(make_partial, "interrupted run"), (make_empty, "no results yet")])
def test_cli_partial_and_empty(tmp_path, maker, needle):
    p = write(tmp_path, "r.json", maker())
    result = runner.invoke(app, ["report", str(p)])
    assert result.exit_code == 0, result.output
    assert needle in result.stdout


def test_cli_card_options_on_results_are_a_usage_error(tmp_path):
    p = write(tmp_path, "r.json", make_doc())
    result = runner.invoke(app, ["report", str(p), "--data", "demo"])
    assert result.exit_code == 2
    assert "model card" in result.stderr


def test_cli_model_card(hardened_file):
    result = runner.invoke(app, ["report", str(hardened_file), "--n", "32", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Model card: hardened.safetensors" in out
    assert "Stability diagnostics (computed now)" in out and "NFE per solve (batch of 32)" in out
    assert "skipped (--no-check)" in out  # the tiny test file was hardened without the guard


def test_cli_model_card_without_data_notes_it(hardened_file, monkeypatch):
    import sodef_cli.diagnostics as diag

    monkeypatch.setattr(diag, "default_card_data", lambda meta: None)  # as if the hardening data were elsewhere
    result = runner.invoke(app, ["report", str(hardened_file), "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["diagnostics"] is None and "pass --data" in data["notes"][0]


def test_cli_model_card_errors(hardened_file, tmp_path):
    result = runner.invoke(app, ["report", str(hardened_file), str(hardened_file)])
    assert result.exit_code == 2 and "exactly one" in result.stderr
    result = runner.invoke(app, ["report", str(tmp_path / "missing.safetensors")])
    assert result.exit_code == 1
    one_message(result.stderr)


# --------------------------------------------------------------------------------------------------
# the package: one renderer per format over the same blocks; documents checked once, on load


def _one_block_of_each_type() -> list[dict]:
    from sodef_cli.report import blocks as b

    return [
        b.title("every block"),
        b.heading("a heading"),
        b.kv("a kv list", [["key", "value"]]),
        b.table(
            "a table",
            [
                b.col("attack"),
                b.col("acc", "right", "value"),
                b.col("delta", "right", "delta"),
                b.col("result", role="status"),
            ],
            [["apgd-ce", "50.0%", "+2.0", "FLAG"]],
            "a caption",
        ),
        b.note("a note", "warn"),
        b.verdict("a verdict", "good", "A"),
        b.chart("a chart", [0.0, 1.0], ["0", "1"], "eps", [{"name": "base", "marker": "b", "ys": [0.5, 0.25]}]),
        b.bars(
            "some bars",
            [{"name": "base", "eps": 0.0, "bars": [{"label": "clean", "value": 0.5, "ci": [0.4, 0.6]}]}],
            "bars caption",
        ),
        b.hist(
            "a histogram",
            [{"name": "final", "counts": [1, 3, 2], "lo": -1.0, "hi": 0.5}],
            "max Re(eig)",
            "hist caption",
        ),
        b.image("an image", "does/not/exist.png", "image caption"),
    ]


def test_every_format_has_a_renderer_and_every_renderer_draws_every_block_type():
    from sodef_cli.report import RENDERERS, render_html, render_markdown, render_rich
    from sodef_cli.report.blocks import BLOCK_TYPES

    assert FORMATS == ("table", "markdown", "json", "html") and set(RENDERERS) == set(FORMATS)
    blocks = _one_block_of_each_type()
    assert sorted(bl["type"] for bl in blocks) == sorted(BLOCK_TYPES)
    texts = {
        "table": as_text(render_rich.render_blocks(blocks)),
        "markdown": render_markdown.render_blocks(blocks),
        "html": render_html.render_blocks(blocks),
    }
    for fmt, text in texts.items():
        for needle in (
            "every block",
            "a heading",
            "a kv list",
            "a table",
            "apgd-ce",
            "a note",
            "a verdict",
            "a chart",
            "some bars",
            "a histogram",
            "an image",
        ):
            assert needle in text, (fmt, needle)
    check_html(texts["html"])
    check_markdown_tables(texts["markdown"])
    # every format of render() goes through its own renderer: the same data, four different outputs
    data = results_data([make_doc()], labels=["r.json"])
    outs = {fmt: render(data, fmt) for fmt in FORMATS}
    assert json.loads(outs["json"])["kind"] == "results"
    assert outs["markdown"].startswith("# sodef attack results") and outs["html"].startswith("<!DOCTYPE html>")
    assert "Verdict:" in as_text(outs["table"])
    with pytest.raises(ValueError, match="unknown format"):
        render(data, "pdf")


@pytest.mark.parametrize(
    "mutate,field",
    [
        (
            lambda d: d["runs"][0]["models"]["hardened"]["attacks"]["square"].update(robust=[True]),
            "hardened.attacks.square.robust",
        ),
        (lambda d: d["runs"][1]["models"]["base"].update(clean="TTTT"), "runs[1].models.base.clean"),
        (lambda d: d["runs"][0].update(eps=float("nan")), "runs[0].eps"),
        (lambda d: d["config"].update(eps=[8 / 255, "x"]), "config.eps[1]"),
        (lambda d: d["runs"][0]["checks"][1].pop("name"), "runs[0].checks[1].name"),
        (lambda d: d["model"].update(head=[1]), "model.head"),
    ],
)
def test_a_malformed_document_is_rejected_on_load_naming_the_field(mutate, field):
    from sodef_cli.errors import ResultsError
    from sodef_cli.report.results import Results

    doc = make_doc()
    mutate(doc)
    with pytest.raises(ResultsError, match="malformed results file") as err:
        Results.load(doc, "bad.json")
    assert field in str(err.value) and str(err.value).startswith("bad.json: ")
    with pytest.raises(ResultsError, match=re.escape(field)):
        results_data([doc], labels=["bad.json"])


def test_a_comparison_whose_reference_is_not_a_model_is_rejected_on_load():
    from sodef_cli.errors import ResultsError
    from sodef_cli.report.results import Results

    doc = {
        **make_doc(),
        "schema_version": 2,
        "kind": "comparison",
        "reference": "nobody",
        "models": [{"label": "base"}, {"label": "hardened"}],
    }
    with pytest.raises(ResultsError, match="reference: expected the label of one of the models"):
        Results.load(doc, "c.json")
    Results.load({**doc, "reference": "base"}, "c.json")  # the same document with a real reference loads


def test_results_without_stored_checks_get_provisional_ones_and_ignore_unknown_attacks():
    doc = make_partial()
    run = doc["runs"][0]
    del run["checks"]
    run["models"]["hardened"]["attacks"]["attack-from-the-future"] = _attack("white-box", [T] * 8, run["eps"], 1.0)
    fd = results_data([doc], labels=["p.json"])["files"][0]
    r0 = fd["runs"][0]
    assert r0["checks_provisional"] is True
    assert [c["name"] for c in r0["checks"] if c.get("flagged")] == [
        "black-box beats white-box",
        "transfer beats direct",
    ]
    assert (
        "attack-from-the-future" in r0["models"]["hardened"]["attacks"]
    )  # shown, though this version cannot classify it
    assert fd["attack_kinds"]["square"] == "black-box" and "attack-from-the-future" not in fd["attack_kinds"]


@pytest.mark.parametrize(
    "adjoint,needle",
    [
        (True, "adjoint yes (its gradients, in training and for white-box attacks, come from the adjoint solve)"),
        (False, "adjoint no (its gradients come from direct backprop through the solver)"),
    ],
)
def test_the_card_says_what_the_adjoint_setting_affects(adjoint, needle):
    meta = make_meta()
    meta["config"]["head"]["adjoint"] = adjoint
    md = render(card_data(meta, path="h.safetensors"), "markdown")
    assert needle in md and "in training\n" not in md and "adjoint yes in training" not in md


def test_malformed_card_metadata_is_rejected_when_the_card_data_is_made():
    from sodef_cli.errors import ModelFileError

    for change, field in (
        (lambda m: m["metrics"]["stability"].update(final=None), "metadata.metrics.stability.final"),
        (lambda m: m["check"]["base"].update(clean_ci95=[0.1]), "metadata.check.base.clean_ci95"),
        (lambda m: m.update(classes=[1, 2]), "metadata.classes[0]"),
    ):
        meta = make_meta()
        change(meta)
        with pytest.raises(ModelFileError, match=re.escape(field)):
            card_data(meta, path="h.safetensors")


def test_the_harden_summary_is_blocks_in_every_format():
    from sodef_cli.report import render_harden_summary
    from sodef_cli.report.card import harden_summary_blocks
    from sodef_cli.report.render_html import render_blocks as html_of
    from sodef_cli.report.render_markdown import render_blocks as markdown_of

    summary = {
        "out": "h.safetensors",
        "base": {"test_clean_acc": 0.5, "val_acc": 0.5},
        "hardened": {"test_clean_acc": 0.46, "val_acc": 0.47},
        "data": {"test": 500},
        "split": {"val": 200},
        "timings_s": {"phase1": 1.25},
        "check": {
            **make_meta()["check"],
            "outcome": "no significant difference",
            "checks": [{"name": "transfer beats direct", "flagged": True, "evidence": "2 of 9"}],
        },
    }
    blocks = harden_summary_blocks(summary)
    assert [bl["type"] for bl in blocks][:2] == ["title", "table"] and blocks[-1]["type"] == "verdict"
    assert blocks[-1]["level"] == "warn" and blocks[-1]["label"] == "guard"
    text = " ".join(as_text(render_harden_summary(summary), width=200).split())
    assert "hardened -> h.safetensors" in text and "50.0% [45.6, 54.4]" in text and "held-out check images" in text
    assert "gradient masking signature (transfer beats direct): 2 of 9" in text and "time: phase1 1.2s" in text
    check_markdown_tables(markdown_of(blocks))
    check_html(html_of(blocks))
    nocheck = harden_summary_blocks({**summary, "check": None})
    assert nocheck[-1]["type"] == "note" and "hardening guard skipped (--no-check)" in nocheck[-1]["text"]
