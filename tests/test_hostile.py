"""Hostile input: fuzzed payloads, crafted form values, and a sweep for secrets in everything we emit."""

from __future__ import annotations

import base64
import re
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
from django.contrib.auth.models import Group, User
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from screenshots.images import InvalidScreenshot, decode_screenshot
from screenshots.models import Account, Capture, Instance
from tests.conftest import REGION, WorkerProcess, media_files, simulator_config, wait_for, worker_env

FILES = Path(__file__).parent / "files"
JPEG = (FILES / "console.jpg").read_bytes()
PNG = (FILES / "console.png").read_bytes()


def _decode_or_reject(payload: str) -> None:
    try:
        image = decode_screenshot(payload)
    except InvalidScreenshot as exc:
        assert exc.code and exc.message
    else:
        assert image.format in ("jpeg", "png") and image.width > 0 and image.height > 0
        assert image.thumbnail.startswith(b"\xff\xd8\xff")


class DecoderFuzzTestCase:
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.text(max_size=2000))
    def test_arbitrary_text_is_rejected_cleanly(self, payload: str) -> None:
        _decode_or_reject(payload)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=4000))
    def test_arbitrary_bytes_are_rejected_cleanly(self, data: bytes) -> None:
        _decode_or_reject(base64.b64encode(data).decode())

    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from([JPEG, PNG]), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)),
                                                  max_size=8), st.integers(0, 10_000))
    def test_mutated_real_images_decode_or_are_rejected(self, original: bytes, flips: list[tuple[int, int]],
                                                        cut: int) -> None:
        data = bytearray(original)
        for position, value in flips:
            data[position % len(data)] = value
        data = data[: max(cut, 8)] if cut < len(data) else data
        _decode_or_reject(base64.b64encode(bytes(data)).decode())

    def test_memory_stays_bounded_for_a_bomb_and_a_huge_string(self) -> None:
        bomb = base64.b64encode((FILES / "bomb.png").read_bytes()).decode()
        huge = "A" * (17 * 1024 * 1024)  # over the 16 MiB cap
        tracemalloc.start()
        for payload in (bomb, huge):
            with pytest.raises(InvalidScreenshot):
                decode_screenshot(payload)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 8 * 1024 * 1024, peak  # nothing decoded to 900 million pixels or 12 MiB of bytes


@pytest.mark.django_db
class CraftedFormValuesTestCase:
    @pytest.fixture
    def client_(self) -> Client:
        client = Client()
        client.force_login(User.objects.create_superuser("root", password="pw-123456789"))
        return client

    @pytest.mark.parametrize("value", [
        "../../../etc/passwd", "i-abc/../../x", "i-abcdefgh\x00", "i-abcdefgh; DROP TABLE x", "i-\u202eabcdefgh",
        "i-ａｂｃｄｅｆｇｈ", "i-" + "a" * 5000, "<script>alert(1)</script>", "i-abcd efgh",
    ])
    def test_crafted_instance_ids_are_refused_with_a_message(self, client_: Client, value: str,
                                                             media_root: Path) -> None:
        account = Account.objects.create(name="Prod", access_key_id="LTAI5tAbcdefgh", access_key_secret="x")
        response = client_.post("/admin/screenshots/instance/add/", {
            "account": account.pk, "region_id": REGION, "instance_id": value, "name": "web", "tags": "{}",
            "capture_interval": "30", "enabled": "on"})
        assert response.status_code == 200
        assert "errorlist" in response.content.decode()
        assert not Instance.objects.exists()
        assert media_files(media_root) == set()

    @pytest.mark.parametrize("query", [
        "q=%00", "q=%E2%80%AE%F0%9F%92%A5", "q=" + "%F0%9F%92%A5" * 200, "region=%00", "tag=%00",
        "tag=a%3D%00", "account=1%20OR%201%3D1", "state=%27%3B--", "q=%27%20OR%20%271%27%3D%271",
        "per_page=1e9", "page=99999999999999999999", "cursor=%00", "board=..%2F..",
    ])
    def test_crafted_filters_get_a_page_not_a_500(self, client_: Client, query: str) -> None:
        assert client_.get(f"/?{query}").status_code == 200
        assert client_.get(f"/poll/?{query}").status_code in (200, 204)


