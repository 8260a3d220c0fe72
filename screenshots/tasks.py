"""Celery tasks: thin shells around the domain functions. They take ids only, never secrets."""

from __future__ import annotations

import logging

from celery import shared_task
from django.db import OperationalError, transaction

from screenshots import capture, metrics, retention, scheduling

log = logging.getLogger(__name__)


@shared_task(ignore_result=True, soft_time_limit=20, time_limit=30)
def enqueue_due_captures() -> int:
    metrics.heartbeat("worker")
    claimed = scheduling.claim_due_instances()
    for pk in claimed:
        capture_instance.delay(pk)
    return len(claimed)


@shared_task(
    bind=True,
    ignore_result=True,
    acks_late=True,
    reject_on_worker_lost=True,
    # The API call is bounded by its own timeouts (5 s connect, 15 s read); these bound the rest.
    soft_time_limit=25,
    time_limit=30,
    autoretry_for=(OperationalError,),
    retry_backoff=2,
    retry_jitter=True,
    max_retries=5,
)
def capture_instance(self: object, instance_pk: int, wake_up: bool | None = None, force: bool = False) -> str:
    metrics.heartbeat("worker")
    outcome = capture.capture_instance(instance_pk, wake_up=wake_up, force=force)
    if outcome.retry_in is not None:
        # Rate limit or the 10 s rule: no call was made; come back when the wait is over.
        capture_instance.apply_async(
            (instance_pk,), {"wake_up": wake_up, "force": force}, countdown=outcome.retry_in
        )
    return str(outcome)


def request_capture(instance_pk: int, wake_up: bool | None = None) -> None:
    """An operator's "capture now": enqueued once the surrounding transaction commits."""
    transaction.on_commit(lambda: capture_instance.delay(instance_pk, wake_up=wake_up, force=True))


@shared_task(ignore_result=True, soft_time_limit=240, time_limit=300)
def prune_captures() -> str:
    report = retention.prune()
    return f"{report.rows} rows, {report.files} files, {report.orphans} orphans"
