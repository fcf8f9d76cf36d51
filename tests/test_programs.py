"""The store of compiled programs: a later process loads what an earlier one compiled, and trains the same."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

RUN = """
import json, sys
import jax.numpy as jnp
from hpo.study import configure_jax
configure_jax(sys.argv[1])
from hpo.data import load_dataset, make_folds
from models.rule_training import TrainConfig
from models.train import PROGRAMS, FoldData, cross_validate
d = load_dataset("digits")
f = make_folds(d, 2, 0)
data = FoldData(jnp.asarray(d.x_train), jnp.asarray(d.y_train), f.train_idx, jnp.asarray(f.val_idx), jnp.asarray(f.val_mask))
config = TrainConfig(rule="kp", hidden=(24,), learning_rate=3e-3, weight_decay=0.1, epochs=2,
                     activation_choices=("relu", "tanh"), optimizer_choices=("adam", "sgd"))
result = cross_validate(config, data, 10, 0, fold_strategy="vmap", diagnostics=True)
print(json.dumps({"scores": result.fold_scores.tolist(), "loaded": PROGRAMS.loaded_from_disk, "built": PROGRAMS.built}))
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
