"""MNIST, Fashion-MNIST and CIFAR-10 read from files: where they are looked for, how they are read and checked,
and the array cache.

**Where.** A data directory ``DIR`` (``--data-dir``; default ``$HPO_DATA_DIR`` or
``~/.cache/bioplausible-hpo/data``) may hold MNIST and Fashion-MNIST's four files directly, as the datasets' own
sites and Debian ship them, or in torchvision's layout::

    DIR/train-images-idx3-ubyte[.gz]  train-labels-idx1-ubyte[.gz]  t10k-images-idx3-ubyte[.gz]  t10k-labels-idx1-ubyte[.gz]
    DIR/MNIST/raw/  or  DIR/FashionMNIST/raw/   (the same four names)
    DIR/cifar-10-batches-py/data_batch_1 ... data_batch_5, test_batch, batches.meta  (or DIR/cifar-10-python.tar.gz)

Where ``DIR`` lacks them, the folder of the operating system's package is used without any flag: Debian's
``dataset-fashion-mnist`` installs Fashion-MNIST in ``/usr/share/datasets/fashion-mnist/``. Where nothing is found,
torchvision (the ``vision`` extra) downloads the files into ``DIR`` in its layout when there is a network;
otherwise one line names the package to install and the layouts accepted. A failed download leaves no folder
behind.

**How.** IDX files are read with NumPy (``hpo.data.idx``): no PyTorch. CIFAR-10's batches are Python pickles,
read through torchvision after torchvision has checked them against their official MD5 sums. The folders the
files are read from are never written to, so a read-only or package-managed folder works. The images are checked
(shape, uint8, labels 0-9, as many labels as images) so that a wrong file is an error naming it, never a silently
wrong dataset; the number of images is not forced to the official count (the tests use small files).

**Cache.** The first load writes the uint8 arrays and channel statistics to the user's cache directory
(``~/.cache/bioplausible-hpo/arrays/<name>-<folder hash>.npys``: consecutive uncompressed ``.npy`` records,
written to a temporary file and renamed); later loads read that file, about 5x faster than decompressing. It is
rebuilt when a source file that is still present changes size or modification time; with the source files
deleted, the cache of the folder they were in stands on its own.

The official train/test split is kept: cross-validation folds come from the training split, the test split
scores the best configuration. Images are scaled to [0, 1] and standardised per channel with the training
split's mean and std.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pickle
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.error import URLError

import numpy as np

from hpo.data.dataset import Dataset, standardise
from hpo.data.idx import read_idx
from hpo.errors import UsageError
from hpo.files import atomic_write, special_file, user_cache_dir

INSTALL_HINT = 'pip install -e ".[vision]"'
CACHE_FORMAT = 2  # bump when the cache layout changes, so old caches are rebuilt
N_CLASSES = 10
SYSTEM_DATASETS = Path("/usr/share/datasets")  # where Debian's dataset-* packages put their files
# Exceptions torchvision's CIFAR parser raises on a bad file (pickle of truncated data, a dict without the expected
# key, an array of the wrong size, ...): all mean "this file is not what it should be".
PARSE_ERRORS = (RuntimeError, ValueError, TypeError, AssertionError, EOFError, KeyError, IndexError, OSError,
                pickle.UnpicklingError)


@dataclass(frozen=True)
class FileSpec:
    """Where one dataset's files are found and what its arrays must look like."""

    name: str  # registry name (hpo.data.DATASETS)
    title: str  # human name for descriptions and errors
    torchvision_class: str  # class in torchvision.datasets that downloads (and, for CIFAR-10, parses) it
    folder: str  # torchvision's folder for the files under a data dir
    train_files: tuple[str, ...]  # files of the training split: (images, labels) for IDX datasets
    test_files: tuple[str, ...]  # files of the test split
    other_files: tuple[str, ...]  # files both splits need (CIFAR-10's label names)
    image_shape: tuple[int, int, int]  # (height, width, channels) of one image
    idx: bool  # IDX files, each placed as it is or gzipped (<file>.gz), in DIR itself or in DIR/<folder>
    archive: str | None  # archive torchvision accepts in the data dir instead of the folder
    system_package: str | None = None  # the Debian package that installs the files in SYSTEM_DATASETS/<name>

    @property
    def files(self) -> tuple[str, ...]:
        return self.train_files + self.test_files + self.other_files


