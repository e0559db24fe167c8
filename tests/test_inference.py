"""The shared helpers: batched inference (order, modes, no gradients) and "train epochs, keep the best on validation"."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sodef_cli.inference import batched, eval_mode, fit_epochs, logits, predict


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.ReLU(), nn.Linear(8, 4))


def test_batched_keeps_batch_order_and_records_no_gradients():
    seen = []
    w = torch.ones(3, requires_grad=True)

    def fn(a, b):
        seen.append((a, b))
        return torch.arange(a, b, dtype=torch.float32)[:, None] * w

    out = batched(fn, 7, 3)
    assert seen == [(0, 3), (3, 6), (6, 7)]
    assert out[:, 0].tolist() == list(range(7)) and not out.requires_grad
    assert batched(fn, 0, 3).numel() == 0
    with pytest.raises(ValueError):
        batched(fn, 4, 0)


def test_logits_match_a_direct_eval_forward_and_give_the_modes_back():
    net = _net()
    net.train()
    net[1].eval()  # mixed modes, as adversarial training leaves frozen BatchNorm layers
    before = [m.training for m in net.modules()]
    x = torch.randn(10, 6)
    out = logits(net, x, device="cpu", batch_size=4)
    assert [m.training for m in net.modules()] == before  # every submodule's own flag restored
    net.eval()
    with torch.no_grad():
        direct = net(x)
    assert out.dtype == torch.float32 and out.device.type == "cpu" and not out.requires_grad
    assert torch.allclose(out, direct, atol=1e-6)  # eval mode: no dropout, running BatchNorm statistics
    assert torch.equal(predict(net, x, 3, "cpu"), direct.argmax(1))


def test_a_bound_method_runs_its_module_in_eval_mode():
    net = _net().train()
    modes = []

    class Probe(nn.Module):
        def score(self, x):
            modes.append(self.training)
            return x.sum(1, keepdim=True)

    p = Probe().train()
    logits(p.score, torch.ones(5, 2), device="cpu", batch_size=2)
    assert modes == [False, False, False] and p.training
    with eval_mode(net, None):
        assert not any(m.training for m in net.modules())
    assert all(m.training for m in net.modules())


class _Weights:
    """A stand-in model whose weights are one number: run_epoch e sets it to e."""

    def __init__(self):
        self.w = 0
        self.restored = []

    def snapshot(self):
        return self.w

    def restore(self, w):
        self.restored.append(w)
        self.w = w


def _fit(scores, *, start=None, **kw):
    m = _Weights()
    run = []

    def run_epoch(e):
        run.append(e)
        m.w = e
        return {"epoch": e, "score": scores[e - 1]}

    fit = fit_epochs(
        run_epoch,
        len(scores),
        snapshot=m.snapshot,
        restore=m.restore,
        score=lambda r: r["score"],
        start=None if start is None else {"epoch": 0, "score": start},
        **kw,
    )
    return fit, m, run


def test_fit_epochs_keeps_the_best_epochs_weights_and_ties_keep_the_earlier():
    fit, m, run = _fit([0.5, 0.7, 0.7, 0.6])
    assert fit.best_epoch == 2 and fit.best_score == 0.7 and m.w == 2 and m.restored == [2]
    assert run == [1, 2, 3, 4] and [r["epoch"] for r in fit.history] == [1, 2, 3, 4] and not fit.stopped_early
    # the starting point is a candidate: training that never beats it leaves the weights as they were
    fit, m, _ = _fit([0.5, 0.7], start=0.7)
    assert fit.best_epoch == 0 and m.w == 0 and [r["epoch"] for r in fit.history] == [0, 1, 2]
    # no epochs and no start: nothing to keep, nothing restored
    fit, m, _ = _fit([])
    assert fit.best_epoch is None and m.restored == []


def test_fit_epochs_tuple_scores_break_ties_by_the_later_items():
    m = _Weights()
    recs = [(0.5, 0.6), (0.5, 0.8), (0.5, 0.8)]

    def run_epoch(e):
        m.w = e
        return recs[e - 1]

    fit = fit_epochs(run_epoch, 3, snapshot=m.snapshot, restore=m.restore)
    assert fit.best_epoch == 2 and m.w == 2


def test_fit_epochs_eligibility_and_stopping():
    # an ineligible epoch is recorded but never kept, even with the best score
    fit, m, _ = _fit([0.5, 0.9, 0.7], eligible=lambda r: r["epoch"] != 2)
    assert fit.best_epoch == 3 and m.w == 3 and len(fit.history) == 3
    # a stopping epoch is recorded, never kept, and no epoch runs after it
    seen = []
    fit, m, run = _fit(
        [0.5, 0.9, 0.95], stop=lambda r, hist: (seen.append([h["epoch"] for h in hist]), r["epoch"] == 2)[1], start=0.1
    )
    assert run == [1, 2] and fit.stopped_early and fit.best_epoch == 1 and m.w == 1
    assert seen == [[0], [0, 1]]  # the history before the epoch judged
    logged = []
    _fit([0.5, 0.6], on_epoch=lambda r: logged.append(r["epoch"]))
    assert logged == [1, 2]
