"""The JSON renderer: the report's data itself (``results_data`` or a card's data), as strict JSON."""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["render_data"]


def _finite(o: Any) -> Any:
    """NaN/inf -> None, so that the output is strict JSON."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def render_data(data: dict) -> str:
    """``data`` as indented strict JSON (non-finite floats as null; anything else not JSON as its text)."""
    return json.dumps(_finite(data), indent=1, allow_nan=False, default=str) + "\n"
