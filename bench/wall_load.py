"""Wall displays under load: N simulated TVs polling one board through the production web server (gunicorn),
with the embedded defaults (SQLite, the embedded redis-server) and with PostgreSQL, in the same run.

    .venv/bin/python bench/wall_load.py [--displays 200] [--duration 40] [--steps auto] [--no-postgres]

Each database gets a throwaway deployment: a board of 50 instances whose captures are real JPEG files stored by
the pipeline's own ``record_success``, one display token per simulated TV, and ``gunicorn
dashboard.wsgi:application --worker-class gthread --workers 2 --threads 4`` with the environment a deployment
would give it (the PostgreSQL one in a database of its own, created and dropped here). A display does what
``static/console-wall.js`` does: it enters through ``/display/<token>/`` (the cookie), polls
``/wall/<slug>/poll/?cursor=...`` 5 s plus up to 0.5 s after each answer (doubling the pause after a failure),
keeps the cursor of each answer and fetches the thumbnails it has not seen.

First a sequential baseline (one client, one request at a time) and an in-process diagnosis of the idle poll.
Then, both databases in the order A B B A: an **idle** run (nothing is captured: every poll answers 204) and a
**pipeline** run (a separate process records a capture of every instance every 30 s, as the workers do at the
default interval, 10% of them with a new image). The step test repeats the pipeline run with twice the displays
while runs pass (poll p95 within 1 s, no failed request), or half as many until one does.

The load generator is one asyncio thread in this process, a fresh connection per request (a browser's keep-alive
would not outlast the 5 s pause); its CPU and event-loop lag are reported beside the servers'. About 4-5 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from harness import (
    CLOCK_TICKS,
    PYTHON,
    ROOT,
    BenchEnvironment,
    Child,
    command_line,
    exit_cleanly_on_sigterm,
    free_port,
    http_get,
    median,
    own_cpu_seconds,
    quantile,
    table,
    today,
    wait_for,
    write_doc_section,
)

POLL_SECONDS = 5  # dashboard.views.POLL_SECONDS; checked against it at run time
JITTER_SECONDS = 0.5  # static/console-wall.js: schedule(delay + Math.random() * 500)
MAX_BACKOFF_SECONDS = 60.0  # static/console-wall.js: MAX_BACKOFF_MS
# What one display sends per interval on average, when the server answers at once.
CYCLE_SECONDS = POLL_SECONDS + JITTER_SECONDS / 2
GUNICORN = str(Path(PYTHON).parent / "gunicorn")
BOARD_SLUG = "bench-wall"
REGIONS = ["cn-hangzhou", "cn-shanghai", "cn-beijing"]

CURSOR_RE = re.compile(rb'id="poll-cursor" name="cursor" value="(\d+)"')
IMG_RE = re.compile(rb'<img src="([^"]+)"')
TILE_MARK = b'<article id="tile-'


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--displays", type=int, default=200, help="displays in the idle and pipeline runs")
    parser.add_argument("--duration", type=float, default=40,
                        help="measured seconds of the pipeline run, per database (in two halves, A B B A)")
    parser.add_argument("--idle-duration", type=float, default=12,
                        help="measured seconds of the idle run, per database (two halves; 0: skip)")
    parser.add_argument("--steps", default="auto",
                        help="display counts of the step test (pipeline runs), comma-separated, in order; 'auto': "
                             "double --displays while it passes, or halve it until it passes, at most "
                             "--max-steps times; empty: skip")
    parser.add_argument("--max-steps", type=int, default=3, help="steps per database with --steps auto")
    parser.add_argument("--step-duration", type=float, default=10, help="measured seconds of each step")
    parser.add_argument("--warmup", type=float, default=6,
                        help="seconds before the measured window (displays enter over the first 5 s)")
    parser.add_argument("--knee-p95", type=float, default=1.0, help="p95 in seconds that ends the step test")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn --workers")
    parser.add_argument("--threads", type=int, default=4, help="gunicorn --threads (gthread worker)")
    parser.add_argument("--tiles", type=int, default=50, help="instances on the board")
    parser.add_argument("--capture-interval", type=float, default=30,
                        help="pipeline runs: seconds between two captures of an instance")
    parser.add_argument("--new-image-fraction", type=float, default=0.1,
                        help="pipeline runs: share of captures with a new image (the rest repeat the last one)")
    parser.add_argument("--timeout", type=float, default=10, help="client timeout per request, seconds")
    parser.add_argument("--drain", type=float, default=3,
                        help="seconds after a window for its requests to finish; later ones count as unfinished")
    parser.add_argument("--baseline-rounds", type=int, default=50,
                        help="rounds of the sequential baseline (and repetitions of the in-process diagnosis)")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--seed", type=int, default=4, help="seed of the displays' jitter")
    parser.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, SQLite file) for a look")
    # Roles of the child processes this script starts (a Django process each, with the target's environment).
    parser.add_argument("--role", choices=["prepare", "changer", "diagnose"], help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--prepared", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.capture_interval <= 0 or args.tiles < 2 or args.displays < 1:
        parser.error("--capture-interval must be positive, --tiles at least 2, --displays at least 1")
    return args


def step_counts(args: argparse.Namespace) -> list[int]:
    """The explicit step list, or every count --steps auto may reach."""
    if args.steps.strip() == "auto":
        return [args.displays * 2**k for k in range(1, args.max_steps + 1)]
    return [int(s) for s in args.steps.split(",") if s.strip()]


# --- Child roles: building the deployment and playing the capture workers ----------------------------


def setup_django() -> None:
    import warnings

    warnings.filterwarnings("ignore", message="No directory at")
    import django

    django.setup()


def console_jpeg(label: str, version: int) -> str:
    """A console-like screenshot, base64 as the API sends it; the version changes its bytes."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (1024, 768), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    lines = ["Alibaba Cloud Linux 3 (Soaring Falcon)", "Kernel 5.10.134-16.al8.x86_64 on an x86_64", "",
             f"{label} login: root", "Password:", f"Last login: build {version}", ""]
    lines += [f"[{version % 100_000:5d}.{n:06d}] systemd[1]: Started Session {version + n} of User root."
              for n in range(version % 40)]
    for row, line in enumerate(lines):
        draw.text((8, 8 + 16 * row), line, fill=(205, 205, 205))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return base64.b64encode(out.getvalue()).decode()


