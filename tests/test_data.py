"""Data loading, stratified splits and seeded sample selection."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from sodef_cli.data import load_data, select_samples, stratified_split
from sodef_cli.errors import DataError, UsageError


def _class_sorted_labels(per_class=(10, 10, 10, 7)) -> torch.Tensor:
    """Labels ordered class by class, as an ImageFolder produces them."""
    return torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in enumerate(per_class)])


def _write_folder(root, splits=("train", "test"), classes=("cat", "dog"), n=3, size=8, mode="RGB"):
    rng = np.random.default_rng(0)
    for split in splits:
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                shape = (size, size, 3) if mode == "RGB" else (size, size)
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(d / f"{i}.png")
    return root


# ---------------------------------------------------------------- select_samples


@pytest.mark.parametrize("n", [1, 4, 9, 13, 37])
def test_select_samples_is_stratified(n):
    labels = _class_sorted_labels()
    idx = select_samples(labels, n, seed=0)
    assert len(idx) == n == len(set(idx.tolist()))
    counts = torch.bincount(labels[idx], minlength=4)
    if n <= 28:  # every class can still supply its share
        assert int(counts.max() - counts.min()) <= 1, counts


def test_select_samples_interleaves_classes():
    """Every prefix is stratified too, so any attack batch holds a mix of classes."""
    labels = _class_sorted_labels()
    idx = select_samples(labels, 20, seed=0)
    for m in range(1, 21):
        counts = torch.bincount(labels[idx[:m]], minlength=4)
        assert int(counts.max() - counts.min()) <= 1, (m, counts)


def test_select_samples_is_seeded():
    labels = _class_sorted_labels()
    a, b = select_samples(labels, 12, seed=0), select_samples(labels, 12, seed=0)
    assert torch.equal(a, b)
    assert not torch.equal(a, select_samples(labels, 12, seed=1))


@pytest.mark.parametrize("seed", range(5))
def test_select_samples_never_takes_the_first_n(seed):
    labels = _class_sorted_labels()
    idx = select_samples(labels, 10, seed=seed)
    assert not torch.equal(torch.sort(idx).values, torch.arange(10))
    assert len(torch.unique(labels[idx])) == 4


def test_select_samples_caps_at_the_data_size_and_rejects_non_positive():
    labels = _class_sorted_labels()
    assert torch.equal(torch.sort(select_samples(labels, 1000, seed=0)).values, torch.arange(len(labels)))
    with pytest.raises(UsageError):
        select_samples(labels, 0, seed=0)


# ---------------------------------------------------------------- stratified_split


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_stratified_split_is_disjoint_covering_and_per_class(fraction):
    labels = _class_sorted_labels((40, 40, 20, 9))
    tr, val = stratified_split(labels, fraction, seed=0)
    assert not set(tr.tolist()) & set(val.tolist())
    assert torch.equal(torch.sort(torch.cat([tr, val])).values, torch.arange(len(labels)))
    for c, n in enumerate((40, 40, 20, 9)):
        k = int((labels[val] == c).sum())
        assert k == max(1, round(fraction * n)), (c, k)


def test_stratified_split_is_seeded():
    labels = _class_sorted_labels((40, 40, 20, 9))
    a, b = stratified_split(labels, 0.2, seed=3), stratified_split(labels, 0.2, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[1], stratified_split(labels, 0.2, seed=4)[1])


# ---------------------------------------------------------------- load_data


def test_demo_data(demo_data):
    assert demo_data.name == "demo"
    assert len(demo_data.classes) == 10
    for split, n in ((demo_data.train, 2000), (demo_data.test, 500)):
        assert split.images.shape == (n, 3, 32, 32)
        assert split.images.dtype == torch.uint8
        assert split.labels.dtype == torch.int64
        assert torch.equal(torch.bincount(split.labels, minlength=10), torch.full((10,), n // 10))
    x = demo_data.train.floats(torch.arange(4))
    assert x.dtype == torch.float32 and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert demo_data.describe()["input_size"] == [3, 32, 32]


def test_demo_data_resized_and_gray():
    d = load_data("demo", image_size=16, channels=1)
    assert d.train.images.shape == (2000, 1, 16, 16)
    assert d.test.images.dtype == torch.uint8


@pytest.mark.parametrize("as_zip", [False, True])
def test_folder_in_imagefolder_layout(tmp_path, as_zip):
    root = _write_folder(tmp_path / "ds", splits=("train", "val"))
    spec = root
    if as_zip:
        spec = tmp_path / "ds.zip"
        with zipfile.ZipFile(spec, "w") as zf:
            for p in sorted(root.rglob("*.png")):
                zf.write(p, p.relative_to(tmp_path))
    d = load_data(str(spec))
    assert d.classes == ["cat", "dog"]
    assert d.train.images.shape == (6, 3, 8, 8) and len(d.test) == 6
    assert torch.equal(torch.bincount(d.train.labels), torch.tensor([3, 3]))


def test_gray_folder_is_read_as_one_channel_and_expanded_on_request(tmp_path):
    root = _write_folder(tmp_path / "g", mode="L")
    assert load_data(str(root)).train.images.shape[1] == 1
    assert load_data(str(root), channels=3).train.images.shape[1] == 3


def test_folder_without_train_split_raises_data_error(tmp_path):
    root = tmp_path / "flat"
    (root / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "cat" / "0.png")  # class folders at the top: no train/
    with pytest.raises(DataError, match="ImageFolder layout"):
        load_data(str(root))


def test_folder_without_test_split_raises_data_error(tmp_path):
    root = _write_folder(tmp_path / "ds", splits=("train",))
    with pytest.raises(DataError, match="test"):
        load_data(str(root))


def test_folder_with_one_class_raises_data_error(tmp_path):
    root = _write_folder(tmp_path / "ds", classes=("only",))
    with pytest.raises(DataError, match="at least 2"):
        load_data(str(root))


def test_test_classes_missing_from_train_raise_data_error(tmp_path):
    root = _write_folder(tmp_path / "ds")
    extra = root / "test" / "bird"
    extra.mkdir()
    Image.new("RGB", (8, 8)).save(extra / "0.png")
    with pytest.raises(DataError, match="bird"):
        load_data(str(root))


def test_undecodable_image_raises_data_error(tmp_path):
    root = _write_folder(tmp_path / "ds")
    (root / "train" / "dog" / "9.png").write_bytes(b"not a png")
    data = load_data(str(root))  # splits are decoded on first use: the test split alone is fine
    assert data.test.images.shape == (6, 3, 8, 8)
    with pytest.raises(DataError, match="cannot decode"):
        _ = data.train


def test_missing_folder_and_plain_file_raise_data_error(tmp_path):
    with pytest.raises(DataError, match="neither a folder"):
        load_data(str(tmp_path / "missing"))
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(DataError, match="zip"):
        load_data(str(f))


def test_torchvision_set_without_data_dir_is_a_usage_error():
    with pytest.raises(UsageError, match="--data-dir"):
        load_data("cifar10")
    with pytest.raises(UsageError):
        load_data("")


# ---------------------------------------------------------------- JPEG decoding


def test_batched_jpeg_decoding_gives_pillows_pixels(demo_data):
    """The demo's JPEGs go through torchvision's batched decoder; every pixel must equal Pillow's."""
    from sodef_cli.data import DEMO_ZIP, _decode, _FolderSource

    src = _FolderSource(DEMO_ZIP)
    order = [f for c in sorted(src.files["train"]) for f in src.files["test"].get(c, [])]  # load_data's order
    assert order and all(f.lower().endswith(".jpg") for f in order)
    pillow = torch.stack([torch.tensor(_decode(src.read(f), 3, 32, f)) for f in order])
    assert pillow.shape == demo_data.test.images.shape
    assert torch.equal(pillow, demo_data.test.images)


def test_mixed_jpeg_sizes_modes_and_a_corrupt_jpeg(tmp_path):
    """Grayscale and wrongly-sized JPEGs take Pillow's path (converted, resized); a corrupt one is named."""
    from sodef_cli.data import _decode, _decode_chunk

    rng = np.random.default_rng(1)
    raws, names = [], []
    for i, (mode, size) in enumerate((("RGB", 8), ("L", 8), ("RGB", 12), ("RGB", 8))):
        shape = (size, size, 3) if mode == "RGB" else (size, size)
        path = tmp_path / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path, quality=90)
        raws.append(path.read_bytes())
        names.append(str(path))
    out = torch.zeros((4, 3, 8, 8), dtype=torch.uint8)
    _decode_chunk(raws, names, out, channels=3, size=8)
    for i in range(4):
        assert torch.equal(out[i], torch.tensor(_decode(raws[i], 3, 8, names[i]))), i
    bad = raws[0][:40]  # a truncated header
    with pytest.raises(DataError, match="bad.jpg"):
        _decode_chunk([raws[0], bad], [names[0], "bad.jpg"], torch.zeros((2, 3, 8, 8), dtype=torch.uint8), 3, 8)
