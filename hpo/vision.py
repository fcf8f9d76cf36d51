"""MNIST, Fashion-MNIST and CIFAR-10, read by ``torchvision.datasets`` from a data directory and cached as arrays.

The files live where torchvision looks for them under the data directory (``--data-dir``, default
``$HPO_DATA_DIR`` or ``~/.cache/bioplausible-hpo/data``)::

    DIR/MNIST/raw/train-images-idx3-ubyte[.gz]   train-labels-idx1-ubyte[.gz]
                  t10k-images-idx3-ubyte[.gz]    t10k-labels-idx1-ubyte[.gz]
    DIR/FashionMNIST/raw/  (the same four names)
    DIR/cifar-10-batches-py/data_batch_1 ... data_batch_5, test_batch, batches.meta
        (or DIR/cifar-10-python.tar.gz, which torchvision checks and extracts)

Missing files are downloaded by torchvision when there is a network. MNIST-style files may be placed gzipped as
distributed; they are decompressed next to themselves (torchvision only reads the decompressed files unless it
downloaded them itself). The official train/test split is kept: cross-validation folds come from the training
split, the test split scores the best configuration. Images are scaled to [0, 1] and standardised per channel
with the training split's mean and std.

torchvision parses the files; this module checks what it does not (IDX headers against file sizes, image shapes,
dtypes, label ranges, matching counts) so that a truncated or corrupt file is an error naming the file, never a
silently wrong dataset. CIFAR-10 files are also checked by torchvision against their official MD5 sums.

The first load writes the uint8 arrays and channel statistics to ``DIR/arrays/<name>.npys`` (consecutive
uncompressed ``.npy`` records, written to a temporary file and renamed). Later loads read that file without
importing torch; it is rebuilt when any source file that is still present has a different size or modification
time than when it was written. Deleting the source files afterwards is allowed: the cache then stands on its own.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import pickle
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.error import URLError

import numpy as np

from hpo.dataset import Dataset, standardise
from hpo.errors import UsageError
from hpo.files import atomic_write

INSTALL_HINT = 'pip install -e ".[vision]"'
CACHE_FORMAT = 1  # bump when the cache layout changes, so old caches are rebuilt
N_CLASSES = 10
IDX_MAGIC = {"images": 2051, "labels": 2049}  # IDX magic numbers: 0x0803 (uint8, 3 dims), 0x0801 (uint8, 1 dim)
# Exceptions torchvision's parsers raise on a bad file (a failed assert, a tensor view of the wrong size, pickle
# of truncated data, a dict without the expected key, ...): all mean "this file is not what it should be".
PARSE_ERRORS = (
    RuntimeError,
    ValueError,
    TypeError,
    AssertionError,
    EOFError,
    KeyError,
    IndexError,
    OSError,
    pickle.UnpicklingError,
)


@dataclass(frozen=True)
class VisionSpec:
    """Where torchvision keeps one dataset's files and what its arrays must look like."""

    name: str  # registry name (hpo.data.DATASETS)
    torchvision_class: str  # class in torchvision.datasets
    folder: str  # directory under the data dir that holds the files torchvision reads
    train_files: tuple[str, ...]  # files of the training split
    test_files: tuple[str, ...]  # files of the test split
    other_files: tuple[str, ...]  # files both splits need (CIFAR-10's label names)
    image_shape: tuple[int, int, int]  # (height, width, channels) of one image
    gzipped: bool  # files may be placed as <file>.gz, as MNIST is distributed
    archive: str | None  # archive torchvision accepts in the data dir instead of the folder
    title: str  # human name for descriptions


MNIST_FILES = {
    "train_files": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test_files": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    "other_files": (),
    "image_shape": (28, 28, 1),
    "gzipped": True,
    "archive": None,
}
SPECS: dict[str, VisionSpec] = {
    "mnist": VisionSpec(name="mnist", torchvision_class="MNIST", folder="MNIST/raw", title="MNIST", **MNIST_FILES),
    "fashion-mnist": VisionSpec(
        name="fashion-mnist",
        torchvision_class="FashionMNIST",
        folder="FashionMNIST/raw",
        title="Fashion-MNIST",
        **MNIST_FILES,
    ),
    "cifar10": VisionSpec(
        name="cifar10",
        torchvision_class="CIFAR10",
        folder="cifar-10-batches-py",
        title="CIFAR-10",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        other_files=("batches.meta",),
        image_shape=(32, 32, 3),
        gzipped=False,
        archive="cifar-10-python.tar.gz",
    ),
}


