"""Files: atomic writes, safetensors with this tool's JSON metadata, results JSON, hashes, versions.

Model files are safetensors. Their ``__metadata__`` holds one key, ``sodef_cli`` (``META_KEY``), whose value is
a JSON document ``{"format": BASE_FORMAT | HARDENED_FORMAT, "format_version": N, ...}``. The format names and
versions are defined here and nowhere else; ``models.py`` writes and reads the tensors of each format. The
header is parsed as data with size limits before any tensor is read. ``.pth`` files are only ever read with
``torch.load(weights_only=True)``; there is no unsafe fallback.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import struct
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .errors import ModelFileError, OutputError, ResultsError

__all__ = [
    "atomic_path",
    "atomic_write_text",
    "save_model_file",
    "read_metadata",
    "load_tensors",
    "load_weights",
    "sha256_file",
    "versions",
    "BASE_FORMAT",
    "HARDENED_FORMAT",
    "EXAMPLES_FORMAT",
    "FORMATS",
    "FORMAT_VERSION",
    "FIRST_FORMAT_VERSION",
    "META_KEY",
]

BASE_FORMAT = "sodef_cli/base"  # `sodef pretrain`: a timm model with its own classifier
HARDENED_FORMAT = "sodef_cli/hardened"  # `sodef harden`: the base, its baseline and the hardened head
FORMATS = (BASE_FORMAT, HARDENED_FORMAT)
EXAMPLES_FORMAT = "sodef_cli/adversarial-examples"  # `sodef attack --save-adversarial`: no model (examples.py)
FORMAT_VERSION = (
    2  # the newest version read and written; 2: hardened files may hold tuned backbone stages and a linear head
)
FIRST_FORMAT_VERSION = 1  # written wherever version 2 is not needed, so that older readers keep reading the file
META_KEY = "sodef_cli"
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
MAX_META_BYTES = 16 * 1024 * 1024


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it into place, else delete it.

    Ctrl-C at any moment leaves either no file or the previous complete one. The file gets the mode a
    plain ``open(path, "w")`` gives: that of the file it replaces, else 0666 less the umask. An output
    that cannot be written (a folder in the way, no permission, disk full) raises ``OutputError``.
    """
    dest = Path(path)
    tmp_path: Path | None = None
    try:
        if dest.is_dir():
            raise OutputError(f"cannot write {dest}: it is a folder")
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, _file_mode(dest))
        os.replace(tmp_path, dest)
    except (FileExistsError, NotADirectoryError):
        raise OutputError(f"cannot write {dest}: a parent of it is a file, not a folder") from None
    except OSError as exc:
        raise OutputError(f"cannot write {dest}: {exc.strerror or exc}") from None
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def _file_mode(dest: Path) -> int:
    """Permission bits for ``dest``: those of the file it replaces, else 0666 less the umask (mkstemp gives 0600)."""
    try:
        return stat.S_IMODE(dest.stat().st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for pkg in ("sodef-cli", "torch", "torchvision", "timm", "torchdiffeq", "torchattacks", "safetensors"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_model_file(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write tensors + metadata atomically as safetensors."""
    from safetensors.torch import save_file

    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    doc = json.dumps(meta, sort_keys=True, allow_nan=False)
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata={META_KEY: doc})


def _read_header(path: Path) -> tuple[dict, int]:
    """(header, length of the tensor data that follows it)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise ModelFileError(f"{path} is not a safetensors file (only {len(head)} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or n + 8 > size:
                raise ModelFileError(
                    f"{path} is not a valid safetensors file (header length {n} for a {size}-byte file)"
                )
            raw = fh.read(n)
    except OSError as exc:
        raise ModelFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ModelFileError(f"{path} is not a valid safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path} is not a valid safetensors file (its header is not a JSON object)")
    return header, size - 8 - n


def read_metadata(path: str | Path, *, expect: str | None = None) -> dict:
    """Parse this tool's metadata from a model file without loading tensors.

    Raises ``ModelFileError`` for anything that is not a complete model file written by this tool, or one
    written by a newer version.
    """
    p = Path(path)
    if not p.exists():
        raise ModelFileError(f"model file {p} does not exist")
    if p.is_dir():
        raise ModelFileError(f"{p} is a folder, not a model file")
    header, size = _read_header(p)
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or META_KEY not in meta:
        raise ModelFileError(
            f"{p} is a safetensors file without sodef_cli metadata; make a base with `sodef pretrain`, "
            "or pass timm weights to `sodef harden MODEL --checkpoint FILE`"
        )
    raw = meta[META_KEY]
    if not isinstance(raw, str) or len(raw) > MAX_META_BYTES:
        raise ModelFileError(f"{p}: sodef_cli metadata is not a JSON string within {MAX_META_BYTES} bytes")
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        raise ModelFileError(f"{p}: sodef_cli metadata is not valid JSON") from None
    if not isinstance(doc, dict) or doc.get("format") not in FORMATS:
        raise ModelFileError(f"{p}: sodef_cli metadata names no known format (expected one of {', '.join(FORMATS)})")
    ver = doc.get("format_version")
    if not isinstance(ver, int) or isinstance(ver, bool):
        raise ModelFileError(f"{p}: sodef_cli metadata has no integer format_version")
    if ver > FORMAT_VERSION:
        raise ModelFileError(
            f"{p} was written with format version {ver}, newer than this sodef_cli understands ({FORMAT_VERSION}); upgrade sodef_cli"
        )
    if expect and doc["format"] != expect:
        raise ModelFileError(f"{p} is a {doc['format']} file; expected {expect}")
    # tensor entries must be well-formed and inside the data that follows the header
    for k, v in header.items():
        if k == "__metadata__":
            continue
        if not (isinstance(v, dict) and isinstance(v.get("data_offsets"), list) and len(v["data_offsets"]) == 2):
            raise ModelFileError(f"{p}: tensor entry {k!r} is malformed")
        a, b = v["data_offsets"]
        if not (isinstance(a, int) and isinstance(b, int) and 0 <= a <= b <= size):
            raise ModelFileError(f"{p}: tensor {k!r} lies outside the file (truncated?)")
    return doc


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file (call :func:`read_metadata` first to validate)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"cannot read tensors from {path}: {exc}") from None


def _clean_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out


def _unpickle_reason(exc: Exception) -> str:
    """The useful part of torch's weights_only refusal: what the file holds, without torch's advice to disable it."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return f"it holds Python objects ({found.group(1)}), not only tensors"
    text = text.replace("WeightsUnpickler error:", "\n")
    skip = ("weights only load failed", "weights_only", "check the documentation", "please file an issue")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not any(w in ln.lower() for w in skip)]
    return lines[0][:200] if lines else type(exc).__name__


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file or a ``.pth``/``.pt``/``.bin`` read with ``weights_only=True``."""
    p = Path(path)
    if p.is_dir():
        raise ModelFileError(f"checkpoint {p} is a folder, not a weights file")
    if not p.is_file():
        raise ModelFileError(f"checkpoint {p} does not exist")
    if p.suffix == ".safetensors":
        _read_header(p)
        sd = load_tensors(p)
    else:
        try:
            with warnings.catch_warnings():  # torch warns about pickle protocols on stderr; the error says it all
                warnings.simplefilter("ignore")
                obj = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle errors have many types; none may escape as a traceback
            raise ModelFileError(
                f"refused to load {p} with weights_only=True ({_unpickle_reason(exc)}); only plain tensors are accepted. "
                "Convert trusted checkpoints to safetensors"
            ) from None
        if isinstance(obj, dict):
            for key in ("state_dict", "model", "model_state_dict", "net"):
                if key in obj and isinstance(obj[key], dict):
                    obj = obj[key]
                    break
        if not isinstance(obj, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
        ):
            raise ModelFileError(f"{p} does not hold a state dict of tensors")
        sd = obj
    return _clean_keys(sd)


def write_json(path: str | Path, doc: dict) -> None:
    atomic_write_text(path, json.dumps(doc, indent=1, sort_keys=False, allow_nan=False) + "\n")


def read_json(path: str | Path) -> dict:
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultsError(f"results file {p} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultsError(f"cannot read results file {p}: {exc}") from None
    if not isinstance(doc, dict):
        raise ResultsError(f"{p} is not a JSON object")
    return doc