def role_prepare(args: argparse.Namespace) -> None:
    """Account, instances with one stored capture each, the board, ``--count`` display tokens: JSON to --prepared."""
    setup_django()
    from django.urls import reverse

    from dashboard import views
    from dashboard.grid import datetime_to_cursor
    from dashboard.models import Board, BoardMember, DisplayToken, new_token
    from screenshots.capture import record_success
    from screenshots.images import decode_screenshot
    from screenshots.models import Account, Instance, InstanceState

    account = Account.objects.create(name="Bench", access_key_id="LTAI5tBenchAccessKey1",
                                     access_key_secret="bench-secret")
    board = Board.objects.create(name="Bench wall", slug=BOARD_SLUG)
    interval = max(10, round(args.capture_interval or 30))
    for n in range(args.tiles):
        instance = Instance.objects.create(
            account=account, region_id=REGIONS[n % 3], instance_id=f"i-wall{n:012d}",
            name=f"wall-{['web', 'api', 'db', 'worker'][n % 4]}-{n:03d}", tags={"env": "prod"},
            capture_interval=interval)
        BoardMember.objects.create(board=board, instance=instance, position=n)
        instance = Instance.objects.select_related("account").get(pk=instance.pk)
        record_success(instance, decode_screenshot(console_jpeg(instance.name, 0)), "bench-prepare")
    tokens = []
    displays = []
    for n in range(args.count):
        token, token_hash = new_token()
        tokens.append(token)
        displays.append(DisplayToken(name=f"bench display {n:04d}", token_hash=token_hash))
    displays = DisplayToken.objects.bulk_create(displays)
    DisplayToken.boards.through.objects.bulk_create(
        DisplayToken.boards.through(displaytoken_id=d.pk, board_id=board.pk) for d in displays)
    states = InstanceState.objects.filter(instance__board_memberships__board=board).select_related(
        "latest_capture").order_by("-changed_at")
    Path(args.prepared).write_text(json.dumps({
        "slug": board.slug,
        "poll_seconds": views.POLL_SECONDS,
        "tokens": tokens,
        "thumbs": [reverse("wall-capture", args=[board.slug, s.latest_capture.pk, s.latest_capture.sha256])
                   for s in states],
        # Newest first: a poll with cursor changed[k] gets the k newest tiles (changed_at > cursor).
        "changed": [datetime_to_cursor(s.changed_at) for s in states],
    }))


def role_changer(args: argparse.Namespace) -> None:
    """The capture workers' writes: every instance recorded every --capture-interval seconds, in turn."""
    exit_cleanly_on_sigterm()
    setup_django()
    from django.core.files.storage import default_storage

    from dashboard.models import Board
    from screenshots.capture import record_success
    from screenshots.images import decode_screenshot

    rng = random.Random(time.time_ns())  # new images differ from those of earlier runs
    instances = list(Board.objects.get(slug=BOARD_SLUG).instances())
    current = {}
    for instance in instances:
        with default_storage.open(instance.state.latest_capture.image.name, "rb") as f:
            current[instance.pk] = base64.b64encode(f.read()).decode()
    period = args.capture_interval / len(instances)
    started = time.monotonic()
    captures = new_images = 0
    # New images evenly spread (not drawn at random), so that short runs get their share too.
    credit = 0.5
    try:
        while True:
            instance = instances[captures % len(instances)]
            credit += args.new_image_fraction
            if credit >= 1:
                credit -= 1
                current[instance.pk] = console_jpeg(instance.name, rng.randrange(1, 10**9))
                new_images += 1
            record_success(instance, decode_screenshot(current[instance.pk]), "bench-changer")
            captures += 1
            time.sleep(max(0.0, started + captures * period - time.monotonic()))
    except KeyboardInterrupt:
        pass
    finally:
        print(json.dumps({"captures": captures, "new_images": new_images,
                          "seconds": round(time.monotonic() - started, 3)}), flush=True)


def role_diagnose(args: argparse.Namespace) -> None:
    """Where an idle poll's server time goes, in-process (no HTTP server): medians in ms, JSON on stdout."""
    setup_django()
    import statistics

    from django.db import connection
    from django.test import Client

    from dashboard import grid
    from dashboard.models import Board
    from dashboard.walls import WALL_MAX_TILES

    prepared = json.loads(Path(args.prepared).read_text())
    board = Board.objects.get(slug=prepared["slug"])
    far_future = str(int((time.time() + 86400) * 1_000_000))
    cursor = grid.cursor_to_datetime(far_future)

    def timed(fn: Any) -> float:
        for _ in range(10):
            fn()
        times = []
        for _ in range(args.count):
            started = time.perf_counter()
            fn()
            times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times)

    def rows() -> Any:
        return board.instances().values("pk")[:WALL_MAX_TILES]  # as dashboard.walls.wall_poll

    # The statement changed_since() runs, built once, to time the database alone.
    sql, params = grid.tiles_queryset().filter(pk__in=rows()).filter(
        state__changed_at__gt=cursor).query.sql_with_params()

    def sql_only() -> None:
        with connection.cursor() as c:
            c.execute(sql, params)
            c.fetchall()

    def reconnect() -> None:
        connection.close()
        connection.ensure_connection()

    client = Client()
    client.cookies["cw_display"] = prepared["tokens"][-1]
    poll = f"/wall/{prepared['slug']}/poll/?cursor="
    assert client.get(poll + far_future).status_code == 204
    persistent = bool(connection.settings_dict["CONN_MAX_AGE"])
    planning = execution = float("nan")
    if connection.vendor == "postgresql":
        # The server's own account of the statement: planning against execution.
        plans, runs = [], []
        for _ in range(30):
            with connection.cursor() as c:
                c.execute("EXPLAIN (ANALYZE, SUMMARY) " + sql, params)
                summary = dict(row[0].split(": ") for row in c.fetchall() if row[0].endswith(" ms"))
            plans.append(float(summary["Planning Time"].split()[0]))
            runs.append(float(summary["Execution Time"].split()[0]))
        planning, execution = statistics.median(plans), statistics.median(runs)
    print(json.dumps({
        "pg_planning": planning,
        "pg_execution": execution,
        "idle_view": timed(lambda: client.get(poll + far_future)),
        "changed_since": timed(lambda: grid.changed_since(rows(), cursor)),
        "sql_only": timed(sql_only),
        "tiles_view": timed(lambda: client.get(poll + prepared["changed"][args.k])),
        "thumb_view": timed(lambda: client.get(prepared["thumbs"][0])),
        # Per request: a new connection where CONN_MAX_AGE is 0 (SQLite), the health check where it is kept.
        "per_request_connection": timed(connection.is_usable if persistent else reconnect),
        "persistent": persistent,
    }))


