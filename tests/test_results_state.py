"""The typed evaluation state behind `sodef attack`: JSON round trip, resume, persistence after every result;
and `sodef attack` reading a model's metadata and validating its options once."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from sodef_cli.errors import ResultsError
from sodef_cli.results import AttackResult, EvaluationState

runner = CliRunner()


def _doc() -> dict:
    atk = {
        "kind": "white-box",
        "params": {"steps": 2, "norm": "Linf", "eps": 0.03},
        "robust": [True, None, False],
        "attacked": 2,
        "seconds": 0.5,
        "projected": 0,
    }
    return {
        "schema": "sodef_cli/attack-results",
        "schema_version": 1,
        "complete": False,
        "n": 3,
        "indices": [4, 1, 7],
        "runs": [
            {
                "eps": 0.03,
                "models": {
                    "base": {"attacks": {"apgd-ce": atk}, "clean": [True, False, True]},
                    "hardened": {"attacks": {}, "clean": [True, True, True], "checks": [], "future": 1},
                },
                "done": True,
                "extra_checks": [{"name": "x", "flagged": False}],
                "checks": [{"name": "y", "flagged": None}],
            },
            {"eps": 0.06, "models": {"base": {"attacks": {}}}, "done": False, "note": "kept"},
        ],
        "estimate": {"seconds": 1.0, "timing_batch": 3},
        "started": "2024-01-01T00:00:00+00:00",
    }


def test_the_document_round_trips_with_its_key_order():
    doc = _doc()
    back = EvaluationState.from_dict(json.loads(json.dumps(doc))).to_dict()
    assert json.dumps(back) == json.dumps(doc)  # same content, same key order, unknown keys kept
    state = EvaluationState.from_dict(doc)
    assert state.runs[0].models["base"].attacks["apgd-ce"].robust == [True, None, False]
    assert state.runs[0].models["base"].robust() == [True, False, False]  # clean AND every attack, None = not robust
    assert state.runs[1].models["base"].clean is None and not state.runs[1].done


def test_record_persists_every_result_and_resume_continues(tmp_path):
    path = tmp_path / "r.json"
    fresh = {k: v for k, v in _doc().items() if k != "runs"} | {"runs": []}
    checks = []
    state = EvaluationState.open(fresh, path, check=lambda old, new: checks.append(1))
    assert not path.exists() and checks == []  # nothing to resume
    run = state.eps_run(0.03)
    measured = []
    assert state.clean(run, "base", lambda: measured.append(1) or [True, False, True]) == [True, False, True]
    assert json.loads(path.read_text())["runs"][0]["models"]["base"]["clean"] == [
        True,
        False,
        True,
    ]  # persisted at once
    state.record_attack(run, "base", "fgsm", AttackResult("white-box", {"eps": 0.03}, [False, None, True], 2, 0.1, 0))
    on_disk = json.loads(path.read_text())
    assert on_disk["runs"][0]["models"]["base"]["attacks"]["fgsm"]["robust"] == [False, None, True]
    assert on_disk["runs"][0]["done"] is False and on_disk["complete"] is False

    # an interrupted run is continued from the file: the finished attack and the clean flags are there
    again = EvaluationState.open(fresh, path, check=lambda old, new: checks.append(old["indices"] == new["indices"]))
    assert checks == [True] and "resumed" in again.header
    run2 = again.eps_run(0.03)
    assert list(run2.model("base").attacks) == ["fgsm"]
    # clean flags do not depend on eps: another eps takes them over without measuring again
    other = again.eps_run(0.06)
    assert again.clean(other, "base", lambda: measured.append(2) or []) == [True, False, True] and measured == [1]
    again.finish_eps(run2, extra_checks=[{"name": "x"}], checks=lambda r: [{"name": "c", "saw": r["extra_checks"]}])
    done = again.finish(seconds_run=1.5)
    assert done["complete"] and done["runs"][0]["done"]
    assert done["runs"][0]["checks"] == [
        {"name": "c", "saw": [{"name": "x"}]}
    ]  # made from the run with its extra checks
    assert list(done)[-2:] == ["finished", "seconds_run"]
    assert json.loads(path.read_text()) == done


def test_a_refused_resume_leaves_the_file_alone(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_doc()))
    before = path.read_text()

    def refuse(old, new):
        raise ResultsError("different")

    with pytest.raises(ResultsError):
        EvaluationState.open(_doc(), path, check=refuse)
    assert path.read_text() == before


def test_summary_is_stored_beside_the_flags_on_every_save(tmp_path):
    path = tmp_path / "r.json"
    state = EvaluationState.open(
        {"n": 3, "runs": []}, path, check=lambda o, n: None, summary=lambda d: {"runs": len(d["runs"])}
    )
    state.eps_run(0.1)
    state.save()
    assert json.loads(path.read_text())["summary"] == {"runs": 1}
    state.eps_run(0.2)
    assert state.finish()["summary"] == {"runs": 2}
    # nothing is written without a path (the hardening guard keeps its state in memory)
    EvaluationState.from_dict({"runs": []}).save()


def test_attack_reads_the_metadata_and_validates_once(hardened_file, tmp_path, monkeypatch):
    import sodef_cli.models as M
    from sodef_cli.cli import app
    from sodef_cli.evaluate import AttackConfig

    reads, validations = [], []
    real_read, real_validate = M.read_metadata, AttackConfig.validate
    monkeypatch.setattr(M, "read_metadata", lambda path, **kw: (reads.append(str(path)), real_read(path, **kw))[1])
    monkeypatch.setattr(AttackConfig, "validate", lambda self: (validations.append(1), real_validate(self))[1])
    out = tmp_path / "r.json"
    res = runner.invoke(
        app,
        [
            "attack",
            str(hardened_file),
            "--data",
            "demo",
            "--image-size",
            "16",
            "--attacks",
            "fgsm",
            "--n",
            "4",
            "--batch-size",
            "4",
            "--no-checks",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert reads == [str(hardened_file)] and validations == [1]
    assert json.loads(out.read_text())["complete"]
