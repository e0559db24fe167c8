"""Data-parallel evaluation and feature extraction with PyTorch's own runtime (``torchrun``).

Work is split by *batch*: batch ``b`` of a loop runs on rank ``b % world``. Every sample is processed
exactly once (no padded duplicates, unlike ``DistributedSampler``'s default), each batch has the same
composition as in a single-process run with the same ``--batch-size`` (so random starts, adaptive-solver
step sizes and therefore results are identical), and the per-sample outputs are all-gathered in order.
Only rank 0 writes files and prints. Without torchrun (``WORLD_SIZE`` unset or 1) everything is local.

No ``nn.DataParallel`` anywhere: it has returned zero gradients around ``odeint_adjoint``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import torch

__all__ = [
    "world",
    "rank",
    "is_main",
    "init_from_env",
    "shutdown",
    "mine",
    "gather_merge",
    "all_gather_objects",
    "device_for_rank",
]


_LOCAL = [False]  # inside `local()`: behave as one process even under torchrun


def _dist():
    import torch.distributed as dist

    if _LOCAL[0]:
        return None
    return dist if dist.is_available() and dist.is_initialized() else None


@contextlib.contextmanager
def local():
    """Run the enclosed code on this rank alone, with no collectives (e.g. rank 0's hardening guard)."""
    _LOCAL[0] = True
    try:
        yield
    finally:
        _LOCAL[0] = False


def world() -> int:
    d = _dist()
    return d.get_world_size() if d else 1


def rank() -> int:
    d = _dist()
    return d.get_rank() if d else 0


def is_main() -> bool:
    return rank() == 0


def init_from_env(device_spec: str = "auto") -> None:
    """Join the process group that torchrun describes in the environment (no-op otherwise)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or _dist() is not None:
        return
    import torch.distributed as dist

    use_cuda = device_spec != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    # a long timeout: ranks wait in all_gather for the slowest rank's batch of a whole attack (Square, 5,000 queries)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=timedelta(hours=24))


def shutdown() -> None:
    d = _dist()
    if d is not None:  # no barrier: rank 0 may still be training the head long after the others finished
        d.destroy_process_group()


def device_for_rank(device: torch.device) -> torch.device:
    """cuda -> cuda:LOCAL_RANK under torchrun."""
    if device.type == "cuda" and world() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def mine(batch_number: int) -> bool:
    """Does this rank process the given batch?"""
    return batch_number % world() == rank()


def all_gather_objects(obj: Any) -> list[Any]:
    d = _dist()
    if d is None:
        return [obj]
    out: list[Any] = [None] * d.get_world_size()
    d.all_gather_object(out, obj)
    return out


def gather_merge(values: Sequence[Any]) -> list[Any]:
    """Merge per-position lists where each rank filled its own positions and left ``None`` elsewhere."""
    parts = all_gather_objects(list(values))
    if len(parts) == 1:
        return parts[0]
    merged = list(parts[0])
    for part in parts[1:]:
        for i, v in enumerate(part):
            if merged[i] is None and v is not None:
                merged[i] = v
    return merged


def map_batches(fn: Callable[[int, int], torch.Tensor], n: int, batch_size: int) -> torch.Tensor:
    """Concatenate ``fn(start, stop)`` over batches of ``range(n)``, batches spread over ranks, in order."""
    chunks: list[Any] = []
    for b, s in enumerate(range(0, n, batch_size)):
        chunks.append(fn(s, min(n, s + batch_size)).cpu() if mine(b) else None)
    merged = gather_merge(chunks)
    return torch.cat(merged) if merged else torch.empty(0)
