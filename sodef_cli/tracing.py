"""No-gradient CPU forwards of a frozen backbone through an inference-optimized TorchScript trace.

Most of what ``sodef attack`` spends is forward passes without gradients through a frozen backbone: Square's
5,000 queries per sample, the clean predictions, judging every adversarial example, the feature bank. On CPU,
``torch.jit.optimize_for_inference`` of a frozen trace folds BatchNorm into the convolutions and runs them in
oneDNN's blocked layout (``benchmarks/suite.py`` and ``benchmarks/pipeline.py --attack-args=--plain-cpu`` measure
it against eager). Anything that needs gradients (an input that requires them, or a trainable weight while autograd
is on) runs the eager module as before.

:class:`TracedFeatures` traces ``normalize -> backbone.forward_features`` (or the backbone's logits) once per input
shape ``(C, H, W)``, checks the trace against the eager module on the batch that built it and once at every other
batch size, and rebuilds it whenever a weight or buffer changed in place since (tensor version counters). A module
that cannot be traced, or whose trace disagrees with it, runs eagerly from then on and says why in
:attr:`TracedFeatures.status`: the fast path never changes what is computed beyond float rounding.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

from .backbone import stem
from .inference import eval_mode

__all__ = ["TracedFeatures", "TOLERANCE"]

TOLERANCE = 1e-4  # most |trace - eager| of the outputs, relative to their largest magnitude (at least 1)


class _Stem(nn.Module):
    """``normalize -> backbone.forward_features`` (``logits=False``) or ``normalize -> backbone`` (True)."""

    def __init__(self, normalize: nn.Module, backbone: nn.Module, logits: bool):
        super().__init__()
        self.normalize, self.backbone, self.logits = normalize, backbone, logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return stem(self.normalize, self.backbone, x, self.logits)


def _versions(module: nn.Module) -> tuple[int, ...]:
    return tuple(t._version for t in (*module.parameters(), *module.buffers()))


def _agree(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if not a.numel():
        return True
    scale = max(1.0, float(b.abs().max()))
    return bool(torch.isfinite(a).all()) and float((a - b).abs().max()) <= TOLERANCE * scale


class TracedFeatures:
    """``normalize -> backbone.forward_features`` (or, ``logits=True``, the backbone's own logits) for CPU
    float32 batches that need no gradients.

    Call :meth:`applies` first; :meth:`__call__` then returns the traced output (building and checking the
    trace on first use of an input shape), or None when this module must run eagerly (``status`` says why).
    """

    def __init__(self, normalize: nn.Module, backbone: nn.Module, *, logits: bool = False):
        self._stem = _Stem(normalize, backbone, logits)
        self._traces: dict[tuple[int, ...], Callable[[torch.Tensor], torch.Tensor]] = {}
        self._checked: set[tuple[int, ...]] = set()  # full input shapes whose traced output was compared with eager
        self._versions = _versions(self._stem)
        self.status = "on (no trace built yet)"
        self.disabled = False

    @property
    def used(self) -> bool:
        """Whether a trace was built (and checked)."""
        return bool(self._traces)

    def applies(self, x: torch.Tensor) -> bool:
        """Whether ``x`` may take the traced path: CPU float32, no gradient wanted, not disabled."""
        if self.disabled or x.device.type != "cpu" or x.dtype != torch.float32 or x.ndim != 4:
            return False
        if x.requires_grad or self._stem.backbone.training:  # train mode: BatchNorm would use batch statistics
            return False
        return not (torch.is_grad_enabled() and any(p.requires_grad for p in self._stem.parameters()))

    def __call__(self, x: torch.Tensor) -> torch.Tensor | None:
        versions = _versions(self._stem)
        if versions != self._versions:  # a weight changed in place: every trace holds stale constants
            self._traces.clear()  # (``used`` reads False until the next one is built)
            self._checked.clear()
            self._versions = versions
        key = tuple(x.shape[1:])
        fn = self._traces.get(key)
        if fn is None:
            fn = self._build(x)
            if fn is None:
                return None
            self._traces[key] = fn
            self._checked.add(tuple(x.shape))
        with torch.no_grad():
            out = fn(x)
            if tuple(x.shape) not in self._checked:  # each batch size once: the trace must still agree with eager
                self._checked.add(tuple(x.shape))
                if not _agree(out, self._eager(x)):
                    return self._disable(
                        f"off: the trace disagreed with the eager model by more than {TOLERANCE:g} at batch {len(x)}"
                    )
        return out

    def _eager(self, x: torch.Tensor) -> torch.Tensor:
        with eval_mode(self._stem):
            return self._stem(x)

    def _build(self, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor] | None:
        try:
            with eval_mode(self._stem), torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TracerWarnings, and optimize_for_inference's deprecation notice
                traced = torch.jit.optimize_for_inference(torch.jit.trace(self._stem, x, check_trace=False))
                ok = _agree(traced(x), self._stem(x))
        except Exception as e:  # any model timm can build may hold an op TorchScript cannot trace
            return self._disable(f"off: tracing failed ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
        if not ok:
            return self._disable(f"off: the trace disagreed with the eager model by more than {TOLERANCE:g}")
        self.status = "on (TorchScript, optimized for inference)"
        return traced

    def _disable(self, why: str) -> None:  # returns None: "run eagerly"
        self.disabled = True
        self._traces.clear()
        self.status = why
        return None
