"""Faults survived, with real processes: Redis restarts, a killed worker, ECS storms, two beats, a locked database.

Each test runs real Celery workers (and beat where it matters) against a Redis server of its own that
the test may kill, and the simulator over HTTP. Slow by nature (tens of seconds each).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis as redis_lib
from django.conf import settings as django_settings
from django.db import connection
from django.test import Client

from screenshots.models import Capture, ErrorCategory, Instance, InstanceState
from screenshots.storage import TEMP_PREFIX
from tests.conftest import (
    REDIS_SERVER,
    ROOT,
    RUNNING,
    RUNNING_2,
    RUNNING_PNG,
    WorkerProcess,
    free_port,
    media_files,
    point_celery_at,
    wait_for,
    worker_env,
)

pytestmark = [pytest.mark.worker, pytest.mark.timeout(240)]
RUNNING_IDS = (RUNNING, RUNNING_PNG, RUNNING_2)


class RedisServer:
    """A redis-server the test may kill and start again on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = tempfile.mkdtemp(prefix="cw-fault-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir], stdout=subprocess.DEVNULL)
        client = redis_lib.Redis.from_url(self.url)
        wait_for(lambda: _ping(client), message="redis to answer")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)


def _ping(client: redis_lib.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis_lib.ConnectionError:
        return False


class BeatProcess:
    def __init__(self, env: dict[str, str], name: str = "beat") -> None:
        self.dir = tempfile.mkdtemp(prefix=f"cw-{name}-")
        self.log_path = Path(self.dir) / "beat.log"
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "dashboard", "beat", "--loglevel=INFO",
             f"--schedule={self.dir}/schedule"], cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(20)
        self.log.close()


