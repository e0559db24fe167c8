"""`sodef export FILE --to timm|hub|onnx`: each round trip checked numerically on 64 demo test images against
`load_hardened(FILE)`, what each target refuses (a SODEF head for timm/hub, an adaptive solver for onnx), and every
bad input: exit code, one line, nothing left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from sodef_cli import load_hardened
from sodef_cli.cli import app
from sodef_cli.io import load_tensors, read_metadata, save_model_file

runner = CliRunner()
LINEAR = {
    "head.kind": "linear",
    "adversarial.attack": "fgsm",
    "adversarial.stages": 1,
    "adversarial.epochs": 1,
    "adversarial.select_n": 50,
    "adversarial.select_steps": 2,
    "adversarial.eps": 1 / 255,  # an epoch that beats the start: the tuned tensors differ from the original
    "adversarial.ema": 0.0,  # one epoch: the default's weight averaging would keep the weights near the start
    "adversarial.max_clean_drop": -1.0,
}
FAST = ["--data", "demo", "--suite", "quick", "--n", "16", "--steps", "2", "--queries", "10", "--batch-size", "16"]


def _harden(out: Path, overrides: dict) -> Path:
    from sodef_cli.config import HardenConfig, resolve
    from sodef_cli.harden import harden

    summary = harden(resolve(HardenConfig, overrides=overrides), out)
    assert summary["adversarial"]["best_epoch"] >= 1, "the fixture must keep a trained epoch (tuned != original)"
    return out


@pytest.fixture(scope="module")
def linear_file(tmp_path_factory, tiny_harden_overrides) -> Path:
    """test_resnet (no classifier of its own) with a linear probe and its last stage trained adversarially (FGSM):
    the file holds backbone.*, tuned.*, probe.* and linear.*; the guard ran (small), so the card has figures."""
    out = tmp_path_factory.mktemp("linear") / "linear.safetensors"
    over = {**tiny_harden_overrides, **LINEAR, "check.enabled": True, "check.n": 32, "check.steps": 2}
    return _harden(out, {"model": "test_resnet", **over})


@pytest.fixture(scope="module")
def linear_on_base(base_run, tmp_path_factory, tiny_harden_overrides) -> Path:
    """The pretrain base (its own 10-class classifier) with that classifier and its last stage trained
    adversarially: the trained classifier is stored among tuned.* (no linear.*)."""
    out = tmp_path_factory.mktemp("linear_base") / "own.safetensors"
    over = {k: v for k, v in tiny_harden_overrides.items() if k != "image_size"}
    return _harden(out, {"model": str(base_run[0]), **over, **LINEAR})


def _images(path: Path, n: int = 64) -> torch.Tensor:
    """The first ``n`` demo test images at the file's input size, in [0,1]."""
    from sodef_cli.data import load_data

    size = read_metadata(path)["backbone"]["input_size"][-1]
    return load_data("demo", image_size=size).test.images[:n].float() / 255


