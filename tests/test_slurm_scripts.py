"""python -m hpo.slurm writing its scripts, no cluster needed: no database is opened for it, no option value can
add a line to a script, the finishing job's log is named as a plain job's, and --help is whole."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hpo.slurm import main

ROOT = Path(__file__).resolve().parents[1]
UNREACHABLE = "postgresql://hpo:secret@127.0.0.1:9/hpo"  # port 9 (discard): nothing answers there


def grid(tmp_path: Path, name: str = "grid.toml") -> Path:
    path = tmp_path / name
    path.write_text('trials = 2\nepochs = 1\n[[grid]]\ndatasets = ["digits"]\nmodels = ["mlp"]\nalgos = ["bp"]\n')
    return path


def test_scripts_are_written_for_a_database_this_machine_cannot_reach(tmp_path, capsys):
    code = main(["--config", str(grid(tmp_path)), "--array", "3", "--storage", UNREACHABLE,
                 "--script-dir", str(tmp_path / "slurm")])
    assert code == 0, capsys.readouterr().err
    workers, finish = (tmp_path / "slurm" / "workers.sbatch").read_text(), (tmp_path / "slurm" / "finish.sbatch").read_text()
    assert "#SBATCH --array=0-2" in workers and "secret" not in workers + finish
    assert f"--output={tmp_path / 'slurm' / 'logs'}/%x-%A_%a.out" in workers
    assert f"--output={tmp_path / 'slurm' / 'logs'}/%x-%j.out" in finish and "%a" not in finish
    for text in (workers, finish):  # bash reads them as written
        assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0


@pytest.mark.parametrize("flag", ["--partition", "--mem", "--time", "--sbatch"])
def test_a_newline_in_an_sbatch_option_is_refused_and_nothing_is_written(tmp_path, capsys, flag):
    marker = tmp_path / "ran"
    value = f"x\ntouch {marker}" if flag != "--sbatch" else f"--qos=x\ntouch {marker}"
    code = main(["--config", str(grid(tmp_path)), "--array", "2", "--storage", UNREACHABLE,
                 "--script-dir", str(tmp_path / "slurm"), f"{flag}={value}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"{flag} must not contain control characters or spaces" in err
    assert not (tmp_path / "slurm").exists() and not marker.exists()


def test_a_grid_file_name_never_adds_a_line_or_leaves_the_script_folder(tmp_path, capsys):
    folder = tmp_path / "grids"
    folder.mkdir()
    path = grid(folder, "a\ntouch x;.toml")
    assert main(["--config", str(path), "--array", "2", "--storage", UNREACHABLE, "--script-dir",
                 str(tmp_path / "slurm")]) == 2
    assert "must not contain control characters" in capsys.readouterr().err  # the config path enters the command
    path = grid(folder, "odd name;$(x).toml")
    assert main(["--config", str(path), "--array", "2", "--storage", UNREACHABLE, "--script-dir",
                 str(tmp_path / "slurm")]) == 0
    workers = (tmp_path / "slurm" / "workers.sbatch").read_text()
    header = [line for line in workers.splitlines() if line.startswith("#SBATCH --job-name=")]
    name = header[0].removeprefix("#SBATCH --job-name=")
    assert len(header) == 1 and name.startswith("hpo-odd_name_x") and not set(name) & set(" $();")
    assert subprocess.run(["bash", "-n"], input=workers, text=True).returncode == 0


def test_help_says_what_the_command_does_in_whole_sentences():
    done = subprocess.run([sys.executable, "-m", "hpo.slurm", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert ("A study grid on a Slurm cluster: a job array whose tasks are workers of the same studies on one storage, "
            "and a job, started once every task has ended, that finishes them (any trial still missing, the test "
            "scores, the report).") in text