class Supervisor(threading.Thread):
    """Restarts the worker (processes[0]) when it exits, as systemd's Restart=always would."""

    def __init__(self, processes: list[Any], env: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.processes, self.env, self.restarts = processes, env, 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(1.0):
            if self.processes[0].proc.poll() is not None:
                self.restarts += 1
                self.processes.append(self.processes[0])  # keep it for the teardown and its log
                self.processes[0] = WorkerProcess(self.env, name=f"w1r{self.restarts}")

    def stop(self) -> None:
        self.stopping.set()
        self.join(60)


@pytest.fixture
def own_redis(settings: Any) -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    previous = django_settings.REDIS_URL
    settings.REDIS_URL = server.url
    point_celery_at(server.url)
    yield server
    if server.proc and server.proc.poll() is None:
        server.kill()
    point_celery_at(previous)


@pytest.fixture
def fast_fleet(transactional_db: None, instances: dict) -> dict:
    # The shortest interval there is: 10 s. Faults should heal within two of them.
    Instance.objects.update(capture_interval=10)
    return instances


@pytest.fixture
def processes(transactional_db: None, own_redis: RedisServer, media_root: Path) -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for proc in started:
        proc.stop()


def env_for(redis_url: str, media_root: Path, **extra: str) -> dict[str, str]:
    return {**worker_env(redis_url, media_root), "CAPTURE_TICK_SECONDS": "1", **extra}


def captures_of(instance_ids: tuple[str, ...]) -> int:
    return Capture.objects.filter(instance__instance_id__in=instance_ids).values("instance").distinct().count()


class RedisRestartTestCase:
    def test_workers_and_beat_reconnect_and_captures_resume(
        self, fast_fleet: dict, simulator: Any, own_redis: RedisServer, processes: list, media_root: Path,
        django_user_model: Any,
    ) -> None:
        env = env_for(own_redis.url, media_root)
        processes += [WorkerProcess(env), BeatProcess(env)]
        wait_for(lambda: captures_of(RUNNING_IDS) == 3, timeout=30, message="first captures")
        # Production runs workers under a supervisor (systemd, a container runtime) that restarts a worker
        # that exits; so does this test. A kombu bug can make a worker exit when Redis vanishes mid-ack
        # (AttributeError in kombu.transport.redis._connparams); the restarts are counted and reported.
        supervisor = Supervisor(processes, env)
        supervisor.start()
        own_redis.kill()
        killed_at = time.monotonic()
        # Pages keep serving the last captures while Redis is away.
        client = Client()
        client.force_login(django_user_model.objects.create_user("v", password="pw-123456789"))
        html = client.get("/").content.decode()
        assert html.count("/thumb.jpg") >= 3
        time.sleep(3)
        own_redis.start()  # empty: the queue and every lock are gone

        calls_before = len(simulator.control.screenshot_calls())
        try:
            wait_for(lambda: len(simulator.control.screenshot_calls()) >= calls_before + 3, timeout=90,
                     message="captures to resume after the restart")
        except AssertionError as exc:
            # Celery has had bugs where a worker reconnects but never consumes again (celery#8030,
            # kombu#2007): show what the worker and beat said, to tell that from a slow machine.
            worker, beat = processes[0], processes[1]
            raise AssertionError(f"{exc}\n--- worker ---\n{worker.output()[-3000:]}\n--- beat ---\n"
                                 f"{beat.log_path.read_text(errors='replace')[-2000:]}") from None
        resumed_after = time.monotonic() - killed_at
        supervisor.stop()
        print(f"captures resumed {resumed_after:.1f} s after the kill; worker restarts: {supervisor.restarts}")
        # Two intervals, the claim lease's slack, and the time a restarted worker takes to come up.
        assert resumed_after < 2 * 10 + 15 + 10, resumed_after
        # Never two calls on one instance within 10 s, across the restart too.
        for instance_id in RUNNING_IDS:
            times = [c["monotonic"] for c in simulator.control.screenshot_calls(instance_id) if c["code"] == "Success"]
            assert all(b - a >= 10 for a, b in zip(times, times[1:], strict=False)), (instance_id, times)


class WorkerKilledTestCase:
    def test_a_capture_killed_mid_flight_is_retried_by_another_worker(
        self, fast_fleet: dict, simulator: Any, own_redis: RedisServer, processes: list, media_root: Path
    ) -> None:
        simulator.control.knobs(latency_ms=4000)
        env = env_for(own_redis.url, media_root)
        first, second = WorkerProcess(env, concurrency=1, name="w1"), WorkerProcess(env, concurrency=1, name="w2")
        processes += [first, second]
        instance = fast_fleet[RUNNING]
        from screenshots import tasks

        tasks.capture_instance.delay(instance.pk, force=True)
        # Find the pool process that is waiting on the slow API call, and kill it without warning.
        wait_for(lambda: b"Task screenshots.tasks.capture_instance" in first.log_path.read_bytes()
                 + second.log_path.read_bytes(), message="a worker to take the task")
        busy = first if b"capture_instance" in first.log_path.read_bytes() else second
        time.sleep(1.0)
        children = psutil.Process(busy.proc.pid).children()
        assert children
        for child in children:
            child.send_signal(signal.SIGKILL)
        simulator.control.knobs(latency_ms=0)

        # The dead worker's instance lock lasts its lease (35 s); the retried request waits it out.
        capture = wait_for(lambda: Capture.objects.filter(instance=instance).first(), timeout=60,
                           message="the retried capture")
        time.sleep(2)
        assert Capture.objects.filter(instance=instance).count() == 1  # no duplicate row
        files = media_files(media_root)
        assert files == {capture.image.name, capture.thumbnail.name}  # no partial or orphan file
        assert not any(Path(name).name.startswith(TEMP_PREFIX) for name in files)
        assert b"WorkerLostError" in busy.log_path.read_bytes() or b"exited" in busy.log_path.read_bytes()


class EcsStormTestCase:
    def test_backoff_holds_calls_down_and_every_tile_says_what_is_wrong(
        self, fast_fleet: dict, simulator: Any, own_redis: RedisServer, processes: list, media_root: Path
    ) -> None:
        env = env_for(own_redis.url, media_root)
        processes += [WorkerProcess(env), BeatProcess(env)]
        wait_for(lambda: captures_of(RUNNING_IDS) == 3, timeout=30, message="first captures")
        good = {i: InstanceState.objects.get(instance__instance_id=i).latest_capture_id for i in RUNNING_IDS}
        faults = {RUNNING: ("5xx", ErrorCategory.SERVER), RUNNING_2: ("reset", ErrorCategory.NETWORK),
                  RUNNING_PNG: ("bad_json", ErrorCategory.MALFORMED)}
        for instance_id, (fault, _) in faults.items():
            simulator.control.patch(instance_id, fault=fault)
        storm_started = time.monotonic()
        time.sleep(50)
        calls = [c for c in simulator.control.screenshot_calls() if c["monotonic"] >= storm_started]
        for instance_id, (_, category) in faults.items():
            mine = [c for c in calls if c["instance_id"] == instance_id]
            # Every 10 s without back-off: 5 calls in 50 s. With it (10, 20, 40 s apart): at most 3.
            assert 2 <= len(mine) <= 3, (instance_id, len(mine))
            state = InstanceState.objects.get(instance__instance_id=instance_id)
            assert state.error_category == category
            assert state.latest_capture_id == good[instance_id]


class TwoBeatsTestCase:
    def test_two_beats_still_capture_each_instance_once_per_interval(
        self, fast_fleet: dict, simulator: Any, own_redis: RedisServer, processes: list, media_root: Path
    ) -> None:
        env = env_for(own_redis.url, media_root)
        processes += [WorkerProcess(env), BeatProcess(env, "beat1"), BeatProcess(env, "beat2")]
        time.sleep(25)
        for instance_id in RUNNING_IDS:
            times = [c["monotonic"] for c in simulator.control.screenshot_calls(instance_id)]
            assert 2 <= len(times) <= 3, (instance_id, times)
            assert all(b - a >= 9.5 for a, b in zip(times, times[1:], strict=False)), (instance_id, times)
        assert all(c["code"] != "Throttling" for c in simulator.control.screenshot_calls())


@pytest.mark.skipif("sqlite" not in django_settings.DATABASES["default"]["ENGINE"],
                    reason="holds SQLite's write lock; PostgreSQL has no such file lock")
class DatabaseLockedTestCase:
    def test_tasks_retry_pages_answer_503_and_nothing_is_lost(
        self, fast_fleet: dict, simulator: Any, own_redis: RedisServer, processes: list, media_root: Path,
        django_user_model: Any,
    ) -> None:
        user = django_user_model.objects.create_user("v", password="pw-123456789")
        client = Client()
        client.force_login(user)
        env = env_for(own_redis.url, media_root)
        processes.append(WorkerProcess(env))
        # Another process holds SQLite's write lock for longer than the 20 s busy timeout.
        locker = sqlite3.connect(connection.settings_dict["NAME"], isolation_level=None, timeout=1,
                                 check_same_thread=False)
        locker.execute("BEGIN EXCLUSIVE")
        release = threading.Timer(30, lambda: locker.execute("ROLLBACK"))
        release.start()
        from screenshots import tasks

        tasks.capture_instance.delay(fast_fleet[RUNNING].pk, force=True)
        # Reading still works (WAL): the grid keeps its last pictures.
        assert client.get("/").status_code == 200
        # A write waits out the busy timeout, then gets a clear answer instead of a 500.
        response = Client().post("/login/", {"username": "v", "password": "pw-123456789"})
        assert response.status_code == 503
        assert "database is busy" in response.content.decode()

        capture = wait_for(lambda: Capture.objects.filter(instance=fast_fleet[RUNNING]).first(), timeout=90,
                           message="the capture after the lock is released")
        release.join()
        locker.close()
        assert (media_root / capture.image.name).exists()
        assert client.get("/").status_code == 200
