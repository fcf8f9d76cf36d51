"""Search spaces as data: [space] overrides, their precedence and validation, the space stored with a study (and
refused on resume when it differs), --show-space, and Kolen-Pollack's per-step decay."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optuna
import pytest

from hpo.config import StudyConfig, load_grid
from hpo.data import load_dataset
from hpo.errors import UsageError
from hpo.record import read_study
from hpo.report.summary import load_studies
from hpo.run import main
from hpo.space.algorithms import suggest
from hpo.space.overrides import space_table, stored_space
from hpo.storage import open_storage
from hpo.study.runner import open_study
from models.initializers import host_init
from models.networks import MLP
from models.rule_training import make_optimizer

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--dataset", "digits", "--epochs", "1", "--folds", "2", "--trials", "1"]


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def asked(config: StudyConfig, n: int = 30, dataset=None, seed: int = 0):
    """The trials of ``n`` random-sampler proposals and the configurations they built."""
    dataset = dataset or load_dataset("digits")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append((trial, suggest(trial, config, dataset)))
        study.tell(trial, 0.5)
    return out


# Overrides change what is asked, and nothing else.


def test_fixed_values_are_not_trial_parameters_and_conditions_still_hold():
    config = StudyConfig(algo="fa", space={"optimizer": "sgd", "activation": "tanh", "width": [128]})
    for trial, net in asked(config):
        assert net.optimizer == "sgd" and net.activation == "tanh" and set(net.hidden) == {128}
        assert not {"optimizer", "activation", "width", "lr_adam"} & set(trial.params)
        assert {"lr_sgd", "momentum", "depth", "feedback_scale"} <= set(trial.params)  # sgd: momentum is asked
    momentum_fixed = StudyConfig(algo="fa", space={"optimizer": "sgd", "momentum": 0.9})
    assert all(net.momentum == 0.9 and "momentum" not in t.params for t, net in asked(momentum_fixed, 5))
    # with adam only, sgd's parameters never appear (and are not part of the stored space)
    adam = StudyConfig(algo="fa", space={"optimizer": "adam"})
    assert all("momentum" not in t.params for t, _ in asked(adam, 10))
    assert "lr_sgd" not in stored_space(adam) and "momentum" not in stored_space(adam)


def test_narrowed_ranges_and_choices_keep_the_optuna_names():
    config = StudyConfig(algo="kp", space={
        "optimizer": ["adam"], "lr_adam": {"low": 1e-3, "high": 2e-3, "log": True}, "batch_size": [32, 64],
        "depth": {"low": 2, "high": 3}, "kp_decay_per_step": [1e-3, 1e-2], "momentum": 0.5,
    })
    for trial, net in asked(config):
        assert trial.distributions["lr_adam"] == optuna.distributions.FloatDistribution(1e-3, 2e-3, log=True)
        assert trial.distributions["batch_size"] == optuna.distributions.CategoricalDistribution([32, 64])
        assert trial.distributions["depth"] == optuna.distributions.IntDistribution(2, 3)
        assert 1e-3 <= net.learning_rate <= 2e-3 and net.batch_size in (32, 64) and len(net.hidden) in (2, 3)
        per_step = trial.params["kp_decay_per_step"]
        assert per_step in (1e-3, 1e-2) and net.weight_decay * net.learning_rate == pytest.approx(per_step)


def test_widened_choices_outside_the_defaults_are_built():
    config = StudyConfig(algo="dfa", space={"activation": ["sigmoid", "gelu"], "width": [16, 1024], "depth": 1})
    nets = [net for _, net in asked(config, 20)]
    assert {n.activation for n in nets} == {"sigmoid", "gelu"} and {n.hidden for n in nets} == {(16,), (1024,)}


def test_cnn_activation_is_fixed_relu_by_default_and_searchable():
    dataset = load_dataset("digits")
    default = StudyConfig(algo="bp", model="cnn")
    assert all(net.activation == "relu" and "activation" not in t.params for t, net in asked(default, 5, dataset))
    searched = StudyConfig(algo="bp", model="cnn", space={"activation": ["relu", "tanh"]})
    assert {net.activation for _, net in asked(searched, 20, dataset)} == {"relu", "tanh"}


def test_sd_overrides_per_layer_parameters_and_batch_size():
    config = StudyConfig(algo="sd", space={"sd_depth": 2, "sd_width": 100, "sd_batch_size": 4, "sd_learn_feedback": False})
    for trial, net in asked(config, 5):
        assert net.hidden == (100, 100) and net.batch_size == 4 and net.feedback_learning_rates is None
        assert not any(name.startswith(("sd_width", "sd_depth", "sd_lr_feedback")) for name in trial.params)
        assert {"sd_lr_forward0", "sd_lr_forward2", "sd_broadcast"} <= set(trial.params)  # depth 2: broadcast asked
    assert "sd_lr_feedback" not in stored_space(config)  # its condition can never hold


def test_default_space_asks_what_every_committed_trial_asked():
    """The committed run (studies/bundled.journal) was sampled from today's default spaces: replaying every
    trial's parameters through ``suggest`` asks exactly the distributions stored with it, so its best trials
    rebuild and its studies resume. A changed default space fails here, and must come with a new committed run
    (or an override in studies/bundled.toml that keeps the old one).
    """
    shapes = {"mnist-5k": (28, 28, 1), "digits": (8, 8, 1), "mnist1d": (40, 1)}

    class Replay:
        def __init__(self, params):
            self.params, self.asked = params, {}

        def suggest_categorical(self, name, choices):
            return self._ask(name, optuna.distributions.CategoricalDistribution(choices))

        def suggest_int(self, name, low, high, log=False):
            return self._ask(name, optuna.distributions.IntDistribution(low, high, log=log))

        def suggest_float(self, name, low, high, log=False):
            return self._ask(name, optuna.distributions.FloatDistribution(low, high, log=log))

        def _ask(self, name, distribution):
            self.asked[name] = distribution
            return self.params[name]

    from hpo.data import Dataset

    replayed = 0
    for study in load_studies(str(ROOT / "studies" / "bundled.journal")):
        attrs = study.user_attrs
        config = StudyConfig(algo=attrs["algo"], model=attrs["model"], dataset=attrs["dataset"])
        x = np.zeros((2, *shapes[attrs["dataset"]]), np.float32)
        dataset = Dataset(attrs["dataset"], "classification", x, np.zeros(2, np.int32), x, np.zeros(2, np.int32), 10)
        for trial in study.get_trials(deepcopy=False):
            if trial.params:
                replay = Replay(trial.params)
                suggest(replay, config, dataset)
                assert replay.asked == trial.distributions, (study.study_name, trial.number)
                replayed += 1
    assert replayed > 500


# Precedence of [space] tables.


def test_precedence_grid_over_top_level_and_specific_over_generic(tmp_path):
    grid = write(tmp_path / "grid.toml", """
        [space]
        optimizer = "sgd"
        activation = "tanh"
        width = [128]
        [space.mlp]
        width = [256]
        [space.kp]
        kp_decay_per_step = {low = 1e-3, high = 1e-2, log = true}
        activation = "relu"
        [space.kp.cnn]
        lr_sgd = 0.01
        [[grid]]
        datasets = ["digits"]
        algos = ["fa", "kp", "sd"]
        [[grid]]
        datasets = ["digits"]
        models = ["cnn"]
        algos = ["kp"]
        [grid.space]
        optimizer = "adam"
        [grid.space.cnn]
        head_width = 64
    """)
    space_file = write(tmp_path / "space.toml", "[space]\nbatch_size = [32]\n[space.fa]\nfeedback_scale = 1.0\n")
    from hpo.space.overrides import read_space_file

    configs = {c.name: c.space for c in load_grid(grid, space_layers=[read_space_file(space_file)])}
    assert configs["digits-mlp-fa"] == {"optimizer": "sgd", "activation": "tanh", "width": [256], "batch_size": [32],
                                        "feedback_scale": 1.0}
    assert configs["digits-mlp-kp"] == {"optimizer": "sgd", "activation": "relu", "width": [256], "batch_size": [32],
                                        "kp_decay_per_step": {"low": 1e-3, "high": 1e-2, "log": True}}
    assert configs["digits-mlp-sd"] == {}  # sd has none of these parameters
    # the grid's generic table beats the top level's (optimizer), the top level's per-rule one still applies
    assert configs["digits-cnn-kp"] == {"optimizer": "adam", "activation": "relu", "batch_size": [32], "lr_sgd": 0.01,
                                        "kp_decay_per_step": {"low": 1e-3, "high": 1e-2, "log": True}, "head_width": 64}


def test_fair_grid_of_the_readme_fixes_optimizer_and_activation_for_every_rule():
    configs = load_grid(ROOT / "studies" / "fair.toml")
    assert len(configs) >= 8 and {c.algo for c in configs} >= {"bp", "fa", "kp", "dfa"}
    for config in configs:
        space = stored_space(config)
        assert space["optimizer"] == {"kind": "fixed", "value": "sgd"}, config.name
        assert space["activation"] == {"kind": "fixed", "value": "tanh"}, config.name
        assert "lr_adam" not in space and "lr_sgd" in space


# Bad spaces: one line naming the key and what is allowed, exit code 2, nothing written.

S = "[space]\n"
BAD_SPACES = [  # (id, --space file, what the one error line says)
    ("unknown", S + "widht = 3\n", "unknown key 'widht' in {f} [space]; allowed: parameters (depth, width, activation"),
    ("not-the-rules", "[space.bp]\nfeedback_scale = 2.0\n",
     "{f} [space.bp]: bp has no parameter 'feedback_scale'; it is a parameter of dfa/mlp, dfa/cnn, drtp/mlp"),
    ("applies-to-none", S + "kp_decay_per_step = 1e-3\n", "{f} [space]: space parameter 'kp_decay_per_step' applies to "
     "none of the studies it selects (digits-mlp-fa); it is a parameter of kp/mlp, kp/cnn"),
    ("empty", S + "width = []\n", "space parameter 'width' has no choices; give a value, a list of choices or a "
     "{low = ..., high = ...} range"),
    ("low-above-high", S + "lr_adam = {low = 0.1, high = 0.01}\n",
     "space parameter 'lr_adam': low <= high must hold, got low=0.1, high=0.01"),
    ("log-nonpositive", S + "momentum = {low = 0.0, high = 0.9, log = true}\n",
     "space parameter 'momentum': log = true needs low > 0, got low=0.0"),
    ("wrong-type", S + 'width = "wide"\n', "space parameter 'width': its value must be an integer in [1, 16384], got 'wide'"),
    ("float-for-int", S + "depth = 2.5\n", "space parameter 'depth': its value must be an integer in [1, 32], got 2.5"),
    ("not-a-choice", S + 'optimizer = ["adam", "rmsprop"]\n',
     "space parameter 'optimizer': every choice must be one of adam, sgd, got 'rmsprop'"),
    ("width-zero", S + "width = 0\n", "space parameter 'width': its value must be an integer in [1, 16384], got 0"),
    ("momentum-one", S + "momentum = 1.0\n",
     "space parameter 'momentum': its value must be a number in [0, 1), got 1.0"),
    ("repeated", S + "batch_size = [32, 32]\n", "space parameter 'batch_size' lists the choice 32 twice"),
    ("range-keys", S + "depth = {low = 1, high = 3, step = 1}\n",
     "space parameter 'depth': a range has the keys low, high and optionally log, got high, low, step"),
    ("log-not-bool", S + "lr_adam = {low = 1e-4, high = 1e-2, log = 1}\n",
     "space parameter 'lr_adam': log must be true or false, got 1"),
    ("conv-range", "[space.cnn]\nconv_kernel = {low = 3, high = 5}\n",
     "{f} [space.cnn]: space parameter 'conv_kernel' takes a value or a list of choices, not a range"),
    ("rule-model", "[space.sd.cnn]\nsd_depth = 1\n", "{f} [space.sd.cnn]: sd exists only for model mlp"),
    ("other-keys", "trials = 3\n[space]\nwidth = 64\n", "space file {q} must hold just a [space] table, got key 'trials'"),
    ("batch-too-big", S + "batch_size = [64, 5000]\n",
     "space parameter 'batch_size' reaches 5000, more than the 718 training examples of a fold of 'digits' (2 folds)"),
]


@pytest.mark.parametrize("name,text,message", BAD_SPACES, ids=[b[0] for b in BAD_SPACES])
def test_bad_space_is_one_line_and_writes_nothing(tmp_path, capsys, name, text, message):
    space = tmp_path / "space.toml"
    space.write_text(text)
    storage, results = tmp_path / "s.journal", tmp_path / "results"
    code = main(["--algo", "fa", *TINY, "--space", str(space), "--storage", str(storage), "--results-dir", str(results)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message.replace("{f}", str(space)).replace("{q}", repr(str(space))) in err, err
    assert not storage.exists() and not results.exists()


def test_conv_choices_that_cannot_fit_the_dataset_are_refused_before_anything_is_written(tmp_path, capsys):
    """A fixed kernel larger than the 8 x 8 digits with VALID padding: no layer can be built."""
    grid = write(tmp_path / "grid.toml", f"""
        storage = "{tmp_path / 's.journal'}"
        results_dir = "{tmp_path / 'results'}"
        [[grid]]
        datasets = ["digits"]
        models = ["cnn"]
        algos = ["fa"]
        [grid.space]
        conv_kernel = 9
        conv_padding = "VALID"
    """)
    assert main(["--config", grid, "--trials", "1", "--epochs", "1", "--folds", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "space parameters conv_padding [VALID], conv_kernel [9] cannot build 1 conv " \
        "layer(s) that fit inputs of shape (8, 8, 1) of dataset 'digits'" in err, err
    assert not (tmp_path / "s.journal").exists() and not (tmp_path / "results").exists()
    # SAME padding pads any kernel, so the same kernel is fine there; three VALID 5-kernels do not fit either
    from hpo.space.algorithms import check_dataset

    check_dataset(StudyConfig(algo="fa", model="cnn", space={"conv_kernel": 9}), load_dataset("digits"))
    with pytest.raises(UsageError, match=r"conv_layers \[3\], conv_padding \[VALID\], conv_kernel \[5\] cannot build 3"):
        check_dataset(StudyConfig(algo="fa", model="cnn", space={"conv_layers": 3, "conv_kernel": 5,
                                                                   "conv_padding": "VALID"}), load_dataset("digits"))


def test_sd_values_that_make_no_valid_model_together_are_refused(tmp_path, capsys):
    storage = tmp_path / "s.journal"
    space = write(tmp_path / "space.toml", "[space.sd]\nsd_settle = [10.0, 30.0]\n")
    assert main(["--algo", "sd", *TINY, "--space", space, "--storage", str(storage), "--results-dir",
                 str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "space parameters sd_phase [30, 50] and sd_settle [10, 30]: every phase must be longer than every " \
        "settling time" in err and err.count("\n") == 1
    assert not storage.exists()
    from hpo.space.algorithms import check_dataset

    with pytest.raises(UsageError, match=r"sd_phi_max and sd_dt reach phi_max x dt = 0.6 spikes per step"):
        check_dataset(StudyConfig(algo="sd", space={"sd_phi_max": {"low": 0.1, "high": 0.6}}), load_dataset("digits"))
    check_dataset(StudyConfig(algo="sd", space={"sd_settle": 30.0, "sd_phase": [40.0, 50.0],
                                                "sd_target_phase": {"low": 31.0, "high": 60.0}}), load_dataset("digits"))


def test_bad_space_in_a_grid_names_its_table(tmp_path, capsys):
    grid = write(tmp_path / "grid.toml", '[[grid]]\nalgos = ["fa"]\n[grid.space.fa]\nfeedback_scale = -1.0\n')
    assert main(["--config", grid]) == 2
    err = capsys.readouterr().err
    assert f"{grid} [[grid]] #1 [space.fa]: space parameter 'feedback_scale': its value must be a number > 0" in err


# Stored with the study; resuming with another space is refused.


def test_space_is_stored_and_a_changed_space_is_refused_on_resume(tmp_path, capsys):
    storage, results = str(tmp_path / "s.journal"), str(tmp_path / "results")
    first = write(tmp_path / "a.toml", '[space]\noptimizer = "adam"\nwidth = [64]\nlr_adam = {low = 1e-3, high = 1e-2, log = true}\n')
    argv = ["--algo", "fa", *TINY, "--storage", storage, "--results-dir", results]
    assert main([*argv, "--space", first]) == 0
    study = optuna.load_study(study_name="digits-mlp-fa", storage=open_storage(storage))
    assert read_study(study).space == stored_space(
        StudyConfig(algo="fa", dataset="digits", space={"optimizer": "adam", "width": [64],
                                                        "lr_adam": {"low": 1e-3, "high": 1e-2, "log": True}}))
    assert not {"optimizer", "width"} & set(study.trials[0].params)
    # the report shows the study's space
    table = (Path(results) / "studies" / "digits-mlp-fa" / "space.md").read_text()
    assert table == space_table(read_study(study).space) and "| `width` | fixed | 64 |  |" in table
    assert "| `lr_adam` | float (log) | 0.001 .. 0.01 | optimizer = adam |" in table
    assert 'href="studies/digits-mlp-fa/space.md"' in (Path(results) / "index.html").read_text()
    capsys.readouterr()

    narrower = write(tmp_path / "b.toml", '[space]\noptimizer = "adam"\nwidth = [64]\nlr_adam = {low = 1e-3, high = 5e-3, log = true}\n')
    assert main([*argv, "--trials", "2", "--space", narrower]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was created with space parameter lr_adam float 0.001..0.01 (log), got float " \
        "0.001..0.005 (log); use another --study-name or the original space" in err, err
    assert main([*argv, "--trials", "2"]) == 2  # the default space differs too: optimizer is searched there
    assert "space parameter width fixed 64, got choices 64, 128, 256, 512" in capsys.readouterr().err
    assert len(optuna.load_study(study_name="digits-mlp-fa", storage=open_storage(storage)).trials) == 1
    assert main([*argv, "--space", first]) == 0  # the original space resumes
    assert "nothing to run" in capsys.readouterr().out


def test_studies_from_before_stored_spaces(tmp_path):
    """Taken to have used the default space: they resume without overrides, and only if their parameters still exist."""
    storage = open_storage(str(tmp_path / "old.journal"))
    dataset = load_dataset("digits")

    def legacy(algo, params, distributions):
        study = optuna.create_study(storage=storage, study_name=f"digits-mlp-{algo}", direction="maximize")
        for key, value in {"dataset": "digits", "model": "mlp", "algo": algo, "folds": 3, "epochs": 10, "seed": 0,
                           "metric": "accuracy"}.items():
            study.set_user_attr(key, value)
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=0.9))

    uniform = optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)
    legacy("kp", {"kp_decay": 0.1}, {"kp_decay": uniform})
    legacy("fa", {"feedback_scale": 1.0}, {"feedback_scale": uniform})
    with pytest.raises(UsageError, match="created before search spaces were stored with studies, and its trials have "
                                         "parameter 'kp_decay', which the current default space does not ask"):
        open_study(StudyConfig(algo="kp", dataset="digits", storage="x"), dataset, storage)
    with pytest.raises(UsageError, match="it resumes only with the default space"):
        open_study(StudyConfig(algo="fa", dataset="digits", storage="x", space={"width": 64}), dataset, storage)
    study = open_study(StudyConfig(algo="fa", dataset="digits", storage="x"), dataset, storage)
    assert read_study(study).space == stored_space(StudyConfig(algo="fa"))
    assert "not stored" in space_table(None)


def test_sd_warm_start_follows_the_space(tmp_path):
    """The paper's starting point keeps only what the study asks: fixed values drop out, narrowed ranges it misses too."""
    from hpo.space.algorithms import starting_points

    full = starting_points(StudyConfig(algo="sd"))
    assert len(full) == 1 and full[0]["sd_lr_forward0"] == 0.4
    narrowed = starting_points(StudyConfig(algo="sd", space={"sd_phase": 50.0, "sd_lr_forward": {"low": 0.05, "high": 0.3}}))
    assert "sd_phase" not in narrowed[0] and "sd_lr_forward0" not in narrowed[0] and narrowed[0]["sd_width1"] == 500


