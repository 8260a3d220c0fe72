"""The capture pipeline in this process, against the simulator over real HTTP and a real Redis."""

from __future__ import annotations

import base64
import hashlib
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
from django.utils import timezone

from screenshots import coordination, ecs
from screenshots.capture import capture_instance
from screenshots.models import Account, Capture, CaptureFailure, ErrorCategory, Instance, InstanceState
from tests.conftest import MISSING, PHASED_OUT, RUNNING, RUNNING_2, RUNNING_PNG, STOPPED, media_files

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_clients() -> None:
    ecs.reset_clients()


def state(instance: Instance) -> InstanceState:
    return InstanceState.objects.get(pk=instance.pk)


def allow_next_call(simulator: Any, instance: Instance) -> None:
    """Skip the 10 s wait between two captures of one instance (on both sides)."""
    coordination.connection().delete(coordination.key("last-call", instance.pk))
    simulator.control.knobs(min_screenshot_interval=0)


class CaptureSuccessTestCase:
    def test_it_stores_a_jpeg_exactly_as_received(self, instances: dict, simulator: Any, _media: Any) -> None:
        outcome = capture_instance(instances[RUNNING].pk)
        assert outcome.status == "captured"
        capture = Capture.objects.get(instance=instances[RUNNING])
        data = (_media / capture.image.name).read_bytes()
        assert data.startswith(b"\xff\xd8\xff")
        assert hashlib.sha256(data).hexdigest() == capture.sha256
        assert capture.image.name == f"captures/{capture.sha256[:2]}/{capture.sha256}.jpg"
        assert (capture.format, capture.width, capture.height, capture.size) == ("jpeg", 800, 600, len(data))
        assert (_media / capture.thumbnail.name).read_bytes().startswith(b"\xff\xd8\xff")
        current = state(instances[RUNNING])
        assert current.latest_capture_id == capture.pk
        assert current.error_code == ""
        assert current.consecutive_failures == 0
        assert current.next_capture_at > timezone.now() + timedelta(seconds=20)
        assert len(simulator.control.screenshot_calls(RUNNING)) == 1

    def test_it_detects_png_from_the_bytes(self, instances: dict, _media: Any) -> None:
        assert capture_instance(instances[RUNNING_PNG].pk).status == "captured"
        capture = Capture.objects.get(instance=instances[RUNNING_PNG])
        assert capture.format == "png"
        assert capture.image.name.endswith(".png")
        assert (_media / capture.image.name).read_bytes().startswith(b"\x89PNG")

    def test_an_identical_frame_is_seen_again_not_stored_again(self, instances: dict, simulator: Any,
                                                                 _media: Any) -> None:
        instance = instances[RUNNING]
        capture_instance(instance.pk)
        first = Capture.objects.get(instance=instance)
        files_before = media_files(_media)
        allow_next_call(simulator, instance)
        outcome = capture_instance(instance.pk)
        assert outcome.status == "unchanged"
        assert Capture.objects.filter(instance=instance).count() == 1
        again = Capture.objects.get(instance=instance)
        assert again.last_seen_at > first.last_seen_at
        assert again.captured_at == first.captured_at
        assert media_files(_media) == files_before

    def test_a_changed_frame_becomes_a_new_capture(self, instances: dict, simulator: Any) -> None:
        instance = instances[RUNNING]
        capture_instance(instance.pk)
        simulator.control.patch(RUNNING, bump_frame=True)
        allow_next_call(simulator, instance)
        assert capture_instance(instance.pk).status == "captured"
        captures = list(Capture.objects.filter(instance=instance))
        assert len(captures) == 2
        assert captures[0].sha256 != captures[1].sha256
        assert state(instance).latest_capture_id == captures[0].pk  # newest first

    @pytest.mark.parametrize(("flag", "sent"), [(True, "true"), (None, "false")])
    def test_wake_up_is_sent_when_asked(self, instances: dict, flag: bool | None, sent: str) -> None:
        with mock.patch.object(ecs, "call", autospec=True, side_effect=ecs.call) as spy:
            assert capture_instance(instances[RUNNING].pk, wake_up=flag).status == "captured"
        assert spy.call_args.args[3]["WakeUp"] == sent

    def test_a_disabled_instance_is_not_called(self, instances: dict, simulator: Any) -> None:
        Instance.objects.filter(pk=instances[RUNNING].pk).update(enabled=False)
        assert capture_instance(instances[RUNNING].pk).status == "skipped"
        assert simulator.control.screenshot_calls(RUNNING) == []
        # An operator's "capture now" still works on a disabled instance.
        assert capture_instance(instances[RUNNING].pk, force=True).status == "captured"