MNIST_FILES: dict[str, Any] = {
    "train_files": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test_files": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    "other_files": (),
    "image_shape": (28, 28, 1),
    "idx": True,
    "archive": None,
}
SPECS: dict[str, FileSpec] = {
    "mnist": FileSpec(name="mnist", title="MNIST", torchvision_class="MNIST", folder="MNIST/raw", **MNIST_FILES),
    "fashion-mnist": FileSpec(
        name="fashion-mnist", title="Fashion-MNIST", torchvision_class="FashionMNIST", folder="FashionMNIST/raw",
        system_package="dataset-fashion-mnist", **MNIST_FILES,
    ),
    "cifar10": FileSpec(
        name="cifar10",
        title="CIFAR-10",
        torchvision_class="CIFAR10",
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        other_files=("batches.meta",),
        image_shape=(32, 32, 3),
        idx=False,
        archive="cifar-10-python.tar.gz",
    ),
}


def default_data_dir() -> Path:
    """``$HPO_DATA_DIR`` if set, else ``data`` in the user's cache directory (``hpo.files.user_cache_dir``)."""
    return Path(os.environ.get("HPO_DATA_DIR") or user_cache_dir() / "data")


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    return Path(data_dir).expanduser() if data_dir else default_data_dir().expanduser()


def load_file_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load ``name`` (a key of ``SPECS``): from the array cache if it is current, else from its files (found as
    the module docstring says, downloaded by torchvision where nothing is found), then write the cache."""
    spec = SPECS[name]
    root = resolve_data_dir(data_dir)
    if data_dir is not None:
        check_given_folder(root)
    folders = candidate_folders(spec, root)
    for candidate in folders:
        refuse_special_files(spec, candidate)
    folder = next((f for f in folders if not missing_files(spec, f)), None)
    if data_dir is not None and folder is not None and folder not in (root, root / spec.folder):
        print(f"note: {spec.name} is not in --data-dir {root}; reading it from {folder}", file=sys.stderr, flush=True)
    if folder is None:
        cached = next(((f, a) for f in folders if (a := read_cache(cache_path(spec, f), {})) is not None), None)
        if cached is not None:  # the source files were deleted after the cache was written
            return _dataset(spec, *cached)
        folder = download(spec, root, folders)
    sources = source_state(spec, folder)
    cache = cache_path(spec, folder)
    arrays = read_cache(cache, sources)
    if arrays is None:
        arrays = read_idx_dataset(spec, folder) if spec.idx else read_cifar(spec, root)
        write_cache(cache, arrays, sources)
    return _dataset(spec, folder, arrays)


# ----------------------------------------------------------------------------------------------------------------
# Finding the files


def candidate_folders(spec: FileSpec, root: Path) -> list[Path]:
    """The folders that may hold the dataset's files, in the order they are tried."""
    if not spec.idx:
        return [root / spec.folder]
    folders = [root, root / spec.folder]
    if spec.system_package is not None:
        folders.append(SYSTEM_DATASETS / spec.name)
    return folders


def source_file(spec: FileSpec, folder: Path, name: str) -> Path:
    """The file ``name`` of ``folder`` as it is placed: as it is, or gzipped (IDX files) if only that exists."""
    plain = folder / name
    if spec.idx and not plain.is_file() and (folder / f"{name}.gz").is_file():
        return folder / f"{name}.gz"
    return plain


def check_given_folder(root: Path) -> None:
    """A ``--data-dir`` that exists must be a folder this process can read (one that does not exist yet is where
    a download would go)."""
    if not os.path.lexists(root):
        return
    if not root.is_dir():
        raise UsageError(f"--data-dir {root} is not a directory")
    if not os.access(root, os.R_OK | os.X_OK):
        raise UsageError(f"--data-dir {root} cannot be read (permission denied)")


