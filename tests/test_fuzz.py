"""Untrusted files, fuzzed with hypothesis: whatever the bytes, the loaders raise only SodefError.

Model files are fuzzed as random bytes and as mutations of a real hardened file (its safetensors header,
its sodef_cli metadata, its bytes); results files as random and mutated JSON. Any exception that is not a
:class:`~sodef_cli.errors.SodefError` fails the test (the CLI would show it as an internal error).
"""

from __future__ import annotations

import atexit
import copy
import json
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sodef_cli
from sodef_cli.data import load_data as _load_data  # the real one: the attack test patches sodef_cli.data.load_data
from sodef_cli.errors import SodefError
from sodef_cli.io import read_json, read_metadata

# derandomized: the same examples on every run, so CI is reproducible (widen max_examples locally to hunt)
FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True, database=None
)

_DIR = Path(tempfile.mkdtemp(prefix="sodef-fuzz-"))  # hypothesis examples cannot use function-scoped tmp_path
atexit.register(shutil.rmtree, _DIR, ignore_errors=True)


def _write(data: bytes, name: str = "fuzz.safetensors") -> Path:
    p = _DIR / name
    p.write_bytes(data)
    return p


def _load_all(path: Path) -> None:
    """Every loader of model files; success is fine, any error must be a SodefError."""
    for load in (read_metadata, sodef_cli.load_hardened, sodef_cli.load_base):
        try:
            load(path)
        except SodefError:
            pass


class _Real(tuple):
    def __repr__(self) -> str:  # hypothesis prints the arguments of a failing example
        return "<hardened file: header, body, raw>"


@pytest.fixture(scope="module")
def real(hardened_file):
    """(header dict, tensor data bytes, whole file) of the session's tiny hardened file."""
    raw = hardened_file.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return _Real((json.loads(raw[8 : 8 + n]), raw[8 + n :], raw))


def _pack(header: dict | bytes, body: bytes) -> bytes:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + body


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


# ---------------------------------------------------------------- random bytes


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes(data):
    _load_all(_write(data))


@FUZZ
@given(st.binary(max_size=512), st.integers(min_value=0, max_value=2**64 - 1))
def test_random_bytes_behind_any_header_length(data, n):
    _load_all(_write(struct.pack("<Q", n) + data))


@FUZZ
@given(json_values, st.binary(max_size=256))
def test_random_json_header(header, body):
    _load_all(_write(_pack(json.dumps(header).encode(), body)))


# ---------------------------------------------------------------- mutated real files


def _meta_doc(header: dict) -> dict:
    return json.loads(header["__metadata__"]["sodef_cli"])


def _with_doc(header: dict, doc) -> dict:
    h = copy.deepcopy(header)
    h["__metadata__"]["sodef_cli"] = json.dumps(doc)
    return h


