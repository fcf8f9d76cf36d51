"""MNIST, Fashion-MNIST and CIFAR-10 from files: small files generated in the real on-disk formats, and the real
Fashion-MNIST that Debian's ``dataset-fashion-mnist`` installs.

No network: the files are written here as they are distributed (gzipped big-endian IDX files; CIFAR-10's
Python-2 pickles). IDX files are read with NumPy (no torch); CIFAR-10's through torchvision, whose MD5 check runs
for real on the generated files' sums. Every test has its own user cache directory, so the array caches it writes
are its own.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct
import sys
import urllib.request
from pathlib import Path
from urllib.error import URLError

import numpy as np
import optuna
import pytest

from hpo.config import StudyConfig, load_grid
from hpo.data import DATASETS, FILE_DATASETS, load_dataset
from hpo.data import sources as data_files
from hpo.errors import UsageError
from hpo.record import read_study
from hpo.storage import open_storage

ROOT = Path(__file__).resolve().parents[2]
N_TRAIN, N_TEST = 80, 30
MNIST_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch):
    """This test's own user cache directory (array caches, downloads by default) and no Debian folder unless a
    test puts one in place."""
    cache = tmp_path / "user-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("HPO_DATA_DIR", raising=False)
    monkeypatch.setattr(data_files, "SYSTEM_DATASETS", tmp_path / "no-system-datasets")
    return cache / "bioplausible-hpo"


def needs_torchvision():
    return pytest.importorskip("torchvision", reason="needs the vision extra: pip install -e '.[vision]'")


def no_torch(monkeypatch) -> None:
    """Any import of torch or torchvision fails from here on, as where PyTorch is not installed."""
    for module in ("torch", "torchvision", "torchvision.datasets"):
        monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setattr(data_files.importlib.util, "find_spec",
                        lambda name, *a: None if name.split(".")[0] in ("torch", "torchvision") else FIND_SPEC(name, *a))


FIND_SPEC = data_files.importlib.util.find_spec


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folder`` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


# ----------------------------------------------------------------------------------------------------------------
# Generators of the distributed formats


def images_and_labels(n: int, shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images whose brightness depends on the label (so a network can learn them), every class."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    noise = rng.integers(0, 120, (n, *shape))
    images = np.clip(noise + 12 * labels.reshape(-1, *[1] * len(shape)), 0, 255).astype(np.uint8)
    return images, labels.astype(np.uint8)


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file: magic 0x0000_08_nd (unsigned byte), big-endian int32 dimensions, then the data."""
    magic = 0x0800 + array.ndim  # 2051 for (n, 28, 28) images, 2049 for (n,) labels
    return struct.pack(f">{1 + array.ndim}i", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_mnist(
    root: Path, folder: str | None = "MNIST", n_train: int = N_TRAIN, seed: int = 0, gzipped: bool = True
) -> dict[str, np.ndarray]:
    """The four IDX files, gzipped as distributed (or not), in ``root/<folder>/raw`` (torchvision's layout) or,
    with ``folder=None``, in ``root`` itself (as the datasets' sites and Debian ship them)."""
    raw = root / folder / "raw" if folder else root
    raw.mkdir(parents=True, exist_ok=True)
    x_train, y_train = images_and_labels(n_train, (28, 28), seed)
    x_test, y_test = images_and_labels(N_TEST, (28, 28), seed + 1)
    for name, array in [
        ("train-images-idx3-ubyte", x_train),
        ("train-labels-idx1-ubyte", y_train),
        ("t10k-images-idx3-ubyte", x_test),
        ("t10k-labels-idx1-ubyte", y_test),
    ]:
        if gzipped:
            (raw / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array)))
        else:
            (raw / name).write_bytes(idx_bytes(array))
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


