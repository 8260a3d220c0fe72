from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

pytestmark = pytest.mark.django_db


def attempt(password: str, address: str = "10.1.1.1") -> int:
    client = Client(REMOTE_ADDR=address)
    return client.post("/login/", {"username": "alice", "password": password}).status_code


class LoginThrottlingTestCase:
    @pytest.fixture(autouse=True)
    def _user(self) -> None:
        User.objects.create_user("alice", password="right-password-123")

    def test_five_failures_lock_the_pair_out_for_a_cool_off(self) -> None:
        # Four failures are just failures; the fifth locks.
        assert [attempt("wrong") for _ in range(5)] == [200, 200, 200, 200, 429]
        assert attempt("right-password-123") == 429  # even the right password waits
        assert "Too many failed logins" in Client(REMOTE_ADDR="10.1.1.1").post(
            "/login/", {"username": "alice", "password": "x"}).content.decode()

    def test_an_attacker_elsewhere_cannot_lock_a_user_out(self) -> None:
        for _ in range(8):
            attempt("wrong", address="203.0.113.9")
        assert attempt("right-password-123", address="10.1.1.1") == 302

    def test_the_lockout_ends_by_itself(self) -> None:
        for _ in range(6):
            attempt("wrong")
        assert attempt("right-password-123") == 429
        with time_machine.travel(timezone.now() + timedelta(minutes=16)):
            assert attempt("right-password-123") == 302