class CaptureErrorStatesTestCase:
    @pytest.mark.parametrize(
        ("instance_id", "category", "code", "min_recheck"),
        [
            (STOPPED, ErrorCategory.NOT_RUNNING, "IncorrectInstanceStatus", 60),
            (PHASED_OUT, ErrorCategory.NOT_SUPPORTED, "NotSupported", 6 * 3600),
            (MISSING, ErrorCategory.NOT_FOUND, "InvalidParameter", 3600),
        ],
    )
    def test_each_error_code_gives_its_state(self, instances: dict, instance_id: str, category: str, code: str,
                                             min_recheck: int) -> None:
        instance = instances[instance_id]
        outcome = capture_instance(instance.pk)
        assert outcome.status == "failed"
        current = state(instance)
        assert (current.error_category, current.error_code) == (category, code)
        assert current.error_message
        assert len(current.error_request_id) == 36
        assert current.error_since is not None
        assert current.consecutive_failures == 1
        assert current.next_capture_at >= timezone.now() + timedelta(seconds=min_recheck * 0.99)
        failure = CaptureFailure.objects.get(instance=instance)
        assert (failure.code, failure.category) == (code, category)

    def test_a_stopped_instance_keeps_its_last_capture_and_recovers(self, instances: dict, simulator: Any) -> None:
        instance = instances[RUNNING]
        capture_instance(instance.pk)
        good = state(instance).latest_capture_id
        simulator.control.patch(RUNNING, status="Stopped")
        allow_next_call(simulator, instance)
        capture_instance(instance.pk)
        current = state(instance)
        assert current.error_category == ErrorCategory.NOT_RUNNING
        assert current.latest_capture_id == good
        since = current.error_since

        # Still stopped: the same error keeps its "since".
        allow_next_call(simulator, instance)
        capture_instance(instance.pk)
        assert state(instance).error_since == since
        assert state(instance).consecutive_failures == 2

        simulator.control.patch(RUNNING, status="Running")
        allow_next_call(simulator, instance)
        assert capture_instance(instance.pk).status in ("captured", "unchanged")
        current = state(instance)
        assert current.error_code == "" and current.consecutive_failures == 0 and current.error_since is None

    @pytest.mark.parametrize(
        ("fault", "category", "code"),
        [
            ("bad_base64", ErrorCategory.MALFORMED, "InvalidBase64"),
            ("not_image", ErrorCategory.MALFORMED, "UnsupportedImage"),
            ("huge", ErrorCategory.MALFORMED, "ScreenshotTooLarge"),
            ("bomb", ErrorCategory.MALFORMED, "ImageTooLarge"),
            ("truncated_jpeg", ErrorCategory.MALFORMED, "CorruptImage"),
            ("gif", ErrorCategory.MALFORMED, "UnsupportedImage"),
            ("empty_screenshot", ErrorCategory.MALFORMED, "MalformedReply"),
            ("bad_json", ErrorCategory.MALFORMED, "MalformedReply"),
            ("5xx", ErrorCategory.SERVER, "ServiceUnavailable"),
            ("5xx_html", ErrorCategory.MALFORMED, "SDK.UnknownServerError"),
            ("reset", ErrorCategory.NETWORK, "SDK.HttpError"),
            ("timeout", ErrorCategory.NETWORK, "SDK.HttpError"),
        ],
    )
    def test_a_bad_reply_writes_nothing_and_keeps_the_last_good_capture(
        self, instances: dict, simulator: Any, _media: Any, settings: Any, fault: str, category: str, code: str
    ) -> None:
        settings.ECS_READ_TIMEOUT = 1.0
        instance = instances[RUNNING]
        capture_instance(instance.pk)
        good = state(instance).latest_capture_id
        files_before = media_files(_media)
        simulator.control.patch(RUNNING, fault=fault, bump_frame=True)
        allow_next_call(simulator, instance)

        assert capture_instance(instance.pk).status == "failed"

        current = state(instance)
        assert (current.error_category, current.error_code) == (category, code)
        assert current.latest_capture_id == good
        assert Capture.objects.filter(instance=instance).count() == 1
        assert media_files(_media) == files_before
        # Transient: retried after a backoff, not at once and not never.
        assert timezone.now() + timedelta(seconds=10) <= current.next_capture_at
        assert current.next_capture_at <= timezone.now() + timedelta(seconds=700)

    def test_transient_errors_back_off_exponentially(self, instances: dict, simulator: Any) -> None:
        instance = instances[RUNNING]
        simulator.control.patch(RUNNING, fault="5xx")
        delays = []
        for _ in range(4):
            allow_next_call(simulator, instance)
            capture_instance(instance.pk)
            delays.append((state(instance).next_capture_at - timezone.now()).total_seconds())
        # interval 30 s: about 30, 60, 120, 240 s, each with up to 20% jitter.
        for n, delay in enumerate(delays):
            assert 30 * 2**n * 0.95 <= delay <= 30 * 2**n * 1.25, delays

    def test_throttling_backs_off(self, instances: dict, simulator: Any) -> None:
        simulator.control.knobs(throttle_rate=1.0)
        capture_instance(instances[RUNNING].pk)
        current = state(instances[RUNNING])
        assert current.error_category == ErrorCategory.THROTTLED
        assert current.next_capture_at >= timezone.now() + timedelta(seconds=29)

    def test_the_sdk_index_error_on_a_bare_signature_message_is_a_credentials_error(
        self, instances: dict, simulator: Any
    ) -> None:
        simulator.control.patch(RUNNING, fault="signature_no_colon")
        assert capture_instance(instances[RUNNING].pk).status == "failed"
        assert Account.objects.get().credentials_error_code == "SignatureDoesNotMatch"