def refuse_special_files(spec: FileSpec, folder: Path) -> None:
    """A dataset file that is there but is not a regular file (a FIFO, a link to ``/dev/zero``, a folder, a
    dangling link) is an error naming it: skipping it would read another folder's files without a word, and
    opening it could block or never end."""
    for name in spec.files:
        for path in (folder / name, folder / f"{name}.gz") if spec.idx else (folder / name,):
            kind = special_file(path)
            if kind is not None:
                raise UsageError(f"{spec.name}: {path} is not a regular file (it is a {kind}); replace it with the "
                                 "data file or remove it")


def missing_files(spec: FileSpec, folder: Path) -> list[str]:
    return [name for name in spec.files if not source_file(spec, folder, name).is_file()]


def source_state(spec: FileSpec, folder: Path) -> dict[str, list[int]]:
    """Size and modification time (ns) of each source file that exists: the cache key."""
    state = {}
    for name in spec.files:
        path = source_file(spec, folder, name)
        if path.is_file():
            stat = path.stat()
            state[path.name] = [stat.st_size, stat.st_mtime_ns]
    return state


def placement_hint(spec: FileSpec, root: Path) -> str:
    if spec.idx:
        hint = (f"place the four files {', '.join(spec.files)} (gzipped or not) in {root}{os.sep} or "
                f"{root / spec.folder}{os.sep}, or pass --data-dir DIR")
        if spec.system_package:
            hint = f"install Debian's package (apt-get install {spec.system_package}), or {hint}"
        return hint
    return (f"place {spec.archive} in {root}{os.sep}, or its extracted files {', '.join(spec.files)} in "
            f"{root / spec.folder}{os.sep}, or pass --data-dir DIR")


def download(spec: FileSpec, root: Path, searched: list[Path]) -> Path:
    """Let torchvision fetch the files into ``root`` in its layout; the folder that holds them. Without torchvision
    or a network, one line saying where the files were looked for and what to do. A failed attempt leaves
    nothing behind: the folders it created are removed again."""
    looked = ", ".join(str(f) for f in searched)
    if importlib.util.find_spec("torchvision") is None:
        raise UsageError(
            f"{spec.name}: files not found in {looked}; {placement_hint(spec, root)}; or install torchvision to "
            f"download them ({INSTALL_HINT})"
        )
    import torchvision.datasets

    created = _first_missing_folder(root / spec.folder)
    print(f"{spec.name}: downloading the files into {root} with torchvision", file=sys.stderr, flush=True)
    try:
        getattr(torchvision.datasets, spec.torchvision_class)(str(root), train=True, download=True)
    except (URLError, OSError, RuntimeError) as error:
        if missing_files(spec, root / spec.folder):
            if created is not None:
                shutil.rmtree(created, ignore_errors=True)
            reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
            raise UsageError(
                f"{spec.name}: files not found in {looked} and the download failed ({reason}); "
                f"{placement_hint(spec, root)}"
            ) from None
    return root / spec.folder


