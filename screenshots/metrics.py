"""Pipeline metrics and heartbeats, kept in Redis so every worker host adds to the same figures.

Prometheus scrapes the web app (`/metrics`), which reads them back with a custom collector.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import redis
from django.db.models import Max
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from screenshots import coordination

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
QUEUE = "celery"


def _safely(action: str, fn: object) -> None:
    # Metrics must never fail a capture: Redis trouble here is logged and forgotten.
    try:
        fn()  # type: ignore[operator]
    except redis.RedisError as exc:
        log.warning("metrics: could not %s: %s", action, exc)


def record_call(outcome: str, code: str, seconds: float) -> None:
    bucket = next((str(b) for b in LATENCY_BUCKETS if seconds <= b), "+Inf")

    def write() -> None:
        with coordination.connection().pipeline(transaction=False) as pipe:
            pipe.hincrby(coordination.key("metrics", "outcomes"), outcome, 1)
            if code:
                pipe.hincrby(coordination.key("metrics", "errors"), code, 1)
            pipe.hincrby(coordination.key("metrics", "latency"), bucket, 1)
            pipe.hincrbyfloat(coordination.key("metrics", "latency"), "sum", seconds)
            pipe.execute()

    _safely("record a call", write)


def record_rejected(code: str) -> None:
    """A 200 reply whose image we refused: an error by code, though the call itself succeeded."""
    _safely("record a rejection", lambda: coordination.connection().hincrby(
        coordination.key("metrics", "errors"), code, 1))


def heartbeat(role: str) -> None:
    _safely(f"beat for {role}", lambda: coordination.connection().set(coordination.key("heartbeat", role), time.time()))


def last_heartbeat(role: str) -> float | None:
    value = coordination.connection().get(coordination.key("heartbeat", role))
    return float(value) if value is not None else None


def queue_depth() -> int:
    return int(coordination.connection().llen(QUEUE))


def pipeline_health() -> dict[str, object]:
    """Is beat alive, are workers consuming, how old is the newest capture (seconds, None if never)."""
    from django.conf import settings

    from screenshots.models import InstanceState

    now = time.time()
    beat = last_heartbeat("beat")
    worker = last_heartbeat("worker")
    newest = InstanceState.objects.aggregate(newest=Max("last_success_at"))["newest"]
    beat_age = now - beat if beat else None
    worker_age = now - worker if worker else None
    newest_age = now - newest.timestamp() if newest else None
    tick = settings.CAPTURE_TICK_SECONDS
    checks = {
        "beat_alive": beat_age is not None and beat_age < max(30, tick * 10),
        # Beat's own task runs on a worker every tick, so a consuming worker beats that often too.
        "workers_consuming": worker_age is not None and worker_age < max(30, tick * 10),
        "recent_capture": newest_age is not None and newest_age < 600,
    }
    return {
        "ok": all(checks.values()),
        **checks,
        "beat_age_seconds": beat_age,
        "worker_age_seconds": worker_age,
        "newest_capture_age_seconds": newest_age,
        "queue_depth": queue_depth(),
    }


class PipelineCollector(Collector):
    def collect(self) -> Iterator[object]:
        from screenshots.models import Instance, Status, status_filter

        conn = coordination.connection()
        outcomes = conn.hgetall(coordination.key("metrics", "outcomes"))
        family = CounterMetricFamily("consolewall_capture_calls", "Screenshot API calls by outcome",
                                     labels=["outcome"])
        for outcome, count in sorted(outcomes.items()):
            family.add_metric([outcome.decode()], int(count))
        yield family

        errors = conn.hgetall(coordination.key("metrics", "errors"))
        family = CounterMetricFamily("consolewall_capture_errors", "Failed captures by error code", labels=["code"])
        for code, count in sorted(errors.items()):
            family.add_metric([code.decode()], int(count))
        yield family

        latency = {k.decode(): float(v) for k, v in conn.hgetall(coordination.key("metrics", "latency")).items()}
        cumulative, buckets = 0.0, []
        for bound in (*(str(b) for b in LATENCY_BUCKETS), "+Inf"):
            cumulative += latency.get(bound, 0.0)
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily("consolewall_api_latency_seconds", "GetInstanceScreenshot latency",
                                    buckets=buckets, sum_value=latency.get("sum", 0.0))

        yield GaugeMetricFamily("consolewall_queue_depth", "Tasks waiting in the Celery queue", value=queue_depth())

        from django.utils import timezone

        now = timezone.now()
        by_status = GaugeMetricFamily("consolewall_instances", "Instances by tile status", labels=["status"])
        for status in Status:
            by_status.add_metric([status.value], Instance.objects.filter(status_filter(status, now)).count())
        yield by_status

        health = pipeline_health()
        age = health["newest_capture_age_seconds"]
        yield GaugeMetricFamily("consolewall_newest_capture_age_seconds", "Age of the newest capture",
                                value=age if age is not None else float("nan"))
        for role in ("beat", "worker"):
            beat_age = health[f"{role}_age_seconds"]
            yield GaugeMetricFamily(f"consolewall_{role}_heartbeat_age_seconds", f"Seconds since the {role} beat",
                                    value=beat_age if beat_age is not None else float("nan"))
