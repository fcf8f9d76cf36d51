"""Running a study: the storage's study, its trials until the total is reached, the test scores, the reports.

    runner.py         one study: open or create it, run its trials (here or in local workers), test scores
    pipeline.py       a grid of studies: every check before anything is created, then each study, then reports
    objective.py      the Optuna objective: sample, train in groups, record each trial
    heldout.py        the best configuration retrained over seeds and scored on the held-out test split
    population.py     the random start-up trials (the spread's population) and pruners that spare them
    pruners.py        --pruner: Optuna's pruners, and successive halving over fold-epochs (halving)
    compile_ahead.py  a space's programs compiled before trials need them
    progress.py       what a running study prints
    trackers.py       MLflow and Weights & Biases
"""

from hpo.study.pipeline import run_all
from hpo.study.runner import open_study, run_study

__all__ = ["open_study", "run_all", "run_study"]
