"""The staff pages: access, the grid and its filters, the polling contract, detail, images."""

from __future__ import annotations

import hashlib
import io
import json
import re
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from PIL import Image

from dashboard.grid import datetime_to_cursor
from screenshots.models import (
    Account,
    Capture,
    CaptureFailure,
    ErrorCategory,
    Instance,
    InstanceState,
    capture_path,
    thumbnail_path,
)

pytestmark = pytest.mark.django_db


def jpeg(seed: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), (seed % 256, 20, 20)).save(out, "JPEG")
    return out.getvalue()


def add_capture(instance: Instance, seed: int = 1, at: Any = None) -> Capture:
    data = jpeg(seed)
    sha = hashlib.sha256(data).hexdigest()
    default_storage.save(capture_path(sha, "jpg"), ContentFile(data))
    default_storage.save(thumbnail_path(sha), ContentFile(data))
    at = at or timezone.now()
    capture = Capture.objects.create(instance=instance, image=capture_path(sha, "jpg"), thumbnail=thumbnail_path(sha),
                                     sha256=sha, format="jpeg", width=40, height=30, size=len(data),
                                     captured_at=at, last_seen_at=at)
    InstanceState.objects.filter(pk=instance.pk).update(
        latest_capture=capture, last_success_at=at, stale_after=at + timedelta(seconds=60), changed_at=at)
    return capture


@pytest.fixture
def account() -> Account:
    return Account.objects.create(name="Prod", access_key_id="LTAI5tAbcdefgh", access_key_secret="s3cret-value")


def make_instances(account: Account, count: int, **extra: Any) -> list[Instance]:
    instances = Instance.objects.bulk_create(
        Instance(account=account, region_id="cn-hangzhou", instance_id=f"i-bp1view{n:012d}", name=f"web-{n:03d}",
                 tags={"env": "prod" if n % 2 else "dev"}, **extra)
        for n in range(count)
    )
    InstanceState.objects.bulk_create(
        InstanceState(instance=i, stale_after=timezone.now() + timedelta(minutes=5)) for i in instances)
    return instances


@pytest.fixture
def fleet(account: Account) -> list[Instance]:
    return make_instances(account, 4)


def user_with(role: str | None) -> User:
    user = User.objects.create_user(f"user-{role}", password="pw-123456789")
    if role == "admin":
        user.is_staff = user.is_superuser = True
        user.save()
    elif role:
        user.groups.add(Group.objects.get(name=role))
    return user


@pytest.fixture
def viewer_client() -> Client:
    client = Client()
    client.force_login(user_with("Viewers"))
    return client


@pytest.fixture
def operator_client() -> Client:
    client = Client()
    client.force_login(user_with("Operators"))
    return client


def tile_ids(html: str) -> list[str]:
    return re.findall(r'<article id="tile-(\d+)"', html)


class AccessTestCase:
    @pytest.mark.parametrize("path", ["/", "/poll/", "/instances/{pk}/", "/instances/{pk}/poll/",
                                      "/instances/{pk}/console/", "/captures/{cap}/{sha}/thumb.jpg"])
    def test_every_page_needs_a_login(self, client: Client, fleet: list[Instance], path: str) -> None:
        capture = add_capture(fleet[0])
        response = client.get(path.format(pk=fleet[0].pk, cap=capture.pk, sha=capture.sha256))
        assert response.status_code == 302
        assert response["Location"].startswith("/login/")

    def test_a_viewer_who_posts_an_operator_action_gets_403(self, viewer_client: Client, fleet: list[Instance],
                                                            redis: Any) -> None:
        response = viewer_client.post(f"/instances/{fleet[0].pk}/capture/")
        assert response.status_code == 403
        assert redis.llen("celery") == 0

    def test_an_operator_can_request_a_capture_and_the_task_carries_only_ids(
        self, operator_client: Client, fleet: list[Instance], redis: Any, django_capture_on_commit_callbacks: Any
    ) -> None:
        with django_capture_on_commit_callbacks(execute=True):
            response = operator_client.post(f"/instances/{fleet[0].pk}/capture/", {"wake_up": "1"})
        assert response.status_code == 200
        assert b"requested" in response.content
        (raw,) = redis.lrange("celery", 0, -1)
        message = json.loads(raw)
        assert message["headers"]["task"] == "screenshots.tasks.capture_instance"
        assert "s3cret-value" not in raw.decode()
        import base64

        args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        assert args == [fleet[0].pk]
        assert kwargs == {"wake_up": True, "force": True}

    def test_the_login_page_works(self, client: Client) -> None:
        User.objects.create_user("someone", password="pw-123456789")
        response = client.post("/login/", {"username": "someone", "password": "pw-123456789"})
        assert response.status_code == 302
        assert client.get("/").status_code == 200

    def test_pages_carry_a_strict_content_security_policy(self, viewer_client: Client, fleet: list[Instance]) -> None:
        policy = viewer_client.get("/")["Content-Security-Policy"]
        assert "script-src 'self'" in policy
        assert "unsafe-eval" not in policy and "unsafe-inline" not in policy


