"""Data sets as in-memory uint8 tensors that reach models as float [0,1] images.

Sources (``--data``):
- ``demo``: the embedded CIFAR-10 subset (200 train + 50 test images per class, JPEG, in the package);
- a folder in ImageFolder layout with ``train/`` and ``test/`` (or ``val/``) subfolders;
- a torchvision data set name (``cifar10``, ``cifar100``, ``mnist``, ``fashion-mnist``, ``svhn``) with
  ``--data-dir`` and ``--download``.

Everything is decoded once and held in memory as uint8 (N, C, H, W): 50,000 CIFAR images are 150 MB.
Validation splits are carved from train (stratified, seeded); the test split is never used for selection.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import DataError, UsageError
from .inputs import check_count

__all__ = [
    "ImageSet",
    "DataBundle",
    "load_data",
    "stratified_split",
    "select_samples",
    "check_split",
    "held_out_check_split",
    "DEMO_ZIP",
    "TORCHVISION_SETS",
]

DEMO_ZIP = Path(__file__).parent / "assets" / "cifar10_demo.zip"
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff")
TORCHVISION_SETS = ("cifar10", "cifar100", "mnist", "fashion-mnist", "svhn")
MAX_BYTES = 8 * 1024**3  # refuse to decode more than this into memory

Progress = Callable[[str, int, int], None]  # (task, done, total)


@dataclass
class ImageSet:
    """A split held in memory: uint8 images (N, C, H, W), int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def floats(self, idx: torch.Tensor | slice | None = None) -> torch.Tensor:
        x = self.images if idx is None else self.images[idx]
        return x.float().div_(255.0)

    def subset(self, idx: torch.Tensor) -> ImageSet:
        return ImageSet(self.images[idx], self.labels[idx])

    def digest(self) -> str:
        """sha256 of the labels and the decoded images: which images a model file's training used."""
        import hashlib

        h = hashlib.sha256(self.labels.numpy().tobytes())
        h.update(self.images.contiguous().numpy().tobytes())
        return h.hexdigest()

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, len(self), batch_size):
            yield self.floats(slice(i, i + batch_size)), self.labels[i : i + batch_size]


class DataBundle:
    """A data set's class names and its train and test splits. A split may be given as a function that makes
    it: it is then decoded on first use (``sodef attack`` reads only the test split), once."""

    def __init__(
        self,
        name: str,
        classes: list[str],
        train: ImageSet | Callable[[], ImageSet],
        test: ImageSet | Callable[[], ImageSet],
    ):
        self.name, self.classes = name, classes
        self._splits: dict[str, ImageSet | Callable[[], ImageSet]] = {"train": train, "test": test}

    def _split(self, key: str) -> ImageSet:
        split = self._splits[key]
        if not isinstance(split, ImageSet):
            split = self._splits[key] = split()
        return split

    @property
    def train(self) -> ImageSet:
        return self._split("train")

    @property
    def test(self) -> ImageSet:
        return self._split("test")

    def materialize(self) -> DataBundle:
        """Decode every split now (``harden`` times loading apart from the feature pass); returns self."""
        for key in self._splits:
            self._split(key)
        return self

    def map(self, fn: Callable[[ImageSet], ImageSet]) -> DataBundle:
        """The same data set with ``fn`` applied to each split when it is first used."""
        return DataBundle(self.name, self.classes, lambda: fn(self.train), lambda: fn(self.test))

    @property
    def channels(self) -> int:
        return int(self.test.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.test.images.shape[-1])

    def describe(self) -> dict:
        return {
            "name": self.name,
            "classes": list(self.classes),
            "train": len(self.train),
            "test": len(self.test),
            "input_size": [self.channels, self.image_size, self.image_size],
        }


def _decode(raw: bytes, channels: int, size: int, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(raw))
        img = img.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot decode image {where}: {exc}") from None
    if size and img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr.transpose(2, 0, 1)


_DECODE_CHUNK = 2000
_JPEG_EXTS = (".jpg", ".jpeg")


