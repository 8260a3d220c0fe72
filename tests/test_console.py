from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.test import Client

from dashboard.console import decode_output, parse_update_time
from screenshots import ecs
from tests.conftest import MISSING, RUNNING, STOPPED


class ConsoleDecodingTestCase:
    def test_the_api_time_is_utc_plus_8_without_a_zone(self) -> None:
        assert parse_update_time("2026-11-27 02:30:00") == datetime(2026, 11, 26, 18, 30, tzinfo=UTC)

    @pytest.mark.parametrize("value", ["", "yesterday", "2026-13-01 00:00:00", "2026-11-27T02:30:00Z"])
    def test_an_unreadable_time_is_none(self, value: str) -> None:
        assert parse_update_time(value) is None

    def test_escape_sequences_and_control_characters_are_removed(self) -> None:
        raw = "\x1b[1;32m[  OK  ]\x1b[0m Started\r\nlogin: \x07\x00ready\n"
        assert decode_output(base64.b64encode(raw.encode()).decode()) == "[  OK  ] Started\nlogin: ready\n"

    def test_invalid_utf8_is_replaced_not_fatal(self) -> None:
        assert decode_output(base64.b64encode(b"caf\xe9\n").decode()) == "caf\ufffd\n"

    def test_invalid_base64_is_an_error(self) -> None:
        with pytest.raises(ValueError, match="base64"):
            decode_output("***")


@pytest.mark.django_db
class ConsoleViewTestCase:
    @pytest.fixture(autouse=True)
    def _clean(self) -> None:
        cache.clear()
        ecs.reset_clients()

    @pytest.fixture
    def client_(self) -> Client:
        client = Client()
        client.force_login(User.objects.create_user("viewer", password="pw-123456789"))
        return client

    def test_it_shows_the_decoded_output_with_a_utc_timestamp(self, client_: Client, instances: dict) -> None:
        html = client_.get(f"/instances/{instances[RUNNING].pk}/console/").content.decode()
        assert 'class="console-text"' in html
        assert "login:" in html
        assert "\x1b" not in html
        # The time is given with its zone (UTC) for the browser to show in the viewer's timezone.
        assert 'datetime="20' in html and '+00:00"' in html

    def test_a_stopped_instance_shows_its_last_output(self, client_: Client, instances: dict) -> None:
        html = client_.get(f"/instances/{instances[STOPPED].pk}/console/").content.decode()
        assert "Power down" in html

    def test_an_api_error_is_shown_with_its_code(self, client_: Client, instances: dict) -> None:
        html = client_.get(f"/instances/{instances[MISSING].pk}/console/").content.decode()
        assert "could not be read" in html and "InvalidParameter" in html

    def test_it_is_cached_briefly(self, client_: Client, instances: dict, simulator: Any) -> None:
        for _ in range(3):
            client_.get(f"/instances/{instances[RUNNING].pk}/console/")
        counters = simulator.control.state()["counters"]
        assert counters["actions"]["GetInstanceConsoleOutput"] == 1
