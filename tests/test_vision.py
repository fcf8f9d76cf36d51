"""MNIST, Fashion-MNIST and CIFAR-10 through torchvision, on small files generated in the real on-disk formats.

No network: the files are written here as they are distributed (gzipped big-endian IDX files; CIFAR-10's
Python-2 pickles), and read through torchvision's own parsers. CIFAR-10 files are checked by torchvision against
MD5 sums; the tests put the generated files' sums into torchvision's table, so that check runs for real.
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
import pytest

from hpo.config import StudyConfig, load_grid
from hpo.data import DATASETS, FILE_DATASETS, load_dataset
from hpo.errors import UsageError

torchvision = pytest.importorskip("torchvision", reason="needs the vision extra: pip install -e '.[vision]'")

from hpo import vision  # noqa: E402  (after the skip: the module itself needs no torch, its loads do)

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, N_TEST = 80, 30


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


def write_mnist(root: Path, folder: str = "MNIST", n_train: int = N_TRAIN, seed: int = 0) -> dict[str, np.ndarray]:
    """The four gzipped IDX files in ``root/<folder>/raw``, as distributed."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    x_train, y_train = images_and_labels(n_train, (28, 28), seed)
    x_test, y_test = images_and_labels(N_TEST, (28, 28), seed + 1)
    for name, array in [
        ("train-images-idx3-ubyte", x_train),
        ("train-labels-idx1-ubyte", y_train),
        ("t10k-images-idx3-ubyte", x_test),
        ("t10k-labels-idx1-ubyte", y_test),
    ]:
        (raw / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array)))
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

    cls = torchvision.datasets.CIFAR10
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
# Loading through torchvision


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_style_files_load_with_official_split(tmp_path, no_network, name, folder):
    raw = write_mnist(tmp_path, folder)
    data = load_dataset(name, str(tmp_path))
    assert data.name == name and data.task == "classification" and data.out_features == 10
    assert data.x_train.shape == (N_TRAIN, 28, 28, 1) and data.x_test.shape == (N_TEST, 28, 28, 1)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int32 and data.y_test.dtype == np.int32
    np.testing.assert_array_equal(data.y_train, raw["y_train"])  # official split, official order
    np.testing.assert_array_equal(data.y_test, raw["y_test"])
    np.testing.assert_allclose(data.x_train, expected_standardised(raw["x_train"], raw["x_train"]), atol=1e-5)
    np.testing.assert_allclose(data.x_test, expected_standardised(raw["x_train"], raw["x_test"]), atol=1e-5)
    check_standardised(data.x_train)
    assert data.input_shape == (28, 28, 1)  # MLPs flatten to 784, CNNs get one channel


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


def test_cache_is_used_then_invalidated_when_a_source_file_changes(tmp_path, no_network, monkeypatch):
    raw = write_mnist(tmp_path)
    calls = []
    original = torchvision.datasets.MNIST.__init__

    def counting_init(self, *args, **kwargs):
        calls.append(kwargs.get("train", args[1] if len(args) > 1 else True))
        original(self, *args, **kwargs)

    monkeypatch.setattr(torchvision.datasets.MNIST, "__init__", counting_init)
    first = load_dataset("mnist", str(tmp_path))
    assert len(calls) == 2 and (tmp_path / "arrays" / "mnist.npys").is_file()  # train + test split read once

    second = load_dataset("mnist", str(tmp_path))
    assert len(calls) == 2  # the cache served it: torchvision not called again
    np.testing.assert_array_equal(first.x_train, second.x_train)
    np.testing.assert_array_equal(first.y_test, second.y_test)

    # New training files (more images, other labels): the cache is stale and the new files are read.
    changed = write_mnist(tmp_path, n_train=N_TRAIN + 10, seed=5)
    for packed in (tmp_path / "MNIST" / "raw").glob("*.gz"):  # newer than the decompressed files on any filesystem
        os.utime(packed, ns=(packed.stat().st_mtime_ns + 10**9,) * 2)
    third = load_dataset("mnist", str(tmp_path))
    assert len(calls) == 4 and third.x_train.shape[0] == N_TRAIN + 10
    np.testing.assert_array_equal(third.y_train, changed["y_train"])
    assert not np.array_equal(third.y_test, raw["y_test"])