def _first_missing_folder(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (what creating ``path`` would create)."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    return missing[-1] if missing else None


# ----------------------------------------------------------------------------------------------------------------
# Reading and checking


def read_idx_dataset(spec: FileSpec, folder: Path) -> dict[str, np.ndarray]:
    """Both splits of an MNIST-style dataset from its IDX files in ``folder``, checked."""
    arrays: dict[str, np.ndarray] = {}
    for split, (images_name, labels_name) in (("train", spec.train_files), ("test", spec.test_files)):
        images_path, labels_path = source_file(spec, folder, images_name), source_file(spec, folder, labels_name)
        images, labels = read_idx(images_path, "images"), read_idx(labels_path, "labels")
        if images.shape[1:] != spec.image_shape[:2]:
            height, width, _ = spec.image_shape
            raise UsageError(
                f"{images_path} holds {images.shape[1]}x{images.shape[2]} images; {spec.title} has {height}x{width}"
            )
        if len(images) != len(labels):
            raise UsageError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
        arrays[f"x_{split}"], arrays[f"y_{split}"] = check_split(
            spec, images[..., None], labels, f"{images_path}, {labels_path}"
        )
    arrays["mean"], arrays["std"] = channel_stats(arrays["x_train"], folder)
    return arrays


def read_cifar(spec: FileSpec, root: Path) -> dict[str, np.ndarray]:
    """Both splits of CIFAR-10 through torchvision's parser, after its MD5 check of every file."""
    import torchvision.datasets

    cls = getattr(torchvision.datasets, spec.torchvision_class)
    folder = root / spec.folder
    check_md5(spec, folder, cls)
    arrays: dict[str, np.ndarray] = {}
    for split, names in (("train", spec.train_files), ("test", spec.test_files)):
        files = ", ".join(str(folder / f) for f in names)
        try:
            data = cls(str(root), train=split == "train", download=False)
            x, y = np.asarray(data.data), np.asarray(data.targets)
        except PARSE_ERRORS as error:
            raise UsageError(f"cannot read {files}: {type(error).__name__}: {error}; replace the file(s)") from None
        arrays[f"x_{split}"], arrays[f"y_{split}"] = check_split(spec, x, y, files)
    arrays["mean"], arrays["std"] = channel_stats(arrays["x_train"], folder)
    return arrays


def check_md5(spec: FileSpec, folder: Path, cls: Any) -> None:
    """torchvision refuses CIFAR files whose MD5 differs from the official one, without saying which: find it."""
    from torchvision.datasets.utils import check_integrity

    sums = dict(cls.train_list + cls.test_list)
    sums[cls.meta["filename"]] = cls.meta["md5"]
    for name in spec.files:
        if not check_integrity(str(folder / name), sums.get(name)):
            raise UsageError(
                f"{folder / name} is truncated or corrupt (its MD5 sum is not the official one); delete it to "
                f"download it again, or replace it with the file from {spec.archive}"
            )


def check_split(spec: FileSpec, x: np.ndarray, y: np.ndarray, files: str) -> tuple[np.ndarray, np.ndarray]:
    """One split as uint8 (n, h, w, c) images and uint8 labels, or a UsageError naming the files."""
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


def channel_stats(x: np.ndarray, folder: Path) -> tuple[np.ndarray, np.ndarray]:
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


def cache_path(spec: FileSpec, folder: Path) -> Path:
    """The cache of the files in ``folder``: in the user's cache directory, never beside the files."""
    digest = hashlib.sha256(str(folder.expanduser().absolute()).encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return user_cache_dir() / "arrays" / f"{spec.name}-{digest}.npys"


def read_cache(path: Path, sources: dict[str, list[int]]) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when there is no cache or a source file in ``sources`` changed since.

    The cache is consecutive ``.npy`` records (a JSON meta string, then ``CACHE_KEYS``) in one file: one atomic
    rename publishes it, and each array is read in one call (an ``.npz`` goes through ``zipfile`` and reads 5-10x
    slower). An unreadable cache also returns None: the arrays are then rebuilt from the source files.
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


def write_cache(path: Path, arrays: dict[str, np.ndarray], sources: dict[str, list[int]]) -> None:
    meta = np.array(json.dumps({"format": CACHE_FORMAT, "sources": sources}))

    def write(handle: IO[bytes]) -> None:
        for array in (meta, *(arrays[key] for key in CACHE_KEYS)):
            np.lib.format.write_array(handle, array, allow_pickle=False)

    try:
        atomic_write(path, write)
    except OSError as error:  # a read-only home: go on, reading the source files each time
        print(f"note: cannot write the array cache {path} ({error}); loads will re-read the source files",
              file=sys.stderr)


def _dataset(spec: FileSpec, folder: Path, arrays: dict[str, np.ndarray]) -> Dataset:
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
        f"{spec.title} from {folder}: official split, {n_train} train / {n_test} test, standardised per channel "
        f"with training statistics",
    )
