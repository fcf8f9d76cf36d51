"""Run one or several studies, then write the reports of everything in their storages."""

from __future__ import annotations

import optuna

from hpo.config import StudyConfig
from hpo.report import check_writable, print_summary, write_reports
from hpo.storage import open_storage
from hpo.study import run_study


def run_all(configs: list[StudyConfig], out=print) -> None:
    """Run every study in sequence (each resumes where it stopped), then report each storage once."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for storage in dict.fromkeys(c.storage for c in configs):  # fail on a bad storage before writing anything
        open_storage(storage)
    for config in configs:
        check_writable(config.results_dir)
    for config in configs:
        run_study(config, out)
    reported: set[tuple[str, str]] = set()
    for config in configs:
        if (config.storage, config.results_dir) not in reported:
            reported.add((config.storage, config.results_dir))
            frame = write_reports(config.storage, config.results_dir, out=out)
            print_summary(frame, out)
