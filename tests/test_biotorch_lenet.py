"""benchmarks.biotorch_lenet: biotorch's LeNet exactly (its parameter count), its input resize, its protocol, and a
resumable run whose report regenerates from the stored runs alone."""

import json

import numpy as np
import pytest

from benchmarks.biotorch_lenet import LENET, lenet_config, main, resized
from models.initializers import host_init
from models.networks import trunk_shape
from models.rule_training import count_params, make_model


def test_the_network_is_biotorchs_lenet_for_mnist():
    """PyTorch's LeNetMNIST of biotorch: conv 1->6 5x5, pool, conv 6->16 5x5, pool, conv 16->120 5x5 (1x1 on a
    32x32 input), dense 120->84, 84->10: 156 + 2416 + 48120 + 10164 + 850 = 61706 parameters."""
    config = lenet_config("fa", 0.1, 100)
    assert trunk_shape(LENET, (32, 32)) == (1, 1)
    x = np.zeros((1, 32, 32, 1), np.float32)
    params = host_init(make_model(config, 10), x, np.random.default_rng(0))["params"]
    assert count_params(params) == 61706
    assert config.lr_milestones == (50, 75) and config.lr_gamma == 0.1 and config.optimizer == "sgd_l2"
    assert (config.momentum, config.weight_decay, config.batch_size) == (0.9, 1e-3, 64)
    assert (config.init, config.feedback_distribution) == ("xavier", "uniform")
    assert lenet_config("bp", 0.1, 2).lr_milestones == (1,)  # a short run keeps the schedule's shape


def test_images_are_resized_bilinearly_with_clamped_edges():
    ramp = np.tile(np.arange(28, dtype=np.float32), (28, 1))[None, :, :, None]  # x = column index
    out = resized(np.concatenate([ramp, np.full_like(ramp, 3.0)]))
    assert out.shape == (2, 32, 32, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out[1], 3.0)  # a constant image stays constant
    # half-pixel centres: output column j samples input column (j + 0.5) * 28 / 32 - 0.5, clamped at the edges
    expected = np.clip((np.arange(32) + 0.5) * 28 / 32 - 0.5, 0, 27)
    np.testing.assert_allclose(out[0, 5, :, 0], expected, atol=1e-5)


def test_a_run_is_stored_resumed_and_reported_from_its_storage(tmp_path, capsys):
    summary = tmp_path / "summary.csv"  # a tuned grid's summary (the columns the table reads): fa test-scored only
    summary.write_text("study,model,algo,test_n,test_mean,test_ci95\nd-cnn-fa,cnn,fa,5,0.8812,0.0021\n"
                       "d-cnn-bp,cnn,bp,,,\nd-mlp-bp,mlp,bp,5,0.95,0.01\n")
    argv = ["--dataset", "digits", "--epochs", "2", "--rules", "bp", "fa", "--seeds", "2", "--output", str(tmp_path),
            "--tuned", str(summary)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "[bp] epoch 2/2: test" in out and "[fa] epoch 2/2: test" in out  # progress, every epoch
    record = json.loads((tmp_path / "runs.json").read_text())
    assert set(record["runs"]) == {"bp", "fa"} and record["protocol"]["milestones"] == [1]
    bp = record["runs"]["bp"]
    assert len(bp["final"]) == 2 and len(bp["curve"]) == 2
    np.testing.assert_allclose(bp["best"], np.max(bp["curve"], axis=0), atol=1e-4)  # the curve keeps 4 digits
    assert np.mean(bp["final"]) > 0.5  # digits: chance is 0.1
    table = (tmp_path / "runs.md").read_text()
    assert "| bp | 0.1 | 90.80 |" in table and "| dfa | 0.0001 | 87.19 | not run | not run | | not run yet |" in table
    fa_row = next(line for line in table.splitlines() if line.startswith("| fa |"))
    assert fa_row.endswith("| 88.12 ± 0.21 (5 seeds) |")  # the tuned CNN's test score, not the MLP's
    assert next(line for line in table.splitlines() if line.startswith("| bp |")).endswith("| not run yet |")
    assert main(argv) == 0  # every rule stored: nothing trains again
    assert "epoch" not in capsys.readouterr().out.split("# biotorch")[0]
    assert json.loads((tmp_path / "runs.json").read_text()) == record
    (tmp_path / "runs.md").unlink()
    assert main(["--report", "--output", str(tmp_path), "--tuned", str(summary)]) == 0
    assert (tmp_path / "runs.md").read_text() == table


def test_processes_sharing_the_work_each_add_their_rules_to_the_stored_runs(tmp_path):
    from benchmarks.biotorch_lenet import store_run, stored_runs

    stored, protocol = tmp_path / "runs.json", {"dataset": "x", "epochs": 2}
    assert stored_runs(stored, protocol) == {}
    store_run(stored, protocol, "bp", {"final": [0.9]})  # one process, one core
    store_run(stored, protocol, "fa", {"final": [0.8]})  # the other, later: bp is kept
    assert stored_runs(stored, protocol) == {"bp": {"final": [0.9]}, "fa": {"final": [0.8]}}
    assert stored_runs(stored, {**protocol, "epochs": 3}) == {}  # another protocol's runs are not this one's
    store_run(stored, {**protocol, "epochs": 3}, "bp", {"final": [0.7]})
    assert json.loads(stored.read_text())["runs"] == {"bp": {"final": [0.7]}}


def test_a_bad_learning_rate_is_one_line(capsys):
    with pytest.raises(SystemExit, match="--lr 'fa=fast': the rate must be a number"):
        main(["--lr", "fa=fast", "--report"])