class GridTestCase:
    def test_it_shows_every_instance_with_its_state(self, viewer_client: Client, fleet: list[Instance]) -> None:
        add_capture(fleet[0])
        InstanceState.objects.filter(pk=fleet[1].pk).update(
            error_category=ErrorCategory.NOT_RUNNING, error_code="IncorrectInstanceStatus",
            error_request_id="REQ-1", error_since=timezone.now())
        html = viewer_client.get("/").content.decode()
        assert sorted(tile_ids(html)) == sorted(str(i.pk) for i in fleet)
        assert "tile-not_running" in html and "IncorrectInstanceStatus" in html and "REQ-1" in html
        assert f"/captures/{InstanceState.objects.get(pk=fleet[0].pk).latest_capture_id}/" in html

    @pytest.mark.parametrize(
        ("category", "label"),
        [(ErrorCategory.NOT_FOUND, "Not found"), (ErrorCategory.NOT_SUPPORTED, "Not supported"),
         (ErrorCategory.THROTTLED, "Throttled"), (ErrorCategory.NETWORK, "Unreachable"),
         (ErrorCategory.MALFORMED, "Bad reply"), (ErrorCategory.SERVER, "Server error")],
    )
    def test_each_error_has_its_own_look_and_keeps_the_last_image(
        self, viewer_client: Client, fleet: list[Instance], category: str, label: str
    ) -> None:
        capture = add_capture(fleet[0])
        InstanceState.objects.filter(pk=fleet[0].pk).update(error_category=category, error_code="Code.X")
        html = viewer_client.get(f"/?q={fleet[0].instance_id}").content.decode()
        assert f"tile-{category}" in html and "is-dimmed" in html and label in html
        assert capture.sha256 in html

    def test_an_account_credentials_error_shows_on_every_tile(self, viewer_client: Client,
                                                              fleet: list[Instance], account: Account) -> None:
        Account.objects.filter(pk=account.pk).update(credentials_error_code="InvalidAccessKeyId.NotFound",
                                                     credentials_error_since=timezone.now())
        html = viewer_client.get("/").content.decode()
        assert html.count("tile-credentials") == len(fleet)
        assert html.count("InvalidAccessKeyId.NotFound") == len(fleet)

    def test_a_tile_without_news_turns_stale(self, viewer_client: Client, fleet: list[Instance]) -> None:
        add_capture(fleet[0], at=timezone.now() - timedelta(minutes=10))
        html = viewer_client.get(f"/?q={fleet[0].instance_id}").content.decode()
        assert "tile-stale" in html and "Stale" in html
        assert tile_ids(viewer_client.get("/?state=stale").content.decode()) == [str(fleet[0].pk)]

    def test_filters_combine(self, viewer_client: Client, fleet: list[Instance], account: Account) -> None:
        other = Account.objects.create(name="Other", access_key_id="LTAI5tOtherkey", access_key_secret="x")
        extra = Instance.objects.create(account=other, region_id="eu-central-1", instance_id="i-gw8other0000000001",
                                        name="other-01", tags={"env": "prod", "team": "data"})

        def ids(query: str) -> set[str]:
            return set(tile_ids(viewer_client.get(f"/?{query}").content.decode()))

        assert ids("q=web-001") == {str(fleet[1].pk)}
        assert ids("q=I-GW8OTHER") == {str(extra.pk)}  # case-insensitive
        assert ids(f"account={other.pk}") == {str(extra.pk)}
        assert ids("region=eu-central-1") == {str(extra.pk)}
        assert ids("tag=team") == {str(extra.pk)}
        assert ids("tag=env%3Dprod") == {str(fleet[1].pk), str(fleet[3].pk), str(extra.pk)}
        assert ids(f"tag=env%3Dprod&account={account.pk}") == {str(fleet[1].pk), str(fleet[3].pk)}
        # A key that looks like an ORM lookup is still just a key.
        assert ids("tag=env__contains%3Dprod") == set()
        assert ids("tag=env__contains") == set()
        assert ids("state=disabled") == set()
        Instance.objects.filter(pk=fleet[2].pk).update(enabled=False)
        assert ids("state=disabled") == {str(fleet[2].pk)}
        assert str(fleet[2].pk) not in ids("state=ok")

    @pytest.mark.parametrize("query", ["state=bogus", "per_page=7", "region=../../etc", "tag=a%22b", "account=abc",
                                       "page=-3", "page=zzz", "q=" + "x" * 300])
    def test_a_bad_filter_value_gets_a_message_not_a_500(self, viewer_client: Client, fleet: list[Instance],
                                                         query: str) -> None:
        response = viewer_client.get(f"/?{query}")
        assert response.status_code == 200
        if not query.startswith("page="):
            assert "(ignored)" in response.content.decode()
        assert viewer_client.get(f"/poll/?{query}").status_code in (200, 204)

    def test_errors_first_ordering(self, viewer_client: Client, fleet: list[Instance]) -> None:
        InstanceState.objects.filter(pk=fleet[3].pk).update(error_category=ErrorCategory.NETWORK, error_code="E")
        InstanceState.objects.filter(pk=fleet[2].pk).update(error_category=ErrorCategory.NOT_RUNNING, error_code="S")
        order = tile_ids(viewer_client.get("/?order=errors").content.decode())
        assert order[:2] == [str(fleet[3].pk), str(fleet[2].pk)]

    def test_it_paginates(self, viewer_client: Client, account: Account) -> None:
        make_instances(account, 120)
        first = tile_ids(viewer_client.get("/?per_page=50").content.decode())
        third = tile_ids(viewer_client.get("/?per_page=50&page=3").content.decode())
        assert len(first) == 50 and len(third) == 20
        assert not set(first) & set(third)


