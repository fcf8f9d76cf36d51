"""The program store runs nothing it did not write: a private folder, 0600 files, entries sealed under a per-user
key and checked before anything is unpickled or deserialised (models.compile.trust); real files throughout."""

import json
import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import pytest

from hpo.data import load_dataset, make_folds
from models.compile import Compiler
from models.compile.trust import KEY_FILE, MAGIC
from models.rule_training import TrainConfig
from models.train import FoldData, Plan, cross_validate

CONFIG = TrainConfig(rule="fa", hidden=(12,), learning_rate=3e-3, epochs=1)
ROOT = Path(__file__).resolve().parents[3]


class Marker:
    """A pickle that, when loaded, writes a file: what a planted entry would do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "code ran"))


def folds():
    data = load_dataset("digits")
    split = make_folds(data, 2, 0)
    return FoldData(jnp.asarray(data.x_train), jnp.asarray(data.y_train), split.train_idx,
                    jnp.asarray(split.val_idx), jnp.asarray(split.val_mask))


def train(store: Path):
    compiler = Compiler(directory=store)
    result = cross_validate(CONFIG, folds(), 10, seed=0, plan=Plan("sequential"), compiler=compiler)
    return compiler.store, result


def test_the_store_is_private_and_every_entry_sealed(tmp_path):
    store_dir = tmp_path / "programs"
    store, _ = train(store_dir)
    assert store.built == 1
    assert stat.S_IMODE(store_dir.stat().st_mode) == 0o700
    (entry,) = store_dir.glob("*.programs")
    for path in (entry, store_dir / KEY_FILE):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert entry.read_bytes().startswith(MAGIC)
    again, _ = train(store_dir)  # a later process loads it: its seal checks
    assert (again.loaded_from_disk, again.built) == (1, 0)


@pytest.mark.parametrize("sealed", [False, True], ids=["raw-pickle", "forged-magic"])
def test_a_planted_entry_never_runs_and_is_rebuilt(tmp_path, capfd, sealed):
    store_dir = tmp_path / "programs"
    _, first = train(store_dir)
    (entry,) = store_dir.glob("*.programs")
    marker = tmp_path / "marker"
    payload = pickle.dumps(Marker(marker))
    entry.write_bytes((MAGIC + b"\0" * 32 + payload) if sealed else payload)  # a guessed seal cannot match
    store, again = train(store_dir)
    assert not marker.exists()  # nothing of the planted file was unpickled
    assert (store.loaded_from_disk, store.built) == (0, 1)  # a miss: compiled again ...
    assert entry.read_bytes().startswith(MAGIC) and b"write_text" not in entry.read_bytes()  # ... and rewritten
    assert "failed its check" in capfd.readouterr().err
    assert again.fold_scores.tolist() == first.fold_scores.tolist()


def test_a_flipped_bit_is_a_miss_not_a_crash(tmp_path):
    store_dir = tmp_path / "programs"
    train(store_dir)
    (entry,) = store_dir.glob("*.programs")
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0x10
    entry.write_bytes(bytes(data))
    store, _ = train(store_dir)
    assert (store.loaded_from_disk, store.built) == (0, 1)


@pytest.mark.parametrize("mode", [0o770, 0o777])
def test_a_store_others_can_write_to_is_not_used(tmp_path, capfd, mode):
    store_dir = tmp_path / "programs"
    train(store_dir)
    store_dir.chmod(mode)
    marker = tmp_path / "marker"
    (next(store_dir.glob("*.programs"))).write_bytes(pickle.dumps(Marker(marker)))
    store, _ = train(store_dir)
    assert store.directory is None and store.built == 1 and not marker.exists()
    assert "is not this user's alone" in capfd.readouterr().err


def test_a_key_others_can_read_makes_the_store_unused(tmp_path, capfd):
    store_dir = tmp_path / "programs"
    train(store_dir)
    (store_dir / KEY_FILE).chmod(0o644)
    store, _ = train(store_dir)
    assert store.directory is None and store.built == 1
    assert "not this user's alone" in capfd.readouterr().err


def test_damaged_decisions_are_measured_again(tmp_path):
    store_dir = tmp_path / "programs"
    compiler = Compiler(directory=store_dir, payback=0.0, timer=lambda strategy, run: 1.0 + (strategy == "vmap"))
    cross_validate(CONFIG, folds(), 10, seed=0, plan=Plan("auto"), compiler=compiler)
    decisions = store_dir / "decisions.json"
    stored = json.loads(decisions.read_text())
    for broken in ({name: "vmap" for name in stored}, {name: {"strategy": "fast"} for name in stored}, [1, 2], "x"):
        decisions.write_text(json.dumps(broken))
        os.chmod(decisions, 0o600)
        later = Compiler(directory=store_dir, payback=0.0, timer=lambda strategy, run: 1.0)
        result = cross_validate(CONFIG, folds(), 10, seed=1, plan=Plan("auto"), compiler=later)
        assert result.fold_strategy in ("vmap", "sequential")  # measured again, no crash
    (store_dir / "training.json").write_text('{"x": {"not": "a pair"}}')
    Compiler(directory=store_dir).store.training(("fold_strategy",))  # read, ignored, no crash


FULL_DISK = """
import resource, signal, sys
from pathlib import Path
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))
from models.compile import ProgramStore
store = ProgramStore(directory=sys.argv[1])
store.get("key", lambda: ("a program",))  # built; storing it fails (it does not serialise, or cannot be written)
store._write_json("decisions.json", {"k": {"strategy": "vmap", "measure_seconds": 1.0, "pad": "x" * 1000}})
print(sorted(p.name for p in Path(sys.argv[1]).iterdir()))
"""


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    store_dir = tmp_path / "programs"
    done = subprocess.run([sys.executable, "-c", FULL_DISK, str(store_dir)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['.key']"  # the key (32 bytes fit); no decisions.json, no .tmp files


def test_every_process_opening_a_new_store_at_once_gets_the_stored_key(tmp_path):
    """Opening a fresh store at once from many places must create its key once: with a rename, the last writer
    replaced the key that earlier ones already held (30 of 200 simultaneous opens kept a key not stored)."""
    import threading

    from models.compile.trust import open_store

    for attempt in range(5):
        store = tmp_path / f"store{attempt}"
        barrier, keys = threading.Barrier(40), []

        def open_it(barrier=barrier, keys=keys, store=store):
            barrier.wait()
            keys.append(open_store(store))

        threads = [threading.Thread(target=open_it) for _ in range(40)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stored = (store / KEY_FILE).read_bytes()
        assert keys == [stored] * 40
        assert [p.name for p in store.iterdir()] == [KEY_FILE]  # no temporary file left


@pytest.mark.parametrize("where", ["key", "entry"])
def test_a_folder_or_fifo_where_a_file_should_be_is_not_a_crash(tmp_path, capfd, where):
    from models.compile.trust import open_store, read_private

    store = tmp_path / "store"
    store.mkdir(mode=0o700)
    if where == "key":
        (store / KEY_FILE).mkdir()
        assert open_store(store) is None
        err = capfd.readouterr().err
        assert err.count("\n") == 1 and "is missing, unreadable or not this user's alone" in err
        os.rmdir(store / KEY_FILE)
        os.mkfifo(store / KEY_FILE)
        assert open_store(store) is None  # a FIFO is never waited on
    else:
        assert open_store(store) is not None
        (store / "entry").mkdir()
        os.mkfifo(store / "fifo")
        assert read_private(store / "entry") is None and read_private(store / "fifo") is None
