"""python -m hpo.dashboard serves a study storage through optuna-dashboard's JSON API, on 127.0.0.1 only."""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from study_processes import add_complete_study

from hpo import dashboard
from hpo.dashboard import exposure_warning
from hpo.storage import open_storage

ROOT = Path(__file__).resolve().parent.parent
STARTUP_SECONDS = 120  # generous: the machine running the tests may be busy; a healthy start takes a few seconds


def make_study(url: str) -> None:
    study = optuna.create_study(study_name="digits-mlp-fa", storage=open_storage(url), direction="maximize")
    study.set_user_attr("algo", "fa")
    for i, value in enumerate((0.5, 0.75)):
        study.add_trial(
            optuna.trial.create_trial(
                params={"learning_rate": 0.1 / (i + 1)},
                distributions={"learning_rate": FloatDistribution(1e-4, 1.0, log=True)},
                value=value,
                intermediate_values={0: value / 2, 1: value},
                user_attrs={"fold_scores": [value - 0.05, value + 0.05], "wall_seconds": 2.5},
            )
        )


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return json.loads(response.read())


@pytest.fixture
def server(tmp_path):
    storage = str(tmp_path / "studies.journal")
    make_study(storage)
    process = subprocess.Popen(
        [sys.executable, "-m", "hpo.dashboard", "--storage", storage, "--port", "0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        # the URL line is printed once the port is bound, so the server answers from then on
        ready, _, _ = select.select([process.stdout], [], [], STARTUP_SECONDS)
        assert ready, "dashboard printed no URL"
        line = process.stdout.readline()
        assert line, f"dashboard exited: {process.wait(30)} {process.stderr.read()}"
        yield line
    finally:
        process.terminate()
        process.wait(30)
        process.stdout.close()
        process.stderr.close()


def test_serves_studies_and_trials(server):
    assert server.startswith("optuna-dashboard of ") and "studies.journal on http://127.0.0.1:" in server
    url = server.split(" on ", 1)[1].strip()
    assert url.endswith("/dashboard")
    base = url.removesuffix("/dashboard")
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        try:
            studies = get_json(f"{base}/api/studies")["study_summaries"]
            break
        except OSError:
            assert time.monotonic() < deadline, "dashboard did not answer"
            time.sleep(0.5)
    (summary,) = studies
    assert summary["study_name"] == "digits-mlp-fa" and summary["directions"] == ["maximize"]
    detail = get_json(f"{base}/api/studies/{summary['study_id']}")
    assert [t["values"] for t in detail["trials"]] == [[0.5], [0.75]]
    assert [t["number"] for t in detail["best_trials"]] == [1]
    attrs = {a["key"]: a["value"] for a in detail["trials"][1]["user_attrs"]}
    assert json.loads(attrs["fold_scores"]) == [0.7, 0.8] and attrs["wall_seconds"] == "2.5"
    assert [v["value"] for v in detail["trials"][1]["intermediate_values"]] == [0.375, 0.75]
    with urllib.request.urlopen(url, timeout=10) as response:  # the web page itself
        assert response.status == 200 and b"<html" in response.read().lower()


def test_missing_storage_is_one_line(tmp_path, capsys):
    assert dashboard.main(["--storage", str(tmp_path / "none.journal"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: storage") and "does not exist" in err and err.count("\n") == 1


def test_busy_port_is_one_line(tmp_path, capsys):
    storage = str(tmp_path / "studies.journal")
    make_study(storage)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert dashboard.main(["--storage", storage, "--port", str(port)]) == 2
    assert capsys.readouterr().err == f"error: port {port} on 127.0.0.1 is busy; choose another with --port\n"


def test_bad_port_and_artifact_dir(tmp_path, capsys):
    storage = str(tmp_path / "studies.journal")
    make_study(storage)
    assert dashboard.main(["--storage", storage, "--port", "70000"]) == 2
    assert dashboard.main(["--storage", storage, "--port", "0", "--artifact-dir", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "error: --port must be between 0 and 65535, got 70000",
        f"error: --artifact-dir {str(tmp_path / 'nope')!r} is not a directory",
    ]


def wsgi_get(app, path: str):
    """GET ``path`` from a WSGI app in this process; the decoded JSON answer."""
    from wsgiref.util import setup_testing_defaults

    environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    status = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    assert status[0].startswith("200"), (path, status, body[:200])
    return json.loads(body)


def test_dashboard_names_the_objective(tmp_path):
    """Studies created by hpo.run name their metric, so optuna-dashboard says "CV accuracy", not "Objective 0"."""
    from optuna_dashboard import wsgi

    from hpo.config import StudyConfig
    from hpo.data import load_dataset
    from hpo.study.runner import open_study

    url = str(tmp_path / "studies.journal")
    storage = open_storage(url)
    for dataset in ("digits", "sinreg"):  # a classification and a regression dataset
        open_study(StudyConfig(algo="bp", dataset=dataset, storage=url), load_dataset(dataset), storage)
    app = wsgi(storage)
    names = {
        s["study_name"]: wsgi_get(app, f"/api/studies/{s['study_id']}")["objective_names"]
        for s in wsgi_get(app, "/api/studies")["study_summaries"]
    }
    assert names == {"digits-mlp-bp": ["CV accuracy"], "sinreg-mlp-bp": ["CV MSE"]}


def request(base: str, path: str, method: str = "GET", host: str | None = None, origin: str | None = None):
    """The status of one real HTTP request to the dashboard, with the given Host and Origin headers."""
    import http.client
    from urllib.parse import urlsplit

    address = urlsplit(base)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    headers = {"Host": host or address.netloc}
    if origin is not None:
        headers["Origin"] = origin
    connection.request(method, path, headers=headers)
    response = connection.getresponse()
    response.read()
    connection.close()
    return response.status


def test_answers_only_its_own_address_and_its_own_pages(server):
    """DNS rebinding: a page of attacker.example whose name points at 127.0.0.1 reaches the port, but the Host
    (and for a change, the Origin) it sends names it: refused. The dashboard's own page works as before."""
    base = server.split(" on ", 1)[1].strip().removesuffix("/dashboard")
    port = base.rsplit(":", 1)[1]
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        try:
            studies = get_json(f"{base}/api/studies")["study_summaries"]
            break
        except OSError:
            assert time.monotonic() < deadline, "dashboard did not answer"
            time.sleep(0.5)
    study = studies[0]["study_id"]
    for name in ("127.0.0.1", "localhost", "[::1]"):
        assert request(base, "/api/studies", host=f"{name}:{port}") == 200
    assert request(base, "/api/studies", host=f"attacker.example:{port}") == 403
    assert request(base, "/api/studies", host="127.0.0.1:1") == 403  # another port: another server's pages
    assert request(base, f"/api/studies/{study}", "DELETE", origin=f"http://attacker.example:{port}") == 403
    assert request(base, f"/api/studies/{study}", "DELETE", host=f"attacker.example:{port}",
                   origin=f"http://attacker.example:{port}") == 403
    assert len(get_json(f"{base}/api/studies")["study_summaries"]) == 1  # nothing was deleted
    assert request(base, f"/api/studies/{study}", "DELETE", origin=f"http://127.0.0.1:{port}") in (200, 204)
    assert get_json(f"{base}/api/studies")["study_summaries"] == []  # its own page may delete


def test_allowed_hosts():
    assert dashboard.allowed_hosts("127.0.0.1", 8080) == {"127.0.0.1:8080", "localhost:8080", "[::1]:8080"}
    assert "lab-box:9000" in dashboard.allowed_hosts("127.0.0.1", 9000, ("Lab-Box",))
    assert "10.0.0.5:80" in dashboard.allowed_hosts("10.0.0.5", 80) and "10.0.0.5" in dashboard.allowed_hosts("10.0.0.5", 80)


def test_dashboard_on_a_network_address_warns_in_one_line(tmp_path):
    assert exposure_warning("127.0.0.1", 8080) is None and exposure_warning("localhost", 8080) is None
    assert exposure_warning("::1", 8080) is None
    warning = exposure_warning("0.0.0.0", 8080)
    assert warning.startswith("warning: --host 0.0.0.0 publishes the study storage to the network without "
                              "authentication") and "\n" not in warning
    storage = str(tmp_path / "s.journal")
    add_complete_study(storage, "digits-mlp-fa")
    # a child inherits an ignored SIGINT (as background jobs do), and pytest-xdist's workers can have it ignored:
    # the dashboard, like any program, then keeps ignoring Ctrl-C, so the child starts with the default
    process = subprocess.Popen([sys.executable, "-m", "hpo.dashboard", "--storage", storage, "--host", "0.0.0.0",
                                "--port", "0"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        banner = process.stdout.readline()
        assert banner.startswith("optuna-dashboard of ")
        assert process.stdout.readline() == "press Ctrl-C to stop\n"  # serving (or about to): Ctrl-C stops it
    finally:
        process.send_signal(signal.SIGINT)
        try:
            _, err = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()  # a dashboard that ignores Ctrl-C fails the test and is not left serving
            raise
    assert err.splitlines()[0].startswith("warning: --host 0.0.0.0 publishes the study storage")