def _decode_chunk(raws: list[bytes], names: list[str], out: torch.Tensor, channels: int, size: int) -> None:
    """Decode ``raws`` into ``out`` (n, C, H, W). Three-channel JPEGs of the right size go through torchvision's
    batched libjpeg-turbo decoder (the same pixels as Pillow's, about 3x faster: no Python per image); every
    other image (other formats, grayscale or CMYK JPEGs, other sizes, files it refuses) through Pillow."""
    jpeg = [i for i, name in enumerate(names) if name.lower().endswith(_JPEG_EXTS)] if channels == 3 else []
    decoded: dict[int, torch.Tensor] = {}
    if jpeg:
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            batch = decode_jpeg(
                [torch.frombuffer(bytearray(raws[i]), dtype=torch.uint8) for i in jpeg], mode=ImageReadMode.UNCHANGED
            )
        except RuntimeError:  # one unreadable file fails the batch: Pillow then names it (or reads it)
            batch = []
        decoded = {i: t for i, t in zip(jpeg, batch) if t.shape == (channels, size, size)}
    for i, raw in enumerate(raws):
        img = decoded.get(i)
        out[i] = img if img is not None else torch.tensor(_decode(raw, channels, size, names[i]))


class _FolderSource:
    """File listing of an ImageFolder tree, either a directory or a zip archive."""

    def __init__(self, root: Path):
        self.root = root
        self.zip = zipfile.ZipFile(root) if root.is_file() else None
        if self.zip is not None:
            names = [n for n in self.zip.namelist() if n.lower().endswith(IMAGE_EXTS)]
            self.files = {}
            for n in names:
                parts = n.split("/")
                if len(parts) >= 3:
                    self.files.setdefault(parts[-3], {}).setdefault(parts[-2], []).append(n)
        else:
            self.files = {}
            for split_dir in sorted(p for p in root.iterdir() if p.is_dir()):
                for cls_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
                    imgs = sorted(str(p) for p in cls_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
                    self.files.setdefault(split_dir.name, {})[cls_dir.name] = imgs

    def read(self, name: str) -> bytes:
        if self.zip is not None:
            return self.zip.read(name)
        return Path(name).read_bytes()


def _load_folder(root: Path, name: str, channels: int | None, size: int, progress: Progress | None) -> DataBundle:
    src = _FolderSource(root)
    if "train" not in src.files:
        raise DataError(
            f"{root} is not in ImageFolder layout: expected subfolders train/<class>/*.jpg and test/<class>/ "
            f"(or val/<class>/); found {sorted(src.files) or 'no image folders'}"
        )
    test_key = "test" if "test" in src.files else "val" if "val" in src.files else None
    if test_key is None:
        raise DataError(f"{root} has train/ but no test/ or val/ subfolder")
    classes = sorted(src.files["train"])
    if len(classes) < 2:
        raise DataError(f"{root}/train has {len(classes)} class folder(s); at least 2 are needed")
    extra = sorted(set(src.files[test_key]) - set(classes))
    if extra:
        raise DataError(f"{root}/{test_key} has classes missing from train/: {extra}")
    # decide channels and size from the first image when not given
    first = src.files["train"][classes[0]]
    if not first:
        raise DataError(f"{root}/train/{classes[0]} holds no images")
    from PIL import Image

    with Image.open(io.BytesIO(src.read(first[0]))) as im0:
        mode, size0 = im0.mode, im0.size
    if channels is None:
        channels = 1 if mode in ("L", "1", "I;16", "I") else 3
    size = size or (size0[0] if size0[0] == size0[1] else min(size0))
    if size * size * channels * sum(len(v) for s in src.files.values() for v in s.values()) > MAX_BYTES:
        raise DataError(
            f"{root} would need more than {MAX_BYTES // 1024**3} GiB in memory; use --image-size to shrink it"
        )

    def split(key: str) -> ImageSet:
        items = [(c, f) for ci, c in enumerate(classes) for f in src.files[key].get(c, [])]
        if not items:
            raise DataError(f"{root}/{key} holds no images")
        imgs = torch.empty((len(items), channels, size, size), dtype=torch.uint8)
        cidx = {c: i for i, c in enumerate(classes)}
        labels = torch.tensor([cidx[c] for c, _ in items], dtype=torch.int64)
        for start in range(0, len(items), _DECODE_CHUNK):
            names = [f for _, f in items[start : start + _DECODE_CHUNK]]
            _decode_chunk([src.read(f) for f in names], names, imgs[start : start + len(names)], channels, size)
            if progress:
                progress(f"decoding {key}", start + len(names), len(items))
        return ImageSet(imgs, labels)

    # decoded on first use; the test split is checked for images now, so an empty folder fails before any work
    if not any(src.files[test_key].get(c) for c in classes):
        raise DataError(f"{root}/{test_key} holds no images")
    return DataBundle(name=name, classes=classes, train=lambda: split("train"), test=lambda: split(test_key))


def _load_torchvision(name: str, data_dir: str, download: bool) -> DataBundle:
    import torchvision.datasets as tvd

    if not data_dir:
        raise UsageError(f"--data {name} needs --data-dir DIR (and --download to fetch it there)")
    root = Path(data_dir)
    try:
        if name == "svhn":
            tr = tvd.SVHN(str(root), split="train", download=download)
            te = tvd.SVHN(str(root), split="test", download=download)
            xtr, ytr = tr.data, tr.labels
            xte, yte = te.data, te.labels
            classes = [str(i) for i in range(10)]
        else:
            cls = {
                "cifar10": tvd.CIFAR10,
                "cifar100": tvd.CIFAR100,
                "mnist": tvd.MNIST,
                "fashion-mnist": tvd.FashionMNIST,
            }[name]
            tr = cls(str(root), train=True, download=download)
            te = cls(str(root), train=False, download=download)
            classes = list(tr.classes)

            def arr(ds):
                x = np.asarray(ds.data)
                x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
                return x, np.asarray(ds.targets)

            (xtr, ytr), (xte, yte) = arr(tr), arr(te)
    except RuntimeError as exc:
        hint = "" if download else " (pass --download to fetch it)"
        raise DataError(f"cannot load {name} from {root}: {exc}{hint}") from None
    mk = lambda x, y: ImageSet(
        torch.from_numpy(np.ascontiguousarray(x, dtype=np.uint8)), torch.as_tensor(np.asarray(y), dtype=torch.int64)
    )
    return DataBundle(name=name, classes=classes, train=mk(xtr, ytr), test=mk(xte, yte))


def _convert(bundle: DataBundle, channels: int | None, size: int) -> DataBundle:
    """Match the channels and size a model expects (gray<->RGB, bilinear resize)."""

    def conv(s: ImageSet) -> ImageSet:
        x = s.images
        if channels and x.shape[1] != channels:
            if channels == 3 and x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1).contiguous()
            elif channels == 1 and x.shape[1] == 3:
                w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
                x = (x.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
            else:
                raise DataError(f"cannot convert {x.shape[1]}-channel images to {channels} channels")
        if size and x.shape[-1] != size:
            x = torch.nn.functional.interpolate(
                x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
            x = x.round().clamp(0, 255).to(torch.uint8)
        return ImageSet(x, s.labels)

    return bundle.map(conv)


def load_data(
    spec: str,
    *,
    data_dir: str = "",
    download: bool = False,
    channels: int | None = None,
    image_size: int = 0,
    progress: Progress | None = None,
) -> DataBundle:
    """Load a data set by ``--data`` spec (see module docstring)."""
    if not spec:
        raise UsageError(
            "--data is required (demo, a folder with train/ and test/, or cifar10|cifar100|mnist|fashion-mnist|svhn)"
        )
    if image_size < 0:
        raise UsageError("--image-size must be positive")
    key = spec.lower()
    if key == "demo":
        if not DEMO_ZIP.is_file():
            raise DataError(f"the embedded demo data {DEMO_ZIP} is missing from the installation")
        bundle = _load_folder(DEMO_ZIP, "demo", channels, image_size, progress)
    elif key in TORCHVISION_SETS:
        bundle = _load_torchvision(key, data_dir, download)
    else:
        root = Path(spec)
        if not root.exists():
            raise DataError(
                f"--data {spec!r} is neither a folder nor a known data set; use demo, a folder with train/ and test/, "
                f"or one of {', '.join(TORCHVISION_SETS)}"
            )
        if root.is_file() and not zipfile.is_zipfile(root):
            raise DataError(f"--data {spec} is a file but not a zip archive in ImageFolder layout")
        bundle = _load_folder(root, root.name, channels, image_size, progress)
    return _convert(bundle, channels, image_size)


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded, per-class split of indices into (train, val); val gets ``fraction`` of each class (>= 1)."""
    g = torch.Generator().manual_seed(seed)
    train, val = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = max(1, int(round(fraction * len(idx)))) if len(idx) > 1 else 0
        val.append(idx[:k])
        train.append(idx[k:])
    tr, va = torch.sort(torch.cat(train)).values, torch.sort(torch.cat(val)).values
    if len(va) == 0 or len(tr) == 0:
        raise DataError(
            "the training split is too small to carve a validation split from it (at least 2 images per class are needed)"
        )
    return tr, va


def select_samples(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` indices drawn class by class in turn (stratified), seeded, in that interleaved order.

    Folders are class-sorted, so the first N images would all be one class: never take those. The
    interleaved order also gives every attack batch a mix of classes.
    """
    check_count(n, "n")
    total = int(labels.shape[0])
    n = min(n, total)
    g = torch.Generator().manual_seed(seed)
    pools = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        pools.append(idx[torch.randperm(len(idx), generator=g)].tolist())
    order = torch.randperm(len(pools), generator=g).tolist()
    out: list[int] = []
    depth = 0
    while len(out) < n:
        for p in order:
            if depth < len(pools[p]):
                out.append(pools[p][depth])
                if len(out) == n:
                    break
        depth += 1
    return torch.tensor(out, dtype=torch.int64)


def check_split(labels: torch.Tensor, train_idx: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Carve the hardening guard's own images out of the training indices: (train without them, check).

    ``n`` images drawn class by class (seeded, a stream of its own), in that interleaved order; they are used
    neither for training nor for any model selection (the validation split is carved separately). At most half
    of the training images are taken. ``n`` >= 1 is checked where the config is validated (``check.n``).
    """
    take = min(n, len(train_idx) // 2)
    if take < 1:
        raise DataError("the training split is too small to hold out images for the hardening guard; pass --no-check")
    pos = select_samples(labels[train_idx], take, seed + 7919)  # positions within train_idx
    check = train_idx[pos]
    keep = torch.ones(len(train_idx), dtype=torch.bool)
    keep[pos] = False
    return train_idx[keep], check


def held_out_check_split(
    labels: torch.Tensor, train_idx: torch.Tensor, val_idx: torch.Tensor, base_trained: torch.Tensor, n: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The guard's images when the base's training images are known: (train, val, check) with ``check`` drawn only
    from images the base never trained on (``base_trained``: indices into the train split), and removed from both
    the training and the validation indices. At most half of those images are taken.
    """
    seen = torch.zeros(len(labels), dtype=torch.bool)
    seen[base_trained] = True
    pool = torch.sort(torch.cat([train_idx, val_idx])).values
    pool = pool[~seen[pool]]
    take = min(n, len(pool) // 2)
    if take < 1:
        raise DataError(
            "the base was trained on every training image: none is left for the hardening guard's check; pass "
            "--no-check, or pretrain with a validation split (val_fraction > 0)"
        )
    check = pool[select_samples(labels[pool], take, seed + 7919)]
    out = torch.zeros(len(labels), dtype=torch.bool)
    out[check] = True
    return train_idx[~out[train_idx]], val_idx[~out[val_idx]], check
