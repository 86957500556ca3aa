"""The Prefect UI, rendered by a real browser: deployments, a training run's artifacts, the links.

A real ``prefect server start`` on 127.0.0.1 (its own PREFECT_HOME), a tiny notebook promoted
with a daily cron schedule and the shipped training deployment registered from a temporary copy
of the project (``nbprod deploy``, ``flows.deploy.deploy``), a process worker, runs triggered
with ``run_deployment`` (so they belong to their deployments, as scheduled runs would): the
tiny notebook once, beside the training pipeline's first run (accepted, the champion); then the
training pipeline again, the demo's degraded configuration, gated against it and rejected, while
this process monitors the champion (its retrain-on-drift automation paused: no third training
run).
``nbprod ui`` serves the run store on a free port (``NBPROD_UI_PORT``, which the worker
inherits, so the artifacts link to it).

Then headless Chromium (Debian's ``chromium`` package, driven by Playwright through
``executable_path``; Playwright's own browser download is not used) opens the server's default
UI like a person would: the deployment and its schedule; the training run's Artifacts tab; each
report and notebook link, clicked, opening in ``nbprod ui`` with its title; the second run's
summary with its gate decision, candidate against champion with the change, and the curves of
both (the picture served with 200 and loaded); the monitoring summary; ``..`` and absolute
paths against ``nbprod ui`` (404); and the Evidently dashboard's legends (``evidently ui`` on the
synced workspace). The module makes its runs once and every test reuses them.

The server's helpers (start, stop, health, the tiny notebook, worker and run polling) are
test_deployment's.

When it runs: always when ``NBPROD_UI_TESTS=1`` (CI, after ``.ci/setup-chromium``), and then a
missing browser or Playwright FAILS it. Without the variable it runs when a Chromium is found
(``/usr/bin/chromium``, or ``NBPROD_CHROMIUM``), else it is reported as skipped with the reason.

The browser talks to the local servers only: every request to another address is aborted before
it leaves (the V2 UI asks an analytics host for its configuration even with
``PREFECT_SERVER_ANALYTICS_ENABLED=false``; notebooks name a CDN), and Chromium's resolver
answers no other host name.

Screenshots go to the test's temporary directory; with ``NBPROD_UI_SCREENSHOTS_DIR=docs`` they are
also written there as ``prefect-ui-*.png`` and ``evidently-dashboard.png`` (the README's).
"""

from __future__ import annotations

import http.client
import importlib.util
import os
import re
import shutil
import signal
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest
from test_deployment import _artifacts, _log_tail, _trigger, _until_final, running_stack

from flows.artifacts import METRICS_KEY, SUMMARY_KEY, artifact_key
from flows.demo import DEGRADED
from flows.links import PUBLIC_URL_ENV, UI_PORT_ENV
from flows.localstack import start_process, stop_process
from flows.monitoring import SUMMARY_KEY as MONITORING_SUMMARY_KEY
from flows.serving import free_port
from flows.store import RunStore

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page, Route

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parent.parent
UI_TESTS_ENV = "NBPROD_UI_TESTS"
SCREENSHOTS_ENV = "NBPROD_UI_SCREENSHOTS_DIR"
CHROMIUM = Path(os.environ.get("NBPROD_CHROMIUM", "/usr/bin/chromium"))
# Without the background-networking flags Chromium calls Google services; without the resolver
# rule it would look up any other host a page names. No --disable-gpu: the run graph is WebGL
# (software-rendered here) and stays blank without a GPU process.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]
VIEWPORT = {"width": 1400, "height": 1100}
UI_TIMEOUT_MS = 45_000  # the V2 bundle is large and the machine may be busy: generous, not a sleep
SERVER_TIMEOUT_S = 120.0
RUN_LINK_CLICKS = 3
NAME = "tiny-nb"
CRON = "0 3 * * *"
SCHEDULE_TEXT = re.compile(r"At 03:00 AM")  # how the UI words the cron (cronstrue)
PIPELINE = "training"
TRAINING = "training_pipeline/training"
SPEC = "deployments/training.yaml"
LOANS = str(ROOT / "data" / "loans.csv")
# What each link opens to, as a person sees it: the report's or the notebook's own title.
LINK_TITLES = {
    "data_drift report": "Dataset Drift",
    "model_performance report": "Classification Model Performance",
    "data_summary report": "Dataset Summary",
    "prepare notebook (html)": "Prepare loan applications",
    "train notebook (html)": "Train the loan-default model",
    "prepare notebook (ipynb)": '"cells"',
    "train notebook (ipynb)": '"cells"',
}


