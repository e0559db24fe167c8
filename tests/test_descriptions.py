"""Every place that describes a hardened model says what its file holds: the head it is built with (SODEF, linear
probe, the base's own classifier) and what adversarial training changed, never config sections that did not apply.

A linear-head file keeps the recipe's ODE settings in ``config.head``; a report that printed them ("sin ODE, dim
64, dopri5 solver") or a verdict that named a solver for it would describe a model that was never run.
"""

from __future__ import annotations

import copy

import pytest
from test_report import make_doc, make_meta

from sodef_cli.evaluate import AttackConfig, _new_results
from sodef_cli.models import describe_hardened
from sodef_cli.report import render
from sodef_cli.report.card import card_blocks, card_data
from sodef_cli.report.render_html import render_blocks as html_blocks
from sodef_cli.report.render_markdown import render_blocks as markdown_blocks
from sodef_cli.report.results import results_data

_ADV = {
    "attack": "pgd",
    "eps": 8 / 255,
    "steps": 10,
    "epochs": 1,
    "best_epoch": 1,
    "summary": "trained",
    "select": {"attack": "pgd-10", "n": 100},
    "trained_parameters": ["backbone.layer4.0.conv1.weight", "backbone.fc.weight"],
    "tuned_backbone_state": ["layer4.0.conv1.weight", "fc.weight"],
}

# (kind, base_classifier, stages) -> the Setup block's head line and the verdict's sentence about white-box attacks
CASES = {
    "sodef": (
        "sodef",
        "probe",
        None,
        "SODEF head (sin ODE, dim 64, dopri5 solver, T=5) fitted on the frozen backbone's features",
        "white-box attacks through the adaptive solver (dopri5) claimed 75.0% (+37.5).",
    ),
    "linear probe": (
        "linear",
        "probe",
        0,
        "linear head (a linear probe on the base's features) trained adversarially",
        "; white-box attacks claimed 75.0% (+37.5).",
    ),
    "own classifier + stages": (
        "linear",
        "own",
        4,
        "linear head (the base's own classifier) + last 4 stages trained adversarially",
        "; white-box attacks claimed 75.0% (+37.5).",
    ),
}


def _meta(kind: str, base_classifier: str, stages: int | None) -> dict:
    meta = make_meta()
    meta["config"]["head"]["kind"] = kind  # a linear-head file keeps the recipe's ODE settings beside it
    meta["base_classifier"] = base_classifier
    if stages is not None:
        meta["metrics"]["adversarial"] = {**copy.deepcopy(_ADV), "stages": stages}
    return meta


def _doc(tmp_path, meta: dict) -> dict:
    """A results document whose model record is the one ``sodef attack`` writes for a file with ``meta``."""
    f = tmp_path / "m.safetensors"
    f.write_bytes(b"weights")
    fresh = _new_results(f, meta, {}, AttackConfig(attacks=("apgd-ce",)), [0], [0], "cpu", {})
    doc = make_doc()
    doc["model"] = fresh["model"]
    return doc


@pytest.mark.parametrize("case", list(CASES))
def test_setup_and_verdict_describe_the_head_the_file_holds(tmp_path, case):
    """Break: the Setup block prints the config's head section regardless of head.kind, or the verdict names the
    config's solver for a model without an ODE -> the linear cases fail."""
    kind, base_classifier, stages, head_line, verdict_words = CASES[case]
    doc = _doc(tmp_path, _meta(kind, base_classifier, stages))
    fd = results_data([doc], labels=["r.json"])["files"][0]
    assert fd["header"]["head"] == head_line
    text = fd["verdict"]["text"]
    assert verdict_words in text
    if kind == "sodef":
        assert doc["model"]["head"]["solver"] == "dopri5"
    else:
        assert "solver" not in text and "ODE" not in text
        assert doc["model"]["head"] is None  # no ODE settings in the results file of a model without an ODE
    data = results_data([doc], labels=["r.json"])
    for rendered in (render(data, "markdown"), render(data, "html")):
        assert head_line.split(" (")[0] in rendered
        assert ("dopri5" in rendered) == (kind == "sodef")


@pytest.mark.parametrize("case", ["linear probe", "own classifier + stages"])
def test_model_card_of_a_linear_head_file_names_its_head_and_trained_stages(case):
    """Break: the card's head row reads the config's head section, or ignores the adversarial record -> fails."""
    kind, base_classifier, stages, head_line, _ = CASES[case]
    meta = _meta(kind, base_classifier, stages)
    data = card_data(meta, path="m.safetensors")
    assert data["description"]["text"] == head_line
    for draw in (markdown_blocks, html_blocks):
        out = draw(card_blocks(data))
        assert head_line.replace("'", "&#x27;") in out or head_line in out
        assert "dopri5" not in out and "Head and solver" not in out


def test_a_training_that_kept_no_epoch_says_so():
    """Adversarial training whose selection kept the start (epoch 0) changed nothing. Break: describe the stages
    as trained regardless of the epoch kept -> fails."""
    meta = _meta("linear", "own", 4)
    meta["metrics"]["adversarial"]["best_epoch"] = 0
    assert describe_hardened(meta)["text"] == (
        "linear head (the base's own classifier) + last 4 stages trained adversarially "
        "(no epoch kept: the weights before training)"
    )


def test_the_shipped_solver_is_the_one_described():
    """A SODEF file whose harden chose a fixed-step solver for inference is attacked through that solver; the
    description names it. Break: describe the declared head.solver -> says dopri5."""
    meta = _meta("sodef", "probe", None)
    meta["inference"] = {"chosen": {"solver": "rk4", "step_size": 0.25}}
    d = describe_hardened(meta)
    assert d["ode"]["solver"] == "rk4"
    assert (
        d["text"] == "SODEF head (sin ODE, dim 64, rk4 solver step 0.25, T=5) fitted on the frozen backbone's features"
    )


def test_a_comparison_describes_each_hardened_model_by_what_its_file_holds(tmp_path):
    """The models of a several-model results file (``models[]``, written by ``models.load_candidate``) carry the
    same description. Break: the comparison's model line reads the config's head section -> says "ODE"."""
    meta = _meta("linear", "own", 4)
    desc = describe_hardened(meta)
    doc = {
        **make_doc(),
        "schema_version": 2,
        "kind": "comparison",
        "reference": "base",
        "models": [
            {"label": "base", "kind": "base", "backbone": "resnet18", "path": "b.safetensors"},
            {
                "label": "hardened",
                "kind": "hardened",
                "backbone": "resnet18",
                "path": "h.safetensors",
                "head": None,
                "description": desc,
                "has_ode": False,
            },
        ],
    }
    fd = results_data([doc], labels=["c.json"])["files"][0]
    line = fd["header"]["model B"]
    assert "hardened file, linear head (the base's own classifier) + last 4 stages trained adversarially" in line
    assert "ODE" not in line and "solver" not in fd["verdict"]["text"]
