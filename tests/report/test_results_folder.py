"""Every storage reports into its own results folder, whose pages need no network and list only its studies."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from test_summary import add_study, index_targets

from hpo.report import charts
from hpo.report import summary as report
from hpo.report.folders import PLOTLY_JS, results_dir_for, storage_label

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "storage,label",
    [
        ("sqlite:///studies/studies.db", "studies"),  # the default storage: results/studies
        ("studies/bundled.journal", "bundled"),  # the committed run: results/bundled
        ("sqlite:////abs/path/paper.db", "paper"),
        ("postgresql://hpo:secret@db.lab:5432/lab_hpo?sslmode=require", "lab_hpo"),  # a server: its database
        ("postgresql+psycopg://db.lab/", "db.lab"),  # no database named: the host
        ("runs/odd name!.journal", "odd-name"),  # one safe path component
        ("studies/.hidden.journal", "hidden"),  # never a hidden folder
    ],
)
def test_storage_label(storage, label):
    assert storage_label(storage) == label
    assert results_dir_for(storage, None) == Path("results") / label
    assert results_dir_for(storage, "elsewhere") == Path("elsewhere")  # --results-dir overrides


def run_cli(*args, cwd: Path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "hpo.run", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_quick_start_writes_its_own_folder_and_never_another_storages(tmp_path):
    """The README's quick start (tiny): results/studies/ from the default storage; the committed run's folder and
    the old top-level results/ files are not touched; a second storage of the same name is refused up front."""
    committed = tmp_path / "results" / "bundled"
    committed.mkdir(parents=True)
    (committed / ".storage").write_text("studies/bundled.journal\n")
    (committed / "summary.md").write_text("the committed run\n")
    (tmp_path / "results" / "summary.md").write_text("an older top-level report\n")

    quick = run_cli("--algo", "fa", "--trials", "2", "--epochs", "1", "--folds", "2", "--dataset", "digits", cwd=tmp_path)
    assert quick.returncode == 0, quick.stderr
    results = tmp_path / "results" / "studies"
    assert f"to {Path('results') / 'studies'}/" in quick.stdout
    assert (results / ".storage").read_text() == "studies/studies.db\n"
    for name in ("summary.csv", "summary.md", "comparison.png", "comparison.html", "index.html", PLOTLY_JS,
                 "studies/digits-mlp-fa/history.html"):
        assert (results / name).is_file(), name
    assert (committed / "summary.md").read_text() == "the committed run\n"
    assert (tmp_path / "results" / "summary.md").read_text() == "an older top-level report\n"

    # another storage whose file is also called studies.*: its derived folder would be results/studies
    other = run_cli("--algo", "bp", "--trials", "1", "--dataset", "digits", "--storage", "sqlite:///other/studies.db",
                    cwd=tmp_path)
    assert other.returncode == 2
    assert other.stderr == (
        "error: results folder 'results/studies' holds the report of storage 'studies/studies.db', not of "
        "'sqlite:///other/studies.db'; choose a folder for this storage with --results-dir\n"
    )
    assert not (tmp_path / "other").exists()  # refused before the storage was created


def test_index_lists_exactly_the_studies_of_its_storage(tmp_path):
    first, second = str(tmp_path / "first.journal"), str(tmp_path / "second.journal")
    add_study(first, "digits-mlp-fa", "digits", "fa", [0.5, 0.8])
    add_study(first, "digits-mlp-kp", "digits", "kp", [0.6, 0.7])
    add_study(second, "digits-mlp-bp", "digits", "bp", [0.9, 0.6])
    shared = tmp_path / "shared"
    report.write_reports(first, shared, out=lambda _: None)
    report.write_reports(second, shared, out=lambda _: None)  # an explicit folder: used as given
    targets = index_targets(shared)
    assert "studies/digits-mlp-bp/history.png" in targets
    assert not any("digits-mlp-fa" in t or "digits-mlp-kp" in t for t in targets)  # no stale sections
    page = (shared / "index.html").read_text()
    assert "digits-mlp-fa" not in page and "the 1 study of this storage" in page


class Resources(HTMLParser):
    """Every URL a page loads or links: scripts, styles, images, frames, links."""

    def __init__(self):
        super().__init__()
        self.scripts: list[str | None] = []
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self.scripts.append(attrs.get("src"))
        for key in ("src", "href", "data"):
            if attrs.get(key):
                self.urls.append(attrs[key])


def is_remote(url: str) -> bool:
    return url.startswith(("http:", "https:", "//", "ftp:", "ws:", "wss:"))


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("offline")
    storage = str(directory / "studies.journal")
    add_study(storage, "digits-mlp-fa", "digits", "fa", [0.5, 0.8, 0.7])
    add_study(storage, "digits-mlp-bp", "digits", "bp", [0.9, 0.6, 0.95])
    report.write_reports(storage, directory / "results", out=lambda _: None)
    return directory / "results"


def test_pages_load_nothing_from_the_network(results):
    pages = sorted(results.rglob("*.html"))
    assert {p.relative_to(results).as_posix() for p in pages} >= {
        "index.html", "comparison.html", "studies/digits-mlp-fa/history.html", "studies/digits-mlp-fa/importance.html"}
    assert [p.name for p in results.rglob("plotly*.js")] == [PLOTLY_JS]  # plotly.js once per results folder
    for page in pages:
        text = page.read_text()
        parser = Resources()
        parser.feed(text)
        remote = [u for u in parser.urls if is_remote(u)]
        assert not remote, f"{page} loads {remote}"
        assert "cdn.plot.ly" not in text and "cdn.jsdelivr" not in text
        for src in filter(None, parser.scripts):  # every script it loads is a file of the folder
            assert (page.parent / src).resolve() == (results / PLOTLY_JS).resolve(), (page, src)
        if page.name != "index.html":
            assert parser.scripts.count(os.path.relpath(results / PLOTLY_JS, page.parent)) == 1
            assert len(text) < 200_000  # the 4.8 MB library is not inlined into every chart


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def screenshot(page: Path, png: Path) -> None:
    """Render ``page`` in headless Chromium with every network request refused, to a 1200x800 PNG."""
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [find_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
             "--allow-file-access-from-files", "--hide-scrollbars", "--window-size=1200,800",
             "--virtual-time-budget=15000", f"--screenshot={png}", page.resolve().as_uri()],
            check=True, capture_output=True, timeout=180,
        )


def colour_share(pixels: np.ndarray, hex_colour: str) -> float:
    """Share of the image's pixels within a small distance of ``hex_colour``."""
    target = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)], dtype=float)
    distance = np.abs(pixels[..., :3].astype(float) - target).max(axis=-1)
    return float((distance <= 12).mean())


@pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed (.ci/run installs Debian's chromium)")
def test_comparison_chart_draws_offline_in_a_real_browser(results, tmp_path):
    import matplotlib.image

    png = tmp_path / "comparison.png"
    screenshot(results / "comparison.html", png)
    pixels = (matplotlib.image.imread(png) * 255).round().astype(np.uint8)
    assert pixels.shape[:2] == (800, 1200)
    marker = 30 / (800 * 1200)  # a size-8 marker covers about 50 pixels
    for stat, _, _, colour in charts.BARS:  # every statistic's points are drawn, in its colour
        assert colour_share(pixels, colour) > marker, f"no {stat} points ({colour}) on the screenshot"

    # the same page without its plotly.js draws nothing: the check above sees the chart, not the page's background
    blank = tmp_path / "blank"
    shutil.copytree(results, blank)
    (blank / PLOTLY_JS).unlink()
    screenshot(blank / "comparison.html", tmp_path / "blank.png")
    blank_pixels = (matplotlib.image.imread(tmp_path / "blank.png") * 255).round().astype(np.uint8)
    assert all(colour_share(blank_pixels, colour) == 0 for *_, colour in charts.BARS)