def _require_browser() -> Path:
    """Chromium and Playwright, or a skip (variable unset) or a failure (variable set)."""
    problems = []
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        problems.append(
            f"no Chromium at {CHROMIUM}: run `sudo .ci/setup-chromium` (installs Debian's "
            "chromium package) or set NBPROD_CHROMIUM to a Chromium binary"
        )
    if importlib.util.find_spec("playwright") is None:
        problems.append("the playwright package is not installed: `make venv` (a dev dependency)")
    if problems:
        if os.environ.get(UI_TESTS_ENV) == "1":
            pytest.fail(f"{UI_TESTS_ENV}=1 but " + "; ".join(problems), pytrace=False)
        pytest.skip("; ".join(problems) + f" (with {UI_TESTS_ENV}=1 this fails instead)")
    return CHROMIUM


@pytest.fixture(scope="module")
def chromium() -> Path:
    return _require_browser()


def _pause_retraining() -> None:
    """The monitoring run below finds drift: no retraining run, this module needs none."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for automation in client.read_automations_by_name("nbprod-training-retrain-on-drift"):
            client.pause_automation(automation.id)


def _completed(*flow_runs: Any, log: Path) -> None:
    """Every one of the flow runs completed, or the failure with the worker log's tail."""
    for flow_run in flow_runs:
        assert flow_run.state.type.value == "COMPLETED", (
            f"{flow_run.state.name}: {flow_run.state.message}\n{_log_tail(log, 80)}"
        )


