"""The CPU fast paths of ``sodef attack``: traced no-gradient forwards and channels-last weights."""

from __future__ import annotations

import pytest
import torch

from sodef_cli.models import load_base, load_hardened


@pytest.fixture
def base(base_run):
    return load_base(base_run[0]).eval()


def _eager(model, x):
    with torch.no_grad():
        return model(x), model.features(x)


@pytest.mark.parametrize("batch", [1, 5, 64])
def test_traced_forwards_equal_eager_ones(base, batch):
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
    logits, feats = _eager(base, x)
    base.fast_cpu()
    assert base.inference_status() == "on (no forward without gradients ran)"
    got_logits, got_feats = _eager(base, x)
    assert base.inference_status().startswith("on (TorchScript")
    torch.testing.assert_close(got_logits, logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_feats, feats, rtol=1e-4, atol=1e-4)
    assert all(t.used for t in base._traced.values())


def test_one_trace_serves_every_batch_size(base):
    base.fast_cpu()
    calls = []
    real = torch.jit.trace
    torch.jit.trace = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        for n in (3, 17, 3, 40):
            with torch.no_grad():
                base(torch.rand(n, 3, 32, 32))
    finally:
        torch.jit.trace = real
    assert len(calls) == 1  # per input shape (C, H, W), not per batch size


def test_gradients_run_eagerly_and_match(base):
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    xa = x.clone().requires_grad_(True)
    base(xa).logsumexp(1).sum().backward()
    base.fast_cpu()
    xb = x.clone().requires_grad_(True)
    base(xb).logsumexp(1).sum().backward()
    assert not any(t.used for t in base._traced.values())  # an input needing gradients never takes the trace
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-6)


def test_a_weight_changed_in_place_rebuilds_the_trace(base):
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    base.fast_cpu()
    with torch.no_grad():
        before = base(x)
        conv = next(m for m in base.backbone.modules() if isinstance(m, torch.nn.Conv2d))
        conv.weight.mul_(-2.0)
        after = base(x)
    base.fast_cpu(False)
    with torch.no_grad():
        eager = base(x)
    assert not torch.allclose(after, before, atol=1e-3)  # the change reached the traced path
    torch.testing.assert_close(after, eager, rtol=1e-4, atol=1e-4)


def test_train_mode_and_trainable_weights_under_autograd_run_eagerly(base):
    base.fast_cpu()
    x = torch.rand(4, 3, 32, 32)
    base.train()
    with torch.no_grad():
        base(x)  # BatchNorm in train mode uses batch statistics: the frozen trace would not
    assert not any(t.used for t in base._traced.values())
    base.eval()
    for p in base.parameters():
        p.requires_grad_(True)
    base(x)  # autograd on and trainable weights: eager (the weights get gradients)
    assert not any(t.used for t in base._traced.values())
    with torch.no_grad():
        base(x)
    assert any(t.used for t in base._traced.values())


def test_a_failed_trace_says_so_and_runs_eagerly(base, monkeypatch):
    x = torch.rand(3, 3, 32, 32)
    want, _ = _eager(base, x)
    base.fast_cpu()

    def fail(*a, **k):
        raise RuntimeError("unsupported op foo\nmore detail")

    monkeypatch.setattr(torch.jit, "trace", fail)
    got, _ = _eager(base, x)
    assert base.inference_status() == "off: tracing failed (RuntimeError: unsupported op foo)"
    torch.testing.assert_close(got, want)


def test_a_trace_that_disagrees_is_not_used(base, monkeypatch):
    x = torch.rand(3, 3, 32, 32)
    want, _ = _eager(base, x)
    base.fast_cpu()
    real = torch.jit.optimize_for_inference
    monkeypatch.setattr(torch.jit, "optimize_for_inference", lambda m: lambda t, _m=real(m): _m(t) + 1e-2)
    got, _ = _eager(base, x)
    assert base.inference_status().startswith("off: the trace disagreed")
    torch.testing.assert_close(got, want)
    with torch.no_grad():
        base(x)
    assert all(not t.used for t in base._traced.values())


def test_hardened_model_and_its_variants_share_the_fast_path(hardened_from_base):
    h = load_hardened(hardened_from_base[0]).eval()
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    want = _eager(h, x)[0]
    h.fast_cpu()
    fixed = h.variant("fixed")
    got = _eager(h, x)[0]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert fixed._traced is h._traced
    conv = next(m for m in h.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    h.fast_cpu(False)
    assert h.inference_status() == "off" and conv.weight.is_contiguous()


def test_every_new_batch_size_is_checked_once_against_eager(base, monkeypatch):
    from sodef_cli import tracing

    base.fast_cpu()
    compared = []
    real = tracing._agree
    monkeypatch.setattr(tracing, "_agree", lambda a, b: compared.append(len(a)) or real(a, b))
    with torch.no_grad():
        for n in (5, 5, 9, 5, 9, 2):
            base(torch.rand(n, 3, 32, 32))
    assert compared == [5, 9, 2]  # the build (5), then each other batch size once
    monkeypatch.setattr(tracing, "_agree", lambda a, b: False)  # a trace wrong at a new batch size only
    with torch.no_grad():
        x = torch.rand(3, 3, 32, 32)
        got = base(x)
    assert base.inference_status() == "off: the trace disagreed with the eager model by more than 0.0001 at batch 3"
    base.fast_cpu(False)
    with torch.no_grad():
        torch.testing.assert_close(got, base(x))  # that batch was answered eagerly
