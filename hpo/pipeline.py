"""Run one or several studies, then write the reports of everything in their storages."""

from __future__ import annotations

import optuna

from hpo.algorithms import check_dataset, study_space
from hpo.config import StudyConfig
from hpo.data import load_dataset
from hpo.progress import long_trial_seconds
from hpo.report import check_writable, print_summary, write_reports
from hpo.results import results_dir_for
from hpo.storage import open_storage
from hpo.study import run_study
from hpo.trackers import check_tracker


def run_all(configs: list[StudyConfig], out=print) -> None:
    """Run every study in sequence (each resumes where it stopped), then report each storage once, into its
    own results folder (``hpo.results``) unless a config names one."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for tracker in dict.fromkeys(c.tracker for c in configs):  # a missing extra: one line, nothing created
        check_tracker(tracker)
    long_trial_seconds()  # so is a bad $HPO_EPOCH_PROGRESS_SECONDS
    results = {c.name: results_dir_for(c.storage, c.results_dir) for c in configs}
    check_datasets(configs)  # so is a space the dataset cannot use
    for storage in dict.fromkeys(c.storage for c in configs):  # fail on a bad storage before writing anything
        open_storage(storage)
    for config in configs:
        check_writable(results[config.name])
    for config in configs:
        run_study(config, out)
    reported: set[tuple[str, str]] = set()
    for config in configs:
        key = (config.storage, str(results[config.name]))
        if key not in reported:
            reported.add(key)
            frame = write_reports(config.storage, results[config.name], out=out)
            print_summary(frame, out)


def check_datasets(configs: list[StudyConfig]) -> None:
    """Every study's space can use its dataset (CNN input shapes, user-fixed conv kernels, classification-only
    models, batch sizes), before any storage or result is written. Each dataset needed is loaded once here; an MLP
    study with the default batch sizes needs none."""
    by_dataset: dict[tuple[str, str | None], list[StudyConfig]] = {}
    for config in configs:
        space = study_space(config)
        if space.check is None and space.batch_parameter not in config.space:
            continue
        by_dataset.setdefault((config.dataset, config.data_dir), []).append(config)
    for (name, data_dir), group in by_dataset.items():
        dataset = load_dataset(name, data_dir)
        for config in group:
            check_dataset(config, dataset)
