"""sodef_cli: harden pretrained timm classifiers with a SODEF head, and evaluate them honestly.

Public API::

    from sodef_cli import load_hardened, load_base
    model = load_hardened("hardened.safetensors")   # [0,1] images (N,C,H,W) -> logits (N, classes)
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["load_hardened", "load_base", "__version__"]


def load_hardened(path, device="cpu"):
    """The hardened classifier of a ``sodef harden`` file (an ``nn.Module`` in eval mode)."""
    from .models import load_hardened as _load

    return _load(path, device)


def load_base(path, device="cpu"):
    """The base classifier of a ``sodef pretrain`` file, or the same-features baseline of a hardened file."""
    from .models import load_base as _load

    return _load(path, device)