def _paths(doc, prefix=()):
    """Every key path of a JSON document (dicts and lists)."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, prefix + (i,))
    return out


def _set(doc, path, value, delete=False):
    doc = copy.deepcopy(doc)
    if not path:
        return value
    node = doc
    for k in path[:-1]:
        node = node[k]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


# values that keep shapes small: a fuzzed metadata must never make a loader allocate more than the file holds
small_values = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-3, max_value=300)
    | st.floats(allow_nan=True)
    | st.text(max_size=12)
    | st.lists(st.integers(min_value=-1, max_value=40), max_size=4)
    | st.just({})
    | st.just([])
)


@FUZZ
@given(st.data())
def test_mutated_sodef_metadata(real, data):
    header, body, _ = real
    doc = _meta_doc(header)
    path = data.draw(st.sampled_from(_paths(doc)), label="path")
    if path and data.draw(st.booleans(), label="delete"):
        doc = _set(doc, path, None, delete=True)
    else:
        doc = _set(doc, path, data.draw(small_values, label="value"))
    _load_all(_write(_pack(_with_doc(header, doc), body)))


@FUZZ
@given(
    st.sampled_from(
        [
            "backbone.num_classes",
            "backbone.in_chans",
            "num_classes",
            "feature_dim",
            "config.head.dim",
            "config.head.hidden",
        ]
    ),
    st.integers(min_value=10**4, max_value=10**12),
)
def test_metadata_sizes_are_checked_against_the_tensors(real, key, value):
    """Huge sizes in the metadata must be refused before any model of that size is allocated."""
    header, body, _ = real
    doc = _meta_doc(header)
    node = doc
    *parents, last = key.split(".")
    for k in parents:
        node = node[k]
    node[last] = value
    if key == "config.head.hidden":
        doc["config"]["head"]["odefunc"] = "sin3"
    path = _write(_pack(_with_doc(header, doc), body))
    with pytest.raises(SodefError):
        sodef_cli.load_hardened(path)


tensor_entry_values = st.one_of(
    st.integers(min_value=-(2**66), max_value=2**66),
    st.lists(st.integers(min_value=-(2**66), max_value=2**66), max_size=3),
    st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F8_E4M3", "F64", "C64", "NOPE", ""]),
    json_values,
)


@FUZZ
@given(st.data())
def test_mutated_tensor_entries(real, data):
    header, body, _ = real
    name = data.draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")), label="tensor")
    field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", None]), label="field")
    h = copy.deepcopy(header)
    if field is None:
        del h[name]
    elif data.draw(st.booleans(), label="delete"):
        del h[name][field]
    else:
        h[name][field] = data.draw(tensor_entry_values, label="value")
    _load_all(_write(_pack(h, body)))


@FUZZ
@given(json_values)
def test_metadata_that_is_not_this_tools(real, value):
    header, body, _ = real
    for h in ({**header, "__metadata__": value}, _with_doc(header, value)):
        _load_all(_write(_pack(h, body)))
    h = copy.deepcopy(header)
    h["__metadata__"]["sodef_cli"] = value  # not even a string
    _load_all(_write(_pack(h, body)))


@settings(FUZZ, max_examples=20)
@given(st.integers(min_value=1, max_value=5000))
def test_deeply_nested_json(real, depth):
    header, body, _ = real
    nested = "[" * depth + "]" * depth
    h = copy.deepcopy(header)
    h["__metadata__"]["sodef_cli"] = json.dumps({**_meta_doc(header), "source": "@"}).replace('"@"', nested)
    _load_all(_write(_pack(h, body)))
    raw = json.dumps(header).encode()
    _load_all(_write(_pack(raw[:-1] + b', "x": ' + nested.encode() + b"}", body)))


@FUZZ
@given(st.data())
def test_mutated_bytes(real, data):
    """Flipped bytes anywhere (invalid UTF-8 and broken JSON in the header included), a wrong header length,
    truncation and appended garbage."""
    _, _, raw = real
    buf = bytearray(raw)
    n = struct.unpack("<Q", raw[:8])[0]
    kind = data.draw(st.sampled_from(["header", "anywhere", "length", "truncate", "append"]), label="kind")
    if kind in ("header", "anywhere"):
        hi = 8 + n if kind == "header" else len(buf)
        for _ in range(data.draw(st.integers(min_value=1, max_value=8), label="flips")):
            i = data.draw(st.integers(min_value=0, max_value=hi - 1), label="at")
            buf[i] = data.draw(st.integers(min_value=0, max_value=255), label="byte")
    elif kind == "length":
        buf[:8] = struct.pack("<Q", data.draw(st.integers(min_value=0, max_value=2**64 - 1), label="n"))
    elif kind == "truncate":
        del buf[data.draw(st.integers(min_value=0, max_value=len(buf) - 1), label="cut") :]
    else:
        buf += data.draw(st.binary(min_size=1, max_size=64), label="extra")
    _load_all(_write(bytes(buf)))


def test_invalid_utf8_and_oversized_header_length(real):
    header, body, raw = real
    h = json.dumps(header).encode()
    for bad in (
        _pack(b'{"__metadata__": "\xff\xfe"}', body),  # invalid UTF-8
        struct.pack("<Q", len(raw)) + raw[8:],  # header length larger than the file
        struct.pack("<Q", 2**64 - 1) + raw[8:],
        _pack(h[: len(h) // 2], body),  # header cut in the middle of the JSON
    ):
        with pytest.raises(SodefError):
            read_metadata(_write(bad))


# ---------------------------------------------------------------- results files (sodef report)


def _report(path: Path) -> None:
    from sodef_cli.report import FORMATS, render, results_data

    try:
        data = results_data([read_json(path)], labels=["r.json"])
        for fmt in FORMATS:
            render(data, fmt)
    except SodefError:
        pass


@FUZZ
@given(st.binary(max_size=512))
def test_results_random_bytes(data):
    _report(_write(data, "r.json"))


@FUZZ
@given(json_values)
def test_results_random_json(doc):
    _report(_write(json.dumps(doc).encode(), "r.json"))


@FUZZ
@given(st.data())
def test_results_mutated_json(data):
    from test_report import make_doc, make_partial

    doc = data.draw(st.sampled_from([make_doc, make_partial]), label="doc")()
    for _ in range(data.draw(st.integers(min_value=1, max_value=3), label="mutations")):
        path = data.draw(st.sampled_from(_paths(doc)), label="path")
        if path and data.draw(st.booleans(), label="delete"):
            doc = _set(doc, path, None, delete=True)
        else:
            doc = _set(doc, path, data.draw(small_values | json_values, label="value"))
    _report(_write(json.dumps(doc).encode(), "r.json"))


# ---------------------------------------------------------------- the commands on mutated files


def _cli(args: list[str]):
    from typer.testing import CliRunner

    from sodef_cli.cli import app

    return CliRunner().invoke(app, args)


def _mutated_metadata_file(real, data) -> Path:
    header, body, _ = real
    doc = _meta_doc(header)
    path = data.draw(st.sampled_from(_paths(doc)), label="path")
    if path and data.draw(st.booleans(), label="delete"):
        doc = _set(doc, path, None, delete=True)
    else:
        doc = _set(doc, path, data.draw(small_values, label="value"))
    return _write(_pack(_with_doc(header, doc), body))


_DEMO16: list = []


def _demo16(*args, **kwargs):
    """The demo data at 16 px, decoded once for every example (the fuzzed part is the model file)."""
    if not _DEMO16:
        _DEMO16.append(_load_data("demo", image_size=16))
    return _DEMO16[0]


@FUZZ
@given(st.data())
def test_attack_on_mutated_metadata(real, data):
    """`sodef attack` on real data and a file with mutated metadata: whenever the metadata passes its checks the
    model is loaded (and attacked); every failure is a one-line error, never an internal one."""
    from unittest import mock

    import sodef_cli.models as models

    f = _mutated_metadata_file(real, data)
    try:
        models.hardened_meta(f)
        meta_ok = True
    except SodefError:
        meta_ok = False
    calls = []
    real_load = models.load_pair
    with (
        mock.patch("sodef_cli.data.load_data", _demo16),
        mock.patch.object(models, "load_pair", lambda *a, **kw: calls.append(1) or real_load(*a, **kw)),
    ):
        result = _cli(
            [
                "attack",
                str(f),
                "--data",
                "demo",
                "--image-size",
                "16",
                "--device",
                "cpu",
                "--n",
                "2",
                "--attacks",
                "fgsm",
                "--no-checks",
                "--batch-size",
                "2",
                "--plain-cpu",  # about the metadata: no trace to build per example
            ]
        )
    assert result.exit_code in (0, 1, 2), result.output
    assert result.exit_code == 0 or result.stderr.startswith("error:"), result.output
    assert "internal error" not in result.stderr, result.stderr
    assert bool(calls) is meta_ok  # the model file itself was read whenever its metadata allowed it


@FUZZ
@given(st.data())
def test_model_card_on_mutated_metadata(real, data):
    """`sodef report FILE` (the model card without diagnostics) on a file with mutated metadata."""
    from unittest import mock

    f = _mutated_metadata_file(real, data)
    with mock.patch("sodef_cli.diagnostics.default_card_data", lambda meta: None):  # the card alone, no diagnostics
        result = _cli(["report", str(f), "--format", "markdown"])
    assert result.exit_code in (0, 1), result.output
    assert "internal error" not in result.stderr, result.stderr
