from __future__ import annotations

import time
from typing import Any

import pytest
from django.test import Client

from screenshots import coordination, ecs, metrics
from screenshots.capture import capture_instance
from tests.conftest import MISSING, RUNNING, STOPPED, free_port

pytestmark = pytest.mark.django_db

AUTH = {"HTTP_AUTHORIZATION": "Bearer metrics-token-for-tests"}


@pytest.fixture(autouse=True)
def _token(settings: Any) -> None:
    settings.METRICS_TOKEN = "metrics-token-for-tests"
    ecs.reset_clients()


class HealthTestCase:
    def test_web_health_checks_database_and_redis(self, client: Client, redis: Any) -> None:
        response = client.get("/health/")
        assert response.status_code == 200
        assert response.json() == {"ok": True, "database": True, "redis": True}

    def test_web_health_says_503_when_redis_is_gone(self, client: Client, redis: Any, settings: Any) -> None:
        settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
        response = client.get("/health/")
        assert response.status_code == 503
        assert response.json()["redis"] is False

    def test_pipeline_health_needs_the_token(self, client: Client, redis: Any) -> None:
        assert client.get("/health/pipeline/").status_code == 403
        assert client.get("/health/pipeline/", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
        assert client.get("/metrics").status_code == 403

    def test_pipeline_health_reports_beat_workers_and_newest_capture(self, client: Client, instances: dict) -> None:
        body = client.get("/health/pipeline/", **AUTH).json()
        assert body["ok"] is False and body["beat_alive"] is False and body["newest_capture_age_seconds"] is None
        metrics.heartbeat("beat")
        metrics.heartbeat("worker")
        capture_instance(instances[RUNNING].pk)
        response = client.get("/health/pipeline/", **AUTH)
        body = response.json()
        assert response.status_code == 200 and body["ok"] is True
        assert 0 <= body["newest_capture_age_seconds"] < 5
        coordination.connection().set(coordination.key("heartbeat", "beat"), time.time() - 3600)
        assert client.get("/health/pipeline/", **AUTH).json()["beat_alive"] is False


class MetricsTestCase:
    def test_it_exposes_calls_errors_latency_queue_and_states(self, client: Client, instances: dict) -> None:
        for instance_id in (RUNNING, STOPPED, MISSING):
            capture_instance(instances[instance_id].pk)
        text = client.get("/metrics", **AUTH).content.decode()
        assert 'consolewall_capture_calls_total{outcome="ok"} 1.0' in text
        assert 'consolewall_capture_calls_total{outcome="error"} 2.0' in text
        assert 'consolewall_capture_errors_total{code="IncorrectInstanceStatus"} 1.0' in text
        assert 'consolewall_capture_errors_total{code="InvalidParameter"} 1.0' in text
        assert "consolewall_api_latency_seconds_count 3.0" in text
        assert "consolewall_queue_depth 0.0" in text
        assert 'consolewall_instances{status="stopped"} 1.0' in text