class CredentialsTestCase:
    def test_a_wrong_secret_is_one_account_level_error_not_a_call_per_instance(
        self, instances: dict, simulator: Any, account: Account
    ) -> None:
        account.access_key_secret = "wrong-secret"
        account.save()
        outcome = capture_instance(instances[RUNNING].pk)
        assert outcome.status == "failed"
        account.refresh_from_db()
        assert account.credentials_error_code == "SignatureDoesNotMatch"
        assert account.credentials_retry_at > timezone.now() + timedelta(seconds=250)

        for instance_id in (RUNNING_2, RUNNING_PNG, STOPPED):
            assert capture_instance(instances[instance_id].pk).status == "skipped"
        assert len(simulator.control.screenshot_calls()) == 1

    def test_an_unknown_key_is_a_credentials_error(self, instances: dict, account: Account) -> None:
        Account.objects.filter(pk=account.pk).update(access_key_id="LTAI5tUnknownKey99")
        capture_instance(instances[RUNNING].pk)
        assert Account.objects.get(pk=account.pk).credentials_error_code == "InvalidAccessKeyId.NotFound"

    def test_fixed_credentials_clear_the_account_error(self, instances: dict, simulator: Any,
                                                       account: Account) -> None:
        good_secret = account.access_key_secret
        account.access_key_secret = "wrong-secret"
        account.save()
        capture_instance(instances[RUNNING].pk)
        # Time has come for the one probe, with the right secret back in place.
        account.refresh_from_db()
        account.access_key_secret = good_secret
        account.credentials_retry_at = timezone.now() - timedelta(seconds=1)
        account.save()
        assert capture_instance(instances[RUNNING_2].pk).status == "captured"
        account.refresh_from_db()
        assert account.credentials_error_code == ""


class CallRulesTestCase:
    def test_two_captures_of_one_instance_are_never_less_than_10_s_apart(self, instances: dict,
                                                                          simulator: Any) -> None:
        instance = instances[RUNNING]
        assert capture_instance(instance.pk).status == "captured"
        second = capture_instance(instance.pk, force=True)
        assert second.status == "skipped"
        assert 10 <= second.retry_in <= 10.5
        assert len(simulator.control.screenshot_calls(RUNNING)) == 1

    def test_a_running_capture_blocks_another_of_the_same_instance(self, instances: dict,
                                                                    simulator: Any) -> None:
        instance = instances[RUNNING]
        with coordination.instance_lock(instance.pk, 30) as held:
            assert held
            outcome = capture_instance(instance.pk)
        assert outcome.status == "skipped"
        assert "another capture" in outcome.detail
        assert simulator.control.screenshot_calls() == []

    def test_the_account_rate_limit_holds_calls_back(self, instances: dict, simulator: Any, settings: Any,
                                                     account: Account) -> None:
        settings.ECS_ACCOUNT_BURST = 2
        account.rate_per_second = 0.5
        account.save()
        outcomes = [capture_instance(instances[i].pk) for i in (RUNNING, RUNNING_2, RUNNING_PNG)]
        assert [o.status for o in outcomes[:2]] == ["captured", "captured"]
        assert outcomes[2].status == "skipped"
        assert 1.0 < outcomes[2].retry_in <= 2.5  # one token per 2 s
        assert len(simulator.control.screenshot_calls()) == 2


class SecretHygieneTestCase:
    def test_no_secret_in_logs_during_captures(self, instances: dict, simulator: Any, caplog: Any,
                                               account: Account) -> None:
        caplog.set_level("DEBUG")
        for instance in instances.values():
            capture_instance(instance.pk)
        simulator.control.patch(RUNNING_2, fault="reset")
        allow_next_call(simulator, instances[RUNNING_2])
        capture_instance(instances[RUNNING_2].pk)
        # A wrong secret: the SDK itself would log the server's string-to-sign with the AccessKeyId.
        secret = account.access_key_secret
        Account.objects.filter(pk=account.pk).update(credentials_error_code="")
        account.access_key_secret = "wrong-secret"
        account.save()
        allow_next_call(simulator, instances[RUNNING])
        assert capture_instance(instances[RUNNING].pk).error.code == "SignatureDoesNotMatch"
        account.access_key_secret = secret
        text = caplog.text + "".join(str(r.args) for r in caplog.records)
        assert "captured" in text or "capture" in text
        assert account.access_key_secret not in text
        assert base64.b64encode(account.access_key_secret.encode()).decode() not in text
        assert "Signature=" not in text
        assert account.access_key_id not in text
