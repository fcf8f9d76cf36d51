"""Settings every test runs under, and fixtures several test folders share."""

import os
import subprocess

import pytest

# --workers auto would start one worker process per core in every test that runs a study: tests run one worker
# each (pytest-xdist already runs one test per core) unless they ask for more with --workers N.
os.environ.setdefault("HPO_WORKERS", "1")


@pytest.fixture
def full_filesystem(tmp_path):
    """A real filesystem that runs out of space: a 12 MB tmpfs, room for one report set with its copy of plotly.js
    (needs mount rights; root in the test machine)."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)
