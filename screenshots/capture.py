"""Capturing one instance: ask the API, check the image, store it, record the outcome.

The Celery task is a thin shell around ``capture_instance``; the management command calls it directly.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import F
from django.db.models.functions import Now
from django.utils import timezone

from screenshots import coordination, ecs, metrics
from screenshots.images import DecodedImage, InvalidScreenshot, decode_screenshot
from screenshots.models import (
    MIN_CAPTURE_INTERVAL,
    Account,
    Capture,
    CaptureFailure,
    ErrorCategory,
    Instance,
    InstanceState,
    capture_path,
    default_account_rate,
    stale_window,
    thumbnail_path,
)

log = logging.getLogger(__name__)

# Longer than the task's hard time limit (30 s, see tasks.py): a killed worker's lock expires by itself.
LOCK_LEASE_SECONDS = 35


@dataclass(frozen=True)
class Outcome:
    """What one capture attempt did. ``retry_in`` asks the caller to try again later (no API call made)."""

    status: str  # "captured", "unchanged", "failed", "skipped"
    detail: str = ""
    retry_in: float | None = None
    capture_id: int | None = None
    error: ecs.EcsError | None = None

    def __str__(self) -> str:
        # What the task returns and Celery logs: the status and an error code, never the server's text.
        if self.error is not None:
            return f"{self.status}: {self.error.code}"
        return f"{self.status}: {self.detail}" if self.detail else self.status


def capture_instance(instance_pk: int, *, wake_up: bool | None = None, force: bool = False) -> Outcome:
    """Capture one instance if the rules allow it now.

    ``force`` ignores ``enabled`` (an operator's "capture now"), never the 10 s rule or the rate limit.
    """
    try:
        instance = Instance.objects.select_related("account", "state").get(pk=instance_pk)
    except Instance.DoesNotExist:
        return Outcome("skipped", "instance no longer exists")
    account = instance.account
    if not force and not (instance.enabled and account.enabled):
        return Outcome("skipped", "disabled")

    with coordination.instance_lock(instance.pk, LOCK_LEASE_SECONDS) as locked:
        if not locked:
            # Usually a capture in flight, whose result will do. If its worker died, the lock outlives
            # it until the lease ends: an operator's request waits for that rather than vanish.
            # Checked again every few seconds (a live capture ends within a second or two).
            wait = min(coordination.lock_remaining(instance.pk), 5.0) + 0.5
            retry = force and coordination.try_once(f"manual-retry:{instance.pk}", wait)
            return Outcome("skipped", "another capture of this instance is running",
                           retry_in=wait if retry else None)
        refusal = _refusal(instance, account, force)
        if refusal is not None:
            return refusal

        wake = instance.wake_up if wake_up is None else wake_up
        started = time.monotonic()
        try:
            reply = ecs.get_screenshot(account, instance.region_id, instance.instance_id, wake_up=wake)
        finally:
            coordination.call_finished(instance.pk, MIN_CAPTURE_INTERVAL)
        elapsed_ms = (time.monotonic() - started) * 1000
        metrics.record_call("error" if isinstance(reply, ecs.EcsError) else "ok",
                            reply.code if isinstance(reply, ecs.EcsError) else "", elapsed_ms / 1000)
        if isinstance(reply, ecs.EcsError):
            log.info(
                "capture %s failed: %s (%s) in %.0f ms",
                instance.instance_id,
                reply.code,
                reply.request_id,
                elapsed_ms,
            )
            return record_failure(instance, reply)
        try:
            image = decode_screenshot(reply.base64_image)
        except InvalidScreenshot as exc:
            error = ecs.EcsError(ErrorCategory.MALFORMED, exc.code, exc.message, reply.request_id)
            metrics.record_rejected(exc.code)
            log.info("capture %s rejected: %s (%s)", instance.instance_id, exc.code, reply.request_id)
            return record_failure(instance, error)
        outcome = record_success(instance, image, reply.request_id)
        log.info("capture %s %s in %.0f ms", instance.instance_id, outcome.status, elapsed_ms)
        return outcome


def _refusal(instance: Instance, account: Account, force: bool) -> Outcome | None:
    """Why no API call may be made now (credentials, the account's rate, the 10 s rule), or None."""
    if account.credentials_blocked():
        return Outcome("skipped", f"account credentials rejected ({account.credentials_error_code})")
    if account.has_credentials_error and not coordination.try_once(
        f"credentials-probe:{account.pk}", settings.RECHECK_CREDENTIALS_SECONDS
    ):
        # One instance probes whether the credentials work again; the others wait for its answer.
        return Outcome("skipped", "another instance is re-checking the account's credentials")

    wait = coordination.take_account_token(
        account.pk, default_account_rate(account), settings.ECS_ACCOUNT_BURST
    )
    if wait:
        return Outcome("skipped", "account rate limit", retry_in=wait + random.uniform(0, 0.25))
    wait = coordination.claim_call_slot(instance.pk, MIN_CAPTURE_INTERVAL)
    if wait:
        # A scheduled capture comes back with the schedule. An operator's request is kept: tried
        # again once the 10 s are over, and requests that pile up meanwhile count as one.
        retry = force and coordination.try_once(f"manual-retry:{instance.pk}", wait + 1)
        if not force:
            InstanceState.objects.filter(pk=instance.pk).update(
                next_capture_at=timezone.now() + timedelta(seconds=wait))
        return Outcome("skipped", "called less than 10 s ago", retry_in=wait if retry else None)

    return None


def _jittered(seconds: float) -> timedelta:
    return timedelta(seconds=max(MIN_CAPTURE_INTERVAL, seconds * random.uniform(1.0, 1.2)))


def next_attempt_after_failure(instance: Instance, error: ecs.EcsError, failures: int) -> timedelta:
    """How long to leave an instance alone after an error, by what the error means."""
    if error.category == ErrorCategory.NOT_RUNNING:
        return _jittered(max(instance.capture_interval, settings.RECHECK_STOPPED_SECONDS))
    if error.category == ErrorCategory.NOT_FOUND:
        return _jittered(settings.RECHECK_NOT_FOUND_SECONDS)
    if error.category == ErrorCategory.NOT_SUPPORTED:
        return _jittered(settings.RECHECK_NOT_SUPPORTED_SECONDS)
    if error.category == ErrorCategory.CREDENTIALS:
        return _jittered(settings.RECHECK_CREDENTIALS_SECONDS)
    # Transient: exponential backoff from the interval, capped, with jitter so a fleet spreads out.
    return _jittered(
        min(instance.capture_interval * 2 ** min(failures - 1, 10), settings.BACKOFF_MAX_SECONDS)
    )


def record_failure(instance: Instance, error: ecs.EcsError) -> Outcome:
    now = timezone.now()
    state = instance.state
    failures = state.consecutive_failures + 1
    same_error = state.error_code == error.code
    with transaction.atomic():
        InstanceState.objects.filter(pk=instance.pk).update(
            last_attempt_at=now,
            error_category=error.category,
            error_code=error.code,
            error_message=error.message[:2000],
            error_since=state.error_since if same_error and state.error_since else now,
            error_request_id=error.request_id[:64],
            consecutive_failures=F("consecutive_failures") + 1,
            next_capture_at=now + next_attempt_after_failure(instance, error, failures),
            changed_at=Now(),
        )
        CaptureFailure.objects.create(
            instance=instance,
            at=now,
            category=error.category,
            code=error.code[:100],
            message=error.message[:2000],
            request_id=error.request_id[:64],
            http_status=error.http_status,
        )
        if error.category == ErrorCategory.CREDENTIALS:
            mark_account_credentials_error(instance.account, error, now)
        elif instance.account.has_credentials_error:
            # The credentials got this far, so they work again.
            clear_account_credentials_error(instance.account)
    if error.category == ErrorCategory.CLIENT:
        # MissingParameter and the like: a bug on our side, not a property of the instance.
        log.error(
            "ECS rejected our request for %s: %s (%s)", instance.instance_id, error.code, error.request_id
        )
    return Outcome("failed", f"{error.code}: {error.message}", error=error)


def mark_account_credentials_error(account: Account, error: ecs.EcsError, now: datetime) -> None:
    Account.objects.filter(pk=account.pk).update(
        credentials_error_code=error.code[:100],
        credentials_error_message=error.message[:2000],
        credentials_error_since=account.credentials_error_since or now,
        credentials_retry_at=now + timedelta(seconds=settings.RECHECK_CREDENTIALS_SECONDS),
    )
    # Every tile of the account shows the account's error: bump them so pollers redraw.
    InstanceState.objects.filter(instance__account=account).update(changed_at=Now())


def clear_account_credentials_error(account: Account) -> None:
    updated = (
        Account.objects.filter(pk=account.pk)
        .exclude(credentials_error_code="")
        .update(
            credentials_error_code="",
            credentials_error_message="",
            credentials_error_since=None,
            credentials_retry_at=None,
        )
    )
    if updated:
        InstanceState.objects.filter(instance__account=account).update(changed_at=Now())


def _store_files(image: DecodedImage) -> tuple[str, str]:
    image_name = capture_path(image.sha256, image.extension)
    thumb_name = thumbnail_path(image.sha256)
    # Content-addressed: an existing name already holds exactly these bytes.
    if not default_storage.exists(image_name):
        default_storage.save(image_name, ContentFile(image.data))
    if not default_storage.exists(thumb_name):
        default_storage.save(thumb_name, ContentFile(image.thumbnail))
    return image_name, thumb_name


def record_success(instance: Instance, image: DecodedImage, request_id: str) -> Outcome:
    now = timezone.now()
    latest = Capture.objects.filter(instance=instance).order_by("-captured_at", "-id").first()
    unchanged = latest is not None and latest.sha256 == image.sha256
    if not unchanged:
        # The files exist before any row points at them.
        image_name, thumb_name = _store_files(image)
    with transaction.atomic():
        if unchanged:
            Capture.objects.filter(pk=latest.pk).update(last_seen_at=now)
            capture_id = latest.pk
        else:
            capture_id = Capture.objects.create(
                instance=instance,
                image=image_name,
                thumbnail=thumb_name,
                sha256=image.sha256,
                format=image.format,
                width=image.width,
                height=image.height,
                size=len(image.data),
                captured_at=now,
                last_seen_at=now,
                request_id=request_id[:64],
            ).pk
        InstanceState.objects.filter(pk=instance.pk).update(
            latest_capture_id=capture_id,
            last_success_at=now,
            last_attempt_at=now,
            error_category="",
            error_code="",
            error_message="",
            error_since=None,
            error_request_id="",
            consecutive_failures=0,
            next_capture_at=now + _jittered_interval(instance.capture_interval),
            stale_after=now + stale_window(instance.capture_interval),
            changed_at=Now(),
        )
        if instance.account.has_credentials_error:
            clear_account_credentials_error(instance.account)
    if not unchanged:
        # A prune running at the same moment may have removed a file with this hash that no row used
        # yet; now that our row references it, make sure it is there.
        _store_files(image)
    return Outcome("unchanged" if unchanged else "captured", image.sha256[:12], capture_id=capture_id)


def _jittered_interval(interval: int) -> timedelta:
    # Up to 5% early or late, never below the floor (and the call slot's margin): keeps a fleet from
    # marching in lock-step without ever being due before the 10 s rule lets it call.
    floor = MIN_CAPTURE_INTERVAL + coordination.CALL_SLOT_MARGIN
    return timedelta(seconds=max(floor, interval * random.uniform(0.95, 1.05)))
