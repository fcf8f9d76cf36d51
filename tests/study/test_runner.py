"""hpo.study.runner: a pruned trial says why, a warm start is enqueued once however many processes create the
study, and a full disk while saving the best network is one line."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import optuna
from optuna.trial import TrialState
from study_processes import (
    TINY,
    frozen_trial,
    journal_study,
)

from hpo.config import StudyConfig
from hpo.data import load_dataset
from hpo.report.folders import OWNER_FILE
from hpo.run import main
from hpo.storage import open_storage
from hpo.study.progress import outcome as trial_outcome
from hpo.study.runner import open_study

# ---------------------------------------------------------------------------------------------------------
# Smaller cases


def test_a_pruned_trial_shows_why_it_was_pruned():
    diverged = frozen_trial(TrialState.PRUNED, pruned_reason="diverged: non-finite loss in epoch 2")
    assert trial_outcome(diverged, "mse") == "diverged: non-finite loss in epoch 2"  # not "mse 3.5e32"
    assert trial_outcome(frozen_trial(TrialState.COMPLETE, 0.9123), "accuracy") == "accuracy 0.9123"
    assert trial_outcome(frozen_trial(TrialState.FAIL, surplus="the total is reached"), "accuracy") == (
        "the total is reached"
    )


def test_two_processes_creating_a_new_sd_study_enqueue_its_warm_start_once(tmp_path):
    """The race: both see a new study (no attributes yet) and both enqueued the paper's configuration."""
    dataset = load_dataset("digits")
    journal = str(tmp_path / "s.journal")
    config = StudyConfig(algo="sd", dataset="digits", storage=journal)
    # Another process has just created the study and not yet written anything else: this one must not enqueue.
    optuna.create_study(study_name=config.name, storage=open_storage(journal), direction="maximize")
    open_study(config, dataset, open_storage(journal))
    assert not journal_study(Path(journal), config.name).get_trials()

    # Many processes creating the same new study at the same moment: one enqueue in all.
    config = StudyConfig(algo="sd", dataset="digits", storage=journal, study_name="raced")
    barrier = threading.Barrier(6)

    def create() -> None:
        storage = open_storage(journal)  # each its own storage object, as separate processes have
        barrier.wait()
        open_study(config, dataset, storage)

    threads = [threading.Thread(target=create) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    queued = journal_study(Path(journal), "raced").get_trials()
    assert len(queued) == 1 and queued[0].state == TrialState.WAITING and queued[0].user_attrs["starting_point"]


def test_a_full_disk_while_saving_the_best_network_is_one_line(tmp_path, full_filesystem, capsys):
    storage = tmp_path / "s.journal"
    results = full_filesystem / "results"
    filler = full_filesystem / "filler"
    free = os.statvfs(full_filesystem).f_bavail * os.statvfs(full_filesystem).f_frsize
    filler.write_bytes(b"x" * max(0, free - 8_000))  # room for a folder or two, not for the network's file
    assert main([*TINY, "--trials", "1", "--storage", str(storage), "--results-dir", str(results),
                 "--test-seeds", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write the best network to ") and "No space left on device" in err
    assert err.count("\n") == 1 and "the test scores are stored" in err
    assert journal_study(storage, "digits-mlp-bp").user_attrs["test"]["scores"]  # the result itself is kept
    assert not [p for p in results.rglob(".*") if p.is_file() and p.name != OWNER_FILE]  # no temporary file
