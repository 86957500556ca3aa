"""The Prefect UI, rendered by a real browser: the scheduled deployment and a run's artifacts.

A real ``prefect server start`` on 127.0.0.1 (its own PREFECT_HOME), a tiny notebook promoted
with a daily cron schedule into a temporary copy of the project, ``nbprod deploy``
(``flows.promote.deploy``), a process worker, and one run triggered with ``run_deployment`` — so
the run belongs to the deployment, as a scheduled run would. Then headless Chromium (Debian's
``chromium`` package, driven by Playwright through ``executable_path``; Playwright's own browser
download is not used) opens the server's default UI like a person would: Deployments, the
deployment (name, schedule, the completed run), Runs, the run, its Artifacts tab (nbprod's keys)
and the run summary (rendered markdown).

The server's helpers (start, stop, health, the tiny notebook, worker and run polling) are
test_deployment's.

When it runs: always when ``NBPROD_UI_TESTS=1`` (CI, after ``.ci/setup-chromium``), and then a
missing browser or Playwright FAILS it. Without the variable it runs when a Chromium is found
(``/usr/bin/chromium``, or ``NBPROD_CHROMIUM``), else it is reported as skipped with the reason.

The browser talks to the server only: every request to another address is aborted before it
leaves (the V2 UI asks an analytics host for its configuration even with
``PREFECT_SERVER_ANALYTICS_ENABLED=false``), and Chromium's resolver answers no other host name.

Screenshots go to the test's temporary directory; with ``NBPROD_UI_SCREENSHOTS_DIR=docs`` they are
also written there as ``prefect-ui-{deployment,artifacts,run-summary}.png`` (the README's).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from test_deployment import _log_tail, _run_to_completion, running_stack

from flows.artifacts import METRICS_KEY, SUMMARY_KEY

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page, Route

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

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
NAME = "tiny-nb"
CRON = "0 3 * * *"
SCHEDULE_TEXT = re.compile(r"At 03:00 AM")  # how the UI words the cron (cronstrue)


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


@pytest.fixture(scope="module")
def ui_stack(chromium: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Server, a promoted notebook deployed with a cron schedule, a worker, one completed run."""
    from prefect.client.orchestration import get_client

    base = tmp_path_factory.mktemp("ui")
    (base / "screenshots").mkdir()
    with running_stack(base, name=NAME, cron=CRON) as running:
        worker_log = running["worker_log"]
        flow_run = _run_to_completion(
            f"notebook_pipeline/{NAME}", {"parameters": {"n": 5}}, worker_log
        )
        assert flow_run.state.type.value == "COMPLETED", (
            f"{flow_run.state.name}: {flow_run.state.message}\n{_log_tail(worker_log)}"
        )
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(f"notebook_pipeline/{NAME}")
        assert flow_run.deployment_id == deployment.id
        assert [s.schedule.cron for s in deployment.schedules] == [CRON]
        yield {
            # The UI is served by the same server; PREFECT_UI_API_URL points its JS at this port.
            "ui": running["url"].removesuffix("/api"),
            "deployment_id": str(deployment.id),
            "flow_run_name": flow_run.name,
            "shots": base / "screenshots",
        }


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
def page(browser: Browser, ui_stack: dict[str, Any]) -> Iterator[Page]:
    """A fresh browser profile (no saved UI preference) that can reach the server only."""
    origin = ui_stack["ui"]

    def loopback_only(route: Route) -> None:
        if route.request.url.startswith(origin + "/"):
            route.continue_()
        else:
            route.abort("blockedbyclient")

    context = browser.new_context(viewport=VIEWPORT, base_url=origin, service_workers="block")
    context.set_default_timeout(UI_TIMEOUT_MS)
    context.route("**/*", loopback_only)
    try:
        yield context.new_page()
    finally:
        context.close()


def _visible(locator: Locator) -> None:
    from playwright.sync_api import expect

    expect(locator).to_be_visible(timeout=UI_TIMEOUT_MS)


def _screenshot(page: Page, stack: dict[str, Any], name: str) -> Path:
    """Into the test's directory, and into $NBPROD_UI_SCREENSHOTS_DIR when set (docs/)."""
    page.wait_for_load_state("networkidle")
    path = stack["shots"] / f"prefect-ui-{name}.png"
    page.screenshot(path=path)
    if os.environ.get(SCREENSHOTS_ENV):
        target = Path(os.environ[SCREENSHOTS_ENV])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / path.name)
    return path


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
    expect(page).to_have_url(re.compile(ui_stack["deployment_id"]), timeout=UI_TIMEOUT_MS)
    _visible(page.get_by_text(SCHEDULE_TEXT).first)  # the deployment's Schedules card
    _visible(page.get_by_text("nbprod-process").first)  # its work pool
    # The run belongs to the deployment: it is listed on the deployment's page, completed.
    run_link = page.get_by_role("link", name=ui_stack["flow_run_name"], exact=True)
    _visible(run_link)
    _visible(page.get_by_text("Completed", exact=True).first)
    _screenshot(page, ui_stack, "deployment")


def test_run_page_shows_nbprod_artifacts(page: Page, ui_stack: dict[str, Any]) -> None:
    from playwright.sync_api import expect

    page.goto("/")
    page.get_by_role("link", name="Runs", exact=True).first.click()
    page.get_by_role("link", name=ui_stack["flow_run_name"], exact=True).first.click()
    _visible(page.get_by_text(NAME, exact=True).first)  # the run's deployment, in its header

    page.get_by_role("tab", name="Artifacts").click()
    for key in (SUMMARY_KEY, METRICS_KEY):
        _visible(page.get_by_text(key, exact=True))
    _visible(page.get_by_text(re.compile(r"^nbprod run v\d{8}-\d{9}-\w+: completed")))
    _screenshot(page, ui_stack, "artifacts")

    page.get_by_text(SUMMARY_KEY, exact=True).click()
    expect(page).to_have_url(re.compile(r"/artifacts/"), timeout=UI_TIMEOUT_MS)
    _visible(page.get_by_role("heading", name=re.compile(r"nbprod run .*COMPLETED")))
    _visible(page.get_by_role("heading", name="Metrics on the holdout"))
    _visible(page.get_by_role("link", name=ui_stack["flow_run_name"]))  # the artifact's run
    _screenshot(page, ui_stack, "run-summary")
