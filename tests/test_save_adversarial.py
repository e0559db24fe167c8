"""`sodef attack --save-adversarial DIR`: each fooled sample's first adversarial example (uint8 where rounding keeps
it adversarial, float32 where it does not), the norms of the saved perturbations in the results and the report, the
PNG grid in the html; and the plan's cascade-aware estimate with its progress total that follows the real counts."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from test_report import one_message
from torch import nn
from typer.testing import CliRunner

from sodef_cli.cli import app
from sodef_cli.evaluate import AttackConfig, _keep, run_evaluation, summarize
from sodef_cli.examples import ExampleBank, perturbation_norms, read_examples
from sodef_cli.models import load_pair
from sodef_cli.plan import AttackProgress
from sodef_cli.report import render
from sodef_cli.report.results import results_data

runner = CliRunner()


def test_perturbation_norms_are_the_median_and_max_per_attack():
    """Break: the mean instead of the median, norms over the batch instead of per sample, attacks mixed -> fails."""
    delta = torch.zeros(4, 1, 2, 2)
    delta[0, 0, 0, 0] = 0.1  # apgd-ce: Linf 0.1, L2 0.1
    delta[1, 0, :, :] = 0.02  # apgd-ce: Linf 0.02, L2 0.04
    delta[2, 0, 0, :] = 0.03  # apgd-ce: Linf 0.03, L2 0.03 * sqrt(2)
    delta[3, 0, 1, 1] = -0.5  # square: Linf 0.5, L2 0.5
    out = perturbation_norms(delta, ["apgd-ce", "apgd-ce", "apgd-ce", "square"])
    assert out["apgd-ce"]["count"] == 3 and out["square"]["count"] == 1
    assert out["apgd-ce"]["linf_median"] == pytest.approx(0.03) and out["apgd-ce"]["linf_max"] == pytest.approx(0.1)
    assert out["apgd-ce"]["l2_median"] == pytest.approx(0.03 * 2**0.5) and out["apgd-ce"]["l2_max"] == pytest.approx(
        0.1
    )
    assert out["square"] == pytest.approx(
        {"count": 1, "linf_median": 0.5, "linf_max": 0.5, "l2_median": 0.5, "l2_max": 0.5}
    )


class _GridModel(nn.Module):
    """Class 1 (wrong: every label is 0) for an image off the 1/255 grid or brighter than 0.5 on average."""

    def forward(self, x):
        off = ((x * 255 - (x * 255).round()).abs().flatten(1).amax(1) > 1e-3).float()
        bright = (x.flatten(1).mean(1) > 0.5).float()
        wrong = torch.maximum(off, bright)
        return torch.stack([1 - wrong, wrong], 1)


def test_an_example_that_rounding_undoes_is_kept_as_float32(tmp_path):
    """Sample 0 fools the model only off the pixel grid (rounding undoes it): kept as float32 and flagged; sample 1
    still fools it rounded: kept as uint8. Break: store every example as uint8 without the check -> sample 0's
    stored image no longer fools the model."""
    model = _GridModel()
    clean = torch.stack([torch.full((1, 2, 2), 51 / 255), torch.full((1, 2, 2), 127 / 255)])
    adv = torch.stack([clean[0] + 0.3 / 255, clean[1] + 2 / 255])
    y = torch.zeros(2, dtype=torch.long)
    pred = model(adv).argmax(1)
    assert pred.tolist() == [1, 1]  # both fool the model as attacked
    bank = ExampleBank(tmp_path)
    _keep(bank, model, "m", "apgd-ce", 8 / 255, [0, 1], adv, y, pred, AttackConfig(attacks=("apgd-ce",)), "cpu")
    saved = bank.write(
        labels=["m"], eps_list=[8 / 255], x_all=clean, y_all=y, indices=[7, 9], meta={"classes": ["a", "b"]}
    )
    t, meta = read_examples(tmp_path / "m.adversarial.safetensors")
    assert t["rounded_fools"].tolist() == [False, True]
    assert t["float32_rows"].tolist() == [0] and torch.equal(t["images_float32"][0], adv[0])
    assert t["images_uint8"].dtype == torch.uint8 and t["index"].tolist() == [7, 9]
    stored = torch.stack([t["images_float32"][0], t["images_uint8"][1].float() / 255])
    assert torch.equal(stored, t["images"])
    assert model(stored).argmax(1).tolist() == [1, 1] == t["prediction"].tolist()  # every stored image fools it
    assert saved["m"][0]["uint8"] == 1 and saved["m"][0]["float32"] == 1
    assert meta["format"] == "sodef_cli/adversarial-examples" and meta["attacks"] == ["apgd-ce"]


@pytest.fixture(scope="module")
def demo16():
    """The demo data at the tiny hardened model's 16 px."""
    from sodef_cli.data import load_data

    return load_data("demo", image_size=16)