# --show-space


def test_show_space_prints_the_table_and_touches_no_storage(tmp_path, capsys):
    storage, results = tmp_path / "s.journal", tmp_path / "results"
    space = write(tmp_path / "fair.toml", '[space]\noptimizer = "sgd"\nactivation = "tanh"\n')
    assert main(["--show-space", "--algo", "kp", "--space", space, "--storage", str(storage),
                 "--results-dir", str(results)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("kp (Kolen-Pollack) on mlp: mnist-5k-mlp-kp\nparameter ")
    rows = {line.split()[0]: line.split(None, 1)[1].split() for line in out.splitlines()[3:]}
    assert rows["optimizer"] == ["fixed", "sgd"] and rows["activation"] == ["fixed", "tanh"] and "lr_adam" not in rows
    assert rows["kp_decay_per_step"] == ["float", "(log)", "1e-05", "..", "0.03"]
    assert rows["momentum"] == ["float", "0", "..", "0.99", "optimizer", "=", "sgd"]
    assert not storage.exists() and not results.exists()
    assert main(["--show-space", "--config", str(ROOT / "studies" / "fair.toml"), "--algo", "dfa", "--model", "mlp",
                 "--storage", str(storage)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dfa (Direct feedback alignment) on mlp: ") and "kp_decay_per_step" not in out
    assert not storage.exists()
    assert main(["--show-space", "--config", str(ROOT / "studies" / "fair.toml"), "--algo", "sd"]) == 2
    assert "has no study of --algo sd" in capsys.readouterr().err


# Kolen-Pollack's decay is the per-step shrink factor of W - B.


def test_kp_decay_per_step_shrinks_w_minus_b_by_exactly_that_factor_with_adam():
    """B receives W's update and both decay by lr x weight_decay = p per step: ||W - B|| scales by (1 - p)^S."""
    per_step, steps = 1e-2, 40
    config = StudyConfig(algo="kp", space={"optimizer": "adam", "lr_adam": 3e-3, "kp_decay_per_step": per_step,
                                          "depth": 1, "width": 64, "batch_size": 32})
    (_, net), = asked(config, 1)
    assert net.weight_decay == pytest.approx(per_step / 3e-3)
    data = load_dataset("digits")
    x, y = jnp.asarray(data.x_train.reshape(len(data.x_train), -1)), jnp.asarray(data.y_train)
    model = MLP(net.hidden, 10, "kp", net.activation)
    params = host_init(model, x[:1], np.random.default_rng(0))["params"]
    tx = make_optimizer("adam")(learning_rate=net.learning_rate, weight_decay=net.weight_decay)
    state = tx.init(params)

    @jax.jit
    def step(params, state, idx):
        loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x[idx]), y[idx]).mean()
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, updates), state

    def difference(params):
        return float(jnp.linalg.norm(params["output"]["kernel"] - params["output"]["feedback"]))

    before = difference(params)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        params, state = step(params, state, rng.choice(len(x), 32, replace=False))
    assert difference(params) / before == pytest.approx((1 - per_step) ** steps, rel=1e-3)


def test_every_parameter_is_in_the_docs():
    from hpo.space.cnn import CNN_PARAMETERS
    from hpo.space.sd import SD_PARAMETERS
    from hpo.space.training import MLP_PARAMETERS

    page = (ROOT / "docs" / "spaces.md").read_text()
    missing = [p.name for p in (*MLP_PARAMETERS, *CNN_PARAMETERS, *SD_PARAMETERS) if f"`{p.name}`" not in page]
    assert not missing, missing
    assert json.loads(json.dumps(stored_space(StudyConfig(algo="sd")))) == stored_space(StudyConfig(algo="sd"))