class Python2Pickler(pickle._Pickler):
    """Writes ``bytes`` as Python 2 ``str`` (BINSTRING), as in CIFAR-10's pickles made with Python 2 cPickle.

    Read back with ``encoding="latin1"`` (what torchvision does) they become ``str``, exactly as the official
    files' keys ('data', 'labels') and numpy's raw array bytes do.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def py2_pickle(obj) -> bytes:
    import io

    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def cifar_batch(images: np.ndarray, labels: np.ndarray, name: str) -> bytes:
    """One batch: b'data' (n, 3072) uint8, rows are the 1024 red, then green, then blue pixels; b'labels' list."""
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
    return py2_pickle(
        {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in labels],
            b"data": rows,
            b"filenames": [f"img_{i}.png".encode() for i in range(len(images))],
        }
    )


def write_cifar(root: Path, monkeypatch, per_batch: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """``root/cifar-10-batches-py`` with five training batches, the test batch and batches.meta; registers
    their MD5 sums in torchvision's table (the real files' sums are fixed, these are not the real files)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    x_train, y_train = images_and_labels(5 * per_batch, (32, 32, 3), seed)
    x_test, y_test = images_and_labels(N_TEST, (32, 32, 3), seed + 1)
    for i in range(5):
        part = slice(i * per_batch, (i + 1) * per_batch)
        (folder / f"data_batch_{i + 1}").write_bytes(cifar_batch(x_train[part], y_train[part], f"batch {i + 1}"))
    (folder / "test_batch").write_bytes(cifar_batch(x_test, y_test, "test"))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    meta = {b"num_cases_per_batch": per_batch, b"label_names": names, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(py2_pickle(meta))
    register_cifar_md5(folder, monkeypatch)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def register_cifar_md5(folder: Path, monkeypatch) -> None:
    def md5(name):
        return hashlib.md5((folder / name).read_bytes()).hexdigest()

    cls = needs_torchvision().datasets.CIFAR10
    monkeypatch.setattr(cls, "train_list", [[f"data_batch_{i}", md5(f"data_batch_{i}")] for i in range(1, 6)])
    monkeypatch.setattr(cls, "test_list", [["test_batch", md5("test_batch")]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5("batches.meta")})


@pytest.fixture
def no_network(monkeypatch):
    """Any download attempt fails as it does offline (and CI never downloads 170 MB by accident)."""

    def offline(*args, **kwargs):
        raise URLError("[Errno -2] Name or service not known (no network in this test)")

    monkeypatch.setattr(urllib.request, "urlopen", offline)


def check_standardised(x: np.ndarray) -> None:
    mean = x.mean(axis=(0, 1, 2), dtype=np.float64)
    std = x.std(axis=(0, 1, 2), dtype=np.float64)
    np.testing.assert_allclose(mean, 0.0, atol=1e-5)
    np.testing.assert_allclose(std, 1.0, rtol=1e-5)


def expected_standardised(raw_train: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """The closed form: (x / 255 - mean) / std with the training split's per-channel statistics."""
    if raw.ndim == 3:
        raw, raw_train = raw[..., None], raw_train[..., None]
    scaled_train = raw_train / 255.0
    mean, std = scaled_train.mean(axis=(0, 1, 2)), scaled_train.std(axis=(0, 1, 2))
    return (raw / 255.0 - mean) / std


# ----------------------------------------------------------------------------------------------------------------
# MNIST-style files: NumPy, both layouts, never written to


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST"), ("mnist", None)])
@pytest.mark.parametrize("gzipped", [True, False])
def test_mnist_style_files_load_with_official_split_without_torch(tmp_path, no_network, monkeypatch, name, folder,
                                                                  gzipped):
    no_torch(monkeypatch)
    raw = write_mnist(tmp_path / "data", folder, gzipped=gzipped)
    data = load_dataset(name, str(tmp_path / "data"))
    assert data.name == name and data.task == "classification" and data.out_features == 10
    assert data.x_train.shape == (N_TRAIN, 28, 28, 1) and data.x_test.shape == (N_TEST, 28, 28, 1)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int32 and data.y_test.dtype == np.int32
    np.testing.assert_array_equal(data.y_train, raw["y_train"])  # official split, official order
    np.testing.assert_array_equal(data.y_test, raw["y_test"])
    np.testing.assert_allclose(data.x_train, expected_standardised(raw["x_train"], raw["x_train"]), atol=1e-5)
    np.testing.assert_allclose(data.x_test, expected_standardised(raw["x_train"], raw["x_test"]), atol=1e-5)
    check_standardised(data.x_train)
    assert data.input_shape == (28, 28, 1)  # MLPs flatten to 784, CNNs get one channel
    assert "torch" not in sys.modules or sys.modules["torch"] is None


def test_nothing_is_written_where_the_files_are_read(tmp_path, no_network, user_cache):
    data_dir = tmp_path / "data"
    write_mnist(data_dir, None)
    before = listing(data_dir)
    load_dataset("mnist", str(data_dir))
    load_dataset("mnist", str(data_dir))
    assert listing(data_dir) == before  # no decompressed copies, no cache, no folders
    assert [p.name.split("-")[0] for p in (user_cache / "arrays").iterdir()] == ["mnist"]


def test_debian_folder_is_found_without_flags(tmp_path, no_network, monkeypatch):
    system = tmp_path / "usr-share-datasets"
    raw = write_mnist(system / "fashion-mnist", None)  # the package's layout: the four .gz files in the folder
    monkeypatch.setattr(data_files, "SYSTEM_DATASETS", system)
    before = listing(system)
    data = load_dataset("fashion-mnist")  # no --data-dir: the default data dir is empty
    np.testing.assert_array_equal(data.y_test, raw["y_test"])
    assert str(system / "fashion-mnist") in data.description
    data = load_dataset("fashion-mnist", str(tmp_path / "empty"))  # a data dir without the files: the same
    np.testing.assert_array_equal(data.y_train, raw["y_train"])
    assert listing(system) == before and not (tmp_path / "empty").exists()
    with pytest.raises(UsageError, match="no MNIST"):  # MNIST has no Debian package: never read from there
        try:
            load_dataset("mnist", str(tmp_path / "empty"))
        except UsageError as error:
            assert "fashion" not in str(error)
            raise UsageError("no MNIST") from None


def test_the_user_data_dir_comes_before_the_debian_folder(tmp_path, no_network, monkeypatch):
    system = tmp_path / "usr-share-datasets"
    write_mnist(system / "fashion-mnist", None, seed=1)
    monkeypatch.setattr(data_files, "SYSTEM_DATASETS", system)
    mine = write_mnist(tmp_path / "data", "FashionMNIST", seed=7)
    data = load_dataset("fashion-mnist", str(tmp_path / "data"))
    np.testing.assert_array_equal(data.y_train, mine["y_train"])


def test_cache_is_used_then_invalidated_when_a_source_file_changes(tmp_path, no_network, monkeypatch):
    raw = write_mnist(tmp_path, None)
    reads = []
    original = data_files.read_idx_dataset
    monkeypatch.setattr(data_files, "read_idx_dataset", lambda *a: reads.append(a) or original(*a))
    first = load_dataset("mnist", str(tmp_path))
    second = load_dataset("mnist", str(tmp_path))
    assert len(reads) == 1  # the cache served the second load
    np.testing.assert_array_equal(first.x_train, second.x_train)
    np.testing.assert_array_equal(first.y_test, second.y_test)

    # New training files (more images, other labels): the cache is stale and the new files are read.
    changed = write_mnist(tmp_path, None, n_train=N_TRAIN + 10, seed=5)
    for packed in tmp_path.glob("*.gz"):  # a later modification time on any filesystem
        os.utime(packed, ns=(packed.stat().st_mtime_ns + 10**9,) * 2)
    third = load_dataset("mnist", str(tmp_path))
    assert len(reads) == 2 and third.x_train.shape[0] == N_TRAIN + 10
    np.testing.assert_array_equal(third.y_train, changed["y_train"])
    assert not np.array_equal(third.y_test, raw["y_test"])


def test_cache_stands_alone_without_source_files(tmp_path, no_network, monkeypatch, user_cache):
    write_mnist(tmp_path)
    first = load_dataset("mnist", str(tmp_path))
    for path in (tmp_path / "MNIST" / "raw").iterdir():
        path.unlink()
    no_torch(monkeypatch)
    again = load_dataset("mnist", str(tmp_path))
    np.testing.assert_array_equal(first.x_train, again.x_train)
    assert len(list((user_cache / "arrays").iterdir())) == 1  # no temporary file left behind


# ----------------------------------------------------------------------------------------------------------------
# Nothing found, or files that are not what they should be


def test_nothing_found_without_torchvision_names_the_package_and_the_layouts(tmp_path, monkeypatch):
    no_torch(monkeypatch)
    data_dir = tmp_path / "data"
    with pytest.raises(UsageError) as error:
        load_dataset("fashion-mnist", str(data_dir))
    message = str(error.value)
    assert "\n" not in message and "apt-get install dataset-fashion-mnist" in message
    assert f"in {data_dir}{os.sep} or {data_dir / 'FashionMNIST' / 'raw'}{os.sep}" in message
    assert "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte" in message
    assert 'pip install -e ".[vision]"' in message
    assert not data_dir.exists()


@pytest.mark.torch  # the vision extra: CI runs these in a step of their own
def test_failed_download_says_which_files_go_where_and_leaves_no_folder(tmp_path, no_network):
    needs_torchvision()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with pytest.raises(UsageError) as error:
        load_dataset("mnist", str(data_dir))
    message = str(error.value)
    assert "\n" not in message and "download failed" in message and "no network in this test" in message
    assert f"{data_dir / 'MNIST' / 'raw'}{os.sep}" in message and "apt-get" not in message
    assert list(data_dir.iterdir()) == []  # torchvision's MNIST/raw folder was removed again

    with pytest.raises(UsageError) as error:
        load_dataset("cifar10", str(data_dir))
    message = str(error.value)
    assert f"cifar-10-python.tar.gz in {data_dir}" in message and "data_batch_1, data_batch_2" in message
    assert "test_batch, batches.meta" in message and str(data_dir / "cifar-10-batches-py") in message


def truncate(path: Path, keep: float = 0.5) -> None:
    content = path.read_bytes()
    path.write_bytes(content[: int(len(content) * keep)])


def test_truncated_gzip_is_reported_by_name(tmp_path, no_network):
    write_mnist(tmp_path)
    packed = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    truncate(packed)
    with pytest.raises(UsageError, match=rf"{packed} is truncated or corrupt"):
        load_dataset("mnist", str(tmp_path))


@pytest.mark.parametrize("name", ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])
def test_truncated_idx_file_is_reported_by_name(tmp_path, no_network, name):
    write_mnist(tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    plain = raw / name
    plain.write_bytes(gzip.decompress((raw / f"{name}.gz").read_bytes()))
    (raw / f"{name}.gz").unlink()
    truncate(plain, 0.9)
    with pytest.raises(UsageError, match=rf"{plain} is truncated or corrupt: its header announces"):
        load_dataset("mnist", str(tmp_path))


def test_swapped_idx_files_and_bad_labels_are_reported(tmp_path, no_network):
    write_mnist(tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    labels = (raw / "t10k-labels-idx1-ubyte.gz").read_bytes()
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(labels)  # a labels file where the images should be
    with pytest.raises(UsageError, match=r"t10k-images-idx3-ubyte.gz is not an IDX images file \(magic number 2049"):
        load_dataset("mnist", str(tmp_path))

    write_mnist(tmp_path)
    small = np.zeros((N_TRAIN, 20, 20), np.uint8)  # a valid IDX images file of another size
    (raw / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(small)))
    with pytest.raises(UsageError, match=r"train-images-idx3-ubyte.gz holds 20x20 images; MNIST has 28x28"):
        load_dataset("mnist", str(tmp_path))

    write_mnist(tmp_path)
    (raw / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(N_TRAIN - 1, np.uint8))))
    with pytest.raises(UsageError, match=rf"holds {N_TRAIN} images but .*train-labels-idx1-ubyte.gz holds {N_TRAIN - 1}"):
        load_dataset("mnist", str(tmp_path))

    write_mnist(tmp_path)
    y = np.full(N_TRAIN, 12, np.uint8)  # a valid IDX file whose labels are not digits
    (raw / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(y)))
    with pytest.raises(UsageError, match=r"do not hold MNIST: labels must be integers in 0\.\.9, found 12\.\.12"):
        load_dataset("mnist", str(tmp_path))


