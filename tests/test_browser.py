"""The pages in real headless Chromium, against the real app under gunicorn, a real Celery worker and the
ECS simulator: the grid fills and follows the consoles, the connection banner comes and goes, and nothing
breaks the strict CSP."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from django.conf import global_settings
from django.contrib.auth.models import User
from django.urls import reverse
from django.utils import timezone
from playwright.sync_api import ConsoleMessage, Locator, Page, Request, Response, expect, sync_playwright

from screenshots import tasks
from screenshots.models import Capture, InstanceState
from tests.conftest import (
    MISSING,
    PHASED_OUT,
    ROOT,
    RUNNING,
    RUNNING_2,
    RUNNING_PNG,
    STOPPED,
    free_port,
    wait_for,
    worker_env,
)

pytestmark = pytest.mark.timeout(180)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
USERNAME = "operator"
PASSWORD = "wall-watcher-7Qx"
SCREENSHOT = Path("/tmp/browser-grid.png")
# After the first failed poll: the time of the last good one (the browser's zone, UTC here), and the
# doubled retry interval.
OFFLINE_TEXT = re.compile(r"Connection lost — showing data as of (\d\d:\d\d)\. Retrying in 10 s\.")

# Test instrumentation, injected by Playwright (outside the page's CSP): CSP violations are reported to
# Python, and the page keeps a log of poll outcomes and of the connection banner's hidden/shown changes
# with the browser's own clock, so timings do not depend on when Python gets to see the events.
WATCH_SCRIPT = """
window.__cw = {polls: [], banner: []};
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cwViolation({directive: e.effectiveDirective, blocked: e.blockedURI, source: e.sourceFile,
                        line: e.lineNumber, sample: e.sample});
});
document.addEventListener("htmx:afterRequest", (e) => {
  const path = e.detail.pathInfo ? e.detail.pathInfo.requestPath : "";
  window.__cw.polls.push({t: Date.now(), ok: !!e.detail.successful, path: path});
});
new MutationObserver((records) => {
  for (const r of records) {
    const wasHidden = r.oldValue !== null;
    if (r.target.id === "connection-banner" && wasHidden !== r.target.hidden) {
      window.__cw.banner.push({t: Date.now(), hidden: r.target.hidden, text: r.target.textContent});
    }
  }
}).observe(document, {subtree: true, attributes: true, attributeOldValue: true, attributeFilter: ["hidden"]});
"""

# An image is on screen once it is decoded: htmx swaps a changed tile only then (see console-wall.js).
IMAGE_SHOWN = """(selector) => {
  const img = document.querySelector(selector);
  return !!img && img.complete && img.naturalWidth > 0;
}"""


class WebServer:
    """The app under gunicorn in its own process group: stopped and started again on the same port."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(tempfile.mkstemp(prefix="cw-web-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = requests.Session()
        self.http.trust_env = False

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "dashboard.wsgi:application", "--bind", f"127.0.0.1:{self.port}",
                 "--workers", "1", "--threads", "4", "--graceful-timeout", "5"],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        proc = self.proc
        wait_for(lambda: self.answers() or proc.poll() is not None, timeout=30, message="gunicorn to answer")
        assert proc.poll() is None, self.output()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def answers(self) -> bool:
        try:
            return self.http.get(f"{self.url}/health/", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class PageProblems:
    """Everything a page complained about: console errors, uncaught errors, CSP violations, bad responses."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    csp_violations: list[dict[str, Any]] = field(default_factory=list)
    bad_requests: list[str] = field(default_factory=list)

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console_errors.append(f"{message.text} ({message.location.get('url', '')})")

    def on_csp_violation(self, violation: dict[str, Any]) -> None:
        self.csp_violations.append(violation)

    def on_request_failed(self, request: Request) -> None:
        self.bad_requests.append(f"{request.method} {request.url}: {request.failure}")

    def on_response(self, response: Response) -> None:
        if response.status >= 400:
            self.bad_requests.append(f"{response.request.method} {response.url}: HTTP {response.status}")

    def all(self) -> dict[str, list[Any]]:
        # fields(), not vars(): Playwright stores its handler wrappers on this object too.
        return {f.name: list(value) for f in fields(self) if (value := getattr(self, f.name))}


@dataclass
class BrowserTab:
    page: Page
    problems: PageProblems


@pytest.fixture
def web_server(transactional_db: None, redis_url: str, media_root: Path) -> Iterator[WebServer]:
    env = worker_env(redis_url, media_root)
    env["ALLOWED_HOSTS"] = "127.0.0.1,localhost"
    server = WebServer(env)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def user(transactional_db: None, settings: Any) -> User:
    # The server process checks the password with the project's own hashers, not the tests' fast one.
    settings.PASSWORD_HASHERS = global_settings.PASSWORD_HASHERS
    return User.objects.create_user(USERNAME, password=PASSWORD)


@pytest.fixture
def browser(web_server: WebServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[BrowserTab]:
    # Playwright's sync API keeps an asyncio loop running in this thread, so Django would refuse every ORM
    # call as "async unsafe"; nothing here is actually async. Allowed only while the browser runs, which
    # ends before the test database is flushed (this fixture depends on the server, which needs the DB).
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    problems = PageProblems()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = chromium.new_context(base_url=web_server.url, locale="en-GB", timezone_id="UTC",
                                       viewport={"width": 1280, "height": 900})
        context.expose_function("__cwViolation", problems.on_csp_violation)
        context.add_init_script(WATCH_SCRIPT)
        page = context.new_page()
        page.on("console", problems.on_console)
        page.on("pageerror", lambda error: problems.page_errors.append(str(error)))
        page.on("requestfailed", problems.on_request_failed)
        page.on("response", problems.on_response)
        page.set_default_timeout(15_000)
        try:
            yield BrowserTab(page, problems)
        finally:
            context.close()
            chromium.close()


def log_in(page: Page) -> None:
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login/\?next=/$"))
    page.fill("input[name=username]", USERNAME)
    page.fill("input[name=password]", PASSWORD)
    page.click("form.login button[type=submit]")
    expect(page).to_have_url(re.compile(r"/$"))
    expect(page.locator(".topbar .who")).to_have_text(USERNAME)


def tile(page: Page, instance: Any) -> Locator:
    return page.locator(f"#tile-{instance.pk}")


def wait_for_image(page: Page, selector: str, timeout: float = 20_000) -> None:
    page.wait_for_function(IMAGE_SHOWN, arg=selector, timeout=timeout)


def clock(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%H:%M")


@pytest.mark.worker
class BrowserGridTestCase:
    def test_the_grid_fills_with_simulator_images_and_follows_console_changes_and_stops(
        self, browser: BrowserTab, user: User, celery_worker: Any, instances: dict, simulator: Any
    ) -> None:
        page, problems = browser.page, browser.problems
        log_in(page)
        # Six tiles, nothing captured yet; the htmx script and console-wall.js loaded under the CSP.
        expect(page.locator("#grid .tile")).to_have_count(6)
        expect(page.locator("#grid .tile img")).to_have_count(0)
        assert page.evaluate("typeof window.htmx") == "object"

        # A beat tick captures the fleet; the page learns of it through its polls alone.
        tasks.enqueue_due_captures.delay()
        running = [instances[i] for i in (RUNNING, RUNNING_PNG, RUNNING_2)]
        for instance in running:
            wait_for_image(page, f"#tile-{instance.pk} img")
            expect(tile(page, instance)).to_have_class(re.compile(r"\btile-ok\b"))
            expect(tile(page, instance).locator(".badge")).to_have_count(0)
            capture = Capture.objects.get(instance=instance)
            assert tile(page, instance).locator("img").get_attribute("src") == reverse(
                "capture-thumb", args=[capture.pk, capture.sha256])
        for instance_id, kind, label in [(STOPPED, "not_running", "Stopped"),
                                         (PHASED_OUT, "not_supported", "Not supported"),
                                         (MISSING, "not_found", "Not found")]:
            expect(tile(page, instances[instance_id])).to_have_class(re.compile(rf"\btile-{kind}\b"))
            expect(tile(page, instances[instance_id]).locator(f".badge-{kind}")).to_have_text(label)
            expect(tile(page, instances[instance_id]).locator(".no-shot")).to_have_text("No capture yet")
        first_src = tile(page, instances[RUNNING]).locator("img").get_attribute("src")
        first_capture_2 = tile(page, instances[RUNNING_2]).locator("img").get_attribute("src")

        # web-01's console shows something new; web-02 is stopped. The operator's requests wait out the
        # 10 s rule by themselves (the fleet capture just called both).
        simulator.control.patch(RUNNING, bump_frame=True)
        simulator.control.patch(RUNNING_2, status="Stopped")
        tasks.capture_instance.delay(instances[RUNNING].pk, force=True)
        tasks.capture_instance.delay(instances[RUNNING_2].pk, force=True)

        stopped_tile = tile(page, instances[RUNNING_2])
        expect(stopped_tile).to_have_class(re.compile(r"\btile-not_running\b"), timeout=30_000)
        expect(stopped_tile).to_have_class(re.compile(r"\bis-dimmed\b"))
        expect(stopped_tile.locator(".badge-not_running")).to_have_text("Stopped")
        expect(stopped_tile.locator(".why summary")).to_contain_text("not running")
        # The last good frame stays, dimmed, under the badge.
        assert stopped_tile.locator("img").get_attribute("src") == first_capture_2

        changed = tile(page, instances[RUNNING]).locator("img")
        expect(changed).not_to_have_attribute("src", first_src, timeout=30_000)
        wait_for_image(page, f"#tile-{instances[RUNNING].pk} img")
        first, second = Capture.objects.filter(instance=instances[RUNNING]).order_by("captured_at", "id")
        assert first.sha256 != second.sha256
        assert changed.get_attribute("src") == reverse("capture-thumb", args=[second.pk, second.sha256])
        expect(tile(page, instances[RUNNING])).to_have_class(re.compile(r"\btile-ok\b"))
        assert [c["code"] for c in simulator.control.screenshot_calls(RUNNING)] == ["Success", "Success"]

        page.screenshot(path=str(SCREENSHOT), full_page=True)

        # The detail page under the same CSP: the full image and the console output (loaded by htmx).
        tile(page, instances[RUNNING]).locator(".name a").click()
        expect(page).to_have_url(re.compile(rf"/instances/{instances[RUNNING].pk}/$"))
        wait_for_image(page, "#live .detail-shot img")
        expect(page.locator("#console pre.console-text")).to_be_visible()
        expect(page.locator("#history .frames img")).to_have_count(2)

        assert problems.all() == {}


class BrowserConnectionBannerTestCase:
    def test_the_banner_shows_while_the_server_is_down_and_hides_on_the_next_successful_poll(
        self, browser: BrowserTab, user: User, web_server: WebServer, instances: dict
    ) -> None:
        page, problems = browser.page, browser.problems
        banner = page.locator("#connection-banner")
        # Rows made a moment ago sit inside the poll cursor's settle margin and would be sent once
        # more; date them back so the first poll has nothing to say.
        InstanceState.objects.update(changed_at=timezone.now() - timedelta(minutes=1))
        log_in(page)
        expect(page.locator("#grid .tile")).to_have_count(6)
        expect(banner).to_be_hidden()

        # One good poll (nothing changed: 204), then the server goes away.
        with page.expect_response(lambda r: "/poll/" in r.url, timeout=10_000) as polled:
            pass
        assert polled.value.status == 204
        last_ok = datetime.now(UTC)
        expect(banner).to_be_hidden()
        assert problems.all() == {}
        web_server.stop()
        assert not web_server.answers()

        expect(banner).to_be_visible(timeout=12_000)
        # Back-off: the first failure doubles the 5 s interval.
        expect(banner).to_have_text(OFFLINE_TEXT)
        as_of = OFFLINE_TEXT.fullmatch(banner.text_content() or "")
        assert as_of, banner.text_content()
        assert as_of.group(1) in {clock(last_ok - timedelta(seconds=3)), clock(last_ok + timedelta(seconds=3))}
        expect(page.locator("body")).to_have_class(re.compile(r"\bis-offline\b"))
        expect(page.locator("#grid .tile")).to_have_count(6)  # the data stays on screen

        web_server.start()
        expect(banner).to_be_hidden(timeout=15_000)
        expect(page.locator("body")).not_to_have_class(re.compile(r"\bis-offline\b"))

        log = page.evaluate("window.__cw")
        assert [change["hidden"] for change in log["banner"]] == [False, True]
        polls = [p for p in log["polls"] if p["path"].startswith("/poll/")]
        outcomes = [p["ok"] for p in polls]
        assert outcomes == [True, False, True], polls
        failed, recovered = polls[1], polls[2]
        # Shown by the failed poll, hidden by the next good one, which came after the doubled interval.
        assert 9_900 <= recovered["t"] - failed["t"] <= 12_000, polls
        assert failed["t"] <= log["banner"][0]["t"] <= failed["t"] + 500
        assert recovered["t"] <= log["banner"][1]["t"] <= recovered["t"] + 500

        # The only complaints: the poll that could not connect, and htmx logging that same failure.
        assert problems.page_errors == problems.csp_violations == []
        assert len(problems.bad_requests) == 1
        assert re.fullmatch(r"GET http://127\.0\.0\.1:\d+/poll/\?page=1&cursor=\d+: net::ERR_CONNECTION_REFUSED",
                            problems.bad_requests[0]), problems.bad_requests
        assert len(problems.console_errors) == 3, problems.console_errors
        for expected in (r"htmx:afterRequest, \[object HTMLDivElement\] \(\S+/htmx-2\.min\.js\)",
                         r"htmx:sendError, \[object HTMLDivElement\] \(\S+/htmx-2\.min\.js\)",
                         r"Failed to load resource: net::ERR_CONNECTION_REFUSED \(\S+/poll/\?\S+\)"):
            assert any(re.fullmatch(expected, e) for e in problems.console_errors), problems.console_errors


class BrowserContentSecurityPolicyTestCase:
    def test_the_policy_blocks_inline_script_and_the_violation_is_seen(
        self, browser: BrowserTab, user: User, instances: dict
    ) -> None:
        # The other tests assert "no violations"; this one shows the watch would have seen one.
        page, problems = browser.page, browser.problems
        log_in(page)
        expect(page.locator("#grid .tile")).to_have_count(6)
        assert problems.all() == {}

        page.evaluate("""() => {
          const script = document.createElement("script");
          script.textContent = "window.inlineScriptRan = true;";
          document.body.append(script);
        }""")
        for _ in range(50):  # the report arrives through Playwright's event loop: wait inside it
            if problems.csp_violations:
                break
            page.wait_for_timeout(100)
        assert page.evaluate("window.inlineScriptRan") is None
        assert [v["directive"] for v in problems.csp_violations] == ["script-src-elem"]
        assert any("Content Security Policy" in e for e in problems.console_errors), problems.console_errors