# --- Targets: one deployment per database ----------------------------------------------------------


@dataclass
class Target:
    name: str
    env: dict[str, str]
    dbname: str = ""  # PostgreSQL: to find its backends in /proc
    version: str = ""
    port: int = 0
    server: Child | None = None
    slug: str = BOARD_SLUG
    tokens: list[str] = field(default_factory=list)
    thumbs: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)


def postgres_url() -> str | None:
    try:
        out = subprocess.run([str(ROOT / "bin" / "test-postgres")], capture_output=True, text=True, check=True,
                             timeout=180, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"PostgreSQL unavailable, SQLite only: {exc}", file=sys.stderr)
        return None
    return out.stdout.strip().splitlines()[-1]


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def create_postgres_database(stack: contextlib.ExitStack, url: str) -> tuple[str, str]:
    """A throwaway database beside the role's own, dropped at exit (connections and all)."""
    import psycopg

    name = f"{urlsplit(url).path.lstrip('/') or 'consolewall'}_wall_bench_{os.getpid()}"
    admin_url = with_database(url, "postgres")

    def drop() -> None:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    stack.callback(drop)
    return name, with_database(url, name)


def prepare_target(env: BenchEnvironment, target: Target, count: int, args: argparse.Namespace) -> None:
    subprocess.run([PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=target.env,
                   check=True, stdin=subprocess.DEVNULL)
    out = env.root / f"prepared-{target.name}.json"
    subprocess.run([PYTHON, __file__, "--role", "prepare", "--count", str(count), "--prepared", str(out),
                    "--tiles", str(args.tiles), "--capture-interval", str(args.capture_interval)],
                   cwd=ROOT, env=target.env, check=True, stdin=subprocess.DEVNULL)
    prepared = json.loads(out.read_text())
    assert prepared["poll_seconds"] == POLL_SECONDS, f"the page polls every {prepared['poll_seconds']} s now"
    target.slug, target.tokens = prepared["slug"], prepared["tokens"]
    target.thumbs, target.changed = prepared["thumbs"], prepared["changed"]


def diagnose(env: BenchEnvironment, target: Target, k_tiles: int, reps: int) -> dict[str, Any]:
    prepared = env.root / f"prepared-{target.name}.json"
    done = subprocess.run([PYTHON, __file__, "--role", "diagnose", "--prepared", str(prepared), "--k", str(k_tiles),
                           "--count", str(reps)], cwd=ROOT, env=target.env, check=True, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def start_server(stack: contextlib.ExitStack, env: BenchEnvironment, target: Target,
                 args: argparse.Namespace) -> None:
    target.port = free_port()
    argv = [GUNICORN, "dashboard.wsgi:application", "--bind", f"127.0.0.1:{target.port}", "--worker-class",
            "gthread", "--workers", str(args.workers), "--threads", str(args.threads)]
    target.server = Child(f"gunicorn-{target.name}", argv, dict(target.env), env.logs)
    stack.callback(target.server.stop)

    def healthy() -> bool:
        assert target.server
        target.server.require_alive()
        with contextlib.suppress(OSError):  # refused while booting; an HTTPError (503) is an OSError too
            return json.loads(http_get(f"http://127.0.0.1:{target.port}/health/", timeout=2))["ok"]
        return False

    wait_for(healthy, 60, f"gunicorn ({target.name})", interval=0.2)


def gunicorn_command(args: argparse.Namespace) -> str:
    return (f"gunicorn dashboard.wsgi:application --worker-class gthread --workers {args.workers} "
            f"--threads {args.threads}")


# --- The client ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class Hit:
    kind: str  # enter, poll, image
    sent: float
    done: float
    status: int  # HTTP status; 0 connection error, -1 timed out, -2 unfinished when the run ended
    nbytes: int
    tiles: int = 0

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 400

    @property
    def ms(self) -> float:
        return (self.done - self.sent) * 1000


async def fetch(port: int, path: str, headers: bytes, timeout: float) -> tuple[int, bytes, bytes]:
    """One GET on a fresh connection: status, head and body (status 0: connection failed, -1: timed out)."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n".encode() + headers + b"\r\n"
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(request)
                raw = await reader.read()
            finally:
                writer.close()
    except TimeoutError:
        return -1, b"", b""
    except OSError:
        return 0, b"", b""
    head, _, body = raw.partition(b"\r\n\r\n")
    try:
        return int(head[9:12]), head, body
    except ValueError:
        return 0, head, body


def display_headers(target: Target, token: str) -> bytes:
    return (f"Cookie: cw_display={token}\r\nHX-Request: true\r\nHX-Trigger: poller\r\n"
            f"HX-Current-URL: http://127.0.0.1:{target.port}/wall/{target.slug}/\r\n").encode()


class Phase:
    """One load run: ``n`` displays against one target; requests are kept as Hits."""

    def __init__(self, target: Target, n: int, warmup: float, duration: float, timeout: float, drain: float,
                 seed: int) -> None:
        self.target, self.n, self.timeout, self.drain = target, n, timeout, drain
        self.warmup, self.duration = warmup, duration
        self.hits: list[Hit] = []
        self.rng = random.Random(seed)
        self.side_tasks: set[asyncio.Task[None]] = set()
        self.lags_ms: list[float] = []
        self.cpu: dict[str, float] = {}
        self.on_the_wall: set[str] = set()  # the thumbnails a freshly loaded wall page shows
        self.t0 = self.window_start = self.window_end = 0.0

    async def request(self, kind: str, path: str, headers: bytes) -> tuple[int, bytes, bytes]:
        loop = asyncio.get_running_loop()
        sent = loop.time()
        try:
            status, head, body = await fetch(self.target.port, path, headers, self.timeout)
        except asyncio.CancelledError:
            # Still open when the run ended: its latency is at least this long.
            self.hits.append(Hit(kind, sent, loop.time(), -2, 0))
            raise
        tiles = body.count(TILE_MARK) if kind == "poll" else 0
        self.hits.append(Hit(kind, sent, loop.time(), status, len(head) + 4 + len(body) if head else 0, tiles))
        return status, head, body

    async def display(self, i: int) -> None:
        loop = asyncio.get_running_loop()
        target = self.target
        token = target.tokens[i]
        await asyncio.sleep(max(0.0, self.t0 + i * POLL_SECONDS / self.n - loop.time()))
        status, head, _ = await self.request("enter", f"/display/{token}/", b"")
        if status != 302 or f"cw_display={token}".encode() not in head:
            return  # counted as an error of the run
        headers = display_headers(target, token)
        # The wall page hands out "now minus the settle margin" (dashboard.walls.wall).
        cursor = str(int((time.time() - 1) * 1_000_000))
        seen = set(self.on_the_wall)
        delay = float(POLL_SECONDS)
        await asyncio.sleep(self.rng.uniform(0, JITTER_SECONDS))
        while loop.time() < self.window_end:
            status, _, body = await self.request("poll", f"/wall/{target.slug}/poll/?cursor={cursor}", headers)
            if 200 <= status < 300:
                delay = float(POLL_SECONDS)
                if status == 200:
                    if match := CURSOR_RE.search(body):
                        cursor = match.group(1).decode()
                    new = [src.decode() for src in IMG_RE.findall(body) if src.decode() not in seen]
                    if new:
                        seen.update(new)
                        self.spawn(self.images(new, headers))
            else:
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)
            await asyncio.sleep(delay + self.rng.uniform(0, JITTER_SECONDS))

    async def images(self, paths: list[str], headers: bytes) -> None:
        # The browser loads a swapped tile's new image at once, beside the poll loop.
        for path in paths:
            await self.request("image", path, headers)

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.side_tasks.add(task)
        task.add_done_callback(self.side_tasks.discard)

    async def watch_lag(self) -> None:
        """How late the event loop wakes up: if this grows, the generator itself adds latency."""
        loop = asyncio.get_running_loop()
        while loop.time() < self.window_end:
            planned = loop.time() + 0.05
            await asyncio.sleep(0.05)
            if self.window_start <= planned < self.window_end:
                self.lags_ms.append((loop.time() - planned) * 1000)


# --- CPU accounting -----------------------------------------------------------------------------------


def read_proc_stat(pid: str) -> tuple[str, int, float] | None:
    try:
        raw = Path("/proc", pid, "stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    rest = raw[raw.rindex(")") + 2 :].split()
    return comm, int(rest[2]), (int(rest[11]) + int(rest[12])) / CLOCK_TICKS


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return total - idle, total


class CpuTracker:
    """CPU seconds, over a window, of process groups (gunicorn with its workers, the changer, redis) and of
    one database's PostgreSQL backends, found by the database name in their process title. Sampled every
    second, so backends that come and go (CONN_MAX_AGE) are counted too."""

    def __init__(self, groups: dict[int, str], dbname: str) -> None:
        self.groups, self.dbname = groups, dbname
        self.base: dict[tuple[str, int], float] = {}
        self.last: dict[tuple[str, int], float] = {}
        self.own = 0.0
        self.machine = (0, 0)

    def _scan(self) -> Iterable[tuple[tuple[str, int], float]]:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            stat = read_proc_stat(entry.name)
            if stat is None:
                continue
            comm, pgrp, cpu = stat
            if pgrp in self.groups:
                yield (self.groups[pgrp], int(entry.name)), cpu
            elif self.dbname and comm == "postgres":
                with contextlib.suppress(OSError):
                    title = Path(entry.path, "cmdline").read_bytes()
                    if f" {self.dbname} ".encode() in title:
                        yield ("postgres", int(entry.name)), cpu

    def begin(self) -> None:
        self.base = dict(self._scan())
        self.last = dict(self.base)
        self.own = own_cpu_seconds()
        self.machine = machine_ticks()

    def sample(self) -> None:
        for key, cpu in self._scan():
            self.last[key] = cpu
            self.base.setdefault(key, 0.0)  # born in the window

    def end(self) -> dict[str, float]:
        self.sample()
        totals: dict[str, float] = {}
        for key, cpu in self.last.items():
            totals[key[0]] = totals.get(key[0], 0.0) + cpu - self.base[key]
        totals["generator"] = own_cpu_seconds() - self.own
        busy, total = machine_ticks()
        cores = os.cpu_count() or 1
        # Jiffies of all CPUs together, as CPU seconds.
        totals["machine"] = (busy - self.machine[0]) / CLOCK_TICKS
        totals["machine_capacity"] = (total - self.machine[1]) / CLOCK_TICKS or cores
        return totals


# --- One load run ----------------------------------------------------------------------------------------


@dataclass
class RunResult:
    label: str
    target: str
    scenario: str  # idle, pipeline
    n: int
    duration: float  # of all windows together
    hits: list[Hit]
    windows: list[tuple[float, float]]  # on the monotonic clock (asyncio's loop.time())
    cpu: dict[str, float]
    lags_ms: list[float]
    changer: dict[str, Any] | None
    server_errors: int

    def inside(self, moment: float) -> bool:
        return any(start <= moment < end for start, end in self.windows)

    def in_window(self, kind: str, by: str = "sent") -> list[Hit]:
        return [h for h in self.hits if h.kind == kind and self.inside(getattr(h, by))]

    def merged(self, other: RunResult) -> RunResult:
        """Two runs of the same kind as one (the halves of an A-B-B-A pair)."""
        changer = None
        if self.changer and other.changer:
            changer = {k: self.changer[k] + other.changer[k] for k in self.changer}
        return RunResult(self.label, self.target, self.scenario, self.n, self.duration + other.duration,
                         self.hits + other.hits, self.windows + other.windows,
                         {k: self.cpu.get(k, 0.0) + other.cpu.get(k, 0.0) for k in {*self.cpu, *other.cpu}},
                         self.lags_ms + other.lags_ms, changer, self.server_errors + other.server_errors)

    @property
    def polls(self) -> list[Hit]:
        return self.in_window("poll")

    @property
    def served_per_s(self) -> float:
        return sum(1 for h in self.in_window("poll", "done") if h.ok) / self.duration

    @property
    def expected_per_s(self) -> float:
        return self.n / CYCLE_SECONDS

    @property
    def keep_up(self) -> float:
        return self.served_per_s / self.expected_per_s

    def latencies(self, kind: str = "poll") -> list[float]:
        # Timed-out and unfinished requests count with the time they had taken: the percentiles are lower bounds.
        return [h.ms for h in self.in_window(kind) if h.status != 0]

    def errors(self) -> dict[str, int]:
        hits = [h for h in self.hits if self.inside(h.sent) or h.kind == "enter"]
        return {
            "non-2xx": sum(1 for h in hits if h.status > 0 and not h.ok),
            "timeouts": sum(1 for h in hits if h.status == -1),
            "refused/reset": sum(1 for h in hits if h.status == 0),
            "unfinished": sum(1 for h in hits if h.status == -2),
        }

    @property
    def error_count(self) -> int:
        return sum(self.errors().values())

    def p(self, q: float, kind: str = "poll") -> float:
        return quantile(self.latencies(kind), q)

    def passes(self, knee_p95_s: float) -> bool:
        return self.error_count == 0 and self.p(0.95) <= knee_p95_s * 1000


def server_log_errors(target: Target) -> int:
    assert target.server
    text = target.server.output()
    return sum(text.count(mark) for mark in ("[ERROR]", "[CRITICAL]", "Traceback"))


async def current_thumbnails(target: Target) -> set[str]:
    """The images the wall shows now (earlier runs' captures changed some): what a display loading the page
    has, so it fetches only those that change during the run."""
    token = target.tokens[0]
    status, _, _ = await fetch(target.port, f"/display/{token}/", b"", 10)
    assert status == 302, status
    status, _, body = await fetch(target.port, f"/wall/{target.slug}/poll/?cursor=1", display_headers(target, token),
                                  10)
    assert status == 200, status
    return {src.decode() for src in IMG_RE.findall(body)}


async def drive(phase: Phase, tracker: CpuTracker) -> None:
    loop = asyncio.get_running_loop()
    phase.on_the_wall = await current_thumbnails(phase.target)
    phase.t0 = loop.time()
    phase.window_start = phase.t0 + phase.warmup
    phase.window_end = phase.window_start + phase.duration
    displays = [loop.create_task(phase.display(i)) for i in range(phase.n)]
    lag = loop.create_task(phase.watch_lag())
    await asyncio.sleep(phase.window_start - loop.time())
    tracker.begin()
    while loop.time() < phase.window_end - 1:
        await asyncio.sleep(1)
        tracker.sample()
    await asyncio.sleep(max(0.0, phase.window_end - loop.time()))
    phase.cpu = tracker.end()
    # Requests sent in the window may finish for a moment; nothing new starts.
    await asyncio.wait([*displays, lag], timeout=phase.drain)
    for task in [*displays, lag, *phase.side_tasks]:
        task.cancel()
    await asyncio.gather(*displays, lag, *phase.side_tasks, return_exceptions=True)


def run_load(env: BenchEnvironment, target: Target, scenario: str, n: int, duration: float,
             args: argparse.Namespace, label: str) -> RunResult:
    assert target.server and env.redis
    target.server.require_alive()
    errors_before = server_log_errors(target)
    changer = None
    groups = {target.server.pid: "gunicorn", env.redis.pid: "redis"}
    if scenario == "pipeline":
        changer = Child(f"changer-{target.name}-{label.replace(' ', '-')}-{time.monotonic():.0f}", [
            PYTHON, __file__, "--role", "changer", "--capture-interval", str(args.capture_interval),
            "--new-image-fraction", str(args.new_image_fraction)], target.env, env.logs)
        groups[changer.pid] = "changer"
    print(f"  {label}: {target.name}, {scenario}, {n} displays, {duration:.0f} s ...", file=sys.stderr, flush=True)
    phase = Phase(target, n, args.warmup, duration, args.timeout, args.drain, args.seed + n)
    try:
        asyncio.run(drive(phase, CpuTracker(groups, target.dbname)))
    finally:
        changer_report = None
        if changer:
            changer.stop()
            with contextlib.suppress(ValueError, IndexError):
                changer_report = json.loads(changer.output().strip().splitlines()[-1])
    target.server.require_alive()
    return RunResult(label, target.name, scenario, n, duration, phase.hits, [(phase.window_start, phase.window_end)],
                     phase.cpu, phase.lags_ms, changer_report, server_log_errors(target) - errors_before)


# --- Sequential baseline ----------------------------------------------------------------------------


@dataclass
class Baseline:
    label: str
    status: int = 0
    nbytes: int = 0
    tiles: int = 0
    times_ms: dict[str, list[float]] = field(default_factory=dict)


async def sequential_baseline(targets: Sequence[Target], rounds: int, k_tiles: int,
                              tiles: int) -> list[Baseline]:
    """One client, one request at a time, the targets and kinds interleaved round by round."""
    loop = asyncio.get_running_loop()
    far_future = str(int((time.time() + 86400) * 1_000_000))
    kinds = [
        Baseline("idle poll (nothing changed: 204)"),
        Baseline(f"poll, {k_tiles} of {tiles} tiles changed"),
        Baseline(f"poll, all {tiles} tiles changed"),
        Baseline("one thumbnail (wall-capture)"),
    ]
    plans = {}
    for target in targets:
        token = target.tokens[0]
        status, head, _ = await fetch(target.port, f"/display/{token}/", b"", 10)
        assert status == 302 and b"cw_display=" in head, (target.name, status)
        headers = display_headers(target, token)
        poll = f"/wall/{target.slug}/poll/?cursor="
        plans[target.name] = [(poll + far_future, 204, 0), (poll + target.changed[k_tiles], 200, k_tiles),
                              (poll + "1", 200, tiles), (target.thumbs[0], 200, -1)], headers
    for round_no in range(rounds + 3):  # 3 warm-up rounds
        for target in targets if round_no % 2 == 0 else list(reversed(targets)):
            plan, headers = plans[target.name]
            for kind, (path, expect, expect_tiles) in zip(kinds, plan, strict=True):
                started = loop.time()
                status, head, body = await fetch(target.port, path, headers, 10)
                elapsed = (loop.time() - started) * 1000
                assert status == expect, (target.name, path, status)
                if expect_tiles >= 0:
                    assert body.count(TILE_MARK) == expect_tiles, (target.name, path, body.count(TILE_MARK))
                kind.status, kind.nbytes, kind.tiles = status, len(head) + 4 + len(body), max(expect_tiles, 0)
                if round_no >= 3:
                    kind.times_ms.setdefault(target.name, []).append(elapsed)
    return kinds


# --- Report -------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    targets: list[Target]
    baseline: list[Baseline]
    k_tiles: int
    diagnosis: dict[str, dict[str, Any]]
    main_runs: list[RunResult]
    steps: list[RunResult]


def pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


def ms3(result: RunResult, kind: str = "poll") -> str:
    if not result.latencies(kind):
        return "-"
    return f"{result.p(0.5, kind):.0f} / {result.p(0.95, kind):.0f} / {result.p(0.99, kind):.0f}"


def served_requests(result: RunResult) -> int:
    return sum(1 for kind in ("poll", "image") for h in result.in_window(kind, "done") if h.ok)


def server_cpu_per_request(result: RunResult) -> float:
    return (result.cpu.get("gunicorn", 0.0) + result.cpu.get("postgres", 0.0)) / max(served_requests(result), 1)


def run_row(result: RunResult, reference_p50: float) -> list[str]:
    polls = [h for h in result.polls if h.ok]
    with_tiles = [h for h in polls if h.status == 200]
    images = [h for h in result.in_window("image", "done") if h.ok]
    return [
        result.label, result.target, str(result.n), f"{result.n / POLL_SECONDS:.0f}",
        f"{result.served_per_s:.1f}", f"{result.keep_up:.2f}",
        ms3(result), f"{result.p(0.5) / reference_p50:.1f}" if reference_p50 else "-",
        " / ".join(str(v) for v in result.errors().values()),
        pct(len(with_tiles), len(polls)) + (f" ({median([h.tiles for h in with_tiles]):.0f})" if with_tiles else ""),
        f"{sum(h.nbytes for h in polls) / max(len(polls), 1):,.0f}",
        f"{len(images) / result.duration:.1f}", ms3(result, "image"),
    ]


def cpu_row(result: RunResult) -> list[str]:
    cpu, duration = result.cpu, result.duration
    ours = cpu.get("gunicorn", 0.0) + cpu.get("postgres", 0.0) + cpu.get("redis", 0.0) + cpu.get("changer", 0.0)
    ours += cpu["generator"]

    def share(seconds: float) -> str:
        return f"{100 * seconds / duration:.0f}%"

    return [
        result.label, result.target, str(result.n), share(cpu.get("gunicorn", 0.0)),
        share(cpu.get("postgres", 0.0)) if result.target == "PostgreSQL" else "-",
        share(cpu.get("changer", 0.0)) if result.scenario == "pipeline" else "-",
        share(cpu["generator"]), f"{quantile(result.lags_ms, 0.99):.0f}" if result.lags_ms else "-",
        share(max(0.0, cpu["machine"] - ours)),
        f"{100 * cpu['machine'] / cpu['machine_capacity']:.0f}%",
        f"{1000 * server_cpu_per_request(result):.1f}" if served_requests(result) else "-",
        f"{displays_per_core(result):.0f}" if displays_per_core(result) else "-",
    ]


def displays_per_core(result: RunResult) -> float:
    """Displays one fully used core of server (gunicorn + PostgreSQL) would carry at this run's cost: each display
    asks once per cycle, and its share of the thumbnails comes with it."""
    polls = sum(1 for h in result.in_window("poll", "done") if h.ok)
    server = result.cpu.get("gunicorn", 0.0) + result.cpu.get("postgres", 0.0)
    return CYCLE_SECONDS * polls / server if server else 0.0


def knee_text(name: str, runs: list[RunResult], knee_p95_s: float) -> str:
    runs = sorted(runs, key=lambda r: r.n)
    best = max((r.n for r in runs if r.passes(knee_p95_s)), default=0)
    above = [r for r in runs if r.n > best and not r.passes(knee_p95_s)]
    if not above:
        last = runs[-1]
        return (f"{name}: no knee up to {last.n} displays (p95 {last.p(0.95):,.0f} ms, served/expected "
                f"{last.keep_up:.2f}).")
    first = above[0]
    where = f"between {best} and {first.n} displays" if best else f"below {first.n} displays"
    return (f"{name}: the knee lies {where}; at {first.n}, p95 {first.p(0.95):,.0f} ms, {first.error_count} "
            f"errors, served/expected {first.keep_up:.2f}.")


def report(args: argparse.Namespace, outcome: Outcome, started_at: str, load: str) -> str:
    names = [t.name for t in outcome.targets]
    two = len(names) == 2
    out: list[str] = []
    # 1. Sequential baseline.
    rows = []
    for kind in outcome.baseline:
        medians = [median(kind.times_ms[name]) for name in names]
        rows.append([kind.label, str(kind.status), f"{kind.nbytes:,}",
                     *[f"{median(kind.times_ms[n]):.1f} / {quantile(kind.times_ms[n], 0.95):.1f}" for n in names],
                     *([ratio(medians[1], medians[0])] if two else [])])
    out.append(f"**Baseline**: one client, one request at a time on a fresh connection, {args.baseline_rounds} "
               "rounds with the servers and the requests interleaved:")
    out.append("")
    out.append(table(["request, one at a time", "status", "bytes", *[f"{n} ms median / p95" for n in names],
                      *(["PostgreSQL / SQLite"] if two else [])], rows))
    idle_p50 = {name: median(outcome.baseline[0].times_ms[name]) for name in names}
    tiles_p50 = {name: median(outcome.baseline[1].times_ms[name]) for name in names}

    # 2. Load runs.
    runs = outcome.main_runs + outcome.steps
    out.append("")
    out.append(f"**Under load**: measured {args.duration:.0f} s per database for the pipeline run and "
               f"{args.idle_duration:.0f} s for the idle one (each as two halves, A B B A), {args.step_duration:.0f} s "
               f"per step, each window after a {args.warmup:.0f} s ramp. \"Expected\" is "
               f"N/{CYCLE_SECONDS:g} s, what the displays send when every answer is instant; \"p50 / sequential\" "
               f"divides by the idle poll's sequential p50 for idle runs and by the {outcome.k_tiles}-tile poll's for "
               f"the others; latency is from connecting to the last byte. A request times out after "
               f"{args.timeout:g} s; one still open {args.drain:g} s after its window counts as unfinished, and both "
               "enter the percentiles with the time they had taken (so those are lower bounds).")
    out.append("")
    out.append(table(
        ["run", "database", "displays", "offered req/s (N/5)", "polls served/s", "served / expected",
         "poll ms p50 / p95 / p99", "p50 / sequential", "errors: non-2xx / timeouts / refused / unfinished",
         "polls with tiles (median tiles)", "bytes per poll", "thumbnails served/s", "thumbnail ms p50 / p95 / p99"],
        [run_row(r, (idle_p50 if r.scenario == "idle" else tiles_p50)[r.target]) for r in runs]))
    out.append("")
    out.append("CPU over each measured window as a share of one core, from /proc (\"other jobs\": the rest of the "
               "machine's busy time, kernel time charged to no process included; \"server ms/request\": gunicorn "
               "plus PostgreSQL backends per poll or thumbnail served; \"displays per server core\": how many "
               "displays one core of server would carry at that run's cost, a poll every "
               f"{CYCLE_SECONDS:g} s with its share of thumbnails):")
    out.append("")
    out.append(table(["run", "database", "displays", "gunicorn", "postgres", "changer", "load generator",
                      "loop lag p99 ms", "other jobs", f"machine busy (of {os.cpu_count()} cores)",
                      "server ms/request", "displays per server core"], [cpu_row(r) for r in runs]))

    # 3. In words.
    findings = []
    by_key = {(r.label, r.target): r for r in outcome.main_runs}
    for label in dict.fromkeys(r.label for r in outcome.main_runs):
        sqlite, pg = by_key.get((label, "SQLite")), by_key.get((label, "PostgreSQL"))
        if sqlite and pg:
            findings.append(
                f"**PostgreSQL / SQLite, {label} run ({sqlite.n} displays): p50 {ratio(pg.p(0.5), sqlite.p(0.5))}, "
                f"p95 {ratio(pg.p(0.95), sqlite.p(0.95))}, server CPU per request "
                f"{ratio(server_cpu_per_request(pg), server_cpu_per_request(sqlite))}.**")
    for name in names:
        mine = [r for r in runs if r.target == name and r.scenario == "pipeline"]
        if mine:
            findings.append("**" + knee_text(name, mine, args.knee_p95) + "**")
    pipeline = [r for r in outcome.main_runs if r.scenario == "pipeline"]
    for run in pipeline:
        polls = [h for h in run.polls if h.ok]
        tiles = [h for h in polls if h.status == 200]
        thumbnails = [h for h in run.in_window("image") if h.ok]
        if run.changer and tiles:
            c = run.changer
            rate = c["captures"] / c["seconds"]
            findings.append(
                f"{run.target} pipeline run: {rate:.2f} captures/s recorded ({c['new_images']} of {c['captures']} "
                f"with a new image), and {pct(len(tiles), len(polls))} of the polls carried tiles: `record_success` "
                f"sets `changed_at` on every capture, a repeated image included (the tile's age and stale time "
                f"change), so at the default 30 s interval a poll is never idle. A poll carried "
                f"{median([h.tiles for h in tiles]):.0f} tiles (median) where the capture rate alone gives "
                f"{rate * CYCLE_SECONDS:.1f}: the cursor comes back 1 s behind (`grid.SETTLE_MARGIN`), so the "
                f"tiles of the last second before a poll come again in the next one. Each new image was then "
                f"fetched by every display through Django: {len(thumbnails) / max(len(polls), 1):.2f} thumbnail "
                f"requests per poll.")
    for label in dict.fromkeys(r.label for r in outcome.main_runs):
        sqlite, pg = by_key.get((label, "SQLite")), by_key.get((label, "PostgreSQL"))
        if sqlite and pg and pg.p(0.95) > 1.5 * sqlite.p(0.95):
            findings.append(
                f"{label.capitalize()} run: PostgreSQL's server CPU per request is "
                f"{ratio(server_cpu_per_request(pg), server_cpu_per_request(sqlite))}x SQLite's but its p95 "
                f"{ratio(pg.p(0.95), sqlite.p(0.95))}x: the difference is waiting, not work; each request makes "
                f"several round trips to a backend process that competes for the same {os.cpu_count()} cores.")
    for name, d in outcome.diagnosis.items():
        connection = (f"the connection health check (CONN_MAX_AGE kept) {d['per_request_connection']:.2f} ms"
                      if d["persistent"] else
                      f"opening the database connection, which CONN_MAX_AGE 0 does on every request, "
                      f"{d['per_request_connection']:.2f} ms")
        server_side = (f" (the server plans it in {d['pg_planning']:.2f} ms and runs it in "
                       f"{d['pg_execution']:.2f} ms)" if d["pg_planning"] == d["pg_planning"] else "")
        findings.append(
            f"In-process, {name} (Django test client, median of {args.baseline_rounds}): idle poll view "
            f"{d['idle_view']:.2f} ms, of which `changed_since()` {d['changed_since']:.2f} ms, whose SQL alone "
            f"takes {d['sql_only']:.2f} ms{server_side}: the rest, {d['changed_since'] - d['sql_only']:.2f} ms, is "
            f"spent in Django around the SQL (building the select_related query); {connection}; the "
            f"{outcome.k_tiles}-tile poll view "
            f"{d['tiles_view']:.2f} ms ({d['tiles_view'] / d['idle_view']:.1f}x idle), one thumbnail "
            f"{d['thumb_view']:.2f} ms.")
    logged = sum(r.server_errors for r in runs)
    findings.append(f"gunicorn logged {logged} errors (ERROR, CRITICAL such as worker timeouts, tracebacks) "
                    "during the load runs.")
    generator = max((r.cpu["generator"] / r.duration for r in runs), default=0)
    lag = max((quantile(r.lags_ms, 0.99) for r in runs if r.lags_ms), default=0)
    others = max((max(0.0, r.cpu["machine"] - sum(v for k, v in r.cpu.items() if k not in ("machine",
                                                                                         "machine_capacity")))
                  / r.duration for r in runs), default=0)
    findings.append(
        f"The load generator (one asyncio thread) used at most {100 * generator:.0f}% of a core, event-loop lag "
        f"p99 at most {lag:.0f} ms; it shares the {os.cpu_count()} cores with the servers, and other jobs on the "
        f"machine took up to {100 * others:.0f}% of a core during a window.")
    out.append("")
    out.extend(f"- {f}" for f in findings)

    pg_version = next((t.version for t in outcome.targets if t.version), "")
    header = (
        f"## Wall displays under load\n\n"
        f"`{command_line()}` — {started_at}, {os.cpu_count()} cores, load average before the run {load}, "
        f"Python {sys.version.split()[0]}.\n\n"
        f"Server: `{gunicorn_command(args)}`, on loopback, DEBUG off, one per database and both up throughout: "
        f"SQLite (WAL) in a temp DATA_DIR with the embedded redis-server (the defaults)"
        + (f", and PostgreSQL {pg_version.split()[0]} on this machine (CONN_MAX_AGE 60, same redis)" if two else "")
        + f". Board: {args.tiles} instances, one display token per display. Each display enters through "
        f"`/display/<token>/`, then polls `/wall/<slug>/poll/?cursor=...` as `static/console-wall.js` does (5 s "
        f"+ 0–0.5 s after each answer, backing off after a failure), on a fresh connection each time, and fetches "
        f"every thumbnail it has not seen. **Idle** runs: nothing is captured, every poll answers 204. "
        f"**Pipeline** runs (and the steps): a separate process records a capture of every instance every "
        f"{args.capture_interval:g} s through `record_success`, as the workers do at the default interval, "
        f"{100 * args.new_image_fraction:.0f}% of them with a new image. A run passes while its poll p95 stays "
        f"within {args.knee_p95:g} s and no request fails; the step test doubles the displays while the runs pass, "
        f"or halves them until one does.\n"
    )
    return header + "\n" + "\n".join(out)


# --- Main -------------------------------------------------------------------------------------------------


def orchestrate(args: argparse.Namespace, stack: contextlib.ExitStack) -> Outcome:
    env = BenchEnvironment(stack, keep=args.keep)
    env.env.pop("GUNICORN_CMD_ARGS", None)
    env.start_redis()
    most = max([args.displays, *step_counts(args)])
    media = env.root / "media-sqlite"
    media.mkdir()
    targets = [Target("SQLite", {**env.env, "MEDIA_ROOT": str(media)})]
    if not args.no_postgres and (url := postgres_url()):
        import psycopg

        dbname, db_url = create_postgres_database(stack, url)
        with psycopg.connect(db_url) as conn:
            version = conn.info.parameter_status("server_version") or ""
        media = env.root / "media-postgres"
        media.mkdir()
        targets.append(Target("PostgreSQL", {**env.env, "MEDIA_ROOT": str(media), "DATABASE_URL": db_url},
                              dbname=dbname, version=version))
    for target in targets:
        print(f"preparing {target.name}: migrate, {args.tiles} instances, {most} display tokens, gunicorn",
              file=sys.stderr, flush=True)
        prepare_target(env, target, most, args)
        start_server(stack, env, target, args)

    print("sequential baseline, then the in-process diagnosis", file=sys.stderr, flush=True)
    # The tiles a pipeline poll carries on average: captures per second times the time between polls.
    k_tiles = min(args.tiles - 1, max(1, round(args.tiles * CYCLE_SECONDS / args.capture_interval)))
    baseline = asyncio.run(sequential_baseline(targets, args.baseline_rounds, k_tiles, args.tiles))
    diagnosis = {t.name: diagnose(env, t, k_tiles, args.baseline_rounds) for t in targets}

    def in_turn(order: int) -> list[Target]:
        # Which database goes first alternates from one pair of runs to the next (drift hits both alike).
        return targets if order % 2 == 0 else list(reversed(targets))

    def abba(scenario: str, duration: float) -> list[RunResult]:
        """Each database twice, in the order A B B A, each time for half the duration: noise that drifts
        during the pair hits both alike. The halves are pooled."""
        halves: dict[str, RunResult] = {}
        for target in [*targets, *reversed(targets)]:
            half = run_load(env, target, scenario, args.displays, duration / 2, args, scenario)
            halves[target.name] = halves[target.name].merged(half) if target.name in halves else half
        return [halves[t.name] for t in targets]

    main_runs: list[RunResult] = []
    if args.idle_duration > 0:
        main_runs += abba("idle", args.idle_duration)
    main_runs += abba("pipeline", args.duration)

    # The step test, per database: upwards until a step fails; with --steps auto and a failing pipeline run,
    # downwards until a step passes.
    plans: dict[str, tuple[list[int], bool]] = {}
    for target in targets:
        passed = all(r.passes(args.knee_p95) for r in main_runs if r.target == target.name
                     and r.scenario == "pipeline")
        if args.steps.strip() != "auto" or passed:
            plans[target.name] = step_counts(args), True
        else:
            counts = [args.displays // 2**k for k in range(1, args.max_steps + 1)]
            plans[target.name] = [n for n in counts if n > 0], False
    steps: list[RunResult] = []
    for order in range(max((len(counts) for counts, _ in plans.values()), default=0)):
        for target in in_turn(order + 1):
            counts, upwards = plans[target.name]
            if order >= len(counts):
                continue
            result = run_load(env, target, "pipeline", counts[order], args.step_duration, args,
                              f"step {counts[order]}")
            steps.append(result)
            if result.passes(args.knee_p95) != upwards:  # found the other side of the knee
                plans[target.name] = counts[: order + 1], upwards
    steps.sort(key=lambda r: (r.target != "SQLite", r.n))
    return Outcome(targets, baseline, k_tiles, diagnosis, main_runs, steps)


def main() -> int:
    args = parse_args()
    roles = {"prepare": role_prepare, "changer": role_changer, "diagnose": role_diagnose}
    if args.role:
        roles[args.role](args)
        return 0
    exit_cleanly_on_sigterm()
    started_at = today()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    began = time.monotonic()
    try:
        with contextlib.ExitStack() as stack:
            outcome = orchestrate(args, stack)
    except KeyboardInterrupt:
        print("interrupted: servers stopped, temp dir and database removed", file=sys.stderr)
        return 130
    text = report(args, outcome, started_at, load)
    print(text)
    print(f"\n({time.monotonic() - began:.0f} s in all)", file=sys.stderr)
    if not args.no_doc:
        write_doc_section("wall_load", text)
        print("wrote docs/benchmarks.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
