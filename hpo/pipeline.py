"""Run one or several studies, then write the reports of everything in their storages."""

from __future__ import annotations

import optuna

from hpo.config import StudyConfig
from hpo.data import load_dataset
from hpo.report import check_writable, print_summary, write_reports
from hpo.storage import check_storage
from hpo.study import run_study, validate_study


def run_all(configs: list[StudyConfig], out=print) -> None:
    """Run every study in sequence (each resumes where it stopped), then report each storage once.

    Every study of the grid is checked first (storage, results folder, and each against its dataset), so bad
    input anywhere is refused before any storage, study or file is created.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for storage in dict.fromkeys(c.storage for c in configs):
        check_storage(storage)
    for results_dir in dict.fromkeys(c.results_dir for c in configs):
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
        run_study(config, out)
    reported: set[tuple[str, str]] = set()
    for config in configs:
        if (config.storage, config.results_dir) not in reported:
            reported.add((config.storage, config.results_dir))
            frame = write_reports(config.storage, config.results_dir, out=out)
            print_summary(frame, out)
