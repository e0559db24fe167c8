"""Input checks, each made once at the entry of the public operation that takes the input.

- :func:`check_count` and :func:`check_head_dim`: sizes a configuration or a caller gives (an
  :class:`~sodef_cli.errors.InputError`: a usage error to the CLI, a ``ValueError`` to Python callers, naming the
  config key, never a command-line flag).
- :func:`check_input` / :func:`guard_inputs`: the input contract of the public models (``load_hardened`` /
  ``load_base``), checked on every call.

A model rebuilt from a file maps [0,1] float images (N, C, H, W) of the size it was trained at to logits.
Anything else (another size, channel count or dtype, or pixel values outside [0,1], e.g. 0-255 or already
normalized images) would still give plausible logits, so it is refused with a ValueError that says what was
expected and what came. Cost: one min/max over the batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:  # torch is imported where a model is checked: config validation stays torch-free
    from torch import nn

__all__ = ["check_count", "check_head_dim", "check_input", "guard_inputs"]

RANGE_TOL = 1e-6  # float rounding at the [0,1] borders


def check_count(value: int, key: str) -> None:
    """``InputError`` unless ``value`` (a number of images, samples or steps named ``key``) is at least 1."""
    if value < 1:
        raise InputError(f"{key} must be at least 1, got {value!r}", key=key)


def check_head_dim(dim: int, num_classes: int, key: str = "head.dim") -> None:
    """``InputError`` unless the ODE state size ``dim`` can hold ``num_classes`` simplex directions (dim >= classes)."""
    if dim < num_classes:
        raise InputError(f"{key} ({dim}) must be at least the number of classes ({num_classes})", key=key)


def check_input(x, input_size: tuple[int, int, int] | list[int]) -> None:
    """Raise ValueError unless ``x`` is a floating (N, C, H, W) tensor of ``input_size`` = (C, H, W) within [0, 1]."""
    import torch

    c, h, w = (int(v) for v in input_size)
    expected = f"float images (N, {c}, {h}, {w}) with values in [0, 1]"
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"expected {expected}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"expected {expected}, got dtype {x.dtype} (convert with x.float() / 255)")
    if x.ndim != 4:
        raise ValueError(f"expected {expected}, got a tensor of shape {tuple(x.shape)}")
    if x.shape[1] != c:
        raise ValueError(f"expected {expected}, got {x.shape[1]} channel(s) (shape {tuple(x.shape)})")
    if tuple(x.shape[2:]) != (h, w):
        raise ValueError(
            f"expected {expected}, got {x.shape[2]}x{x.shape[3]} images (shape {tuple(x.shape)}); resize them to {h}x{w}"
        )
    if x.numel():
        lo, hi = torch.aminmax(x.detach())
        lo, hi = float(lo), float(hi)
        if not (lo >= -RANGE_TOL and hi <= 1 + RANGE_TOL):  # also catches NaN
            raise ValueError(
                f"expected {expected}, got values in [{lo:.4g}, {hi:.4g}] (scale 0-255 images by 1/255; "
                "do not normalize: the model normalizes inside)"
            )


def guard_inputs(model: nn.Module, input_size) -> nn.Module:
    """Check every call's input of ``model`` (a forward pre-hook); returns the model."""
    size = tuple(int(v) for v in input_size)
    model.register_forward_pre_hook(lambda _module, args: check_input(args[0] if args else None, size))
    return model
