"""The store of compiled programs: a later process loads what an earlier one compiled, and trains the same."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

RUN = """
import json, sys
import jax.numpy as jnp
from hpo.data import load_dataset, make_folds
from models.compile import Compiler
from models.rule_training import TrainConfig
from models.train import FoldData, Plan, cross_validate
compiler = Compiler(directory=sys.argv[1] + "/programs")
d = load_dataset("digits")
f = make_folds(d, 2, 0)
data = FoldData(jnp.asarray(d.x_train), jnp.asarray(d.y_train), f.train_idx, jnp.asarray(f.val_idx), jnp.asarray(f.val_mask))
config = TrainConfig(rule="kp", hidden=(24,), learning_rate=3e-3, weight_decay=0.1, epochs=2,
                     activation_choices=("relu", "tanh"), optimizer_choices=("adam", "sgd"))
result = cross_validate(config, data, 10, 0, plan=Plan("vmap", diagnostics=True), compiler=compiler)
print(json.dumps({"scores": result.fold_scores.tolist(), "loaded": compiler.store.loaded_from_disk,
                  "built": compiler.store.built}))
"""


def run(cache: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", RUN, str(cache)], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_stored_program_is_loaded_by_the_next_process_and_trains_the_same(tmp_path):
    first = run(tmp_path)
    assert (first["built"], first["loaded"]) == (1, 0)
    stored = list((tmp_path / "programs").glob("*.programs"))
    assert len(stored) == 1
    second = run(tmp_path)
    assert (second["built"], second["loaded"]) == (0, 1)  # no tracing, no compiling
    assert second["scores"] == first["scores"]
    stored[0].write_bytes(b"damaged")  # a damaged entry is rebuilt and replaced, never fatal
    third = run(tmp_path)
    assert (third["built"], third["loaded"]) == (1, 0) and third["scores"] == first["scores"]
    assert stored[0].read_bytes() != b"damaged"


@pytest.mark.slow  # 30-50 s of study processes or eager training; run with -m slow
def test_warmup_compiles_every_program_of_a_space_and_the_study_compiles_none_of_its_trials(tmp_path):
    space = tmp_path / "space.toml"
    space.write_text("[space]\ndepth = 1\nwidth = [16, 32]\nbatch_size = [64]\n")
    common = ["--algo", "fa", "--dataset", "digits", "--folds", "2", "--epochs", "1", "--space", str(space),
              "--cache-dir", str(tmp_path / "cache")]
    warm = subprocess.run([sys.executable, "-m", "hpo.warmup", *common], cwd=ROOT, capture_output=True, text=True)
    assert warm.returncode == 0, warm.stderr
    assert "2 programs ready" in warm.stdout  # one per width: activation and optimiser share programs
    stored = set((tmp_path / "cache" / "programs").glob("*.programs"))
    assert len(stored) == 2
    study = subprocess.run(
        [sys.executable, "-m", "hpo.run", *common, "--trials", "4", "--storage", str(tmp_path / "s.journal"),
         "--results-dir", str(tmp_path / "results"), "--no-compile-ahead"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert study.returncode == 0, study.stderr
    added = set((tmp_path / "cache" / "programs").glob("*.programs")) - stored
    assert len(added) == 1  # only the retraining of the best configuration (one run on the whole training split)


def test_a_program_being_built_is_in_the_cache_and_its_waiters_count_the_wait():
    """A second thread asking for a program another thread is building waits for it (not building it twice),
    counts the seconds it waited as what the program cost it, and sees the program as present meanwhile."""
    import threading

    from models.compile import ProgramStore

    cache = ProgramStore()
    building, release = threading.Event(), threading.Event()
    builds = []

    def slow_build():
        builds.append(threading.current_thread().name)
        building.set()
        release.wait(10)
        return ("program",)

    builder = threading.Thread(target=cache.get, args=("key", slow_build), name="builder")
    builder.start()
    assert building.wait(10)
    assert "key" in cache and "other" not in cache
    threading.Timer(0.3, release.set).start()
    value, seconds = cache.get("key", lambda: pytest.fail("built twice"))
    builder.join()
    assert value == ("program",) and builds == ["builder"] and cache.built == 1
    assert seconds >= 0.25
    assert cache.get("key", lambda: pytest.fail("built twice")) == (("program",), 0.0)  # in memory: nothing waited
