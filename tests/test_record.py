"""The stored record (hpo.record): the one place that names the storage's attribute keys, read back typed."""

import ast
from pathlib import Path

import optuna
import pytest

from hpo.record import (
    CREATION_KEYS,
    StudyRecord,
    TestScores,
    TrialRecord,
    read_study,
    read_trial,
    write_study,
    write_trial,
)

HPO = Path(__file__).resolve().parents[1] / "hpo"


def attribute_accesses(tree: ast.AST) -> list[str]:
    """Where a module reads or writes a user attribute by key (``set_user_attr``, ``user_attrs[...]``,
    ``user_attrs.get(...)``), as ``line: code``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "set_user_attr":
            found.append(node.lineno)
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) \
                and node.value.attr == "user_attrs":
            found.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                and isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "user_attrs":
            found.append(node.lineno)
    return found


def test_only_the_record_names_attribute_keys():
    offenders = {}
    for path in HPO.rglob("*.py"):
        if path.name == "record.py" and path.parent == HPO:
            continue
        lines = attribute_accesses(ast.parse(path.read_text()))
        if lines:
            offenders[str(path.relative_to(HPO.parent))] = lines
    assert offenders == {}


def test_a_trial_is_written_and_read_back_typed():
    study = optuna.create_study()
    trial = study.ask()
    write_trial(trial, fold_scores=[0.5, 0.7], fold_std=0.1, pruned_reason="diverged", startup=True,
                worker={"trial": 0, "host": "h", "pid": 1, "started": "x"})
    with pytest.raises(TypeError, match="not fields of TrialRecord: fold_score"):
        write_trial(trial, fold_score=[0.5])
    study.tell(trial, 0.6)
    record = read_trial(study.trials[0])
    assert record == TrialRecord(fold_scores=[0.5, 0.7], fold_std=0.1, pruned_reason="diverged", startup=True,
                                 worker={"trial": 0, "host": "h", "pid": 1, "started": "x"})
    assert record.wall_seconds is None and record.curves is None  # never written
    assert TrialRecord.from_attrs(record.to_attrs()) == record
    # keys another version wrote that this one does not know are ignored, not an error
    assert TrialRecord.from_attrs({"fold_std": 0.2, "from_the_future": 1}) == TrialRecord(fold_std=0.2)


def test_a_study_is_written_and_read_back_typed_in_the_stored_format():
    study = optuna.create_study()
    scores = TestScores(3, (0.9, 0.91), (11, 12), "accuracy")
    write_study(study, dataset="digits", algo="fa", folds=3, metric="accuracy", test=scores)
    with pytest.raises(TypeError, match="not fields of StudyRecord: tests"):
        write_study(study, tests=scores)
    # the stored values are what every earlier version wrote: plain JSON, the test scores as a dict
    assert study.user_attrs["test"] == {"trial": 3, "seeds": [11, 12], "scores": [0.9, 0.91], "metric": "accuracy"}
    record = read_study(study)
    assert record.test == scores and record.dataset == "digits" and record.model is None
    assert StudyRecord.from_attrs(record.to_attrs()) == record
    assert set(CREATION_KEYS) <= {"dataset", "model", "algo", "folds", "epochs", "seed", "pruner"}
    # a study of a version before test seeds: one score of unknown seed
    old = StudyRecord.from_attrs({"test": {"trial": 4, "score": 0.8, "metric": "accuracy"}})
    assert old.test.scores == (0.8,) and old.test.predates_seeds and old.test.n == 1
