"""Running a study: storage -> optuna study -> trials until the total is reached -> test score -> reports."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from dataclasses import replace
from typing import Callable

import optuna
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.trial import TrialState

from hpo.config import StudyConfig
from hpo.console import plural
from hpo.data import Dataset, check_folds, load_dataset
from hpo.errors import StorageError, UsageError
from hpo.files import atomic_write, study_folder
from hpo.parallel.devices import auto_workers, describe_cores, visible_gpus
from hpo.parallel.interrupts import exit_code_of, exit_now, handle_interrupts
from hpo.parallel.launcher import run_local_workers
from hpo.parallel.workers import Company, run_trials, sampler_seed
from hpo.record import CREATION_KEYS, TrialRecord, read_study, read_trial, write_study
from hpo.report.folders import results_dir_for
from hpo.report.stats import summarize_scores
from hpo.space.algorithms import check_dataset, starting_points, suggest
from hpo.space.overrides import record_space
from hpo.storage import STORAGE_FAILURES, open_storage, redact, scrub
from hpo.study.compile_ahead import compile_ahead
from hpo.study.heldout import retrain_and_score
from hpo.study.objective import Objective, compiles_ahead
from hpo.study.population import startup_length
from hpo.study.progress import EpochProgress, StudyClock, outcome
from hpo.study.pruners import make_pruner
from hpo.study.trackers import make_tracker
from models.compile import Compiler

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # states that count towards --trials
MODEL_FILE = "best-model.msgpack"  # the retrained best network, in the study's results folder (models.saved)

Printer = Callable[[str], None]


def configure_jax() -> None:
    """Turn JAX's own persistent compilation cache off: an executable it loaded serialises incompletely (stored
    again, it fails at run time with "Function ... not found"), and every program a study runs goes through the
    study's program store anyway (``hpo.study.objective.Objective.compiler``), which also skips the tracing that
    JAX's cache needs before it can look a program up."""
    import jax

    jax.config.update("jax_enable_compilation_cache", False)