# ----------------------------------------------------------------------------------------------------------------
# CIFAR-10 through torchvision


@pytest.mark.torch  # the vision extra: CI runs these in a step of their own
def test_cifar10_pickles_load_through_torchvision_with_md5_check(tmp_path, no_network, monkeypatch):
    raw = write_cifar(tmp_path, monkeypatch)
    data = load_dataset("cifar10", str(tmp_path))
    assert data.x_train.shape == (80, 32, 32, 3) and data.x_test.shape == (N_TEST, 32, 32, 3)
    np.testing.assert_array_equal(data.y_train, raw["y_train"])  # batches 1..5 in order
    np.testing.assert_array_equal(data.y_test, raw["y_test"])
    # the (n, 3072) red/green/blue planes come back as (n, 32, 32, 3) images: same pixels, per-channel statistics
    np.testing.assert_allclose(data.x_train, expected_standardised(raw["x_train"], raw["x_train"]), atol=1e-5)
    np.testing.assert_allclose(data.x_test, expected_standardised(raw["x_train"], raw["x_test"]), atol=1e-5)
    check_standardised(data.x_train)


@pytest.mark.torch  # the vision extra: CI runs these in a step of their own
def test_corrupt_cifar_batch_is_reported_by_name(tmp_path, no_network, monkeypatch):
    write_cifar(tmp_path, monkeypatch)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    truncate(batch)
    with pytest.raises(UsageError, match=rf"{batch} is truncated or corrupt \(its MD5 sum is not the official"):
        load_dataset("cifar10", str(tmp_path))

    # Even a file that passes the MD5 check (as if the table were wrong) is parsed, not trusted blindly.
    register_cifar_md5(batch.parent, monkeypatch)
    with pytest.raises(UsageError, match=r"cannot read .*data_batch_1.*UnpicklingError|cannot read .*EOFError"):
        load_dataset("cifar10", str(tmp_path))