def default_data_dir() -> Path:
    """``$HPO_DATA_DIR`` if set, else ``~/.cache/bioplausible-hpo/data``."""
    return Path(os.environ.get("HPO_DATA_DIR") or Path.home() / ".cache" / "bioplausible-hpo" / "data")


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    return Path(data_dir).expanduser() if data_dir else default_data_dir().expanduser()


def load_vision(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load ``name`` (a key of ``SPECS``) from ``data_dir``: from the array cache if it is current, else through
    torchvision (downloading missing files if there is a network), then write the cache."""
    spec = SPECS[name]
    root = resolve_data_dir(data_dir)
    folder = root / spec.folder
    if spec.gzipped:
        _decompress_placed(spec, folder)
    cache = root / "arrays" / f"{name}.npys"
    arrays = _read_cache(cache, _source_state(spec, folder))
    if arrays is None:
        arrays = _read_with_torchvision(spec, root)
        _write_cache(cache, arrays, _source_state(spec, folder))
    return _dataset(spec, root, arrays)


# ----------------------------------------------------------------------------------------------------------------
# Source files


def _source_files(spec: VisionSpec, folder: Path) -> list[Path]:
    return [folder / f for f in spec.train_files + spec.test_files + spec.other_files]


def _source_state(spec: VisionSpec, folder: Path) -> dict[str, list[int]]:
    """Size and modification time (ns) of each source file that exists: the cache key."""
    state = {}
    for path in _source_files(spec, folder):
        if path.is_file():
            stat = path.stat()
            state[path.name] = [stat.st_size, stat.st_mtime_ns]
    return state


def _decompress_placed(spec: VisionSpec, folder: Path) -> None:
    """Decompress ``<file>.gz`` placed by the user, when its decompressed file is missing or older.

    torchvision's MNIST reads only the decompressed files and decompresses ``.gz`` files only after checking
    them against the official MD5 sums (which would send it to the network for any other copy). gzip carries
    its own CRC and length, so a truncated or damaged ``.gz`` is caught here and named.
    """
    for name in spec.train_files + spec.test_files:
        packed, plain = folder / f"{name}.gz", folder / name
        if not packed.is_file() or (plain.is_file() and plain.stat().st_mtime_ns >= packed.stat().st_mtime_ns):
            continue
        try:
            with gzip.open(packed, "rb") as handle:
                content = handle.read()
        except (OSError, EOFError, zlib.error) as error:
            raise UsageError(
                f"{packed} is truncated or corrupt ({error}); delete it to download it again, or replace it"
            ) from None
        try:
            atomic_write(plain, lambda fh, data=content: fh.write(data))
        except OSError as error:
            raise UsageError(
                f"cannot write {plain}, the decompressed {packed.name} that torchvision reads ({error}); "
                f"decompress it there yourself or use a writable --data-dir"
            ) from None


def _missing(spec: VisionSpec, root: Path) -> list[Path]:
    return [path for path in _source_files(spec, root / spec.folder) if not path.is_file()]


def _placement_hint(spec: VisionSpec, root: Path) -> str:
    folder = root / spec.folder
    if spec.gzipped:
        names = ", ".join(f"{f}.gz" for f in spec.train_files + spec.test_files)
        return f"place {names} (as distributed, or decompressed) in {folder}{os.sep}"
    names = ", ".join(spec.train_files + spec.test_files + spec.other_files)
    return f"place {spec.archive} in {root}{os.sep}, or its extracted files {names} in {folder}{os.sep}"


def _import_torchvision() -> Any:
    try:
        import torchvision.datasets
    except ImportError as error:
        raise UsageError(
            f"datasets {', '.join(SPECS)} are read with torchvision, which is not installed ({error}); "
            f"install it with: {INSTALL_HINT}"
        ) from None
    return torchvision


def _download(spec: VisionSpec, root: Path, cls: type) -> None:
    """Let torchvision fetch the missing files; without a network, say which files to place where."""
    print(f"{spec.name}: downloading the missing files into {root} with torchvision", file=sys.stderr, flush=True)
    try:
        cls(str(root), train=True, download=True)
    except (URLError, OSError, RuntimeError) as error:
        if not _missing(spec, root):
            return  # downloaded, but torchvision could not read a file: _read_with_torchvision names it
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise UsageError(
            f"{spec.name}: files not found in {root} and the download failed ({reason}); without a network, "
            f"{_placement_hint(spec, root)} (or pass --data-dir DIR)"
        ) from None


# ----------------------------------------------------------------------------------------------------------------
# Reading through torchvision, with checks


def _read_with_torchvision(spec: VisionSpec, root: Path) -> dict[str, np.ndarray]:
    torchvision = _import_torchvision()
    cls = getattr(torchvision.datasets, spec.torchvision_class)
    if _missing(spec, root):
        _download(spec, root, cls)
    folder = root / spec.folder
    if spec.gzipped:
        for names in (spec.train_files, spec.test_files):
            _check_idx_pair(spec, folder / names[0], folder / names[1])
    else:
        _check_md5(spec, folder, cls)
    x_train, y_train = _read_split(spec, root, cls, train=True)
    x_test, y_test = _read_split(spec, root, cls, train=False)
    mean, std = _channel_stats(x_train, spec, folder)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test, "mean": mean, "std": std}


def _check_idx_pair(spec: VisionSpec, images: Path, labels: Path) -> None:
    """IDX headers: magic numbers, image size, and a file length that matches the header exactly.

    torchvision reads IDX files with ``strict=False``; a truncated file fails there only as a tensor ``view`` of
    the wrong size. Checking the header against the file length names the file and says what is wrong.
    """
    image_shape = _idx_shape(images, "images", 3)
    label_shape = _idx_shape(labels, "labels", 1)
    if tuple(image_shape[1:]) != spec.image_shape[:2]:
        height, width, _ = spec.image_shape
        raise UsageError(f"{images} holds {image_shape[1]}x{image_shape[2]} images; {spec.title} has {height}x{width}")
    if image_shape[0] != label_shape[0]:
        raise UsageError(f"{images} holds {image_shape[0]} images but {labels} holds {label_shape[0]} labels")


def _idx_shape(path: Path, kind: str, ndim: int) -> tuple[int, ...]:
    header_size = 4 + 4 * ndim
    with open(path, "rb") as handle:
        header = handle.read(header_size)
    magic = int.from_bytes(header[:4], "big") if len(header) >= 4 else None
    if len(header) < header_size or magic != IDX_MAGIC[kind]:
        raise UsageError(
            f"{path} is not an IDX {kind} file (magic number {magic}, expected {IDX_MAGIC[kind]}); replace it"
        )
    shape = tuple(int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    size, expected = path.stat().st_size, header_size + math.prod(shape)
    if size != expected:
        raise UsageError(
            f"{path} is truncated or corrupt: its header announces {kind} of shape {shape} ({expected} bytes), "
            f"the file has {size} bytes; delete it to download it again, or replace it"
        )
    return shape


def _check_md5(spec: VisionSpec, folder: Path, cls: type) -> None:
    """torchvision refuses CIFAR files whose MD5 differs from the official one, without saying which: find it."""
    from torchvision.datasets.utils import check_integrity

    sums = dict(cls.train_list + cls.test_list)
    sums[cls.meta["filename"]] = cls.meta["md5"]
    for name in spec.train_files + spec.test_files + spec.other_files:
        if not check_integrity(str(folder / name), sums.get(name)):
            raise UsageError(
                f"{folder / name} is truncated or corrupt (its MD5 sum is not the official one); delete it to "
                f"download it again, or replace it with the file from {spec.archive}"
            )


def _read_split(spec: VisionSpec, root: Path, cls: type, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """One split through torchvision's parser, as uint8 (n, h, w, c) images and uint8 labels, checked."""
    files = ", ".join(str(root / spec.folder / f) for f in (spec.train_files if train else spec.test_files))
    try:
        split = cls(str(root), train=train, download=False)
        x, y = np.asarray(split.data), np.asarray(split.targets)
    except PARSE_ERRORS as error:
        raise UsageError(f"cannot read {files}: {type(error).__name__}: {error}; replace the file(s)") from None
    if x.ndim == 3:  # MNIST-style grey images come without a channel axis
        x = x[..., None]
    problem = None
    if x.dtype != np.uint8:
        problem = f"images are {x.dtype}, expected uint8"
    elif x.shape[1:] != spec.image_shape or len(x) == 0:
        problem = f"images have shape {x.shape}, expected (n > 0, {', '.join(map(str, spec.image_shape))})"
    elif y.shape != (len(x),):
        problem = f"{len(x)} images but labels of shape {y.shape}"
    elif not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= N_CLASSES:
        problem = f"labels must be integers in 0..{N_CLASSES - 1}, found {y.min()}..{y.max()} ({y.dtype})"
    if problem:
        raise UsageError(f"{files} do not hold {spec.title}: {problem}; replace the file(s)")
    return np.ascontiguousarray(x), y.astype(np.uint8)


def _channel_stats(x: np.ndarray, spec: VisionSpec, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-channel mean and std of the [0, 1]-scaled training images, from 256-bin histograms."""
    values = np.arange(256, dtype=np.float64) / 255.0
    mean, std = np.empty(x.shape[-1]), np.empty(x.shape[-1])
    for c in range(x.shape[-1]):
        counts = np.bincount(x[..., c].ravel(), minlength=256).astype(np.float64)
        mean[c] = counts @ values / counts.sum()
        std[c] = np.sqrt(counts @ (values - mean[c]) ** 2 / counts.sum())
    if not np.all(std > 0):
        raise UsageError(f"the training images in {folder} are constant in some channel (std {std}); replace them")
    return mean, std


# ----------------------------------------------------------------------------------------------------------------
# Array cache and the Dataset


CACHE_KEYS = ("x_train", "y_train", "x_test", "y_test", "mean", "std")  # arrays after the meta record, in order


def _read_cache(path: Path, sources: dict[str, list[int]]) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when there is no cache or a source file changed since it was written.

    The cache is consecutive ``.npy`` records (a JSON meta string, then ``CACHE_KEYS``) in one file: one atomic
    rename publishes it, and each array is read with ``np.fromfile`` (an ``.npz`` goes through ``zipfile`` and
    reads 5-10x slower). An unreadable cache (e.g. a disk error) also returns None: the arrays are then rebuilt
    from the source files, which is what the cache stands for, and the cache is rewritten.
    """
    try:
        with open(path, "rb") as handle:
            meta = json.loads(np.lib.format.read_array(handle, allow_pickle=False).item())
            if meta.get("format") != CACHE_FORMAT:
                return None
            if any(meta["sources"].get(name) != state for name, state in sources.items()):
                return None
            return {key: np.lib.format.read_array(handle, allow_pickle=False) for key in CACHE_KEYS}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _write_cache(path: Path, arrays: dict[str, np.ndarray], sources: dict[str, list[int]]) -> None:
    meta = np.array(json.dumps({"format": CACHE_FORMAT, "sources": sources}))

    def write(handle: IO[bytes]) -> None:
        for array in (meta, *(arrays[key] for key in CACHE_KEYS)):
            np.lib.format.write_array(handle, array, allow_pickle=False)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, write)
    except OSError as error:
        # A read-only shared data directory is a valid setup: say so and go on reading the source files each time.
        print(
            f"note: cannot write the array cache {path} ({error}); loads will re-read the source files",
            file=sys.stderr,
        )


def _dataset(spec: VisionSpec, root: Path, arrays: dict[str, np.ndarray]) -> Dataset:
    mean, std = arrays["mean"], arrays["std"]
    n_train, n_test = len(arrays["x_train"]), len(arrays["x_test"])
    return Dataset(
        spec.name,
        "classification",
        standardise(arrays["x_train"], mean, std, scale=1 / 255),
        arrays["y_train"].astype(np.int32),
        standardise(arrays["x_test"], mean, std, scale=1 / 255),
        arrays["y_test"].astype(np.int32),
        N_CLASSES,
        f"{spec.title} via torchvision from {root}: official split, {n_train} train / {n_test} test, "
        f"standardised per channel with training statistics",
    )
