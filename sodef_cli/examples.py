"""``sodef attack --save-adversarial DIR``: the adversarial example that gave each sample its worst case, kept
while the cascade runs and written per model (and eps) as one safetensors file with a PNG grid of the first 16.

A sample's example is the one of the first attack, in cascade order, that fooled it. It is stored as uint8 in
[0, 255] after rounding when the rounded image still fools the model (checked with one more forward pass), else
as float32 (``rounded_fools`` false), so every stored image is one that fools the model. Tensors of a file
(N = fooled samples, in sample order):

- ``images_uint8`` (N, C, H, W) uint8: every example rounded; ``rounded_fools`` (N,) bool: the rounded one fools.
- ``images_float32`` (M, C, H, W) float32: the M examples whose rounding undoes them, in order
  (``float32_rows`` (M,) int64: their rows).
- ``index`` (N,) int64: sample index in the test split; ``label``, ``prediction`` (on the stored image), ``attack``
  (N,) int64, the attack an index into the metadata's ``attacks``.

The metadata (``sodef_cli`` key, format ``sodef_cli/adversarial-examples``) names the model, eps, norm, data and
classes. ``perturbation_norms`` gives the median and max Linf and L2 norm of the stored perturbations per attack.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import OutputError, UsageError
from .io import EXAMPLES_FORMAT, FIRST_FORMAT_VERSION

__all__ = ["ExampleBank", "FORMAT", "check_dir", "perturbation_norms", "file_names", "GRID_SAMPLES", "read_examples"]

FORMAT = EXAMPLES_FORMAT
GRID_SAMPLES = 16  # the PNG grid shows the first 16 fooled samples


def check_dir(path: str | Path, *, create: bool = True) -> Path:
    """The directory examples go to, created when missing (with ``create``). ``UsageError`` for a path that is a
    file, ``OutputError`` for one that cannot be made or written (checked before any model is loaded)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"--save-adversarial {p}: is a file, not a directory")
    if not create:
        return p
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"--save-adversarial {p}: cannot create the directory ({exc.strerror or exc})") from None
    probe = p / ".sodef-write-check"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"--save-adversarial {p}: cannot write there ({exc.strerror or exc})") from None
    return p