# ----------------------------------------------------------------------------------------------------------------
# The real Fashion-MNIST, as Debian's dataset-fashion-mnist installs it

# SHA-256 of the decompressed files (the official IDX contents; Debian recompressed the .gz files, so their own
# sums differ from the ones torchvision lists) and their sizes.
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte": ("c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", 47040016),
    "train-labels-idx1-ubyte": ("bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", 60008),
    "t10k-images-idx3-ubyte": ("5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", 7840016),
    "t10k-labels-idx1-ubyte": ("0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", 10008),
}


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(),
                    reason=f"Debian's dataset-fashion-mnist is not installed ({DEBIAN_FASHION_MNIST} missing; "
                    "apt-get install dataset-fashion-mnist, as .ci/run does)")
def test_real_fashion_mnist_from_the_debian_package(tmp_path, monkeypatch):
    for name, (sha256, size) in FASHION_MNIST_SHA256.items():
        content = gzip.decompress((DEBIAN_FASHION_MNIST / f"{name}.gz").read_bytes())
        assert len(content) == size and hashlib.sha256(content).hexdigest() == sha256, name
    monkeypatch.setattr(data_files, "SYSTEM_DATASETS", DEBIAN_FASHION_MNIST.parent)
    no_torch(monkeypatch)
    data = load_dataset("fashion-mnist")  # no flags: found in the package's folder
    assert data.x_train.shape == (60000, 28, 28, 1) and data.x_test.shape == (10000, 28, 28, 1)
    assert np.bincount(data.y_train).tolist() == [6000] * 10 and np.bincount(data.y_test).tolist() == [1000] * 10
    assert data.y_train[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]  # ankle boot, T-shirt, T-shirt, dress, ...
    assert data.y_test[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    check_standardised(data.x_train)


# ----------------------------------------------------------------------------------------------------------------
# Configuration, CLI and the grids


def test_data_dir_is_a_study_setting(tmp_path):
    assert set(FILE_DATASETS) == set(data_files.SPECS) == {"mnist", "fashion-mnist", "cifar10"}
    assert set(FILE_DATASETS) <= set(DATASETS)
    assert StudyConfig(dataset="mnist", data_dir=str(tmp_path)).data_dir == str(tmp_path)
    with pytest.raises(UsageError, match="--data-dir must not be empty"):
        StudyConfig(data_dir=" ")
    assert data_files.resolve_data_dir(None) == data_files.default_data_dir()


def test_cli_runs_a_study_on_generated_mnist_files(tmp_path, no_network, capsys):
    """The issue's "done when": python -m hpo.run --algo fa --dataset mnist --data-dir DIR, on real-format files.

    In-process through ``hpo.run.main`` (argument parsing, study, test score, reports): a subprocess would add
    half a minute of imports on a loaded machine and test nothing more of this module.
    """
    from hpo.run import main

    data_dir = tmp_path / "data"
    write_mnist(data_dir, n_train=300)  # each fold's training half holds a full batch of the largest size (128)
    code = main(
        [
            "--algo",
            "fa",
            "--dataset",
            "mnist",
            "--data-dir",
            str(data_dir),
            "--trials",
            "2",
            "--epochs",
            "1",
            "--folds",
            "2",
            "--storage",
            str(tmp_path / "study.journal"),
            "--results-dir",
            str(tmp_path / "results"),
            "--cache-dir",
            "none",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    assert "[mnist-mlp-fa] 2/2" in out and "test " in out
    assert not (data_dir / "arrays").exists()  # the array cache is in the user's cache directory
    assert any((tmp_path / "results").iterdir())


def test_cli_without_files_prints_one_line(tmp_path, monkeypatch, capsys):
    from hpo.run import main

    no_torch(monkeypatch)
    code = main(["--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "empty"), "--storage",
                 str(tmp_path / "s.journal"), "--results-dir", str(tmp_path / "results"), "--cache-dir", "none",
                 "--trials", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.splitlines()[-1].startswith(f"error: fashion-mnist: files not found in {tmp_path / 'empty'}")
    assert "apt-get install dataset-fashion-mnist" in err.splitlines()[-1]
    assert not (tmp_path / "empty").exists() and not (tmp_path / "s.journal").exists()


def test_fashion_mnist_grid():
    (config, *others) = configs = load_grid(ROOT / "studies" / "fashion-mnist.toml")
    assert {c.name for c in configs} == {f"fashion-mnist-mlp-{a}" for a in
                                         ("bp", "fa", "kp", "dfa", "usf", "brsf", "frsf", "drtp")}
    assert {(c.trials, c.epochs, c.folds, c.test_seeds) for c in configs} == {(50, 10, 3, 10)}
    # the committed journal is what the grid file asks for: rerunning it adds nothing
    storage = open_storage(str(ROOT / "studies" / "fashion-mnist.journal"), create=False)
    for summary in optuna.get_all_study_summaries(storage):
        assert len(read_study(optuna.load_study(study_name=summary.study_name, storage=storage)).test.scores) == 10


def test_paper_grid():
    path = ROOT / "studies" / "paper.toml"
    configs = load_grid(path)
    names = {c.name for c in configs}
    expected = {
        f"{d}-{m}-{a}"
        for d in ("mnist", "fashion-mnist", "cifar10")
        for m in ("mlp", "cnn")
        for a in ("bp", "fa", "kp", "dfa")
    } | {f"{d}-mlp-sd" for d in ("mnist", "fashion-mnist", "cifar10")}
    assert names == expected
    assert {(c.trials, c.epochs, c.folds) for c in configs} == {(50, 10, 3)}
    assert len({c.storage for c in configs}) == 1 and len({c.results_dir for c in configs}) == 1


# ----------------------------------------------------------------------------------------------------------------
# What a data folder cannot make this process do: allocate without bound, block, or read another folder silently


def gzip_bomb(path: Path, images: int) -> None:
    """A gzipped IDX images file whose header announces ``images`` 28x28 images and whose data are zeros: a few
    MB that expand to the announced size (written in pieces: the expanded file never exists)."""
    with gzip.open(path, "wb", compresslevel=1) as handle:
        handle.write(struct.pack(">4i", 2051, images, 28, 28))
        zeros = bytes(1 << 24)
        left = images * 784
        while left:
            handle.write(zeros[: min(left, len(zeros))])
            left -= min(left, len(zeros))


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """2 GiB of images once expanded, 2 MB on disk: written once for the tests that place it."""
    path = tmp_path_factory.mktemp("bomb") / "train-images-idx3-ubyte.gz"
    gzip_bomb(path, 2_739_200)
    return path


def test_an_idx_file_announcing_more_than_memory_allows_is_refused_before_reading(tmp_path, no_network, monkeypatch,
                                                                                  bomb):
    write_mnist(tmp_path, folder=None)
    (tmp_path / bomb.name).write_bytes(bomb.read_bytes())
    bomb = tmp_path / bomb.name
    monkeypatch.setattr("hpo.data.idx.memory_budget", lambda: 3 * 10**9)  # a 3 GB process
    with pytest.raises(UsageError, match=rf"{bomb} announces images of shape \(2739200, 28, 28\) \(2.0 GiB\), which "
                       r"needs about 10.0 GiB once loaded; this process may allocate 2.8 GiB"):
        load_dataset("mnist", str(tmp_path))


def test_an_idx_file_longer_than_its_header_says_is_read_no_further(tmp_path, no_network):
    write_mnist(tmp_path, folder=None)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    content = gzip.decompress(labels.read_bytes())
    with gzip.open(labels, "wb", compresslevel=1) as handle:  # the header's 80 labels, then 256 MB more
        handle.write(content)
        for _ in range(16):
            handle.write(bytes(1 << 24))
    with pytest.raises(UsageError, match=rf"{labels} is truncated or corrupt: its header announces labels of shape "
                       r"\(80,\) \(88 bytes\), the file holds more bytes than that"):
        load_dataset("mnist", str(tmp_path))


def test_a_2gib_gzip_bomb_under_a_3gb_limit_is_one_line_and_exit_2(tmp_path, bomb):
    """The whole command under ``ulimit -v`` 3 GB: refused by its header, no MemoryError, nothing created."""
    import subprocess

    data = tmp_path / "data"
    write_mnist(data, folder=None)
    (data / bomb.name).write_bytes(bomb.read_bytes())
    command = (f"ulimit -v 3000000; exec {sys.executable} -m hpo.run --dataset mnist --data-dir {data} --trials 1 "
               f"--storage {tmp_path / 's.journal'} --results-dir {tmp_path / 'r'} --cache-dir none")
    run = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stderr.count("\n") == 1 and "announces images of shape (2739200, 28, 28)" in run.stderr
    assert not (tmp_path / "s.journal").exists() and not (tmp_path / "r").exists()


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "dangling"])
def test_a_data_file_that_is_not_a_regular_file_is_refused_by_name(tmp_path, no_network, monkeypatch, kind):
    """A FIFO would block the reader, /dev/zero never ends; skipping either would read Debian's folder silently."""
    debian = tmp_path / "debian"
    write_mnist(debian / "mnist", folder=None)
    monkeypatch.setattr(data_files, "SYSTEM_DATASETS", debian)  # a complete folder the loader could fall back to
    monkeypatch.setitem(data_files.SPECS, "mnist", data_files.SPECS["mnist"].__class__(
        **{**data_files.SPECS["mnist"].__dict__, "system_package": "dataset-mnist"}))
    given = tmp_path / "given"
    write_mnist(given, folder=None)
    special = given / "train-images-idx3-ubyte.gz"
    special.unlink()
    if kind == "fifo":
        os.mkfifo(special)
    else:
        special.symlink_to("/dev/zero" if kind == "dev-zero" else tmp_path / "nothing")
    what = {"fifo": "FIFO", "dev-zero": "character device", "dangling": "link to nothing"}[kind]
    with pytest.raises(UsageError, match=rf"mnist: {special} is not a regular file \(it is a {what}\)"):
        load_dataset("mnist", str(given))


def test_a_data_dir_without_the_files_says_which_folder_was_read(tmp_path, no_network, monkeypatch, capsys):
    debian = tmp_path / "debian"
    write_mnist(debian / "fashion-mnist", folder=None)
    monkeypatch.setattr(data_files, "SYSTEM_DATASETS", debian)
    (tmp_path / "given").mkdir()
    load_dataset("fashion-mnist", str(tmp_path / "given"))
    assert capsys.readouterr().err == (f"note: fashion-mnist is not in --data-dir {tmp_path / 'given'}; reading it "
                                       f"from {debian / 'fashion-mnist'}\n")
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match=rf"--data-dir {tmp_path / 'file'} is not a directory"):
        load_dataset("fashion-mnist", str(tmp_path / "file"))
