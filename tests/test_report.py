"""`landscope report`: one self-contained page of a real run directory, escaped, offline, and
read in a real browser (headless Chromium from the system, driven by Playwright)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from landscope.cli import app
from landscope.monitor import Monitor
from landscope.report import write_report

HOSTILE = '<script>alert("landscope")</script>'
"""The user's model class is called this: the page must show it as text and run nothing."""
FACTORY = f'''
import torch

def model():
    torch.manual_seed(0)
    kind = type({HOSTILE!r}, (torch.nn.Sequential,), {{}})
    return kind(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))

def data():
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(96, 4, generator=generator)
    return X, (X[:, 0] > 0).long() + (X[:, 1] > 0).long()
'''
KINDS = ("probe", "surface", "race", "escape", "doctor", "study")
runner = CliRunner()


def _run(*args: str) -> None:
    """``landscope ARGS``, recorded in the result files as the user would have typed it."""
    argv = sys.argv
    sys.argv = ["landscope", *args]
    try:
        result = runner.invoke(app, list(args))
    finally:
        sys.argv = argv
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory holding one result of every kind, all about the hostile-named model."""
    threads, where = torch.get_num_threads(), Path.cwd()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("report")
    os.chdir(root)  # paths as a user gives them, relative
    try:
        Path("net.py").write_text(FACTORY)
        user = ["--model", "net.py:model", "--data", "net.py:data"]
        _run("probe", *user, "--iterative", "--k", "3", "--out", "run")
        _run("surface", *user, "--resolution", "5", "--out", "run")
        _run("race", "--functions", "saddle", "--optimizers", "gd,adam", "--starts", "2",
             "--steps", "20", "--tune", "1", "--no-strategies", "--out", "run")
        _run("escape", *user, "--candidates", "baseline,adam", "--evaluations", "10",
             "--seeds", "1", "--out", "run")
        _run("study", "random-hessian", "--out", "run")
        _monitored_run(Path("net.py"), Path("run/training"))
        _run("doctor", "run/training")
        _run("report", "run")
        return root / "run"
    finally:
        os.chdir(where)
        torch.set_num_threads(threads)


def _monitored_run(factory: Path, run_dir: Path) -> None:
    namespace: dict = {}
    exec(compile(factory.read_text(), str(factory), "exec"), namespace)
    model, (X, y) = namespace["model"](), namespace["data"]()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with Monitor(model, optimizer, run_dir, loss_fn=torch.nn.functional.cross_entropy,
                 held=(X, y), every=5, window=20) as monitor:
        for _ in range(60):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(X), y)
            loss.backward()
            optimizer.step()
            monitor.step(loss)


@pytest.fixture(scope="module")
def page(run_dir) -> str:
    return (run_dir / "report.html").read_text(encoding="utf-8")


@pytest.mark.slow
def test_every_result_has_its_section_and_a_link(page):
    for kind in KINDS:
        anchors = re.findall(rf'<section id="({kind}-\d+)" data-kind="{kind}">', page)
        assert len(anchors) == 1, kind
        assert f'href="#{anchors[0]}"' in page
    assert page.count('class="plotly-graph-div"') == 3  # spectrum, surface, record


@pytest.mark.slow
def test_the_numbers_are_the_result_files(run_dir, page):
    probe = json.loads((run_dir / "result.json").read_text())["probe"]
    assert f"<td>{probe['loss']:.6g}</td>" in page
    assert f"<td>{probe['spectrum']['largest']['values'][0]:.4g}</td>" in page
    residual = probe["spectrum"]["largest"]["residuals"][0]
    assert f"residual {residual:.2g}" in page
    study = json.loads((run_dir / "study-random-hessian.json").read_text())
    assert page.count('class="pass"') == sum(c["passed"] for c in study["checks"])
    doctor = json.loads((run_dir / "training" / "doctor.json").read_text())["diagnosis"]
    assert page.count("data-finding=") == len(doctor["findings"])
    glance = page[page.index('<section id="glance">'):page.index("</section>")]
    assert glance.count("<li>") == len(KINDS)
    assert f"not a critical point · loss {probe['loss']:.4g}" in glance
    first = doctor["findings"][0] if doctor["findings"] else None
    assert (f"{first['severity']}: {html.escape(first['title'])}" if first
            else "healthy: no finding") in glance
    assert f"{sum(c['passed'] for c in study['checks'])} of {len(study['checks'])} checks" in glance
    assert "saddle: none of 2 optimisers succeeded" in glance  # 20 steps: too few to escape


@pytest.mark.slow
def test_user_strings_are_text_not_markup(page):
    assert HOSTILE not in page  # nowhere raw: not in the tables, not in plotly's JSON
    assert html.escape(HOSTILE) in page
    assert page.count("<script") == page.count("</script>")
    scripts = page.count("<script")
    assert scripts == 1 + 3  # plotly.js, then one per figure


@pytest.mark.slow
def test_the_page_needs_no_network(page):
    assert not re.search(r"<(script|img|link|iframe)[^>]+(src|href)=\"(https?:)?//", page)
    assert page.count('<img src="data:image/png;base64,') == 3  # race, remedy curves, study


def test_report_option_writes_the_page_after_the_work(tmp_path, one_thread):
    factory = tmp_path / "net.py"
    factory.write_text(FACTORY)
    result = runner.invoke(app, ["probe", "--model", f"{factory}:model", "--data",
                                 f"{factory}:data", "--out", str(tmp_path / "run"), "--report"])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert 'data-kind="probe"' in page and "report: " in result.output


def test_a_partial_probe_shows_its_best_verdict_and_what_stayed_uncertain(tmp_path,
                                                                          one_thread):
    factory = tmp_path / "net.py"
    factory.write_text(FACTORY)
    result = runner.invoke(app, ["probe", "--model", f"{factory}:model", "--data",
                                 f"{factory}:data", "--time-budget", "0.01", "--report",
                                 "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    anytime = json.loads((tmp_path / "run" / "result.json").read_text())["anytime"]
    assert anytime["uncertain"]  # a budget this small leaves something open
    page = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert 'class="verdict partial">partial: ' + html.escape(anytime["statement"]) in page
    for item in anytime["uncertain"]:
        assert f"<li>{html.escape(item)}</li>" in page


def test_a_directory_without_results_is_refused_with_the_fix(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "is not a directory" in result.output
    (tmp_path / "notes.json").write_text('{"mine": true}')  # a user's own JSON is not ours
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "holds no landscope result" in result.output
    assert not (tmp_path / "report.html").exists()


@pytest.mark.slow
def test_a_damaged_file_is_named_and_the_rest_is_shown(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "surface.npz").write_bytes(b"PK\x03\x04 not a zip")
    (copy / "race.json").write_text(json.dumps({"schema": "landscope.result",
                                                "schema_version": 99, "kind": "race"}))
    page = write_report(copy).read_text(encoding="utf-8")
    unreadable = page[page.index('id="unreadable"'):]
    assert "surface.json: could not be shown" in unreadable
    assert "race.json" in unreadable and "schema version 99" in unreadable
    for kind in ("probe", "escape", "doctor", "study"):
        assert f'data-kind="{kind}"' in page


# ---------------------------------------------------------------------- in a real browser
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]
"""Headless Chromium as root on a machine without a network: no sandbox, no background calls."""


def _chromium() -> str | None:
    """The system Chromium and Playwright, or None (CI requires them: LANDSCOPE_BROWSER=1)."""
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        executable = None
    if executable is None and os.environ.get("LANDSCOPE_BROWSER") == "1":
        pytest.fail("LANDSCOPE_BROWSER=1 but the system Chromium or Playwright is missing "
                    "(apt-get install chromium; pip install -r requirements-dev.txt)")
    return executable


@pytest.mark.slow
def test_the_page_in_a_real_browser(run_dir):
    executable = _chromium()
    if executable is None:
        pytest.skip("no system Chromium (apt-get install chromium) or no Playwright")
    from playwright.sync_api import sync_playwright

    problems, requests, dialogs = [], [], []
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        try:
            context = browser.new_context(offline=True, viewport={"width": 1280, "height": 1500})
            page = context.new_page()
            page.on("console", lambda m: m.type == "error" and problems.append(m.text))
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("request", lambda r: r.url.startswith("file:") or requests.append(r.url))
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto((run_dir / "report.html").as_uri(), wait_until="load")
            page.wait_for_selector(".js-plotly-plot .main-svg")
            for kind in KINDS:
                assert page.locator(f"section[data-kind={kind}]").is_visible(), kind
            drawn = page.eval_on_selector_all(
                ".plotly-graph-div", "divs => divs.map(d => d.querySelectorAll('.main-svg')"
                ".length > 0)")
            assert drawn == [True, True, True]
            assert page.get_by_text(HOSTILE, exact=True).count() >= 2  # probe and surface
            page.wait_for_timeout(300)
            screenshot = page.screenshot(path=str(run_dir / "report.png"))
        finally:
            browser.close()
    assert not problems, problems
    assert not requests, requests
    assert not dialogs, dialogs
    keep = os.environ.get("LANDSCOPE_SCREENSHOTS")  # docs/images/report.png is made this way
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        Path(keep, "report.png").write_bytes(screenshot)


TIED = '''
from helpers import TiedDictLM, dict_batches, token_loss

def model():
    return TiedDictLM()

def data():
    return dict_batches()

def loss(logits, labels):
    return token_loss(logits, labels)
'''


@pytest.mark.slow
def test_the_report_of_a_tied_transformer_on_dict_batches(tmp_path, one_thread):
    """Attention, a head tied to the embedding, a module used twice, {input_ids, labels}
    batches: probed and reported through the command line, the page shows its tie and its
    numbers are those of result.json."""
    factory = tmp_path / "tied.py"
    factory.write_text(TIED)
    result = runner.invoke(app, ["probe", "--model", f"{factory}:model", "--data",
                                 f"{factory}:data", "--loss", f"{factory}:loss", "--dtype",
                                 "float64", "--report", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    probe = json.loads((tmp_path / "run" / "result.json").read_text())["probe"]
    assert probe["objective"]["tied_parameters"]  # the head and the embedding: one block
    page = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert "TiedDictLM" in page and 'data-kind="probe"' in page
    assert f"<td>{probe['spectrum']['largest']['values'][0]:.4g}</td>" in page
    assert f"<td>{probe['loss']:.6g}</td>" in page