class PollingTestCase:
    def _cursor(self, html: str) -> str:
        return re.search(r'id="poll-cursor" name="cursor" value="(\d+)"', html).group(1)

    def test_it_answers_204_when_nothing_changed(self, viewer_client: Client, fleet: list[Instance]) -> None:
        InstanceState.objects.update(changed_at=timezone.now() - timedelta(minutes=1))
        cursor = self._cursor(viewer_client.get("/").content.decode())
        response = viewer_client.get(f"/poll/?cursor={cursor}")
        assert response.status_code == 204
        assert response.content == b""

    def test_it_sends_only_the_changed_tiles_out_of_band(self, viewer_client: Client, fleet: list[Instance]) -> None:
        InstanceState.objects.update(changed_at=timezone.now() - timedelta(minutes=1))
        cursor = self._cursor(viewer_client.get("/").content.decode())
        add_capture(fleet[2], at=timezone.now())
        response = viewer_client.get(f"/poll/?cursor={cursor}")
        html = response.content.decode()
        assert response.status_code == 200
        assert tile_ids(html) == [str(fleet[2].pk)]
        assert 'hx-swap-oob="true"' in html
        # The cursor moves on; once the change has settled, the same question gets 204.
        new_cursor = self._cursor(html)
        assert int(new_cursor) > int(cursor)
        InstanceState.objects.filter(pk=fleet[2].pk).update(changed_at=timezone.now() - timedelta(seconds=30))
        assert viewer_client.get(f"/poll/?cursor={new_cursor}").status_code == 204

    def test_it_only_considers_the_tiles_of_the_page_and_filters(self, viewer_client: Client,
                                                                 fleet: list[Instance]) -> None:
        InstanceState.objects.update(changed_at=timezone.now() - timedelta(minutes=1))
        cursor = datetime_to_cursor(timezone.now() - timedelta(seconds=10))
        add_capture(fleet[0])
        assert viewer_client.get(f"/poll/?cursor={cursor}&q={fleet[1].instance_id}").status_code == 204
        assert viewer_client.get(f"/poll/?cursor={cursor}&q={fleet[0].instance_id}").status_code == 200

    def test_a_missing_or_bad_cursor_resends_the_page(self, viewer_client: Client, fleet: list[Instance]) -> None:
        for cursor in ("", "abc", "9" * 30):
            assert len(tile_ids(viewer_client.get(f"/poll/?cursor={cursor}").content.decode())) == len(fleet)

    def test_query_count_does_not_grow_with_the_number_of_tiles(self, viewer_client: Client,
                                                                account: Account) -> None:
        counts = {}
        for size in (10, 500):
            Instance.objects.all().delete()
            instances = make_instances(account, size)
            for instance in instances:
                add_capture(instance, seed=instance.pk)
            cursor = datetime_to_cursor(timezone.now() - timedelta(hours=1))
            viewer_client.get("/poll/?per_page=500")  # warm the session
            with CaptureQueriesContext(connection) as changed:
                response = viewer_client.get(f"/poll/?cursor={cursor}&per_page=500")
            assert len(tile_ids(response.content.decode())) == size
            with CaptureQueriesContext(connection) as unchanged:
                assert viewer_client.get(f"/poll/?cursor={datetime_to_cursor(timezone.now())}&per_page=500"
                                         ).status_code == 204
            counts[size] = (len(changed), len(unchanged))
        assert counts[10] == counts[500], counts

    def test_fragments_are_not_cached(self, viewer_client: Client, fleet: list[Instance]) -> None:
        for path in ("/", "/poll/", f"/instances/{fleet[0].pk}/", f"/instances/{fleet[0].pk}/poll/"):
            assert "no-store" in viewer_client.get(path)["Cache-Control"], path