@pytest.mark.worker
@pytest.mark.timeout(120)
class SecretSweepTestCase:
    """One full capture cycle; then every log line, every Redis command (task messages included) and
    every page is searched for the AccessKey secret, the STS token and a share token."""

    def test_no_secret_anywhere(self, transactional_db: None, redis: Any, redis_url: str, media_root: Path,
                                caplog: Any) -> None:
        from screenshots import ecs, tasks
        from screenshots.simulator import start_in_thread

        secret, sts, wrong_secret = "SWEEP-secret-7Hq2", "SWEEP-sts-token-Lm9", "SWEEP-wrong-secret-X1"
        config = simulator_config()
        config["access_keys"] = [{"id": "LTAI5tSweepKey0001", "secret": secret, "security_token": sts}]
        caplog.set_level("DEBUG")
        monitor_lines: list[str] = []
        stop = threading.Event()

        def monitor() -> None:
            with redis_lib.Redis.from_url(redis_url).monitor() as m:
                for command in m.listen():
                    monitor_lines.append(str(command.get("command", "")))
                    if stop.is_set():
                        return

        watcher = threading.Thread(target=monitor, daemon=True)
        watcher.start()
        time.sleep(0.3)
        ecs.reset_clients()
        with start_in_thread(config) as sim:
            account = Account.objects.create(name="Sweep", access_key_id="LTAI5tSweepKey0001",
                                             access_key_secret=secret, security_token=sts,
                                             endpoint_scheme="http", endpoint_host="127.0.0.1",
                                             endpoint_port=sim.port)
            instances = [Instance.objects.create(account=account, region_id=REGION, instance_id=item["instance_id"],
                                                 name=item["name"]) for item in config["instances"]]
            worker = WorkerProcess(worker_env(redis_url, media_root))
            try:
                tasks.enqueue_due_captures.delay()
                wait_for(lambda: Capture.objects.count() >= 3, timeout=40, message="captures")
                # Also a credentials failure: the SDK's own error log would carry the string-to-sign.
                account.access_key_secret = wrong_secret
                account.save()
                extra = Instance.objects.create(account=account, region_id=REGION,
                                                instance_id="i-bp1sweepextra0000001")
                tasks.capture_instance.delay(extra.pk, force=True)
                wait_for(lambda: Account.objects.get(pk=account.pk).credentials_error_code, timeout=20,
                         message="the credentials error")
                operator = User.objects.create_superuser("op", password="pw-123456789")
                operator.groups.add(Group.objects.get(name="Operators"))
                client = Client()
                client.force_login(operator)
                created = client.post("/shares/", {"instances": [instances[0].pk], "hours": "1"}).content.decode()
                share_token = re.search(r'/s/([A-Za-z0-9_-]+)/"', created).group(1)
                pages = [client.get(path).content.decode() for path in (
                    "/", f"/instances/{instances[0].pk}/", f"/instances/{instances[0].pk}/console/",
                    f"/admin/screenshots/account/{account.pk}/change/", "/shares/", "/metrics",
                    "/admin/screenshots/capturefailure/")]
                pages.append(Client().get(f"/s/{share_token}/").content.decode())
            finally:
                worker.stop()
                stop.set()
                redis_lib.Redis.from_url(redis_url).ping()  # wakes the monitor so it can stop
                watcher.join(5)
            worker_log = worker.output()

        assert any("capture_instance" in line for line in monitor_lines), "the sweep saw no task message"
        assert "captured" in worker_log
        haystacks = {"worker log": worker_log, "test log": caplog.text, "redis": "\n".join(monitor_lines),
                     "pages": "\n".join(pages)}
        for name, text in haystacks.items():
            for needle in (secret, sts, wrong_secret, base64.b64encode(secret.encode()).decode()):
                assert needle not in text, f"{needle!r} found in {name}"
            if name != "pages":
                assert share_token not in text, f"share token found in {name}"
