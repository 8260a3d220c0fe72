"""Which instances are due, and claiming them so each is enqueued once.

Beat calls ``claim_due_instances`` every few seconds. Each due row is claimed with a conditional
UPDATE on the ``next_capture_at`` value that was read (Healthchecks' sendalerts pattern): a second
beat started by mistake reads the same value, updates nothing, and enqueues nothing.
"""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Q
from django.utils import timezone

from screenshots.models import InstanceState

# A claimed instance is due again after half an interval more, even if its task was lost (worker
# killed, Redis restarted empty): the capture itself sets the real next time when it runs. A second
# task for an instance whose first one is merely slow costs nothing: the instance lock and the 10 s
# call slot (coordination.py) turn it into a no-op.
CLAIM_LEASE_FACTOR = 1.5
MIN_CLAIM_LEASE = timedelta(seconds=15)


def claim_due_instances(limit: int = 1000) -> list[int]:
    now = timezone.now()
    due = (
        InstanceState.objects.filter(
            next_capture_at__lte=now, instance__enabled=True, instance__account__enabled=True
        )
        .exclude(
            Q(instance__account__credentials_retry_at__gt=now)
            & ~Q(instance__account__credentials_error_code="")
        )
        .order_by("next_capture_at")
        .values_list("pk", "next_capture_at", "instance__capture_interval")[:limit]
    )
    claimed = []
    for pk, seen, interval in due:
        lease = max(MIN_CLAIM_LEASE, timedelta(seconds=interval * CLAIM_LEASE_FACTOR))
        if InstanceState.objects.filter(pk=pk, next_capture_at=seen).update(next_capture_at=now + lease):
            claimed.append(pk)
    return claimed
