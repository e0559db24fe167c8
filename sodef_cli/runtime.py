"""Device selection and seeding."""

from __future__ import annotations

import random

import torch

from .errors import DeviceError, UsageError

__all__ = ["resolve_device", "seed_everything"]


def resolve_device(spec: str) -> torch.device:
    """``auto`` -> cuda when available else cpu; ``cuda`` without a GPU is an error, not a fallback."""
    spec = (spec or "auto").lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {spec} was asked for but CUDA is not available here; use --device cpu or auto")
        return torch.device(spec)
    raise UsageError(f"--device must be auto, cpu or cuda[:N], got {spec!r}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