def make_sampler(config: StudyConfig, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The sampler of ``config``, seeded with ``seed`` (default: the study seed; see ``hpo.parallel.workers.sampler_seed``).

    Every model-based sampler starts with the same number of random trials for every rule (``hpo.study.population``):
    the population the summaries' spread is computed over.
    """
    seed = config.seed if seed is None else seed
    startup = startup_length(config)
    if config.sampler == "tpe":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # multivariate/group/liar
            return optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=startup, multivariate=True, group=True, constant_liar=True
            )
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if config.sampler == "gp":
        if importlib.util.find_spec("torch") is None:
            raise UsageError(
                "--sampler gp needs PyTorch, which is not installed; install it with: pip install -e '.[gp]'"
            )
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    if importlib.util.find_spec("cmaes") is None:
        raise UsageError("--sampler cmaes needs the cmaes package; install it with: pip install cmaes")
    return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=startup, warn_independent_sampling=False)


def validate_study(config: StudyConfig, dataset: Dataset) -> Objective:
    """Every check of ``config`` against ``dataset``, before any storage, study or file exists; the objective.

    Bad input must leave nothing behind (no study with one failed trial, no empty study), so everything that
    can refuse the study runs here, on the loaded dataset: the folds against the class counts, one proposal of
    the search space (it refuses, e.g., ``--model cnn`` on a dataset without images and ``--algo sd`` on
    regression) and the objective's own checks (``--evals-per-epoch`` against the mini-batches per epoch).
    """
    configure_jax()
    check_folds(dataset, config.folds)
    make_sampler(config)  # gp without PyTorch, cmaes without its package
    make_pruner(config)
    check_dataset(config, dataset)  # the space can use it: images for a CNN, classes for sd, user-fixed values
    _propose_once(config, dataset)
    return Objective(config, dataset)


def _propose_once(config: StudyConfig, dataset: Dataset) -> None:
    """Sample one configuration from the search space in a throwaway in-memory study (nothing is stored)."""
    scratch = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=config.seed), direction=dataset.direction)
    trial = scratch.ask()
    try:
        suggest(trial, config, dataset)
    except optuna.TrialPruned:
        pass  # a proposal that the space itself prunes (no CNN layer fits) is a trial outcome, not bad input


def open_study(config: StudyConfig, dataset: Dataset, storage: BaseStorage | None = None) -> optuna.Study:
    """Create the study, or load it and check it was created with the same settings.

    Only the process that creates the study enqueues its warm-start points, so two processes that create the same
    new study at once do not both enqueue them (if the creator dies in the moment between creating the study and
    enqueueing, the study just starts without them).
    """
    storage = storage if storage is not None else open_storage(config.storage)
    created = False
    try:
        storage.get_study_id_from_name(config.name)
    except KeyError:  # look first: a journal keeps every attempt to create a study, even a refused one
        try:
            storage.create_new_study([StudyDirection[dataset.direction.upper()]], config.name)
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            pass  # another process created it in between
    study = optuna.load_study(study_name=config.name, storage=storage, sampler=make_sampler(config),
                              pruner=make_pruner(config))
    record = read_study(study)
    for name in CREATION_KEYS:
        stored, value = getattr(record, name), getattr(config, name)
        if stored is not None and stored != value:
            raise UsageError(
                f"study {config.name!r} in {redact(config.storage)!r} was created with {name}={stored!r}, "
                f"got {name}={value!r}; use another --study-name or the original setting"
            )
        if stored is None:
            write_study(study, **{name: value})
    record_space(study, config, redact(config.storage))  # the effective space, or a refusal if it changed
    if record.metric is None:
        write_study(study, metric=dataset.metric)
    if created:
        for params in starting_points(config):
            study.enqueue_trial(params, user_attrs=TrialRecord(starting_point=True).to_attrs())
    if not study.metric_names:  # what optuna-dashboard calls the objective ("Objective 0" without it)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([metric_name(dataset.metric)])
    return study


ACRONYMS = {"mse": "MSE"}  # metrics (hpo.data) written in capitals where they are shown


def metric_name(metric: str) -> str:
    """The objective's display name: ``CV accuracy``, ``CV MSE``."""
    return f"CV {ACRONYMS.get(metric, metric)}"


def count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


class Progress:
    """One line per finished trial: count, state, value (a pruned trial's reason), best so far, time, elapsed
    time of this run and ETA (``hpo.study.progress``); ``epochs`` shows the epochs of long trials."""

    def __init__(self, config: StudyConfig, metric: str, out: Printer, done_at_start: int = 0):
        self.config, self.metric, self.out = config, metric, out
        self.clock = StudyClock(config.trials, done_at_start)
        self.epochs = EpochProgress(config.name, metric, out)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.epochs.finish(trial.number)
        done = count_finished(study)
        try:
            best = f"best {study.best_value:.4f} (#{study.best_trial.number})"
        except ValueError:
            best = "no complete trial yet"
        state = trial.state.name.lower()
        seconds = read_trial(trial).wall_seconds or 0.0
        self.out(
            f"[{self.config.name}] {done}/{self.config.trials} trial #{trial.number} {state}: "
            f"{outcome(trial, self.metric)} | {best} | {seconds:.1f}s | {self.clock.text(done)}"
        )


def run_study(config: StudyConfig, out: Printer = print, worker: int = 0, test_score: bool = True) -> optuna.Study:
    """Run ``config`` until its study holds ``config.trials`` finished trials, then score the best on test.

    Any number of processes may run the same study at once (``hpo.parallel.workers`` keeps the total exact);
    ``config.workers`` other than 1 may start local processes (``worker_layout``). ``worker`` numbers a local worker process
    (it seeds its sampler); ``test_score=False`` leaves the test score to the parent of local workers.
    """
    configure_jax()
    dataset = load_dataset(config.dataset, config.data_dir)
    objective = validate_study(config, dataset)  # before anything is created
    storage = open_storage(config.storage)
    try:
        return _run_study(config, dataset, storage, objective, out, worker, test_score)
    except (*STORAGE_FAILURES, StorageError) as error:
        raise storage_failure(config, error) from None


def _run_study(
    config: StudyConfig, dataset: Dataset, storage: BaseStorage, objective: Objective, out: Printer, worker: int,
    test_score: bool,
) -> optuna.Study:
    study = open_study(config, dataset, storage)
    done = count_finished(study)
    if done >= config.trials:
        out(f"[{config.name}] already has {done} finished trials (asked for {config.trials}); nothing to run")
    else:
        workers, layout = worker_layout(config, config.trials - done)
        out(
            f"[{config.name}] {done} finished trials in {redact(config.storage)}; running until {config.trials} "
            f"({config.folds}-fold CV, {plural(config.epochs, 'epoch')}, {config.sampler} sampler, {config.pruner} pruner, "
            f"{layout})"
        )
        if workers > 1:
            run_local_workers(worker_main, config, workers, out, complete=lambda: count_finished(study) >= config.trials)
        else:
            trials = study.get_trials(deepcopy=False)
            busy = any(t.state == TrialState.RUNNING for t in trials)
            study.sampler = make_sampler(config, sampler_seed(config.seed, len(trials), busy, worker))

            def reseed() -> None:  # another worker started alongside: never propose what it proposes
                study.sampler = make_sampler(config, sampler_seed(config.seed, len(trials), True, worker))

            progress = Progress(config, dataset.metric, out, done)
            objective.on_epoch = progress.epochs
            ahead = compile_ahead(config, objective) if worker == 0 and compiles_ahead(config) else None
            tracker = make_tracker(config.tracker, dataset.metric, lambda line: out(f"[{config.name}] {line}"))

            def on_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
                progress(study, trial)
                if tracker is not None:
                    tracker(study, trial)

            try:
                run_trials(
                    study, storage, config.storage, objective, config.trials, out, on_trial,
                    None if busy else Company(len(trials), reseed), batch=config.trial_batch,
                    startup=objective.startup if objective.compiling_in_background else 0,
                )
            finally:
                progress.epochs.finish()  # a trial interrupted or failed in training has no result line
                if ahead is not None:
                    ahead.stop()
    if test_score:
        record_test_score(study, config, dataset, out, objective.compiler)
    return study


def worker_layout(config: StudyConfig, trials_left: int) -> tuple[int, str]:
    """How many local worker processes run ``config`` (``--workers``, ``auto``: ``hpo.parallel.devices.auto_workers``)
    and the words that say it in the study's first line: why that many, and which cores each has (``worker_cores``)."""
    if isinstance(config.workers, int):
        workers, why = config.workers, ""
    else:
        workers, why = auto_workers(trials_left)
        why = f", {why}"
    if workers == 1:
        return 1, f"1 worker{why.replace(',', ':', 1)}"
    gpus = visible_gpus()
    where = f"{len(gpus)} GPUs, " if gpus else ""
    return workers, f"{workers} workers{why}: {where}{describe_cores(workers)}"


def storage_failure(config: StudyConfig, error: BaseException) -> StorageError:
    """One line for a storage that failed mid-study: which storage (password hidden), the root cause, what now."""
    root = error
    while root.__cause__ is not None:
        root = root.__cause__
    text = str(root).strip().splitlines()[0] if str(root).strip() else type(root).__name__
    return StorageError(
        f"study {config.name!r} lost its storage {redact(config.storage)!r}: {scrub(text, config.storage)}; finished "
        "trials are stored and a running trial is recovered when a worker runs the study again"
    )


def record_test_score(
    study: optuna.Study, config: StudyConfig, dataset: Dataset, out: Printer, compiler: Compiler | None = None
) -> None:
    """Retrain the best configuration on the whole training split with ``config.test_seeds`` seeds, score the
    test split, store every seed's score on the study (``hpo.study.heldout``) and save seed 0's network in the study's
    results folder (``MODEL_FILE``, ``models.saved.load_model`` reads it).

    Recomputed only when the best trial changed since it was stored, or the number of seeds. More seeds than
    stored extend the stored scores: only the new seeds are trained (a seed's index fixes it:
    ``retraining_seeds``), and the stored scores stay as they were measured. When only the saved network is missing
    (it is not committed: a fresh clone of a finished grid lacks it), seed 0 alone is retrained to rebuild it and
    the stored scores are kept: every seed again would cost a finished grid hours for nothing.
    """
    try:
        best = study.best_trial
    except ValueError:
        out(f"[{config.name}] no complete trial: no test score")
        return
    stored = read_study(study).test
    model_path = study_folder(results_dir_for(config.storage, config.results_dir), config.name) / MODEL_FILE
    mine = stored if stored is not None and stored.trial == best.number else None  # of the best trial
    current = mine is not None and mine.n == config.test_seeds
    if mine is not None and current and (model_path.exists() or mine.error is not None):  # diverged: no network
        return
    model = None
    if mine is not None and mine.error is None and not mine.predates_seeds and 0 < mine.n < config.test_seeds:
        new = f"seed {config.test_seeds}" if mine.n + 1 == config.test_seeds else \
            f"seeds {mine.n + 1}-{config.test_seeds}"
        out(f"[{config.name}] trial #{best.number}: the {mine.n} stored test scores kept, retraining {new}")
        extra, _ = retrain_and_score(config, dataset, best.params, best.number, False, compiler, out, first=mine.n)
        scores = () if extra.error is not None else mine.scores + extra.scores  # a diverged seed: as a full retraining
        record = replace(extra, scores=scores, seeds=mine.seeds + extra.seeds)
        write_study(study, test=record)
    elif mine is not None and current:
        record = mine
    else:
        record, model = retrain_and_score(config, dataset, best.params, best.number, True, compiler, out)
        write_study(study, test=record)  # the scores first: a full disk below loses the file, not the result
    if model is None and not model_path.exists() and record.error is None:
        out(f"[{config.name}] the saved network of trial #{best.number} is missing: retraining seed 0 only, "
            f"the {record.n} stored test scores kept")
        _, model = retrain_and_score(replace(config, test_seeds=1), dataset, best.params, best.number, True,
                                     compiler, out)
    if model is not None:
        try:
            atomic_write(model_path, lambda handle: handle.write(model))
        except OSError as error:
            raise UsageError(f"cannot write the best network to {str(model_path)!r}: {error.strerror or error}; "
                             "the test scores are stored, rerun to write it") from None
    cv = f"[{config.name}] best trial #{best.number}: CV {dataset.metric} {best.value:.4f}"
    if record.error is not None:
        out(f"{cv}, no test score: {record.error}")
        return
    summary = summarize_scores(record.scores)
    spread = f" +- {summary.ci95:.4f} (95% CI over {summary.n} seeds)" if summary.n > 1 else " (1 seed)"
    out(f"{cv}, test {summary.mean:.4f}{spread}")


def worker_main(config: StudyConfig, index: int) -> None:
    """Body of one ``--workers`` process: a fresh interpreter that initialises JAX itself and runs the study."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def out(line: str) -> None:
        print(f"[w{index}] {line}", flush=True)

    try:
        with handle_interrupts():
            run_study(replace(config, workers=1), out, worker=index, test_score=False)
    except (UsageError, StorageError) as error:  # said here in one line; the parent exits with the same code
        print(f"[w{index}] error: {error}", file=sys.stderr, flush=True)
        exit_now(error.exit_code)
    except KeyboardInterrupt as error:  # its trial is re-queued; the parent prints the one "interrupted" line
        exit_now(exit_code_of(error))