def file_names(label: str, eps_index: int, n_eps: int) -> tuple[str, str]:
    """(safetensors name, PNG name) of one model at one eps: the label made safe for a file name."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._") or "model"
    if n_eps > 1:
        stem += f"_eps{eps_index + 1}"
    return f"{stem}.adversarial.safetensors", f"{stem}.adversarial.png"


@dataclass
class _Kept:
    """The examples of one model at one eps, by sample position."""

    rows: dict[int, tuple[str, torch.Tensor, bool, int]] = field(default_factory=dict)  # pos -> (attack, img, u8, pred)
    attacks: list[str] = field(default_factory=list)  # attacks that ran in this session, in cascade order


class ExampleBank:
    """Collects, during the cascade, each fooled sample's first adversarial example (``add``), then writes them
    (``write``). Samples fooled by attacks finished in an earlier session (a resumed run) have none."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.kept: dict[tuple[str, float], _Kept] = {}

    def started(self, label: str, eps: float, attack: str) -> None:
        k = self.kept.setdefault((label, eps), _Kept())
        if attack not in k.attacks:
            k.attacks.append(attack)

    def add(self, label: str, eps: float, attack: str, positions: list[int], images, fools_rounded, preds) -> None:
        """Keep the examples of ``positions`` (fooled by ``attack``) unless an earlier attack already fooled them.
        ``images``: (k, C, H, W) in [0, 1]; ``fools_rounded``/``preds``: per image, does the rounded one still
        fool the model and what the model predicts on the image kept."""
        k = self.kept.setdefault((label, eps), _Kept())
        for i, pos in enumerate(positions):
            if pos in k.rows:
                continue
            u8 = bool(fools_rounded[i])
            img = images[i].detach().cpu()
            k.rows[pos] = (attack, (img * 255).round().to(torch.uint8) if u8 else img.float(), u8, int(preds[i]))

    def merge(self, gathered: list[ExampleBank]) -> None:
        """torchrun: the examples of every rank (each kept its own batches)."""
        for other in gathered:
            if other is self:
                continue
            for key, k in other.kept.items():
                mine = self.kept.setdefault(key, _Kept())
                for a in k.attacks:
                    if a not in mine.attacks:
                        mine.attacks.append(a)
                for pos, row in k.rows.items():
                    mine.rows.setdefault(pos, row)

    def write(self, *, labels: list[str], eps_list: list[float], x_all, y_all, indices, meta: dict) -> dict:
        """Write one file and one grid per model and eps; returns the results document's ``adversarial_examples``:
        {label: [{eps, file, grid, saved, uint8, float32, norms}]}."""
        from .io import save_model_file
        from .report.pictures import adversarial_grid_png

        out: dict[str, list[dict]] = {}
        for label in labels:
            for j, eps in enumerate(eps_list):
                k = self.kept.get((label, eps))
                if k is None:
                    continue
                st_name, png_name = file_names(label, j, len(eps_list))
                pos = sorted(k.rows)
                attacks = list(dict.fromkeys(k.attacks + [k.rows[p][0] for p in pos]))
                adv = torch.stack([_as_float(k.rows[p][1]) for p in pos]) if pos else x_all[:0].float()
                clean = x_all[pos].float() if pos else x_all[:0].float()
                u8 = torch.tensor([k.rows[p][2] for p in pos], dtype=torch.bool)
                float_rows = torch.nonzero(~u8).flatten() if pos else torch.zeros(0, dtype=torch.long)
                tensors = {
                    "images_uint8": (adv * 255).round().to(torch.uint8),
                    "rounded_fools": u8,
                    "images_float32": adv[float_rows] if len(float_rows) else x_all[:0].float(),
                    "float32_rows": float_rows.long(),
                    "index": torch.tensor([int(indices[p]) for p in pos], dtype=torch.long),
                    "label": torch.tensor([int(y_all[p]) for p in pos], dtype=torch.long),
                    "prediction": torch.tensor([k.rows[p][3] for p in pos], dtype=torch.long),
                    "attack": torch.tensor([attacks.index(k.rows[p][0]) for p in pos], dtype=torch.long),
                }
                save_model_file(
                    self.directory / st_name,
                    tensors,
                    {
                        **meta,
                        "format": FORMAT,
                        "format_version": FIRST_FORMAT_VERSION,
                        "model": label,
                        "eps": eps,
                        "attacks": attacks,
                    },
                )
                classes = meta.get("classes") or []
                name = lambda c: classes[c] if 0 <= c < len(classes) else str(c)  # noqa: E731
                n = min(GRID_SAMPLES, len(pos))
                captions = [
                    f"#{int(indices[p])} {name(int(y_all[p]))} -> {name(k.rows[p][3])} ({k.rows[p][0]})"
                    for p in pos[:n]
                ]
                grid = None
                if n:
                    grid = self.directory / png_name
                    from .io import atomic_path

                    with atomic_path(grid) as tmp:
                        tmp.write_bytes(adversarial_grid_png(clean[:n], adv[:n], captions))
                out.setdefault(label, []).append(
                    {
                        "eps": eps,
                        "file": str(self.directory / st_name),
                        "grid": str(grid) if grid else None,
                        "saved": len(pos),
                        "uint8": int(u8.sum()),
                        "float32": len(float_rows),
                        "norms": perturbation_norms(adv - clean, [k.rows[p][0] for p in pos]),
                    }
                )
        return out


def read_examples(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a file written by ``--save-adversarial``, with ``images``: every example as float32
    in [0, 1] exactly as it fools the model (the uint8 image / 255, or the float32 one where rounding undoes it).

    Raises:
        ModelFileError: not such a file.
    """
    import json

    from safetensors import safe_open

    from .errors import ModelFileError
    from .io import META_KEY, load_tensors

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get(META_KEY, "{}"))
    except Exception as exc:  # safetensors raises its own error types for a damaged file
        raise ModelFileError(f"{path}: not a readable safetensors file ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a file of adversarial examples (format {FORMAT})")
    t = load_tensors(path)
    images = t["images_uint8"].float() / 255
    images[t["float32_rows"]] = t["images_float32"]
    return {**t, "images": images}, meta


def _as_float(img: torch.Tensor) -> torch.Tensor:
    return img.float() / 255 if img.dtype == torch.uint8 else img


def perturbation_norms(delta: torch.Tensor, attacks: list[str]) -> dict[str, dict[str, Any]]:
    """{attack: {count, linf_median, linf_max, l2_median, l2_max}} of the perturbations ``delta`` (N, ...) in [0,1]
    pixel units, grouped by the attack that made each. The median is the lower middle value for an even count."""
    out: dict[str, dict[str, Any]] = {}
    flat = delta.flatten(1).double()
    linf, l2 = flat.abs().amax(1) if len(flat) else flat[:, 0], flat.norm(dim=1) if len(flat) else flat[:, 0]
    for a in dict.fromkeys(attacks):
        rows = torch.tensor([i for i, b in enumerate(attacks) if b == a])
        li, l2a = linf[rows], l2[rows]
        out[a] = {
            "count": len(rows),
            "linf_median": float(li.median()),
            "linf_max": float(li.max()),
            "l2_median": float(l2a.median()),
            "l2_max": float(l2a.max()),
        }
    return out
