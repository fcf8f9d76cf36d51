"""Run one or several studies, then write the reports of everything in their storages."""

from __future__ import annotations

import optuna

from hpo.config import StudyConfig
from hpo.console import long_trial_seconds
from hpo.data import load_dataset
from hpo.parallel.devices import auto_workers, check_workers
from hpo.report.folders import results_dir_for
from hpo.report.summary import check_writable, print_summary, write_reports
from hpo.storage import check_storage
from hpo.study.runner import run_study, validate_study
from hpo.study.trackers import check_tracker


def run_all(configs: list[StudyConfig], out=print, finish: bool = True) -> None:
    """Run every study in sequence (each resumes where it stopped), then report each storage once, into its
    own results folder (``hpo.report.folders``) unless a config names one. ``finish=False`` runs trials only,
    leaving the test scores and the reports to a later run (a Slurm job array's tasks: ``hpo.slurm``).

    Every study of the grid is checked first (trackers, storages, results folders, and each study against its
    dataset), so bad input anywhere is refused before any storage, study or file is created.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for tracker in dict.fromkeys(c.tracker for c in configs):  # a missing extra: one line, nothing created
        check_tracker(tracker)
    long_trial_seconds()  # so is a bad $HPO_EPOCH_PROGRESS_SECONDS
    for workers in dict.fromkeys(c.workers for c in configs):  # more workers than the machine holds
        if isinstance(workers, int):
            check_workers(workers)
        else:  # auto: within the bound by construction; a bad $HPO_WORKERS is one line
            auto_workers(1)
    results = {c.name: results_dir_for(c.storage, c.results_dir) for c in configs}
    for storage in dict.fromkeys(c.storage for c in configs):
        check_storage(storage)
    for results_dir in dict.fromkeys(results.values()):
        check_writable(results_dir)
    by_dataset: dict[tuple[str, str | None], list[StudyConfig]] = {}
    for config in configs:
        by_dataset.setdefault((config.dataset, config.data_dir), []).append(config)
    for (name, data_dir), group in by_dataset.items():  # one dataset in memory at a time
        dataset = load_dataset(name, data_dir)
        for config in group:
            validate_study(config, dataset)
        del dataset
    for config in configs:
        run_study(config, out, test_score=finish)
    if not finish:
        return
    reported: set[tuple[str, str]] = set()
    for config in configs:
        key = (config.storage, str(results[config.name]))
        if key not in reported:
            reported.add(key)
            frame = write_reports(config.storage, results[config.name], out=out)
            print_summary(frame, out)