@pytest.fixture(scope="module")
def saved_run(hardened_file, demo16, tmp_path_factory):
    """A run with --save-adversarial: two attacks on every clean-correct sample (so that both can fool one)."""
    d = tmp_path_factory.mktemp("adv")
    cfg = AttackConfig(attacks=("fgsm", "pgd"), n=24, steps=2, batch_size=8, checks=False, all_samples=True)
    doc = run_evaluation(hardened_file, demo16, cfg, save_adversarial=d / "examples")
    return doc, d / "examples", cfg


def test_each_fooled_sample_keeps_the_first_attack_that_fooled_it(saved_run, hardened_file, demo16):
    """Break: keep the last attack's example (all samples: pgd fools what fgsm fooled) or miss fooled samples, or
    save an image that does not fool the model -> fails."""
    doc, d, cfg = saved_run
    base, hardened, _ = load_pair(hardened_file)
    models = {"base": base, "hardened": hardened}
    x_all = demo16.test.floats(doc["indices"])
    for label, model in models.items():
        rec = doc["runs"][0]["models"][label]
        first = {}
        for name in ("fgsm", "pgd"):
            for pos, flag in enumerate(rec["attacks"][name]["robust"]):
                if flag is False:
                    first.setdefault(pos, name)
        t, meta = read_examples(d / f"{label}.adversarial.safetensors")
        attacks = meta["attacks"]
        positions = [doc["indices"].index(i) for i in t["index"].tolist()]
        assert positions == sorted(first) and len(positions) > 0
        assert [attacks[a] for a in t["attack"].tolist()] == [first[p] for p in positions]
        assert t["label"].tolist() == [doc["labels"][p] for p in positions]
        imgs = t["images"]
        with torch.no_grad():
            pred = model(imgs).argmax(1)
        assert (pred != t["label"]).all() and pred.tolist() == t["prediction"].tolist()
        delta = (imgs - x_all[positions]).flatten(1)
        assert delta.abs().amax(1).max() <= cfg.eps[0] + 0.5 / 255 + 1e-6  # rounding moves a pixel by <= 1/510
        norms = doc["adversarial_examples"][label][0]["norms"]
        assert sum(v["count"] for v in norms.values()) == len(positions)
        assert max(v["linf_max"] for v in norms.values()) == pytest.approx(float(delta.abs().amax(1).max()))
        grid = Image.open(doc["adversarial_examples"][label][0]["grid"])
        assert grid.format == "PNG" and grid.width > grid.height > 0


def test_the_report_shows_the_norms_and_the_html_embeds_the_grid(saved_run, tmp_path):
    """Break: leave the examples out of the report data, or link the grid instead of embedding it -> fails."""
    doc = saved_run[0]
    assert summarize(doc)["adversarial_examples"] == doc["adversarial_examples"]  # sodef attack --json
    data = results_data([doc], labels=["r.json"])
    assert data["files"][0]["adversarial_examples"] == doc["adversarial_examples"]
    html = render(data, "html")
    assert html.count('src="data:image/png;base64,') == 2 and "Saved adversarial examples" in html
    md = render(data, "markdown")
    assert f"]({doc['adversarial_examples']['hardened'][0]['grid']})" in md and "Linf median" in md
    moved = json.loads(json.dumps(doc))
    moved["adversarial_examples"]["hardened"][0]["grid"] = str(tmp_path / "gone.png")
    assert "picture not found" in render(results_data([moved]), "html")