class InstanceDetailTestCase:
    def test_it_shows_history_metadata_and_failures(self, viewer_client: Client, fleet: list[Instance]) -> None:
        old = add_capture(fleet[0], seed=1, at=timezone.now() - timedelta(minutes=2))
        new = add_capture(fleet[0], seed=2)
        CaptureFailure.objects.create(instance=fleet[0], category=ErrorCategory.THROTTLED, code="Throttling",
                                      message="Request was denied", request_id="REQ-42")
        html = viewer_client.get(f"/instances/{fleet[0].pk}/").content.decode()
        assert new.sha256 in html and old.sha256 in html
        assert "2 distinct frames" in html
        assert "REQ-42" in html and "Throttling" in html
        assert f"?capture={old.pk}" in html  # step back
        assert "Capture now" not in html  # viewers do not get the operator buttons

    def test_stepping_to_an_older_frame(self, viewer_client: Client, fleet: list[Instance]) -> None:
        old = add_capture(fleet[0], seed=1, at=timezone.now() - timedelta(minutes=2))
        new = add_capture(fleet[0], seed=2)
        html = viewer_client.get(f"/instances/{fleet[0].pk}/?capture={old.pk}").content.decode()
        assert f'/captures/{old.pk}/{old.sha256}/full"' in html
        assert f"?capture={new.pk}" in html and "Latest (live)" in html

    def test_operators_see_the_actions(self, operator_client: Client, fleet: list[Instance]) -> None:
        html = operator_client.get(f"/instances/{fleet[0].pk}/").content.decode()
        assert "Capture now" in html and "Wake and capture" in html

    def test_detail_poll_is_204_until_the_state_changes(self, viewer_client: Client, fleet: list[Instance]) -> None:
        html = viewer_client.get(f"/instances/{fleet[0].pk}/").content.decode()
        changed_at = re.search(r'name="changed_at" value="(\d+)"', html).group(1)
        assert viewer_client.get(f"/instances/{fleet[0].pk}/poll/?changed_at={changed_at}").status_code == 204
        add_capture(fleet[0])
        response = viewer_client.get(f"/instances/{fleet[0].pk}/poll/?changed_at={changed_at}")
        assert response.status_code == 200 and b'id="live"' in response.content

    def test_unknown_instance_is_404(self, viewer_client: Client) -> None:
        assert viewer_client.get("/instances/999999/").status_code == 404


class CaptureImageTestCase:
    def test_it_serves_the_original_bytes_with_safe_headers(self, viewer_client: Client,
                                                            fleet: list[Instance]) -> None:
        capture = add_capture(fleet[0])
        response = viewer_client.get(f"/captures/{capture.pk}/{capture.sha256}/full")
        body = b"".join(response.streaming_content)
        assert response.status_code == 200
        assert hashlib.sha256(body).hexdigest() == capture.sha256
        assert response["Content-Type"] == "image/jpeg"
        assert response["X-Content-Type-Options"] == "nosniff"
        assert "immutable" in response["Cache-Control"] and "max-age=31536000" in response["Cache-Control"]

    def test_download_names_the_file(self, viewer_client: Client, fleet: list[Instance]) -> None:
        capture = add_capture(fleet[0])
        response = viewer_client.get(f"/captures/{capture.pk}/{capture.sha256}/full?download=1")
        assert response["Content-Disposition"].startswith(f'attachment; filename="{fleet[0].instance_id}-')

    def test_a_wrong_hash_is_404(self, viewer_client: Client, fleet: list[Instance]) -> None:
        capture = add_capture(fleet[0])
        assert viewer_client.get(f"/captures/{capture.pk}/{'0' * 64}/full").status_code == 404
        assert viewer_client.get(f"/captures/{capture.pk}/../../etc/passwd/full").status_code == 404
