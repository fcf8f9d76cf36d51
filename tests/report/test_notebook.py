"""notebooks/workspace.ipynb runs top to bottom against a tiny real study, in a kernel of this interpreter."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from hpo import run

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "workspace.ipynb"
CELL_SECONDS = 300  # per cell; generous for a busy machine (the whole notebook takes seconds on an idle one)


def kernel_manager(tmp_path: Path, env: dict[str, str]) -> KernelManager:
    """A kernel of this very interpreter (not whatever ``python3`` a Jupyter path points to), with ``env``."""
    spec_dir = tmp_path / "kernels" / "hpo-test"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "hpo test kernel",
        "language": "python",
        "env": env,
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    specs = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    return KernelManager(kernel_name="hpo-test", kernel_spec_manager=specs)


def test_committed_without_large_outputs_and_python3_kernel():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == "python3"
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")


def test_notebook_runs_top_to_bottom(tmp_path):
    storage = str(tmp_path / "tiny.journal")
    results = tmp_path / "results"
    argv = ["--algo", "fa", "--dataset", "digits", "--trials", "1", "--epochs", "1", "--folds", "2",
            "--storage", storage, "--results-dir", str(tmp_path / "run-results")]
    assert run.main(argv) == 0

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # PYTHONPATH: this checkout's hpo, whichever checkout an editable install points at
    km = kernel_manager(tmp_path, {"HPO_STORAGE": storage, "HPO_RESULTS_DIR": str(results), "PYTHONPATH": str(ROOT)})
    client = NotebookClient(notebook, km=km, timeout=CELL_SECONDS, resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails

    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    text = "\n".join(
        output.get("text", "") + str(output.get("data", {}).get("text/plain", ""))
        for cell in code
        for output in cell.outputs
    )
    assert f"storage: {storage}" in text  # the injected storage was used, not the default database
    warned = [o.get("text", "") for cell in code for o in cell.outputs if o.get("name") == "stderr"]
    assert not any("Warning" in w for w in warned), warned  # e.g. tqdm's IProgress warning, at import of optuna
    assert "digits-mlp-fa" in text and "fold_scores" in text
    assert "| `depth` | int | 1 .. 3 |  |" in text  # the study's search space, as stored with it
    images = [o for cell in code for o in cell.outputs if "image/png" in o.get("data", {})]
    shown = {o["data"]["text/markdown"].strip("`") for cell in code for o in cell.outputs
             if "text/markdown" in o.get("data", {})}
    assert str(results / "comparison.png") in shown
    assert str(results / "studies" / "digits-mlp-fa" / "curves.png") in shown
    assert len(images) == len(shown) >= 2
    assert (results / "index.html").is_file() and (results / "summary.csv").is_file()
