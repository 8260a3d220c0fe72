"""Wall displays and share links in real headless Chromium, against the app under gunicorn, a real Celery worker
and the ECS simulator: a 50-tile TV wall fills and follows a console, rides out a web server outage without an
error page, and reloads exactly once for a new release; a share link page updates live until it is revoked."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone
from playwright.sync_api import Browser, Frame, Page, ViewportSize, expect, sync_playwright

from dashboard.models import Board, BoardMember, DisplayToken, ShareLink, new_token
from screenshots import coordination, tasks
from screenshots.models import Account, Capture, Instance
from tests.conftest import REGION, RUNNING, RUNNING_PNG, wait_for, worker_env
from tests.test_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    IMAGE_SHOWN,
    WATCH_SCRIPT,
    BrowserTab,
    PageProblems,
    WebServer,
)

pytestmark = pytest.mark.timeout(240)

WALL_SIZE = 50
SLUG = "noc"
VERSION = "1.0.0-walls"
NEW_VERSION = "1.0.1-walls"
POLL_MS = 5_000
FULL_HD: ViewportSize = {"width": 1920, "height": 1080}
LAPTOP: ViewportSize = {"width": 1280, "height": 900}
SCREENSHOT = Path("/tmp/wall-50.png")
# Wall mode says since when it is offline and how old the pictures are; other pages say when they retry.
WALL_OFFLINE_TEXT = re.compile(r"Offline since (\d\d:\d\d) — showing the last pictures, as of (\d\d:\d\d)\.")
SHARE_OFFLINE_TEXT = re.compile(r"Connection lost — showing data as of \d\d:\d\d\. Retrying in 10 s\.")
HEARD_TEXT = re.compile(r"\d\d:\d\d:\d\d")

ALL_IMAGES_SHOWN = """(count) => {
  const images = [...document.querySelectorAll("#grid .tile img")];
  return images.length === count && images.every((img) => img.complete && img.naturalWidth > 0);
}"""
TILE_SOURCES = """() => Object.fromEntries([...document.querySelectorAll("#grid .tile")].map(
  (tile) => [tile.id, tile.querySelector("img")?.getAttribute("src") ?? null]))"""
LAYOUT = """() => ({
  viewport: {width: window.innerWidth, height: window.innerHeight},
  scroll: {width: document.documentElement.scrollWidth, height: document.documentElement.scrollHeight},
  tiles: [...document.querySelectorAll("#grid .tile")].map((tile) => {
    const box = tile.getBoundingClientRect();
    const image = tile.querySelector("img").getBoundingClientRect();
    const name = tile.querySelector(".wall-name");
    return {id: tile.id, left: box.left, top: box.top, right: box.right, bottom: box.bottom,
            imageWidth: image.width, imageHeight: image.height,
            fontSize: parseFloat(getComputedStyle(name).fontSize), name: name.textContent,
            nameCut: name.scrollWidth > name.clientWidth};
  }),
})"""


@dataclass
class Navigations:
    """Main-frame navigations and load events of one tab: a reload shows up here, a poll does not."""

    page: Page
    urls: list[str] = field(default_factory=list)
    loads: int = 0

    def __post_init__(self) -> None:
        self.page.on("framenavigated", self._on_navigated)
        self.page.on("load", self._on_load)

    def _on_navigated(self, frame: Frame) -> None:
        if frame == self.page.main_frame:
            self.urls.append(frame.url)

    def _on_load(self, page: Page) -> None:
        self.loads += 1

    def reset(self) -> None:
        self.urls.clear()
        self.loads = 0


@pytest.fixture
def web_server(transactional_db: None, redis_url: str, media_root: Path) -> Iterator[WebServer]:
    env = worker_env(redis_url, media_root)
    env.update({"ALLOWED_HOSTS": "127.0.0.1,localhost", "APP_VERSION": VERSION})
    server = WebServer(env)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def chromium(web_server: WebServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Browser]:
    # Playwright's sync API runs an asyncio loop in this thread; the ORM calls here are not async at all.
    # Set only while the browser runs, which ends before the test database is flushed (see test_browser).
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_tab(browser: Browser, server: WebServer, viewport: ViewportSize) -> BrowserTab:
    """A fresh browser context (no cookies, no login) with the CSP and poll watch of test_browser."""
    problems = PageProblems()
    context = browser.new_context(base_url=server.url, locale="en-GB", timezone_id="UTC", viewport=viewport)
    context.expose_function("__cwViolation", problems.on_csp_violation)
    context.add_init_script(WATCH_SCRIPT)
    page = context.new_page()
    page.on("console", problems.on_console)
    page.on("pageerror", lambda error: problems.page_errors.append(str(error)))
    page.on("requestfailed", problems.on_request_failed)
    page.on("response", problems.on_response)
    page.set_default_timeout(15_000)
    return BrowserTab(page, problems)


@pytest.fixture
def wall(account: Account, simulator: Any) -> list[Instance]:
    """Fifty running consoles on the simulator, all on one picked board, in board order."""
    # One fleet tick captures all fifty at once: let the account's bucket take that.
    Account.objects.filter(pk=account.pk).update(rate_per_second=100)
    instances = []
    for n in range(1, WALL_SIZE + 1):
        instance_id = f"i-bp1wall{n:015d}"
        added = simulator.control.http.post(f"{simulator.control.url}/_sim/instances", timeout=5, json={
            "instance_id": instance_id, "region_id": REGION, "name": f"node-{n:02d}", "status": "Running",
            "image_format": "jpeg", "tags": {"env": "test"}, "frame_period": 3600.0,
        })
        added.raise_for_status()
        instances.append(Instance.objects.create(account=account, region_id=REGION, instance_id=instance_id,
                                                 name=f"node-{n:02d}", capture_interval=60))
    board = Board.objects.create(name="NOC", slug=SLUG)
    BoardMember.objects.bulk_create(
        BoardMember(board=board, instance=instance, position=n) for n, instance in enumerate(instances))
    return instances


@pytest.fixture
def display_token(wall: list[Instance]) -> str:
    token, token_hash = new_token()
    display = DisplayToken.objects.create(name="NOC wall left", token_hash=token_hash)
    display.boards.set(Board.objects.filter(slug=SLUG))
    return token


def clock(epoch_ms: float) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).strftime("%H:%M")


def wall_thumb(capture: Capture) -> str:
    return reverse("wall-capture", args=[SLUG, capture.pk, capture.sha256])


def share_thumb(token: str, capture: Capture) -> str:
    return reverse("share-capture", args=[token, capture.pk, capture.sha256, "thumb"])


def recapture_changed_console(simulator: Any, page: Page, instance: Instance) -> None:
    """The console shows something new; an operator-style forced capture runs once the 10 s rule allows."""
    simulator.control.patch(instance.instance_id, bump_frame=True)
    page.wait_for_timeout(coordination.seconds_until_call_allowed(instance.pk) * 1000 + 200)
    tasks.capture_instance.delay(instance.pk, force=True)


def assert_only_failed_polls(problems: PageProblems, poll_path: str, failure: str, extra_console: tuple[str, ...] = (),
                             extra_requests: tuple[str, ...] = ()) -> None:
    """Nothing went wrong on the page but polls that failed in the expected way (and htmx logging them)."""
    assert problems.page_errors == [], problems.page_errors
    assert problems.csp_violations == [], problems.csp_violations
    poll = rf"GET http://127\.0\.0\.1:\d+{re.escape(poll_path)}\?cursor=\d+: {failure}"
    assert problems.bad_requests, "expected at least one failed poll"
    for request in problems.bad_requests:
        assert any(re.fullmatch(p, request) for p in (poll, *extra_requests)), (request, problems.bad_requests)
    console = (r"htmx:(afterRequest|sendError|responseError), \[object HTMLDivElement\] \(\S+/htmx-2\.min\.js\)",
               rf"Failed to load resource: .+ \(http://127\.0\.0\.1:\d+{re.escape(poll_path)}\?cursor=\d+\)",
               *extra_console)
    for error in problems.console_errors:
        assert any(re.fullmatch(p, error) for p in console), (error, problems.console_errors)


@pytest.mark.worker
@pytest.mark.worker_env(ECS_ACCOUNT_BURST="100")
class WallDisplayTestCase:
    def test_a_50_tile_wall_fills_follows_a_console_rides_out_an_outage_and_reloads_once_for_a_new_version(
        self, celery_worker: Any, web_server: WebServer, chromium: Browser, wall: list[Instance],
        display_token: str, simulator: Any,
    ) -> None:
        page, problems = (tab := open_tab(chromium, web_server, FULL_HD)).page, tab.problems
        navigations = Navigations(page)
        wall_url = f"{web_server.url}/wall/{SLUG}/"
        banner = page.locator("#connection-banner")
        heard = page.locator("#last-heard")
        poller = page.locator("#poller")

        # The TV opens its link once, without a staff login: the token moves into an httponly cookie.
        page.goto(f"/display/{display_token}/")
        expect(page).to_have_url(wall_url)
        cookies = {c["name"]: c for c in page.context.cookies()}
        assert (cookies["cw_display"]["value"], cookies["cw_display"]["httpOnly"]) == (display_token, True)
        expect(page.locator("#grid .wall-tile")).to_have_count(WALL_SIZE)
        expect(page.locator("#grid .wall-tile img")).to_have_count(0)
        expect(poller).to_have_attribute("data-version", VERSION)
        page.evaluate("window.__marker = 1")
        navigations.reset()

        # --- Fill: one fleet tick; the wall learns of the 50 captures through its polls alone. ---------------
        tasks.enqueue_due_captures.delay()
        page.wait_for_function(ALL_IMAGES_SHOWN, arg=WALL_SIZE, timeout=40_000)
        captures = {c.instance_id: c for c in Capture.objects.all()}
        assert len(captures) == WALL_SIZE
        sources = page.evaluate(TILE_SOURCES)
        assert sources == {f"tile-{i.pk}": wall_thumb(captures[i.pk]) for i in wall}
        assert page.evaluate("window.__marker") == 1
        assert (navigations.urls, navigations.loads) == ([], 0)
        expect(banner).to_be_hidden()

        # --- Layout: a 1920x1080 TV shows all fifty at once, no scrolling, names big enough to read. -------
        layout = page.evaluate(LAYOUT)
        assert layout["scroll"] == layout["viewport"] == {"width": 1920, "height": 1080}, layout["scroll"]
        for box in layout["tiles"]:
            assert 0 <= box["left"] < box["right"] <= 1920 and 0 <= box["top"] < box["bottom"] <= 1080, box
            assert box["imageWidth"] >= 150 and box["imageHeight"] >= 100, box
            assert box["fontSize"] >= 14, box
            assert not box["nameCut"], box  # the whole name shows; the age gives way first
        assert [box["name"] for box in layout["tiles"]] == [i.name for i in wall]
        # caret="initial": hiding carets leaves style="" on #poll-cursor, which htmx's settle then copies onto
        # the next swapped-in input, a style-src-attr violation of Playwright's making.
        page.screenshot(path=str(SCREENSHOT), caret="initial")

        # --- One console changes: only its tile follows, once the new picture is decoded. ------------------
        target = wall[6]
        recapture_changed_console(simulator, page, target)
        target_image = page.locator(f"#tile-{target.pk} img")
        expect(target_image).not_to_have_attribute("src", sources[f"tile-{target.pk}"], timeout=20_000)
        page.wait_for_function(IMAGE_SHOWN, arg=f"#tile-{target.pk} img")
        first, second = Capture.objects.filter(instance=target).order_by("captured_at", "pk")
        assert first.sha256 != second.sha256
        sources[f"tile-{target.pk}"] = wall_thumb(second)
        assert page.evaluate(TILE_SOURCES) == sources
        assert page.evaluate("window.__marker") == 1
        assert (navigations.urls, navigations.loads) == ([], 0)
        assert problems.all() == {}

        # --- The web server goes away: a banner, the pictures stay, no browser error page. ------------------
        expect(heard).to_have_text(HEARD_TEXT)
        web_server.stop()
        assert not web_server.answers()
        expect(banner).to_be_visible(timeout=POLL_MS + 3_000)
        expect(banner).to_have_text(WALL_OFFLINE_TEXT)
        polls = page.evaluate("window.__cw.polls")
        failed = polls[-1]
        assert not failed["ok"] and all(p["ok"] for p in polls[:-1]), polls
        offline = WALL_OFFLINE_TEXT.fullmatch(banner.text_content() or "")
        assert offline, banner.text_content()
        assert offline.group(1) in {clock(failed["t"] - 1_000), clock(failed["t"])}
        assert offline.group(2) in {clock(polls[-2]["t"] - 1_000), clock(polls[-2]["t"])}
        expect(page.locator("body")).to_have_class(re.compile(r"\bis-offline\b"))
        heard_offline = heard.text_content()
        assert page.url == wall_url
        assert page.title() == "NOC · Console Wall"
        assert page.evaluate(ALL_IMAGES_SHOWN, WALL_SIZE)
        assert page.evaluate(TILE_SOURCES) == sources
        assert page.evaluate("window.__marker") == 1

        # --- Back again: the next (backed-off) poll hides the banner; still the same document. -------------
        web_server.start()
        expect(banner).to_be_hidden(timeout=2 * POLL_MS + 5_000)
        expect(page.locator("body")).not_to_have_class(re.compile(r"\bis-offline\b"))
        expect(heard).to_have_text(HEARD_TEXT)
        expect(heard).not_to_have_text(heard_offline or "")
        assert [change["hidden"] for change in page.evaluate("window.__cw.banner")] == [False, True]
        assert page.url == wall_url
        assert page.evaluate("window.__marker") == 1
        assert (navigations.urls, navigations.loads) == ([], 0)
        assert page.evaluate(ALL_IMAGES_SHOWN, WALL_SIZE)

        # --- A new release: the wall reloads itself once it hears the new version, and only once. ----------
        web_server.stop()
        web_server.env["APP_VERSION"] = NEW_VERSION
        web_server.start()
        expect(poller).to_have_attribute("data-version", NEW_VERSION, timeout=3 * POLL_MS + 5_000)
        assert page.evaluate("window.__marker") is None
        page.wait_for_timeout(2 * POLL_MS + 2_500)  # two more polls on the new version, and no reload
        assert navigations.urls == [wall_url]
        assert navigations.loads == 1
        polls = page.evaluate("window.__cw.polls")  # the watch starts over in the reloaded document
        assert len(polls) >= 2 and all(p["ok"] for p in polls), polls
        expect(poller).to_have_attribute("data-version", NEW_VERSION)
        expect(banner).to_be_hidden()
        assert page.evaluate(ALL_IMAGES_SHOWN, WALL_SIZE)
        assert page.evaluate(TILE_SOURCES) == sources

        assert_only_failed_polls(problems, f"/wall/{SLUG}/poll/", "net::ERR_CONNECTION_REFUSED")


@pytest.mark.worker
class ShareLinkPageTestCase:
    def test_a_share_link_page_updates_live_and_stops_working_once_revoked(
        self, celery_worker: Any, web_server: WebServer, chromium: Browser, instances: dict[str, Instance],
        simulator: Any,
    ) -> None:
        web01, db01 = instances[RUNNING], instances[RUNNING_PNG]
        token, token_hash = new_token()
        link = ShareLink.objects.create(token_hash=token_hash, note="incident 4711")
        link.instances.set([web01, db01])
        poll_path = f"/s/{token}/poll/"
        share_url = f"{web_server.url}/s/{token}/"
        # web-01 has a picture before anyone looks; db-01 gets its first one while the page is open.
        tasks.capture_instance.delay(web01.pk)
        wait_for(lambda: Capture.objects.filter(instance=web01).exists(), timeout=20, message="web-01's capture")

        page, problems = (tab := open_tab(chromium, web_server, LAPTOP)).page, tab.problems
        navigations = Navigations(page)
        banner = page.locator("#connection-banner")
        page.goto(f"/s/{token}/")
        navigations.reset()
        expect(page.locator(".topbar")).to_contain_text("incident 4711")
        expect(page.locator("#grid .tile")).to_have_count(2)
        page.wait_for_function(IMAGE_SHOWN, arg=f"#tile-{web01.pk} img")
        expect(page.locator(f"#tile-{db01.pk} .no-shot")).to_have_text("No capture yet")
        expect(page.locator("#grid .tile a[href]")).to_have_count(0)  # no way into the staff pages
        first = Capture.objects.get(instance=web01)
        assert page.evaluate(TILE_SOURCES) == {f"tile-{web01.pk}": share_thumb(token, first), f"tile-{db01.pk}": None}

        # Live, by polling: db-01's first picture, then web-01's changed console.
        tasks.capture_instance.delay(db01.pk)
        page.wait_for_function(IMAGE_SHOWN, arg=f"#tile-{db01.pk} img", timeout=20_000)
        recapture_changed_console(simulator, page, web01)
        expect(page.locator(f"#tile-{web01.pk} img")).not_to_have_attribute(
            "src", share_thumb(token, first), timeout=20_000)
        page.wait_for_function(IMAGE_SHOWN, arg=f"#tile-{web01.pk} img")
        second = Capture.objects.filter(instance=web01).latest("captured_at", "pk")
        assert second.sha256 != first.sha256
        sources = {f"tile-{web01.pk}": share_thumb(token, second),
                   f"tile-{db01.pk}": share_thumb(token, Capture.objects.get(instance=db01))}
        assert page.evaluate(TILE_SOURCES) == sources
        assert (navigations.urls, navigations.loads) == ([], 0)
        expect(banner).to_be_hidden()
        assert problems.all() == {}

        # Revoked: the next poll gets 410 and the page says it lost the connection, keeping what it showed.
        ShareLink.objects.filter(pk=link.pk).update(revoked_at=timezone.now())
        expect(banner).to_be_visible(timeout=POLL_MS + 3_000)
        expect(banner).to_have_text(SHARE_OFFLINE_TEXT)
        polls = page.evaluate("window.__cw.polls")
        assert polls[-1] == {**polls[-1], "ok": False, "path": poll_path}, polls
        assert any(re.search(rf"{re.escape(poll_path)}\?cursor=\d+: HTTP 410$", r) for r in problems.bad_requests)
        assert page.evaluate(TILE_SOURCES) == sources
        assert (navigations.urls, navigations.loads) == ([], 0)

        # Reloading shows the plain "revoked" page; the share's image URLs answer 410 too.
        response = page.reload()
        assert response is not None and response.status == 410
        expect(page.locator("h1")).to_have_text("This link was revoked.")
        expect(page.locator("#grid")).to_have_count(0)
        for source in sources.values():
            assert page.request.get(source).status == 410, source

        # Besides the polls (and htmx's word on them): the reloaded page itself (410), and the favicon that its
        # plain page does not declare.
        share_document, favicon = re.escape(share_url), re.escape(f"{web_server.url}/favicon.ico")
        assert_only_failed_polls(
            problems, poll_path, "HTTP 410",
            extra_console=(rf"Response Status Error Code 410 from {re.escape(poll_path)}, \[object HTMLDivElement\] "
                           r"\(\S+/htmx-2\.min\.js\)",
                           rf"Failed to load resource: the server responded with a status of 410 \(Gone\) "
                           rf"\({share_document}\)",
                           rf"Failed to load resource: the server responded with a status of 404 \(Not Found\) "
                           rf"\({favicon}\)"),
            extra_requests=(rf"GET {share_document}: HTTP 410", rf"GET {favicon}: HTTP 404"),
        )
