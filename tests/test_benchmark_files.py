"""The benchmarks share results/benchmarks/objective.md: each rewrites its own section and keeps the others'; the GPU
script runs on a CPU."""

import os
import subprocess
from pathlib import Path

import pytest

from benchmarks.objective import CNN_MARK, write_sections
from benchmarks.study import CNN_STUDY_MARK, STUDY_MARK, write_cnn_study_section, write_targets

ROOT = Path(__file__).resolve().parents[1]

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


@pytest.mark.slow
def test_the_gpu_script_runs_here_without_its_install_and_writes_its_table(tmp_path):
    """benchmarks/gpu.sh as a lent GPU runs it, less the wheel install: every part, tiny, on this machine's CPU."""
    done = subprocess.run(["bash", "benchmarks/gpu.sh", "--no-install", "--quick"], capture_output=True, text=True,
                          env={**os.environ, "OUT": str(tmp_path)}, timeout=1800, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    table = (tmp_path / "gpu.md").read_text()
    assert "Devices: cpu:" in table and "Quick run" in table
    for network in ("MLP 784-64-64-10, fa", "2-D CNN, fa"):
        assert table.count(f"| {network} |") == 2  # vmapped and sequential folds
    study_rows = [line for line in table.splitlines() if line.startswith(("| 1 |", "| 8 |"))]
    assert len(study_rows) == 4 and all("| 3 |" in line for line in study_rows)


def test_the_kp_decay_table_regenerates_from_its_stored_sweep_alone():
    """results/kp-decay/sweep.md is what benchmarks.kp_decay --report writes from the committed sweep.json: the
    measured runs are the sweep's storage, the table a function of them."""
    import json

    from benchmarks.kp_decay import DECAYS, RULES, table

    folder = ROOT / "results" / "kp-decay"
    sweep = json.loads((folder / "sweep.json").read_text())
    assert {(r["decay_per_step"], r["rule"]) for r in sweep["runs"]} == {(d, r) for d in DECAYS for r in RULES}
    assert all(len(r["test"]) == len(r["seeds"]) >= 5 for r in sweep["runs"])
    assert table(sweep) == (folder / "sweep.md").read_text()