def test_cache_stands_alone_without_source_files_or_torchvision(tmp_path, no_network, monkeypatch):
    write_mnist(tmp_path)
    first = load_dataset("mnist", str(tmp_path))
    for path in (tmp_path / "MNIST" / "raw").iterdir():
        path.unlink()
    monkeypatch.setitem(sys.modules, "torchvision", None)  # any import of torchvision now fails
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    again = load_dataset("mnist", str(tmp_path))
    np.testing.assert_array_equal(first.x_train, again.x_train)
    assert [p.name for p in (tmp_path / "arrays").iterdir()] == ["mnist.npys"]  # no temporary file left behind


def test_missing_torchvision_is_a_clear_error(tmp_path, monkeypatch):
    write_mnist(tmp_path)
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    with pytest.raises(UsageError, match=r'torchvision, which is not installed.*pip install -e "\.\[vision\]"'):
        load_dataset("mnist", str(tmp_path))


# ----------------------------------------------------------------------------------------------------------------
# Missing, truncated and corrupt files


def test_no_files_and_no_network_says_which_files_go_where(tmp_path, no_network):
    with pytest.raises(UsageError) as error:
        load_dataset("mnist", str(tmp_path))
    message = str(error.value)
    assert "\n" not in message and "download failed" in message and "no network in this test" in message
    assert "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz" in message
    assert str(tmp_path / "MNIST" / "raw") in message

    with pytest.raises(UsageError) as error:
        load_dataset("cifar10", str(tmp_path))
    message = str(error.value)
    assert f"cifar-10-python.tar.gz in {tmp_path}" in message and "data_batch_1, data_batch_2" in message
    assert "test_batch, batches.meta" in message and str(tmp_path / "cifar-10-batches-py") in message


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
    with pytest.raises(UsageError, match=r"t10k-images-idx3-ubyte is not an IDX images file \(magic number 2049"):
        load_dataset("mnist", str(tmp_path))

    write_mnist(tmp_path)
    small = np.zeros((N_TRAIN, 20, 20), np.uint8)  # a valid IDX images file of another size
    (raw / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(small)))
    with pytest.raises(UsageError, match=r"train-images-idx3-ubyte holds 20x20 images; MNIST has 28x28"):
        load_dataset("mnist", str(tmp_path))

    write_mnist(tmp_path)
    y = np.full(N_TRAIN, 12, np.uint8)  # a valid IDX file whose labels are not digits
    (raw / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(y)))
    with pytest.raises(UsageError, match=r"do not hold MNIST: labels must be integers in 0\.\.9, found 12\.\.12"):
        load_dataset("mnist", str(tmp_path))


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
# Configuration, CLI and the paper grid


def test_data_dir_is_a_study_setting(tmp_path):
    assert set(FILE_DATASETS) == set(vision.SPECS) == {"mnist", "fashion-mnist", "cifar10"}
    assert set(FILE_DATASETS) <= set(DATASETS)
    assert StudyConfig(dataset="mnist", data_dir=str(tmp_path)).data_dir == str(tmp_path)
    with pytest.raises(UsageError, match="--data-dir must not be empty"):
        StudyConfig(data_dir=" ")
    assert vision.resolve_data_dir(None) == vision.default_data_dir()


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
    assert (data_dir / "arrays" / "mnist.npys").is_file()
    assert any((tmp_path / "results").iterdir())


def test_cli_without_files_or_network_prints_one_line(tmp_path, no_network, capsys):
    from hpo.run import main

    code = main(
        [
            "--dataset",
            "fashion-mnist",
            "--data-dir",
            str(tmp_path / "empty"),
            "--storage",
            str(tmp_path / "s.journal"),
            "--results-dir",
            str(tmp_path / "results"),
            "--cache-dir",
            "none",
            "--trials",
            "1",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.splitlines()[-1].startswith(f"error: fashion-mnist: files not found in {tmp_path / 'empty'}")
    assert str(tmp_path / "empty" / "FashionMNIST" / "raw") in err.splitlines()[-1]


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