@pytest.mark.parametrize(
    "make,code,needle",
    [
        (lambda p: p, 2, "is a file, not a directory"),
        (lambda p: p / "sub", 1, "cannot create the directory"),
    ],
)
def test_a_bad_directory_is_one_line_before_any_attack(hardened_file, tmp_path, make, code, needle):
    """Break: no check before the run (the error comes after the attacks, or as a traceback) -> fails."""
    (tmp_path / "f").write_text("not a directory")
    target = make(tmp_path / "f")
    out = tmp_path / "r.json"
    res = runner.invoke(
        app,
        ["attack", str(hardened_file), "--data", "demo", "--image-size", "16", "--attacks", "fgsm"]
        + ["--n", "8", "--save-adversarial", str(target), "--out", str(out)],
    )
    assert res.exit_code == code, res.output
    assert needle in one_message(res.stderr) and not out.exists()


def test_a_dry_run_creates_no_directory(hardened_file, tmp_path):
    """Break: create the directory before knowing the run happens -> an empty folder after --dry-run."""
    target = tmp_path / "later"
    res = runner.invoke(
        app,
        ["attack", str(hardened_file), "--data", "demo", "--image-size", "16", "--attacks", "fgsm", "--n", "8"]
        + ["--dry-run", "--save-adversarial", str(target)],
    )
    assert res.exit_code == 0, res.output
    assert not target.exists()


# ----------------------------------------------------------------------------------------------------
# the plan's estimate and the progress total


class _Totals:
    def __init__(self):
        self.totals: list[float] = []
        self.done = 0.0

    def start(self, task, total):
        if task == "all attacks":
            self.totals.append(total)

    def advance(self, task, n=1, **metrics):
        if task == "all attacks":
            self.done += n

    def end(self, task, **metrics):
        pass

    def log(self, message):
        pass


def test_the_progress_total_follows_the_real_counts():
    """Break: a total fixed at the plan's expectation (or counted in attacks) -> the totals do not move."""
    plan = {
        "models": [
            {
                "label": "m",
                "cost_per_sample": {"a": 1.0, "b": 2.0},
                "expected_samples": {"a": 10.0, "b": 5.0},
                "checks_seconds": 0.0,
                "prior_first_success": 0.5,
            }
        ]
    }
    rep = _Totals()
    work = AttackProgress(plan, AttackConfig(attacks=("fgsm",), eps=(0.1,)), rep)
    work.start()
    work.begin(0.1, "m", "a", 8, ["b"], first=True)  # 8 clean-correct samples: b expected on half of them
    work.advance("m", "a", 8)
    work.begin(0.1, "m", "b", 2, [], first=False)  # a fooled 6 of them: b runs on 2
    work.advance("m", "b", 2)
    assert rep.totals == [20, 16, 12] and rep.done == pytest.approx(12.0)


def test_the_estimate_models_the_cascade(hardened_file, demo16):
    """The first attack on the clean-correct share of the samples, the later ones on what one gradient-sign step
    did not fool; every attack on every clean-correct sample with --all-samples. Break: the all-samples estimate
    for a cascade -> the later attacks' expectations equal the first's."""
    plans = {}
    for all_samples in (False, True):
        cfg = AttackConfig(attacks=("fgsm", "pgd", "square"), n=40, steps=2, queries=10, all_samples=all_samples)
        plans[all_samples] = run_evaluation(hardened_file, demo16, cfg, dry_run=True)["plan"]
    for cascade, every in zip(plans[False]["models"], plans[True]["models"]):
        q, acc = cascade["prior_first_success"], cascade["clean_first_batch"]
        assert 0.0 <= q <= 0.95
        exp = cascade["expected_samples"]
        assert exp["fgsm"] == pytest.approx(40 * acc) == every["expected_samples"]["fgsm"]
        assert exp["pgd"] == pytest.approx(40 * acc * (1 - q)) and exp["square"] == pytest.approx(exp["pgd"])
        assert every["expected_samples"]["square"] == pytest.approx(40 * acc)