def _expected(path: Path, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return load_hardened(path)(x)


def _export(*args: str):
    return runner.invoke(app, ["export", *map(str, args)])


def _error(res, code: int, *needles: str) -> str:
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    flat = " ".join(" ".join(lines).split())
    assert flat.startswith("error: ") and flat.count("error:") == 1, res.stderr
    for needle in needles:
        assert needle in flat, flat
    return flat


def _listing(folder: Path) -> list[str]:
    """Everything in ``folder`` (hidden staging folders included), with sizes."""
    return sorted(f"{p.relative_to(folder)} {p.stat().st_size if p.is_file() else 'dir'}" for p in folder.rglob("*"))


# ---------------------------------------------------------------------------------------------- timm

# the loading code a user runs: plain timm, with sodef_cli made unimportable
_PLAIN_TIMM = textwrap.dedent(
    """
    import sys
    sys.modules["sodef_cli"] = None  # any import of sodef_cli fails
    import json, timm, torch
    from safetensors.torch import load_file, save_file
    arch, k, weights, images, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    model = timm.create_model(
        arch, num_classes=k, pretrained=True, pretrained_cfg_overlay=dict(file=weights, num_classes=k)
    ).eval()
    sd = load_file(weights)
    assert set(sd) == set(model.state_dict()), "keys do not match timm's exactly"
    with torch.no_grad():
        save_file({"logits": model(load_file(images)["x"]).contiguous()}, out)
    """
)


@pytest.mark.parametrize("which", ["linear_file", "linear_on_base"])
def test_timm_export_loads_in_plain_timm_with_the_hardened_weights(which, request, tmp_path):
    """Catches: the original backbone.* exported instead of the adversarially tuned tensors, a linear head (linear.*)
    not put in timm's classifier or the tuned own classifier dropped, keys timm does not load strictly, a dependency
    on sodef_cli at load time, and a normalization other than the hardened model's."""
    path = request.getfixturevalue(which)
    out = tmp_path / "w.safetensors"
    res = _export(path, "--to", "timm", "--out", out)
    assert res.exit_code == 0, res.output
    assert "max |logit diff|" in res.stdout and "pretrained_cfg_overlay" in res.stdout
    meta, tensors, sd = read_metadata(path), load_tensors(path), load_file(str(out))
    tuned = {k[len("tuned.") :]: v for k, v in tensors.items() if k.startswith("tuned.")}
    assert tuned and any(not torch.equal(v, tensors[f"backbone.{k}"]) for k, v in tuned.items())
    for k, v in tuned.items():
        assert torch.equal(sd[k], v), k
    if which == "linear_file":
        assert torch.equal(sd["fc.weight"], tensors["linear.weight"]) and torch.equal(
            sd["fc.bias"], tensors["linear.bias"]
        )
    x = _images(path)
    spec = meta["backbone"]
    mean, std = torch.tensor(spec["mean"]).view(1, -1, 1, 1), torch.tensor(spec["std"]).view(1, -1, 1, 1)
    save_file({"x": ((x - mean) / std).contiguous()}, str(tmp_path / "x.safetensors"))
    got = tmp_path / "logits.safetensors"
    script = [sys.executable, "-c", _PLAIN_TIMM, spec["timm_name"], str(meta["num_classes"]), str(out)]
    proc = subprocess.run(
        [*script, str(tmp_path / "x.safetensors"), str(got)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    diff = (load_file(str(got))["logits"] - _expected(path, x)).abs().max().item()
    print(f"timm round trip {which}: max |diff| {diff:.3g}")
    assert diff <= 1e-5


@pytest.mark.parametrize("to", ["timm", "hub"])
def test_a_sodef_head_is_refused_by_timm_and_hub(to, hardened_file, tmp_path):
    """Catches: an ODE head silently exported as something timm runs differently (e.g. the backbone alone)."""
    out = tmp_path / ("w.safetensors" if to == "timm" else "folder")
    res = _export(hardened_file, "--to", to, "--out", out)
    _error(res, 2, "SODEF head", "--to onnx")
    assert _listing(tmp_path) == []


# ---------------------------------------------------------------------------------------------- hub


@pytest.fixture(scope="module")
def linear_results(linear_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("linear_results") / "results.json"
    res = runner.invoke(app, ["attack", str(linear_file), *FAST, "--no-checks", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_hub_folder_loads_with_local_dir_and_carries_its_card(linear_file, linear_results, tmp_path):
    """Catches: a config.json timm's local-dir: loader misreads (wrong classes, input size or mean/std), weights
    that differ from the hardened model's, and a card whose figures are not the guard's and the results'."""
    import timm

    from sodef_cli.report import pct_ci, results_data

    out = tmp_path / "hub"
    res = _export(linear_file, "--to", "hub", "--out", out, "--results", linear_results)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    meta = read_metadata(linear_file)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architecture"] == "test_resnet" and cfg["num_classes"] == 10 and cfg["label_names"] == meta["classes"]
    pc = cfg["pretrained_cfg"]
    assert pc["input_size"] == [3, 16, 16] and pc["mean"] == meta["backbone"]["mean"] and pc["crop_pct"] == 1.0
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert model.pretrained_cfg["label_names"] == meta["classes"]
    assert list(model.pretrained_cfg["input_size"]) == [3, 16, 16]
    x = _images(linear_file)
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        diff = (model((x - mean) / std) - _expected(linear_file, x)).abs().max().item()
    print(f"hub round trip: max |diff| {diff:.3g}")
    assert diff <= 1e-5
    card = (out / "README.md").read_text()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    assert "library_name: timm" in front and "- adversarial-robustness" in front and "license: " in front
    check = meta["check"]
    h = check["hardened"]
    assert pct_ci(h["clean"], h["clean_ci95"]) in body and pct_ci(h["worst_case"], h["worst_case_ci95"]) in body
    assert check["recommendation"].split(";")[0] in body  # the guard's verdict
    fd = results_data([json.loads(linear_results.read_text())], labels=["results.json"])["files"][0]
    assert fd["verdict"]["text"][:80] in " ".join(body.split())
    hr = fd["runs"][0]["models"]["hardened"]
    assert pct_ci(hr["worst_case"], hr["worst_case_ci95"]) in body and "apgd-ce" in body and "8/255" in body
    assert "trained adversarially with FGSM" in body and "hf upload USER/NAME" in body
    print("\n".join(card.splitlines()[:40]))


# ---------------------------------------------------------------------------------------------- onnx


@pytest.mark.parametrize("which", ["hardened_file", "linear_file"])
def test_onnx_runs_the_whole_model_with_a_dynamic_batch(which, request, tmp_path):
    """Catches: normalization left out of the graph, a SODEF head whose fixed-step loop is not unrolled (fewer f
    evaluations than the shipped solver takes), and a batch size frozen at export time."""
    ort = pytest.importorskip("onnxruntime")  # the export extra; `make test` installs it
    onnx = pytest.importorskip("onnx")
    path = request.getfixturevalue(which)
    out = tmp_path / "m.onnx"
    res = _export(path, "--to", "onnx", "--out", out)
    assert res.exit_code == 0, res.output
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = _images(path)
    want = _expected(path, x)
    for batch in (x, x[:3]):
        got = torch.from_numpy(session.run(None, {"images": batch.numpy()})[0])
        diff = (got - want[: len(batch)]).abs().max().item()
        print(f"onnx round trip {which} batch {len(batch)}: max |diff| {diff:.3g}")
        assert diff <= 1e-4
    graph = onnx.load(str(out))
    sins = sum(1 for node in graph.graph.node if node.op_type == "Sin")
    if which == "hardened_file":  # the shipped rk4 (4 evaluations of sin(-(Wz+b)) a step), every step in the graph
        block = load_hardened(path).head.block
        assert block.solver == "rk4" and sins == 4 * round(block.t1 / block.step_size) >= 4
    else:
        assert sins == 0
    props = {p.key: p.value for p in graph.metadata_props}
    assert json.loads(props["sodef_cli"])["classes"] == read_metadata(path)["classes"]


def test_onnx_unrolls_every_step_of_the_declared_solver(hardened_file, tmp_path):
    """Catches: a fixed-step loop traced as one step (head.step_size 0.5 over t1 1.0 is 2 rk4 steps: 8 sin layers)."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    meta = read_metadata(hardened_file)
    assert meta["config"]["head"]["step_size"] == 0.5 and meta["config"]["head"]["t1"] == 1.0
    meta["inference"] = None  # no shipped solver: head.solver as declared (rk4, step 0.5)
    declared = tmp_path / "declared.safetensors"
    save_model_file(declared, load_tensors(hardened_file), meta)
    out = tmp_path / "m.onnx"
    assert _export(declared, "--to", "onnx", "--out", out).exit_code == 0
    assert sum(1 for node in onnx.load(str(out)).graph.node if node.op_type == "Sin") == 8
    x = _images(declared)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
    assert (torch.from_numpy(got) - _expected(declared, x)).abs().max().item() <= 1e-4


_TRIED = {
    "n": 200,
    "agreement_required": 0.995,
    "reference": {"solver": "dopri5", "nfe": 26},
    "tried": [
        {"solver": "euler", "steps": 2, "nfe": 2, "agreement": 0.9, "qualifies": False},
        {"solver": "midpoint", "steps": 2, "nfe": 4, "agreement": 0.97, "qualifies": False},
    ],
    "chosen": None,
}


@pytest.mark.parametrize(
    "history, needle",
    [
        ("declared", "rk4 with step 0.5 (head.step_size"),  # inference.solver=declared: no record
        (
            "none qualified",
            "midpoint with 2 step(s) agreed best with dopri5 (97.00% of its predictions, 99.5% required",
        ),
        ("adversarial", "rk4 with step 0.5, the solver its adversarial training differentiated through"),
    ],
)
def test_onnx_refuses_an_adaptive_solver_and_names_the_fixed_step_one(history, needle, hardened_file, tmp_path):
    """Catches: an adaptive (dopri5) head traced into a graph whose step count is that of the example input, and a
    refusal that does not say which fixed-step solver the file can have instead."""
    meta = read_metadata(hardened_file)
    meta["config"]["head"]["solver"] = "dopri5"
    meta["inference"] = _TRIED if history == "none qualified" else None
    if history == "adversarial":
        meta["config"]["adversarial"]["attack"] = "fgsm"
    adaptive = tmp_path / "adaptive.safetensors"
    save_model_file(adaptive, load_tensors(hardened_file), meta)
    out = tmp_path / "out" / "m.onnx"
    _error(_export(adaptive, "--to", "onnx", "--out", out), 2, "adaptive dopri5", needle)
    assert not out.parent.exists() or _listing(out.parent) == []


# ---------------------------------------------------------------------------------------------- bad input


@pytest.fixture
def bad_files(tmp_path, hardened_file) -> dict[str, Path]:
    folder = tmp_path / "in"
    folder.mkdir()
    text = folder / "notes.safetensors"
    text.write_text("not a model\n" * 20)
    plain = folder / "plain.safetensors"
    save_file({"weight": torch.zeros(3, 3)}, str(plain))
    truncated = folder / "truncated.safetensors"
    truncated.write_bytes(hardened_file.read_bytes()[:-1000])
    return {"text": text, "plain": plain, "truncated": truncated, "missing": folder / "none.safetensors"}


@pytest.mark.parametrize(
    "kind, needle",
    [
        ("text", "is not a valid safetensors file"),
        ("plain", "without sodef_cli metadata"),
        ("truncated", "truncated?"),
        ("missing", "does not exist"),
    ],
)
@pytest.mark.parametrize("to", ["timm", "onnx"])
def test_files_that_are_not_hardened_files(kind, needle, to, bad_files, tmp_path):
    """Catches: a traceback, or a partial output, for a file that is not (or no longer) a sodef_cli file."""
    out = tmp_path / "out"
    out.mkdir()
    res = _export(bad_files[kind], "--to", to, "--out", out / ("w.safetensors" if to == "timm" else "m.onnx"))
    _error(res, 1, needle)
    assert _listing(out) == []


def test_unknown_target_is_a_usage_error(hardened_file, tmp_path):
    """Catches: an unknown --to accepted, or rejected without the valid names (in one line, and in --help)."""
    from sodef_cli.registry import EXPORT_TARGETS

    _error(_export(hardened_file, "--to", "tflite", "--out", tmp_path / "m"), 2, "'tflite'", "timm, hub or onnx")
    assert _listing(tmp_path) == []
    wide = {"env": {"COLUMNS": "200"}, "terminal_width": 200}
    assert f"<{'|'.join(EXPORT_TARGETS)}>" in runner.invoke(app, ["export", "--help"], **wide).output


def test_existing_out_needs_force_and_survives_a_failed_export(linear_file, tmp_path, monkeypatch):
    """Catches: an existing output overwritten without --force, and one destroyed (or a staging folder left) by an
    export that fails its check."""
    import sodef_cli.export

    out = tmp_path / "w.safetensors"
    out.write_bytes(b"precious")
    _error(_export(linear_file, "--to", "timm", "--out", out), 2, "exists", "--force")
    assert out.read_bytes() == b"precious"
    monkeypatch.setattr(sodef_cli.export, "TOLERANCE", -1.0)  # every check fails
    _error(_export(linear_file, "--to", "timm", "--out", out, "--force"), 1, "was not written")
    assert out.read_bytes() == b"precious" and _listing(tmp_path) == ["w.safetensors 8"]
    monkeypatch.undo()
    res = _export(linear_file, "--to", "timm", "--out", out, "--force")
    assert res.exit_code == 0, res.output
    assert set(load_file(str(out))) and _listing(tmp_path) == [f"w.safetensors {out.stat().st_size}"]


def test_force_replaces_an_earlier_hub_folder_only(linear_file, tmp_path):
    """Catches: --force deleting a folder that is not an earlier export (--out . --force would delete the work)."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "train.py").write_text("print(1)\n")
    _error(_export(linear_file, "--to", "hub", "--out", work, "--force"), 2, "refusing to replace")
    assert (work / "train.py").exists()
    hub = tmp_path / "hub"
    assert _export(linear_file, "--to", "hub", "--out", hub).exit_code == 0
    _error(_export(linear_file, "--to", "hub", "--out", hub), 2, "exists", "--force")
    (hub / "README.md").write_text("old card")
    res = _export(linear_file, "--to", "hub", "--out", hub, "--force")
    assert res.exit_code == 0, res.output
    assert (hub / "README.md").read_text().startswith("---\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub", "work"]


def test_results_of_another_model_are_refused(hardened_file, linear_file, tmp_path):
    """Catches: a card quoting attack results that were measured on another model."""
    other = tmp_path / "other.json"
    res = runner.invoke(app, ["attack", str(hardened_file), *FAST, "--no-checks", "--out", str(other)])
    assert res.exit_code == 0, res.output
    _error(_export(linear_file, "--to", "hub", "--out", tmp_path / "hub", "--results", other), 2, "other models")
    assert not (tmp_path / "hub").exists()
    _error(_export(linear_file, "--to", "timm", "--out", tmp_path / "w.safetensors", "--results", other), 2, "--to hub")


def test_a_base_file_is_not_exported(base_run, tmp_path):
    """Catches: a `sodef pretrain` file exported as if it had been hardened."""
    _error(_export(base_run[0], "--to", "timm", "--out", tmp_path / "w.safetensors"), 1, "expected sodef_cli/hardened")
    assert _listing(tmp_path) == []


def test_a_linear_head_timm_cannot_hold_is_a_usage_error(linear_file, tmp_path, monkeypatch):
    """Catches: a linear head written into a classifier of another kind (here a 1x1 convolution) without a word."""
    import sodef_cli.export

    made = sodef_cli.export._timm_model

    def conv_classifier(spec, k, device="meta"):
        model = made(spec, k, device)
        with torch.device(device):
            model.fc = torch.nn.Conv2d(model.num_features, k, 1)
        return model

    monkeypatch.setattr(sodef_cli.export, "_timm_model", conv_classifier)
    _error(_export(linear_file, "--to", "timm", "--out", tmp_path / "w.safetensors"), 2, "Conv2d", "--to onnx")
    assert _listing(tmp_path) == []


def test_hub_card_of_a_comparison_marks_this_model(base_run, linear_on_base, tmp_path):
    """Catches: a card of a several-model results file that does not say which row is the exported model."""
    from sodef_cli.report import results_data

    cmp = tmp_path / "cmp.json"
    res = runner.invoke(app, ["attack", str(base_run[0]), str(linear_on_base), *FAST, "--no-checks", "--out", str(cmp)])
    assert res.exit_code == 0, res.output
    out = tmp_path / "hub"
    res = _export(linear_on_base, "--to", "hub", "--out", out, "--results", cmp)
    assert res.exit_code == 0, res.output
    body = " ".join((out / "README.md").read_text().split())
    assert "| own.safetensors (this model) |" in body and "| base.safetensors |" in body
    fd = results_data([json.loads(cmp.read_text())], labels=["cmp.json"])["files"][0]
    assert fd["verdict"]["text"][:60] in body


@pytest.mark.parametrize("to", ["timm", "hub"])
def test_an_export_timm_cannot_load_leaves_nothing(to, linear_file, tmp_path, monkeypatch):
    """Catches: a failure to read the export back escaping as a traceback, or leaving the file or folder behind."""
    import timm

    create = timm.create_model

    def broken(*args, **kwargs):  # sodef_cli builds its models with pretrained=False: only the read-back breaks
        if kwargs.get("pretrained"):
            raise RuntimeError("Error(s) in loading state_dict for ResNet:\n\tMissing key(s): fc.weight")
        return create(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", broken)
    out = tmp_path / ("w.safetensors" if to == "timm" else "hub")
    _error(_export(linear_file, "--to", to, "--out", out), 1, "does not load back", "Missing key(s)", "not written")
    assert _listing(tmp_path) == []


def test_onnx_without_the_export_extra_says_how_to_install_it(hardened_file, tmp_path, monkeypatch):
    """Catches: a missing optional dependency surfacing as an internal error instead of the pip line."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime fails
    _error(_export(hardened_file, "--to", "onnx", "--out", tmp_path / "m.onnx"), 2, "pip install 'sodef-cli[export]'")
    assert _listing(tmp_path) == []
