"""The benchmarks share results/benchmarks/objective.md: each rewrites its own section and keeps the others'."""

from benchmarks.objective import CNN_MARK, write_sections
from benchmarks.study import CNN_STUDY_MARK, STUDY_MARK, write_cnn_study_section, write_targets

ROW = {"label": "cold-20", "options": "defaults", "trials": 20, "wall": 100.0, "trials_per_hour": 720.0, "train": 0.5,
       "compile": 0.3, "overhead": 0.05, "outside": 0.15, "complete": 19, "pruned": 1, "programs": 5, "peak_mb": 900.0,
       "best": 0.9, "load": "1.0/1.0/1.0"}


def test_each_benchmark_rewrites_its_section_and_keeps_the_others(tmp_path):
    targets, study = tmp_path / "benchmarks.md", tmp_path / "cnn_study.md"
    write_sections(str(targets), "# MLP part one", "CNN part one")
    write_targets([ROW], [], 8, targets)
    study.write_text("# A whole CNN study\n\n| checkout | wall s |\n|---|---:|\n| after | 340.9 |\n")
    write_cnn_study_section(study, targets)
    write_cnn_study_section(study, targets)  # again: replaced, not appended
    text = targets.read_text()
    assert text.count(CNN_STUDY_MARK) == 1 and text.count("| after | 340.9 |") == 1
    write_targets([{**ROW, "train": 0.7}], [], 8, targets)  # the study benchmark again: its rows, the CNN study kept
    write_sections(str(targets), "# MLP part two", "CNN part two")  # the objective benchmark again
    text = targets.read_text()
    assert text.index("# MLP part two") < text.index(CNN_MARK) < text.index(STUDY_MARK) < text.index(CNN_STUDY_MARK)
    assert "part one" not in text and "CNN part two" in text
    assert "| cold-20 | 70% |" in text and "| cold-20 | 50% |" not in text
    assert text.count("| after | 340.9 |") == 1 and text.count(STUDY_MARK) == 1