@pytest.fixture(scope="module")
def ui_stack(chromium: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Server, the tiny deployment run once, the training one twice, a monitoring run, nbprod ui."""
    from flows.monitoring import monitoring_pipeline
    from flows.ui import ensure_running

    base = tmp_path_factory.mktemp("ui")
    (base / "screenshots").mkdir()
    with pytest.MonkeyPatch.context() as env:
        # The worker (started by running_stack) inherits the port: the links point at this ui.
        env.setenv(UI_PORT_ENV, str(free_port()))
        env.delenv(PUBLIC_URL_ENV, raising=False)
        with running_stack(
            base,
            name=NAME,
            cron=CRON,
            deployments=("training",),
            project_dirs=("notebooks", "data", "bentos"),
        ) as running:
            store = RunStore(str(running["nbprod_home"] / "runs"))
            worker_log = running["worker_log"]
            _pause_retraining()
            # The tiny run and the champion's are independent: the worker runs them side by side.
            tiny = _trigger(f"notebook_pipeline/{NAME}", {"parameters": {"n": 5}})
            training = _trigger(TRAINING, {"triggered_by": "ui-test"})
            ui_url, ui_pid = ensure_running(store, base / "nbprod-ui.log")
            try:
                tiny, training = (_until_final(run, worker_log) for run in (tiny, training))
                _completed(tiny, training, log=worker_log)
                # The second run has a champion to be gated against: its summary shows both.
                degraded = {"parameters": {"train": DEGRADED}, "triggered_by": "ui-test"}
                challenger = _trigger(TRAINING, degraded)
                # Meanwhile, in this process: the champion monitored (the challenger is gated
                # against it and rejected, so the champion stays the one monitored).
                monitored = monitoring_pipeline(
                    SPEC,
                    "2024-10-01",
                    "2025-01-01",
                    source=LOANS,
                    run_store_url=store.url,
                    triggered_by="ui-test",
                )
                assert monitored["drift"]["verdict"] == "drift"
                challenger = _until_final(challenger, worker_log)
                _completed(challenger, log=worker_log)
                record, rejected = (
                    r for r in store.list_runs(PIPELINE) if r["version"] != monitored["version"]
                )
                assert record["status"] == "accepted", record.get("reasons")
                assert rejected["status"] == "rejected", rejected.get("reasons")
                assert rejected["champion_before"]["version"] == record["version"]
                yield {
                    # The UI is served by the same server; PREFECT_UI_API_URL points its JS here.
                    "ui": running["url"].removesuffix("/api"),
                    "nbprod_ui": ui_url,
                    "store": store,
                    "tiny": tiny,
                    "training": training,
                    "record": record,
                    "challenger": challenger,
                    "rejected": rejected,
                    "monitoring": monitored,
                    "base": base,
                    "shots": base / "screenshots",
                }
            finally:
                if ui_pid:
                    os.kill(ui_pid, signal.SIGTERM)
                    os.waitpid(ui_pid, 0)


@pytest.fixture(scope="module")
def browser(chromium: Path, ui_stack: dict[str, Any]) -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS, timeout=UI_TIMEOUT_MS
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def origins(ui_stack: dict[str, Any]) -> list[str]:
    """The servers the browser may reach (more are added by a test that starts one)."""
    return [ui_stack["ui"], ui_stack["nbprod_ui"]]


@pytest.fixture
def page(browser: Browser, ui_stack: dict[str, Any], origins: list[str]) -> Iterator[Page]:
    """A fresh browser profile (no saved UI preference) that can reach the local servers only."""

    def loopback_only(route: Route) -> None:
        if any(route.request.url.startswith(origin + "/") for origin in origins):
            route.continue_()
        else:
            route.abort("blockedbyclient")

    context = browser.new_context(
        viewport=VIEWPORT, base_url=ui_stack["ui"], service_workers="block"
    )
    context.set_default_timeout(UI_TIMEOUT_MS)
    context.route("**/*", loopback_only)
    try:
        yield context.new_page()
    finally:
        context.close()


def _visible(locator: Locator) -> None:
    from playwright.sync_api import expect

    expect(locator).to_be_visible(timeout=UI_TIMEOUT_MS)


def _screenshot(page: Page, stack: dict[str, Any], name: str, *, full_page: bool = False) -> Path:
    """Into the test's directory, and into $NBPROD_UI_SCREENSHOTS_DIR when set (docs/).

    Taken once the page is still: two shots in a row alike (the run graph is a canvas that
    zooms into place after the page has loaded; no DOM state says when it is done).
    """
    page.wait_for_load_state("networkidle")
    deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
    shot, previous = page.screenshot(full_page=full_page), b""
    while shot != previous:
        if time.monotonic() > deadline:
            pytest.fail(f"{name}: the page kept changing for {UI_TIMEOUT_MS / 1000:.0f} s")
        shot, previous = page.screenshot(full_page=full_page), shot
    path = stack["shots"] / f"{name}.png"
    path.write_bytes(shot)
    if os.environ.get(SCREENSHOTS_ENV):
        target = Path(os.environ[SCREENSHOTS_ENV])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / path.name)
    return path


def _open_run(page: Page, flow_run_name: str) -> None:
    """Runs → the run → its Artifacts tab, as a person clicks through.

    The runs list refreshes itself: a click that lands while it re-renders opens nothing, and a
    person would click again; so does this, until the run's page is open.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.goto("/")
    page.get_by_role("link", name="Runs", exact=True).first.click()
    for _ in range(RUN_LINK_CLICKS):
        page.get_by_role("link", name=flow_run_name, exact=True).first.click()
        try:
            page.wait_for_url(re.compile(r"/runs/flow-run/"), timeout=UI_TIMEOUT_MS / 3)
            break
        except PlaywrightTimeout:
            continue
    page.get_by_role("tab", name="Artifacts").click()


def _images_loaded(page: Page, minimum: int) -> list[str]:
    """The sources of the page's content images, once every one has loaded with pixels."""
    from playwright.sync_api import expect

    images = page.locator("main img[src^='http']")
    expect(images.nth(minimum - 1)).to_be_visible(timeout=UI_TIMEOUT_MS)
    page.wait_for_function(
        "() => [...document.querySelectorAll('main img[src^=\"http\"]')]"
        ".every(img => img.complete)",
        timeout=UI_TIMEOUT_MS,
    )
    widths = images.evaluate_all("imgs => imgs.map(img => [img.src, img.naturalWidth])")
    assert widths and all(width > 0 for _, width in widths), widths
    return [src for src, _ in widths]


def test_deployment_page_shows_the_schedule_and_the_run(
    page: Page, ui_stack: dict[str, Any]
) -> None:
    from playwright.sync_api import expect

    page.goto("/")  # the server's default UI, as a person opening the dashboard gets it
    page.get_by_role("link", name="Deployments", exact=True).first.click()
    deployment_link = page.get_by_role("link", name=NAME, exact=True)
    _visible(deployment_link)
    _visible(page.get_by_text(SCHEDULE_TEXT).first)  # the list's Schedules column

    deployment_link.click()
    expect(page).to_have_url(re.compile(str(ui_stack["tiny"].deployment_id)))
    _visible(page.get_by_text(SCHEDULE_TEXT).first)  # the deployment's Schedules card
    _visible(page.get_by_text("nbprod-process").first)  # its work pool
    # The run belongs to the deployment: it is listed on the deployment's page, completed.
    _visible(page.get_by_role("link", name=ui_stack["tiny"].name, exact=True))
    _visible(page.get_by_text("Completed", exact=True).first)
    # Loaded, not placeholders: the deployment's flow and its triggers (none: "Add").
    main = page.get_by_role("main")
    _visible(main.get_by_text(re.compile(r"^Flow\s*notebook_pipeline$")))
    _visible(main.get_by_role("complementary").get_by_role("link", name="Add", exact=True))
    _screenshot(page, ui_stack, "prefect-ui-deployment")


def test_run_page_lists_the_summary_reports_and_notebooks(
    page: Page, ui_stack: dict[str, Any]
) -> None:
    _open_run(page, ui_stack["training"].name)
    _visible(page.get_by_text(SUMMARY_KEY, exact=True))
    for key in (METRICS_KEY, "nbprod-data-drift-report", "nbprod-train-notebook-html"):
        _visible(page.get_by_text(key, exact=True))
    _visible(page.get_by_text(re.compile(r"^nbprod run v\d{8}-\d{9}-\w+: accepted")))
    _screenshot(page, ui_stack, "prefect-ui-artifacts", full_page=True)


HIGHER_IS_BETTER = {"roc_auc": True, "f1": True, "accuracy": True, "log_loss": False}


def _metric_rows(record: dict[str, Any]) -> list[re.Pattern[str]]:
    """Each holdout metric's row as a reader sees it: candidate, champion, the signed change and
    whether it is better or worse."""
    candidate, champion = record["metrics"]["candidate"], record["metrics"]["champion"]
    rows = []
    for metric, higher in HIGHER_IS_BETTER.items():
        new, old = candidate[metric], champion[metric]
        delta = new - old
        sense = "" if delta == 0 else (" (better)" if (delta > 0) == higher else " (worse)")
        cells = [metric, f"{new:.4f}", f"{old:.4f}", f"{delta:+.4f}{sense}"]
        rows.append(re.compile(r"^" + r"\s+".join(map(re.escape, cells)) + "$"))
    return rows


def test_summary_shows_why_the_challenger_lost_to_the_champion_with_pictures(
    page: Page, ui_stack: dict[str, Any]
) -> None:
    """The second run, gated against the first: every check, candidate vs champion with the
    change, and the curves of both (the picture served by nbprod ui, loaded by the browser)."""
    from playwright.sync_api import expect

    rejected, champion = ui_stack["rejected"], ui_stack["record"]
    picture = f"{ui_stack['nbprod_ui']}/versions/{rejected['version']}/figures/model.png"
    _open_run(page, ui_stack["challenger"].name)
    with page.expect_response(picture) as served:
        page.get_by_text(SUMMARY_KEY, exact=True).click()
        expect(page).to_have_url(re.compile(r"/artifacts/"))
    assert served.value.status == 200, served.value.status
    assert served.value.header_value("content-type") == "image/png"
    _visible(page.get_by_role("heading", name=re.compile(r"nbprod run .*REJECTED")))
    _visible(page.get_by_role("heading", name="Gate decision: rejected"))
    failed = [c for c in rejected["checks"] if not c["passed"]]
    assert any(c["kind"] == "champion" for c in failed), rejected["checks"]
    for check in rejected["checks"]:
        _visible(page.get_by_role("cell", name=check["message"], exact=True))
    expect(page.get_by_role("cell", name="FAIL", exact=True)).to_have_count(len(failed))
    _visible(page.get_by_role("heading", name="Metrics on the holdout"))
    for column in ("candidate", "champion", "change"):
        _visible(page.get_by_role("columnheader", name=column, exact=True))
    # The champion column is the champion's own holdout metrics, scored on the same rows.
    assert rejected["metrics"]["champion"] == pytest.approx(champion["metrics"]["candidate"])
    for row in _metric_rows(rejected):
        _visible(page.get_by_role("row", name=row))
    _visible(page.get_by_role("heading", name="Data validation: passed"))
    _visible(page.get_by_role("heading", name=re.compile("^Data drift: ")))
    _visible(page.get_by_role("cell", name="credit_score", exact=True))
    _visible(page.get_by_text(f"before: {champion['version']}"))
    (source,) = _images_loaded(page, 1)
    assert source == picture, source
    curves = "ROC and precision-recall curves: the candidate's beside the champion's"
    _visible(page.get_by_role("img", name=curves, exact=True))
    page.get_by_role("img").first.scroll_into_view_if_needed()
    _screenshot(page, ui_stack, "prefect-ui-run-summary", full_page=True)


def _link_artifacts(flow_run_id: Any) -> dict[str, str]:
    """link text -> URL of the run's link artifacts, as the server holds them."""
    found = {}
    for key, artifact in _artifacts(flow_run_id).items():
        if artifact.type == "markdown" and key not in (SUMMARY_KEY, MONITORING_SUMMARY_KEY):
            match = re.fullmatch(r"\[(.+)\]\((.+)\)", str(artifact.data).strip())
            if match:
                found[match[1]] = match[2]
    return found


def test_every_report_and_notebook_link_opens_with_its_title(
    page: Page, ui_stack: dict[str, Any]
) -> None:
    """Artifacts tab → the link's card → its link, clicked: nbprod ui answers 200 with the page.

    The Prefect UI renders a link artifact as markdown; the link opens in the same tab. The
    first time the run is found from the dashboard, as a person does; then its page is reopened.
    """
    from playwright.sync_api import expect

    links = _link_artifacts(ui_stack["training"].id)
    assert set(links) == set(LINK_TITLES), links
    run_page = ""
    for text, url in links.items():
        assert url.startswith(ui_stack["nbprod_ui"] + "/versions/"), url  # never file://
        if run_page:
            page.goto(run_page)
            page.get_by_role("tab", name="Artifacts").click()
        else:
            _open_run(page, ui_stack["training"].name)
            run_page = page.url
        page.get_by_text(artifact_key(text), exact=True).click()
        with page.expect_response(url) as answered:
            page.get_by_role("link", name=text, exact=True).click()
        assert answered.value.status == 200, (text, url)
        expect(page).to_have_url(url)
        _visible(page.get_by_text(LINK_TITLES[text]).first)
        if text == "data_drift report":
            _screenshot(page, ui_stack, "prefect-ui-report")


def test_monitoring_summary_shows_the_drift_table_and_the_drifted_columns(
    page: Page, ui_stack: dict[str, Any]
) -> None:
    from playwright.sync_api import expect
    from prefect.client.orchestration import get_client

    monitored = ui_stack["monitoring"]
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(monitored["flow_run_id"])
    _open_run(page, flow_run.name)
    page.get_by_text(MONITORING_SUMMARY_KEY, exact=True).click()
    expect(page).to_have_url(re.compile(r"/artifacts/"))
    _visible(page.get_by_role("heading", name=re.compile(r"nbprod monitoring .*drift")))
    _visible(page.get_by_role("heading", name="Columns, most drifted first"))
    first = monitored["drift"]["table"][0]
    _visible(page.get_by_role("cell", name=first["column"], exact=True).first)
    (source,) = _images_loaded(page, 1)
    assert source.endswith("/figures/drift.png"), source
    _visible(page.get_by_role("img", name=re.compile("^Most drifted columns: ")))
    _screenshot(page, ui_stack, "prefect-ui-monitoring-summary", full_page=True)


def _raw_get(origin: str, path: str) -> tuple[int, bytes]:
    """A request with the path exactly as written (a browser or httpx would normalise ``..``)."""
    parts = urlsplit(origin)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_nbprod_ui_serves_nothing_outside_the_store(ui_stack: dict[str, Any]) -> None:
    origin, version = ui_stack["nbprod_ui"], ui_stack["record"]["version"]
    assert _raw_get(origin, f"/versions/{version}/run.json")[0] == 200
    outside = ui_stack["base"] / "outside.txt"
    outside.write_text("not in the store")
    runs_root = Path(ui_stack["store"].root)
    climb = "/".join([".."] * len(runs_root.relative_to(ui_stack["base"]).parts))
    for path in (
        f"/versions/{version}/../../{climb}/outside.txt",
        f"/versions/%2e%2e/%2e%2e/{climb}/outside.txt",
        f"/{outside}",
        f"//{outside}",
        f"/versions/{version}/%2F{str(outside).lstrip('/')}",
        "/../../../../etc/passwd",
    ):
        status, body = _raw_get(origin, path)
        assert status == 404, (path, status)
        assert b"not in the store" not in body and b"root:" not in body


PRODUCTION = "production inputs vs the champion's training data"
TRAINING_DATA = "training window vs the reference data"
MODEL_SERIES = ("accuracy", "F1", "ROC AUC")
# The dashboard's panels in order: title -> the series its legend names (after "training: ").
DASHBOARD_LEGENDS = {
    f"Share of drifted columns: {PRODUCTION}": ["production inputs"],
    f"Share of drifted columns: {TRAINING_DATA}": ["training data"],
    f"Drifted columns: {PRODUCTION}": ["production inputs"],
    f"Drifted columns: {TRAINING_DATA}": ["training data"],
    "Model metrics over versions (holdout)": [f"candidate {m}" for m in MODEL_SERIES],
    "Champion metrics over versions (holdout, accepted runs)": [
        f"champion {m}" for m in MODEL_SERIES
    ],
}


def _start_evidently_ui(workspace: Path, log: Path) -> tuple[Any, str]:
    """``evidently ui`` on a free loopback port, answering (deadline, no fixed sleep)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        str(Path(sys.executable).with_name("evidently")),
        *("ui", "--workspace", str(workspace), "--host", "127.0.0.1", "--port", str(port)),
    ]
    server = start_process(command, {**os.environ, "DO_NOT_TRACK": "1"}, workspace.parent, log)
    deadline = time.monotonic() + SERVER_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/projects", timeout=2) as answer:
                if answer.status == 200:
                    return server, url
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            stop_process(server)
            pytest.fail(f"evidently ui did not start:\n{_log_tail(log)}")
        time.sleep(0.5)


def test_evidently_dashboard_names_its_series(
    page: Page, ui_stack: dict[str, Any], origins: list[str]
) -> None:
    """Every panel of the pipeline's project, each series named by its pipeline and by what it
    is: production inputs or training data, a candidate's metric or a champion's."""
    from playwright.sync_api import expect

    from flows.dashboard import sync_dashboard

    workspace = ui_stack["base"] / "evidently"
    # Each training run: its drift and model snapshots; the monitoring run: its drift.
    assert sync_dashboard(ui_stack["store"], workspace) == 5
    server, url = _start_evidently_ui(workspace, ui_stack["base"] / "evidently.log")
    origins.append(url)
    try:
        page.goto(url)
        page.get_by_text(PIPELINE, exact=True).first.click()
        _visible(page.get_by_role("heading", name=next(iter(DASHBOARD_LEGENDS)), exact=True))
        expect(page.get_by_role("heading")).to_have_text(list(DASHBOARD_LEGENDS))
        for title, legends in DASHBOARD_LEGENDS.items():
            heading = page.get_by_role("heading", name=title, exact=True)
            # The panel: the innermost block holding its title and its legend list.
            panel = page.locator("div").filter(has=heading).filter(has=page.get_by_role("list"))
            legend = panel.last.get_by_role("listitem")
            expect(legend).to_have_text([f"{PIPELINE}: {series}" for series in legends])
        _screenshot(page, ui_stack, "evidently-dashboard", full_page=True)
    finally:
        stop_process(server)
